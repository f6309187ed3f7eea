"""Timings of the single stages of the offline render, each on its own.

Every function here runs one stage of :func:`streaming.offline.render_file`
the way the pipeline runs it and returns plain numbers: portrait analysis
with the cache off (cold) and on (warm), portrait preparation (framing and
renderer construction), baseline motion generation window by window through
the :class:`~streaming.windower.AudioWindower`, rendering of every frame of
that motion, H.264 encoding of the rendered frames with
:class:`~model.media.video_out.Mp4Writer` and decoding of an audio file. Times are
taken with :func:`time.perf_counter` around each call, and the first render
calls (numba compiles or loads its cache there) run before the clock starts.
Run as ``python -m bench.stages pinned ...`` this module is also the child
process that times the renderer alone on one core, under ``taskset`` with
every thread pool of numpy, numba and OpenCV limited to one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emote.model.motion.registry import DEFAULT_GENERATOR

if TYPE_CHECKING:
    from emote.model.motion.interface import MotionChunk

#: Render calls made before the clock starts (the first compiles or loads numba's cache).
WARMUP_FRAMES = 10
#: Environment of the one-core child: every thread pool limited to one thread.
SINGLE_THREAD_ENV = {
    "OMP_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENCV_FOR_THREADS_NUM": "1",
}


@dataclass(frozen=True)
class Timing:
    """Summary of repeated measurements, in milliseconds per unit (call, frame, second)."""

    median: float
    p95: float
    mean: float
    n: int

    @classmethod
    def of(cls, values_ms: list[float] | np.ndarray, mean: float | None = None) -> Timing:
        """Median, 95th percentile and mean (or the given throughput mean) of ``values_ms``."""
        v = np.asarray(values_ms, np.float64)
        return cls(float(np.median(v)), float(np.percentile(v, 95)), float(v.mean()) if mean is None else mean, len(v))


def _ms_since(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000.0


def time_analysis(portrait: Path, cache_dir: Path, cold_reps: int, warm_reps: int) -> dict[str, Timing | float]:
    """Portrait analysis: the first call in this process, cold (no cache) and warm (cached), in ms per call."""
    from emote.model.face.portrait import analyze_portrait

    t = time.perf_counter()
    analyze_portrait(portrait, use_cache=False)
    first = _ms_since(t)
    cold = []
    for _ in range(cold_reps):
        t = time.perf_counter()
        analyze_portrait(portrait, use_cache=False)
        cold.append(_ms_since(t))
    analyze_portrait(portrait, cache_dir=cache_dir)  # fills the cache
    warm = []
    for _ in range(warm_reps):
        t = time.perf_counter()
        analyze_portrait(portrait, cache_dir=cache_dir)
        warm.append(_ms_since(t))
    return {"first_ms": first, "cold": Timing.of(cold), "warm": Timing.of(warm)}


def time_prepare(portrait: Path, reps: int) -> Timing:
    """``prepare_portrait`` with a warm analysis cache (framing, mouth textures, background fill, meshes)."""
    from emote.model.render.registry import prepare_portrait

    prepare_portrait(portrait)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        prepare_portrait(portrait)
        times.append(_ms_since(t))
    return Timing.of(times)


def make_motion(
    audio16k: np.ndarray, rest: np.ndarray, fps: float = 25.0, motion: str = DEFAULT_GENERATOR
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Motion for ``audio16k`` as the offline pipeline makes it.

    The audio is pushed in one-second pieces through a :class:`MotionStream` with the offline
    render's settings.

    Returns:
        ``(pose (N, 6), coeffs (N, 52), ms per frame of each push that made frames)``.
    """
    from emote.model.motion.registry import make_generator
    from emote.streaming.animator import MotionStream
    from emote.streaming.offline import MERGE_FRAMES

    stream = MotionStream(make_generator(motion), rest, fps=fps, merge_frames=MERGE_FRAMES)
    poses, coeffs, per_frame = [], [], []

    def run(push: Callable[[], list[MotionChunk]]) -> None:
        t = time.perf_counter()
        chunks = push()
        n = sum(len(c) for c in chunks)
        if n:
            per_frame.append(_ms_since(t) / n)
        poses.extend(c.pose for c in chunks)
        coeffs.extend(c.coeffs for c in chunks)

    step = 16000
    for i in range(0, len(audio16k), step):
        run(lambda i=i: stream.push(audio16k[i : i + step]))
    run(stream.finish)
    return np.concatenate(poses), np.concatenate(coeffs), per_frame


def time_motion(audio16k: np.ndarray, rest: np.ndarray, reps: int) -> tuple[Timing, np.ndarray, np.ndarray]:
    """Motion generation in ms per frame (per window, over ``reps`` passes); also the motion itself."""
    make_motion(audio16k[: 16000 * 2], rest)  # first-call costs (numba cache of the mouth filter)
    per_window: list[float] = []
    total_ms = 0.0
    frames = 0
    for _ in range(reps):
        t = time.perf_counter()
        pose, coeffs, pw = make_motion(audio16k, rest)
        total_ms += _ms_since(t)
        frames += len(pose)
        per_window += pw
    # The mean is the throughput of whole passes, windowing and bookkeeping included.
    return Timing.of(per_window, mean=total_ms / frames), pose, coeffs


def render_frames(renderer, pose: np.ndarray, coeffs: np.ndarray, keep: bool = False) -> tuple[list[float], list]:
    """Render every frame in order after ``WARMUP_FRAMES`` untimed calls; ms per frame (and the frames)."""
    for i in range(min(WARMUP_FRAMES, len(pose))):
        renderer.render(pose[i], coeffs[i])
    times, frames = [], []
    for i in range(len(pose)):
        t = time.perf_counter()
        frame = renderer.render(pose[i], coeffs[i])
        times.append(_ms_since(t))
        if keep:
            frames.append(frame.copy())
    return times, frames


def time_encode(frames: list[np.ndarray], out: Path, fps: float = 25.0) -> dict[str, Timing | float]:
    """H.264 encoding with the default ``Mp4Writer`` settings, video only.

    x264 buffers frames and encodes them on its own threads, so single calls
    vary a lot; the mean is the whole job (flush and file close included)
    divided by the frames, which is what the pipeline pays.
    """
    from emote.model.media.video_out import Mp4Writer

    h, w = frames[0].shape[:2]
    per_call = []
    t0 = time.perf_counter()
    with Mp4Writer(out, w, h, fps) as writer:
        for frame in frames:
            t = time.perf_counter()
            writer.write_video(frame)
            per_call.append(_ms_since(t))
        t = time.perf_counter()
    flush_ms = _ms_since(t)
    total = _ms_since(t0)
    return {"per_frame": Timing.of(per_call, mean=total / len(frames)), "flush_ms": flush_ms,
            "mbytes": out.stat().st_size / 1e6}


def time_decode(path: Path, reps: int) -> Timing:
    """Decoding ``path`` in the offline pipeline's pieces (16 kHz mono + AAC-ready frames), ms per second of audio."""
    from emote.model.media.audio_io import open_audio

    per_second = []
    for _ in range(reps + 1):
        source = open_audio(path)
        t = time.perf_counter()
        samples = sum(len(piece.mono16k) for piece in source.chunks())
        per_second.append(_ms_since(t) / (samples / 16000.0))
    return Timing.of(per_second[1:])  # the first pass only warms the page cache and codec setup


def pinned_render(portrait: Path, motion: Path, cpu: int = 0, timeout_s: float = 900.0) -> dict:
    """Time the renderer in a child process pinned to core ``cpu`` with one thread everywhere.

    Args:
        portrait: the portrait (its analysis is read from the cache the parent filled).
        motion: ``.npz`` with the ``pose`` and ``coeffs`` arrays to render.

    Returns:
        ``{"ms": [per frame], "affinity": [cores], "threads": {...}}`` from the child.
    """
    import subprocess

    out = motion.with_suffix(".json")
    env = {**os.environ, **SINGLE_THREAD_ENV}
    cmd = ["taskset", "-c", str(cpu), sys.executable, "-m", "bench.stages", "pinned", str(portrait), str(motion),
           str(out)]
    subprocess.run(cmd, env=env, check=True, timeout=timeout_s, cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.read_text())


def _pinned_child(portrait: str, motion: str, out: str) -> None:
    import cv2

    cv2.setNumThreads(1)
    import numba

    from emote.model.render.registry import make_renderer, prepare_portrait

    data = np.load(motion)
    kind = make_renderer()
    renderer = kind.session(prepare_portrait(portrait, renderer=kind))
    times, _ = render_frames(renderer, data["pose"], data["coeffs"])
    result = {
        "ms": times,
        "affinity": sorted(os.sched_getaffinity(0)),
        "threads": {"cv2": cv2.getNumThreads(), "numba": numba.config.NUMBA_NUM_THREADS,
                    "omp": os.environ.get("OMP_NUM_THREADS")},
    }
    Path(out).write_text(json.dumps(result))


def pinned_motion(motion: str, audio: Path, cpu: int = 0, timeout_s: float = 900.0) -> dict:
    """Time a motion generator as offline rendering runs it, in a child pinned to one core with one thread
    (torch included): ms per frame of each push (1 s of audio), features and windowing included.

    Returns:
        ``{"ms": [per push, per frame], "mean_ms": throughput, "frames": n}`` from the child.
    """
    import subprocess

    out = audio.with_name(f"motion-{motion.replace('=', '-').replace('/', '_')}.json")
    env = {**os.environ, **SINGLE_THREAD_ENV}
    cmd = ["taskset", "-c", str(cpu), sys.executable, "-m", "bench.stages", "motion", motion, str(audio), str(out)]
    subprocess.run(cmd, env=env, check=True, timeout=timeout_s, cwd=Path(__file__).resolve().parent.parent)
    return json.loads(out.read_text())


def _motion_child(motion: str, audio: str, out: str) -> None:
    import torch

    from emote.model.media.audio_io import load_audio_16k

    torch.set_num_threads(1)
    samples = load_audio_16k(audio)
    rest = np.zeros(52, np.float32)
    make_motion(samples[:32000], rest, motion=motion)  # loading the model, first-call costs
    t = time.perf_counter()
    pose, _, per_frame = make_motion(samples, rest, motion=motion)
    total = _ms_since(t)
    Path(out).write_text(json.dumps({"ms": per_frame, "mean_ms": total / len(pose), "frames": len(pose),
                                     "threads": torch.get_num_threads(), "affinity": sorted(os.sched_getaffinity(0))}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="internal: the one-core timing children of bench.run")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pinned")
    p.add_argument("portrait")
    p.add_argument("motion")
    p.add_argument("out")
    m = sub.add_parser("motion")
    m.add_argument("generator")
    m.add_argument("audio")
    m.add_argument("out")
    args = parser.parse_args()
    if args.command == "pinned":
        _pinned_child(args.portrait, args.motion, args.out)
    else:
        _motion_child(args.generator, args.audio, args.out)
