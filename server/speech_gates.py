"""Warm speech gates, lent to live sessions: silero-vad's first calls are slow (TorchScript), so gates are
warmed before a call needs one and given back when it ends (:class:`GatePool`, :class:`GateLease`)."""

from __future__ import annotations

import threading

import numpy as np

from emote.streaming.speech_gate import SpeechGate


class GateLease:
    """A pooled speech gate as one session sees it, until :meth:`revoke` takes it back.

    The session calls ``process`` on a render thread; a step may still be running there after the
    session was closed, so the lease serialises the calls and, once revoked, no longer touches the gate.
    """

    def __init__(self, gate: SpeechGate) -> None:
        self._gate: SpeechGate | None = gate
        self._lock = threading.Lock()

    def process(self, samples: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._gate is None:
                return np.zeros(len(samples), np.float32)  # the session has ended: gate closed
            return self._gate.process(samples)

    def reset(self) -> None:
        with self._lock:
            if self._gate is not None:
                self._gate.reset()

    def warm_up(self) -> None:
        with self._lock:
            if self._gate is not None:
                self._gate.warm_up()

    def revoke(self) -> SpeechGate | None:
        """Take the gate back once no call is using it (blocks for at most one ``process`` call)."""
        with self._lock:
            gate, self._gate = self._gate, None
        return gate


class GatePool:
    """Warm speech gates (a silero-vad model each: ~60 ms to load with the GIL held, and slow first calls),
    one per session slot, built once on the preparation thread and lent to sessions (reset in between)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: list[SpeechGate] = []
        self._building = 0  # gates fill() is making right now
        self._lock = threading.Lock()

    def fill(self) -> None:
        """Build the gates still missing (on a worker thread)."""
        while True:
            with self._lock:
                if len(self._free) + self._building >= self.size:
                    return
                self._building += 1
            try:
                gate = _warm_gate()
                with self._lock:
                    self._free.append(gate)
            finally:
                with self._lock:
                    self._building -= 1

    def lend(self) -> GateLease:
        """A gate for a new session (on the preparation thread): a pooled one, or a new one if none is free."""
        with self._lock:
            gate = self._free.pop() if self._free else None
        return GateLease(gate if gate is not None else _warm_gate())

    def give_back(self, lease: GateLease) -> None:
        gate = lease.revoke()
        if gate is None:
            return
        gate.reset()
        with self._lock:
            if len(self._free) < self.size:
                self._free.append(gate)


def _warm_gate() -> SpeechGate:
    gate = SpeechGate()
    gate.warm_up()  # TorchScript's slow first calls happen here, not in a live call
    return gate


