"""The animate pipeline: audio in, motion and frames out, the same for every caller.

``AudioWindower → MotionGenerator → Renderer`` in one place. The offline renderer, the live
session, evaluation, the benchmarks and the tests all drive it, so that the window a generator
declares is the window it gets everywhere, on the same frame grid:

- :class:`MotionStream` turns pushed 16 kHz audio (chunks of any size) into :class:`MotionChunk`
  objects, carrying the generator's state from window to window;
- :class:`Animator` adds a renderer and yields the frames.

Both have the same three verbs: :meth:`~MotionStream.push` audio, :meth:`~MotionStream.finish`
the stream (the end is padded with silence, so a stream of ``d`` seconds yields ``round(d * fps)``
frames), and :meth:`~MotionStream.silence` the audio already pushed for frames not yet made (an
interruption: speech sent ahead as lookahead must not reach the next frames).

Windows: every caller cuts ``generator.window_frames`` frames per window, so offline and live
motion agree for any generator. A generator whose output does not depend on the cut
(``cut_invariant``, the analytic ones) may be given several windows at once when a caller asks
for it with ``merge_frames`` (offline rendering does: one call per 25 frames instead of 25 calls);
live sessions never merge, so they wait for no more audio than one window.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic

import numpy as np

from emote.model.motion.interface import AudioWindow, MotionChunk, MotionGenerator, StateT
from emote.model.render.interface import FrameRenderer
from emote.streaming.windower import AudioWindower

SAMPLE_RATE = 16000


@dataclass
class AnimatorStats:
    """What a stream has done so far: windows and frames made, seconds spent in each stage."""

    windows: int = 0
    frames: int = 0
    motion_s: float = 0.0
    render_s: float = 0.0


class MotionStream(Generic[StateT]):
    """Audio → motion through one generator, window by window (see the module docstring).

    Args:
        generator: the motion generator.
        rest: (52,) the portrait's own coefficients.
        fps: video frame rate.
        seed: random seed of the generator.
        merge_frames: when the generator is ``cut_invariant``, generate up to this many frames in
            one call once their audio is there (offline: cheaper). Ignored otherwise.
    """

    def __init__(
        self, generator: MotionGenerator[StateT], rest: np.ndarray, *, fps: float, seed: int = 0,
        merge_frames: int | None = None,
    ) -> None:  # fmt: skip
        self.generator = generator
        self.fps = fps
        self.rest = np.asarray(rest, np.float32)
        window = generator.window_frames
        if merge_frames is not None and generator.cut_invariant:
            window = max(window, int(merge_frames))
        context_ms = max(generator.context_ms, 1000.0 * generator.overlap_frames / fps)
        self.windower = AudioWindower(fps=fps, window_frames=window, context_ms=context_ms,
                                      lookahead_ms=generator.lookahead_ms, sample_rate=SAMPLE_RATE)
        self.state: StateT = generator.initial_state(self.rest, seed)
        self.stats = AnimatorStats()

    @property
    def frames_made(self) -> int:
        """Frames whose motion has been generated so far."""
        return self.windower.next_frame

    @property
    def pushed_s(self) -> float:
        """Seconds of audio pushed so far."""
        return self.windower.total_samples / SAMPLE_RATE

    def push(self, samples: np.ndarray) -> list[MotionChunk]:
        """Add 16 kHz mono audio; returns the motion of every window it completed."""
        return self._generate(self.windower.push(samples))

    def finish(self) -> list[MotionChunk]:
        """End of stream: the motion of the remaining frames (the end is padded with silence)."""
        return self._generate(self.windower.finish())

    def silence(self) -> None:
        """Replace the audio pushed for frames not yet made with silence (an interruption)."""
        self.windower.silence_pending()

    def _generate(self, windows: list[AudioWindow]) -> list[MotionChunk]:
        out = []
        for window in windows:
            t = time.perf_counter()
            chunk, self.state = self.generator.generate(window, self.state)
            self.stats.motion_s += time.perf_counter() - t
            self.stats.windows += 1
            self.stats.frames += len(chunk)
            if len(chunk):
                out.append(chunk)
        return out


class Animator(Generic[StateT]):
    """Audio → motion → frames: a :class:`MotionStream` and a renderer.

    The frames it yields are the renderer's own buffer, reused by the next frame: copy one to
    keep it. Frames are rendered lazily, as the caller iterates.

    Args:
        generator: the motion generator.
        renderer: draws the frames (one caller's :class:`FrameRenderer`).
        rest: (52,) the portrait's own coefficients.
        fps: video frame rate.
        seed: random seed of the generator.
        merge_frames: see :class:`MotionStream`.
    """

    def __init__(
        self, generator: MotionGenerator[StateT], renderer: FrameRenderer, rest: np.ndarray, *, fps: float,
        seed: int = 0, merge_frames: int | None = None,
    ) -> None:  # fmt: skip
        self.motion = MotionStream(generator, rest, fps=fps, seed=seed, merge_frames=merge_frames)
        self.renderer = renderer

    @property
    def stats(self) -> AnimatorStats:
        return self.motion.stats

    def push(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """Add 16 kHz mono audio; yields the frames of every window it completed."""
        return self._render(self.motion.push(samples))

    def finish(self) -> Iterator[np.ndarray]:
        """End of stream: yields the remaining frames."""
        return self._render(self.motion.finish())

    def silence(self) -> None:
        """See :meth:`MotionStream.silence`."""
        self.motion.silence()

    def _render(self, chunks: list[MotionChunk]) -> Iterator[np.ndarray]:
        stats = self.motion.stats
        for chunk in chunks:
            for i in range(len(chunk)):
                t = time.perf_counter()
                frame = self.renderer.render(chunk.pose[i], chunk.coeffs[i])
                stats.render_s += time.perf_counter() - t
                yield frame
