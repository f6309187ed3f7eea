"""Offline rendering: a portrait and an audio file become a talking MP4.

The same stages the live server runs, driven from a file: the audio is
decoded once in chunks (16 kHz mono for the motion generator, the original
audio re-encoded to AAC for the output), pushed through the
:class:`~emote.streaming.animator.Animator` (windows, motion, frames) and
streamed to the encoder. Nothing holds
the whole video, so an hour of audio renders in bounded memory. Rendering
runs on this thread while H.264 encoding runs on a second one, so the two
cores work at once; the output appears under its final name only when
everything succeeded.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emote.model.errors import DependencyError, OptionError
from emote.model.media.audio_io import open_audio
from emote.model.media.video_out import Mp4Writer
from emote.model.motion.registry import DEFAULT_GENERATOR, generator_names, make_generator
from emote.model.render.registry import load_reference, make_renderer, prepare_portrait
from emote.streaming.animator import Animator

#: Frames generated per call offline when the generator allows merging windows (fewer, longer calls).
MERGE_FRAMES = 25
#: Frames rendered ahead of the encoder at most (bounded memory).
ENCODE_QUEUE_FRAMES = 8

ProgressFn = Callable[[float, float | None], None]


@dataclass(frozen=True)
class RenderStats:
    """What a render did and how long each stage took (seconds)."""

    frames: int
    duration_s: float
    analysis_s: float
    motion_s: float
    render_s: float
    encode_wait_s: float
    wall_s: float


class _EncoderThread:
    """Feeds the writer from a bounded queue on a second thread.

    Video frames and audio go through the same queue, so only this thread
    ever touches the container.
    """

    def __init__(self, writer: Mp4Writer) -> None:
        self.writer = writer
        self.queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=ENCODE_QUEUE_FRAMES)
        self.error: BaseException | None = None
        self.wait_s = 0.0
        self.thread = threading.Thread(target=self._run, name="emote-encoder", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while (item := self.queue.get()) is not None:
                kind, payload = item
                if kind == "video":
                    self.writer.write_video(payload)
                else:
                    self.writer.write_audio(payload)
        except BaseException as exc:  # handed to the rendering thread, which re-raises it
            self.error = exc
            while self.queue.get() is not None:  # drain so the producer never blocks forever
                pass

    def put(self, kind: str, payload: Any) -> None:
        """Queue a ``"video"`` frame (copied: the renderer reuses its buffer) or ``"audio"`` frames."""
        if self.error is not None:
            raise self.error
        t = time.perf_counter()
        self.queue.put((kind, payload.copy() if kind == "video" else payload))
        self.wait_s += time.perf_counter() - t

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


def render_file(
    portrait: str | Path,
    audio: str | Path,
    out: str | Path,
    *,
    fps: float = 25.0,
    size: int = 512,
    full_frame: bool = False,
    seed: int = 0,
    face_index: int | None = None,
    motion: str = DEFAULT_GENERATOR,
    reference: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> RenderStats:
    """Render ``portrait`` speaking ``audio`` into the MP4 file ``out``.

    Args:
        portrait: image file (photo or painting) with one clearly visible face.
        audio: any audio file, or a video file whose audio is used.
        out: the MP4 to write; written to a temporary name and renamed at the end.
        fps: output frame rate (1..120).
        size: side of the square output around the face (even, 64..2048).
        full_frame: output the whole picture instead of a square around the face.
        seed: random seed of the head motion, blinks and gaze.
        face_index: which face when the picture has several (0 = largest).
        motion: name of the motion generator.
        reference: a clip of the same person talking, whose real mouth interiors are drawn
            (:func:`~emote.model.render.registry.load_reference`).
        progress: called with (seconds of audio done, total seconds or None).

    Raises:
        InputError: a bad portrait, audio file or option (the message says what to do).
    """
    if not 1.0 <= fps <= 120.0:
        raise OptionError(f"--fps {fps}: use a frame rate between 1 and 120")
    t0 = time.perf_counter()
    generator = make_generator(motion)
    source = open_audio(audio)
    renderer = make_renderer(reference=load_reference(reference) if reference is not None else None)
    prepared = prepare_portrait(portrait, size=size, full_frame=full_frame, face_index=face_index, renderer=renderer)
    t_analysis = time.perf_counter() - t0
    animator = Animator(generator, renderer.session(prepared), prepared.framed.rest, fps=fps, seed=seed,
                        merge_frames=MERGE_FRAMES)
    width, height = prepared.size
    frames = 0
    # One encoder thread: rendering keeps the other core (x264 would otherwise take both).
    with Mp4Writer(out, width, height, fps, audio_rate=source.mux_rate, audio_layout=source.mux_layout,
                   threads=1) as writer:
        encoder = _EncoderThread(writer)
        try:
            for decoded in source.chunks():
                encoder.put("audio", decoded.for_mux)
                for frame in animator.push(decoded.mono16k):
                    encoder.put("video", frame)
                    frames += 1
                if progress:
                    progress(animator.motion.pushed_s, source.duration_s)
            for frame in animator.finish():
                encoder.put("video", frame)
                frames += 1
        finally:
            encoder.close()
    duration = animator.motion.pushed_s
    if progress:
        progress(duration, duration)
    stats = animator.stats
    return RenderStats(frames=frames, duration_s=duration, analysis_s=t_analysis, motion_s=stats.motion_s,
                       render_s=stats.render_s, encode_wait_s=encoder.wait_s, wall_s=time.perf_counter() - t0)


def warm_kernels() -> float:
    """Compile (or load) every numba kernel of the motion and render path once; returns seconds taken.

    The kernels are cached on disk (``cache=True``), so running this at install time spares a
    user's first render the 2-3 s of JIT compilation. It analyses the bundled default portrait
    (which also fills the portrait cache that ``emote serve`` and ``make demo`` use), generates a
    second of motion from a tone with every registered generator and renders it.
    """
    import numpy as np

    from emote.model.assets import default_portrait_path

    t0 = time.perf_counter()
    renderer = make_renderer()
    prepared = prepare_portrait(default_portrait_path(), renderer=renderer)
    t = np.arange(16000) / 16000.0
    tone = (0.3 * np.sin(2 * np.pi * 180.0 * t) * (t > 0.3)).astype(np.float32)
    for name in generator_names():
        try:
            generator = make_generator(name)
        except DependencyError:  # a learned model whose weights are not installed (yet): nothing to compile
            continue
        animator = Animator(generator, renderer.session(prepared), prepared.framed.rest, fps=25.0,
                            merge_frames=MERGE_FRAMES)
        for _ in animator.push(tone):
            pass
        for _ in animator.finish():
            pass
    return time.perf_counter() - t0
