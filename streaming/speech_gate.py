"""Tells speech from silence in live microphone audio, and silences the rest.

A microphone hears more than a voice: fans, keyboards, the room. The motion
model would dutifully move the lips to all of it, so live microphone audio
goes through this gate before it reaches the model. silero-vad (the small
TorchScript model shipped inside the ``silero-vad`` package, loaded by
:mod:`emote.model.media.silero`) scores every 32 ms of 16 kHz audio; the gate opens when the speech
probability reaches ``open_threshold`` and closes only after it has stayed
below ``close_threshold`` for ``hangover_ms``, so short pauses inside a
sentence keep their natural lip closures instead of snapping shut. Samples
while the gate is closed become exact zeros: the idle motion takes over and
the lips rest. Deciding costs one model call per 32 ms (about 1.5 ms of one
core here), skipped for near-silent chunks. Each session owns one gate: the model carries recurrent state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emote.model.media.silero import load_silero_model

SAMPLE_RATE = 16000
CHUNK = 512  # samples per model call at 16 kHz (32 ms), what silero-vad expects
WARM_CALLS = 48  # model calls after which TorchScript has settled (measured: ~20 slow ones)


@dataclass(frozen=True, kw_only=True)
class GateConfig:
    """When the gate opens and closes.

    Attributes:
        open_threshold: speech probability that opens the gate (silero's usual 0.5).
        close_threshold: the gate closes only below this (hysteresis against flicker).
        hangover_ms: how long the probability must stay low before the gate closes
            (longer than the pauses between words, shorter than between sentences).
        silence_dbfs: chunks quieter than this (RMS, dB re full scale) count as silence without
            calling the model (a muted or idle microphone costs nothing); far below any voice.
    """

    open_threshold: float = 0.5
    close_threshold: float = 0.35
    hangover_ms: float = 200.0
    silence_dbfs: float = -60.0

    def __post_init__(self) -> None:
        if not 0.0 < self.close_threshold <= self.open_threshold < 1.0:
            raise ValueError(
                f"GateConfig: need 0 < close_threshold ({self.close_threshold}) <= open_threshold "
                f"({self.open_threshold}) < 1"
            )
        if self.hangover_ms < 0:
            raise ValueError(f"GateConfig.hangover_ms={self.hangover_ms}: must be >= 0")
        if not -120.0 <= self.silence_dbfs <= -20.0:
            raise ValueError(f"GateConfig.silence_dbfs={self.silence_dbfs}: use -120 to -20 dB")


def load_vad_model() -> Any:
    """A fresh silero-vad model for one gate (see :mod:`emote.model.media.silero`)."""
    return load_silero_model()


class SpeechGate:
    """Zeroes the non-speech parts of a 16 kHz stream, block by block.

    Args:
        config: thresholds and hangover.
        model: a silero-vad model (a fresh one is loaded when omitted).
    """

    def __init__(self, config: GateConfig | None = None, model: Any = None) -> None:
        self.config = config or GateConfig()
        self._model = model if model is not None else load_vad_model()
        self._floor = 10.0 ** (self.config.silence_dbfs / 20.0)
        self.model_calls = 0
        self._pending = np.zeros(0, np.float32)
        self._low_samples = 0
        self.is_open = False
        self.probability = 0.0

    def warm_up(self) -> None:
        """Make the model's slow first calls now (TorchScript re-optimises during its first ~20;
        some take 50-100 ms), on quiet noise, then forget it. Nothing to do for a warm gate."""
        if self.model_calls < WARM_CALLS:
            noise = np.random.default_rng(0).normal(0.0, 0.01, (WARM_CALLS - self.model_calls) * CHUNK)
            self.process(noise.astype(np.float32))
        self.reset()

    def reset(self) -> None:
        """Forget the stream so far (a new caller, a new stream)."""
        self._model.reset_states()
        self._pending = np.zeros(0, np.float32)
        self._low_samples = 0
        self.is_open = False
        self.probability = 0.0

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Gate the next block.

        The decision for a sample is the one in force once the 32 ms chunk it
        completes has been scored; samples of a chunk still being collected
        follow the current decision.

        Args:
            samples: (N,) float32 mono at 16 kHz.

        Returns:
            (N,) float32: the block where the gate was open, zeros elsewhere.
        """
        import torch

        x = np.asarray(samples, np.float32)
        out = np.zeros_like(x)
        self._pending = np.concatenate([self._pending, x])
        done = 0  # samples of x already decided
        while len(self._pending) >= CHUNK:
            chunk, self._pending = self._pending[:CHUNK], self._pending[CHUNK:]
            if float(np.sqrt(np.mean(chunk * chunk))) < self._floor:
                self.probability = 0.0  # digital silence or close to it: not worth a model call
            else:
                with torch.inference_mode():
                    self.probability = float(self._model(torch.from_numpy(chunk.copy()), SAMPLE_RATE))
                self.model_calls += 1
            self._update(self.probability)
            upto = max(0, len(x) - len(self._pending))  # x's samples up to the end of this chunk
            if self.is_open:
                out[done:upto] = x[done:upto]
            done = max(done, upto)
        if self.is_open:
            out[done:] = x[done:]
        return out

    def _update(self, probability: float) -> None:
        cfg = self.config
        if probability >= cfg.open_threshold:
            self.is_open = True
            self._low_samples = 0
        elif self.is_open and probability < cfg.close_threshold:
            self._low_samples += CHUNK
            if self._low_samples * 1000.0 / SAMPLE_RATE >= cfg.hangover_ms:
                self.is_open = False
                self._low_samples = 0
        else:
            self._low_samples = 0
