"""The media clock that paces a live session, and a virtual one for tests.

Every deadline in the live pipeline (when video frame *n* and audio chunk *k*
are due, when silence must be filled in because no audio arrived) is an
absolute time on one :class:`Clock`. The server uses :class:`MonotonicClock`,
the event loop's own monotonic time; tests inject :class:`VirtualClock`, whose
time only moves when the test advances it, so cadence, starvation and
interruption are checked exactly and instantly.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Protocol


class Clock(Protocol):
    """A monotonic time source that coroutines can sleep on."""

    def now(self) -> float:
        """Current time in seconds (monotonic; the origin is arbitrary)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once ``now() >= deadline`` (at once if it already is)."""
        ...


class MonotonicClock:
    """Real time: the running event loop's monotonic clock."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, deadline: float) -> None:
        delay = deadline - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class VirtualClock:
    """Time that moves only when a test calls :meth:`advance`.

    Sleepers are woken in deadline order; after each wake-up the event loop
    runs until nothing more is ready, so work scheduled "at" a time (say, a
    frame rendered in an executor) finishes before time moves on.

    Args:
        start: the initial time in seconds.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self._now:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._order), future))
        await future

    @property
    def next_deadline(self) -> float | None:
        """The earliest pending deadline, or ``None`` when nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].done():  # cancelled sleepers
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float, *, settle: float = 0.0) -> None:
        """Move time forward by ``seconds``, waking every sleeper on the way in order.

        Args:
            seconds: how far to move (>= 0).
            settle: real seconds to wait after each wake-up for work running
                outside the loop (executor threads) to come back; 0 only
                drains the loop's ready callbacks.
        """
        if seconds < 0:
            raise ValueError(f"advance(seconds={seconds}): time cannot go backwards")
        target = self._now + seconds
        await self._settle(0.0)  # tasks started just before this call go to sleep at the current time first
        while (deadline := self.next_deadline) is not None and deadline <= target:
            self._now = max(self._now, deadline)
            while self._sleepers and self._sleepers[0][0] <= self._now:
                _, _, future = heapq.heappop(self._sleepers)
                if not future.done():
                    future.set_result(None)
            await self._settle(settle)
        self._now = target
        await self._settle(settle)

    @staticmethod
    async def _settle(real_seconds: float) -> None:
        for _ in range(20):  # let woken tasks run and re-sleep
            await asyncio.sleep(0)
        if real_seconds > 0:
            await asyncio.sleep(real_seconds)
            for _ in range(20):
                await asyncio.sleep(0)
