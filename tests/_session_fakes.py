"""Fakes and a driver for streaming tests on virtual time.

:class:`IndexRenderer` is a fake renderer that paints its call count and the
jaw opening into pixels, so drops, repeats and reordering are visible in the
frames a track receives; :func:`drive` pulls both tracks of a session while
moving a :class:`~streaming.clock.VirtualClock` forward in small steps.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from emote.model.motion.interface import ARKIT_NAMES
from emote.streaming.clock import VirtualClock
from emote.streaming.playout import AudioOut, VideoOut
from emote.streaming.session import AvatarSession, SessionClosed

JAW = ARKIT_NAMES.index("jawOpen")


class InlineExecutor(Executor):
    """Runs submitted work at once on the calling thread (deterministic on virtual time)."""

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future


class IndexRenderer:
    """Paints the render count into pixel (0, 0) (two bytes) and jawOpen x 255 into pixel (0, 2)."""

    size = (16, 16)

    def __init__(self) -> None:
        self.calls = 0
        self.coeffs: list[np.ndarray] = []

    def render(self, pose: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
        image = np.zeros((16, 16, 3), np.uint8)
        image[0, 0, 0], image[0, 1, 0] = self.calls % 256, self.calls // 256 % 256
        image[0, 2, 0] = int(np.clip(coeffs[JAW], 0, 1) * 255)
        self.coeffs.append(np.array(coeffs, copy=True))
        self.calls += 1
        return image


def render_count(image: np.ndarray) -> int:
    return int(image[0, 0, 0]) + 256 * int(image[0, 1, 0])


def jaw(image: np.ndarray) -> float:
    return image[0, 2, 0] / 255.0


@dataclass
class Received:
    video: list[VideoOut] = field(default_factory=list)
    audio: list[AudioOut] = field(default_factory=list)
    video_times: list[float] = field(default_factory=list)

    @property
    def jaw(self) -> np.ndarray:
        return np.array([jaw(v.image) for v in self.video])

    @property
    def audio_samples(self) -> np.ndarray:
        if not self.audio:
            return np.zeros(0, np.int16)
        return np.concatenate([a.samples for a in self.audio])


class Driver:
    """Pulls a session's video and audio on virtual time, like two aiortc senders would."""

    def __init__(self, session: AvatarSession, clock: VirtualClock) -> None:
        self.session = session
        self.clock = clock
        self.received = Received()
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Driver:
        await self.session.start()
        self._tasks = [
            asyncio.create_task(self._pull(self.session.next_video, self.received.video, self.received.video_times)),
            asyncio.create_task(self._pull(self.session.next_audio, self.received.audio, None)),
        ]
        await self.clock.advance(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.aclose()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _pull(self, pull: Any, into: list[Any], times: list[float] | None) -> None:
        try:
            while True:
                into.append(await pull())
                if times is not None:
                    times.append(self.clock.now())
        except SessionClosed:
            return

    async def run(self, seconds: float, step: float = 0.005) -> None:
        """Move virtual time forward by ``seconds`` in steps of ``step``."""
        for _ in range(int(round(seconds / step))):
            await self.clock.advance(step)
