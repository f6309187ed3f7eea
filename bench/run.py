"""``python -m bench.run``: measure the pipeline on this machine and write BENCHMARKS.md.

The run generates speech (60 s, or 10 s with ``--quick``), times the real
``emote render`` command twice as a subprocess (after compiling the numba
kernels as the install step does, the first run with an empty portrait
cache, as a user's first render of a new portrait; the second warm), then
times each stage in this process on the bundled default portrait and on scikit-image's public-domain astronaut (see
:mod:`bench.stages`), including the renderer pinned to one core. The report
names the machine, the commit, and how busy the machine was: the load
average and the CPU time other processes took during the run, because
other jobs sharing the cores slow every number down. With ``--write FILE``
the section between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is
replaced (hand-written notes outside the markers are kept); without it the
report goes to stdout. The live-streaming benchmark (:mod:`bench.live`: WebRTC
calls to ``emote serve``) runs after the offline part and writes its own
sub-section; ``--only live`` or ``--only offline`` runs one part and replaces
only that part of the file.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import machine_lines
from bench.report import render_report, replace_section
from bench.stages import (
    Timing,
    pinned_motion,
    pinned_render,
    render_frames,
    time_analysis,
    time_decode,
    time_encode,
    time_motion,
    time_prepare,
)
from emote.model.motion.registry import DEFAULT_GENERATOR

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Results:
    """Everything a run measured; :mod:`bench.report` turns it into markdown."""

    quick: bool
    speech_s: float = 0.0
    tts_s: float = 0.0
    machine: list[str] = field(default_factory=list)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    others_cores: float | None = None
    e2e: list[dict] = field(default_factory=list)
    compile_s: float | None = None  # compiling the numba kernels into an empty cache (install step)
    portraits: dict[str, dict] = field(default_factory=dict)
    decode: dict[str, Timing] = field(default_factory=dict)
    pipeline: Any = None  # RenderStats of an in-process render_file with warm caches
    generators: dict[str, dict] = field(default_factory=dict)  # one-core motion timing per generator
    wall_s: float = 0.0
    live: Any = None  # bench.live.LiveResults, when the live part ran


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


class CpuAccount:
    """CPU time the whole machine was busy versus what this run and its children used."""

    def __init__(self) -> None:
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy_s(), self._own_s()

    @staticmethod
    def _busy_s() -> float | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def others_cores(self) -> float | None:
        """Average number of cores other processes kept busy since construction."""
        busy = self._busy_s()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        return max(0.0, (busy - self.busy0) - (self._own_s() - self.own0)) / max(wall, 1e-9)


def make_portraits(folder: Path) -> dict[str, Path]:
    """The bundled default portrait and scikit-image's astronaut (written as a PNG into ``folder``)."""
    from emote.model.assets import default_portrait_path

    portraits = {"default (Grace Hopper)": default_portrait_path()}
    try:
        import cv2
        import skimage.data
    except ImportError:
        log("scikit-image is not installed (dev extra): the astronaut portrait is skipped")
        return portraits
    path = folder / "astronaut.png"
    cv2.imwrite(str(path), cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR))
    portraits["astronaut (scikit-image)"] = path
    return portraits


def run_cli(portrait: Path, audio: Path, out: Path, env: dict[str, str], timeout_s: float) -> dict:
    """Run ``emote render`` as a subprocess; its wall time as seen from outside, and what it printed."""
    cmd = [sys.executable, "-m", "emote.server.cli", "render", str(portrait), str(audio), "-o", str(out)]
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"emote render failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    match = re.search(r"(\d+) frames, ([\d.]+) s, rendered in ([\d.]+) s", proc.stdout)
    return {"wall_s": wall, "frames": int(match[1]) if match else None,
            "inner_s": float(match[3]) if match else None, "load": load}


def bench_e2e(portrait: Path, audio: Path, tmp: Path, duration: float, res: Results) -> Path:
    """Compile the kernels as the install step does, then two ``emote render`` runs: a portrait never
    seen before (empty portrait cache), then the same again (warm)."""
    numba_dir = tmp / "e2e-numba"
    log("compiling the numba kernels into an empty cache (what the install step does)")
    env = {**os.environ, "EMOTE_CACHE_DIR": str(tmp / "e2e-install-portraits"), "NUMBA_CACHE_DIR": str(numba_dir)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from emote.streaming.offline import warm_kernels; warm_kernels()"],
                   env=env, cwd=REPO, check=True, capture_output=True, timeout=600)
    res.compile_s = time.perf_counter() - t
    env = {**os.environ, "EMOTE_CACHE_DIR": str(tmp / "e2e-portraits"), "NUMBA_CACHE_DIR": str(numba_dir)}
    out = tmp / "out.mp4"
    for i, caches in enumerate(["first: a new portrait (MediaPipe analysis); kernels compiled at install",
                                "warm: the portrait analysed by run 1"]):
        log(f"emote render, run {i + 1} ({caches.split(':')[0]})")
        r = run_cli(portrait, audio, out, env, timeout_s=max(600.0, 30 * duration))
        r["caches"] = caches
        r["rtf"] = r["wall_s"] / duration
        res.e2e.append(r)
    return out


def bench_portrait(name: str, path: Path, audio16k: np.ndarray, tmp: Path, quick: bool) -> dict:
    """All per-stage timings for one portrait."""
    from emote.model.render.registry import make_renderer, prepare_portrait

    slug = re.sub(r"\W+", "-", name).strip("-")
    r: dict = {}
    log(f"{name}: portrait analysis")
    r["load"] = os.getloadavg()[0]
    r["analysis"] = time_analysis(path, tmp / "analysis-cache", cold_reps=1 if quick else 3,
                                  warm_reps=5 if quick else 20)
    r["prepare"] = time_prepare(path, reps=2 if quick else 5)
    kind = make_renderer()
    prepared = prepare_portrait(path, renderer=kind)
    framed, renderer = prepared.framed, kind.session(prepared)
    r["size"] = framed.size
    log(f"{name}: motion generation")
    r["motion"], pose, coeffs = time_motion(audio16k, framed.rest, reps=1 if quick else 3)
    log(f"{name}: rendering {len(pose)} frames")
    times, frames = render_frames(renderer, pose, coeffs, keep=True)
    r["render"] = Timing.of(times)
    motion_file = tmp / f"motion-{slug}.npz"
    np.savez(motion_file, pose=pose, coeffs=coeffs)
    log(f"{name}: rendering {len(pose)} frames on one core (taskset -c 0, one thread)")
    pinned = pinned_render(path, motion_file)
    r["render_1core"] = Timing.of(pinned["ms"])
    r["pinned_info"] = {"affinity": pinned["affinity"], "threads": pinned["threads"]}
    log(f"{name}: encoding {len(frames)} frames")
    r["encode"] = time_encode(frames, tmp / f"encode-{slug}.mp4")
    del frames
    return r


def run(quick: bool) -> Results:
    """Measure everything (see the module docstring)."""
    from bench.speech import write_speech
    from emote.model.errors import DependencyError
    from emote.model.media.audio_io import load_audio_16k
    from emote.model.motion.registry import generator_names, make_generator

    res = Results(quick=quick)
    t_run = time.perf_counter()
    cpu = CpuAccount()
    res.load_start = os.getloadavg()
    res.machine = machine_lines()
    with tempfile.TemporaryDirectory(prefix="emote-bench-") as tmp_name:
        tmp = Path(tmp_name)
        # Keep the user's portrait cache out of it: this run fills a cache of its own.
        os.environ["EMOTE_CACHE_DIR"] = str(tmp / "portrait-cache")
        seconds = 10.0 if quick else 60.0
        wav = tmp / f"speech{int(seconds)}.wav"
        log(f"synthesising {seconds:.0f} s of speech")
        t = time.perf_counter()
        res.speech_s = write_speech(wav, seconds)
        res.tts_s = time.perf_counter() - t
        portraits = make_portraits(tmp)
        default = next(iter(portraits.values()))
        out_mp4 = bench_e2e(default, wav, tmp, res.speech_s, res)
        audio16k = load_audio_16k(wav)
        for name, path in portraits.items():
            res.portraits[name] = bench_portrait(name, path, audio16k, tmp, quick)
        for motion in generator_names():
            try:
                make_generator(motion)
            except DependencyError as exc:  # a learned model whose weights are not installed
                log(f"motion {motion}: skipped ({exc})")
                continue
            log(f"motion {motion} on one core (taskset -c 0, one thread)")
            res.generators[motion] = pinned_motion(motion, wav)
        log("render_file in-process (warm)")
        from emote.streaming.offline import render_file

        res.pipeline = render_file(default, wav, tmp / "inprocess.mp4")
        log("audio decoding")
        reps = 3 if quick else 10
        res.decode["WAV, 44.1 kHz 16-bit mono"] = time_decode(wav, reps)
        res.decode["AAC in MP4 (the emote render output)"] = time_decode(out_mp4, reps)
    res.load_end = os.getloadavg()
    res.others_cores = cpu.others_cores()
    res.wall_s = time.perf_counter() - t_run
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", metavar="FILE", help="replace the generated section of this markdown file")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 s of speech, fewer repetitions")
    parser.add_argument("--only", choices=("offline", "live"), help="run one part; --write replaces only its section")
    parser.add_argument("--motion", default=DEFAULT_GENERATOR,
                        help="the live server's motion generator (serve --motion)")
    args = parser.parse_args(argv)
    # -- the live part (bench.live) -------------------------------------------------------------
    from bench.live import run_live
    from bench.live_report import keep_live, live_section, replace_live

    if args.only == "live":
        section, update = live_section(run_live(args.quick, args.motion)), replace_live
    else:
        res = run(args.quick)
        if args.only is None:
            res.live = run_live(args.quick, args.motion)
        section = render_report(res)

        def update(old: str, new: str) -> str:
            return keep_live(old, replace_section(old, new)) if args.only == "offline" else replace_section(old, new)
    # -------------------------------------------------------------------------------------------
    if args.write:
        path = Path(args.write)
        old = path.read_text() if path.exists() else ""
        path.write_text(update(old, section))
        log(f"wrote {path}")
    else:
        print(section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
