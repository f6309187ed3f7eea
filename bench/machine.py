"""What every part of BENCHMARKS.md shares: its generated-section markers and the machine it ran on.

The offline report (:mod:`bench.report`), the live report (:mod:`bench.live_report`) and the live
benchmark itself (:mod:`bench.live`) all depend on this module and on nothing of each other's, so
the report modules import one way. :func:`machine_lines` describes the machine (CPU, cores, memory,
library versions, date, commit, and a host-speed yardstick, because this VM's speed drifts).
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"
REPO = Path(__file__).resolve().parent.parent


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except (OSError, ValueError):
        pass
    return None


def _version(dist: str, module: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        try:
            return str(__import__(module).__version__)
        except Exception:
            return "missing"


def git_commit(ignore: tuple[str, ...] = ("BENCHMARKS.md",)) -> str:
    """Short hash of HEAD, ``+dirty (N paths)`` when the tree (untracked files too) differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain").splitlines() if line[3:] not in ignore]
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"{head}+dirty ({len(changed)} paths differ from HEAD)" if changed else head


def machine_lines() -> list[str]:
    """Markdown bullet lines describing this machine and software."""
    import cv2

    ram = _ram_gib()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{name} {_version(dist, mod)}" for name, dist, mod in (
        ("numpy", "numpy", "numpy"), ("numba", "numba", "numba"), ("av", "av", "av"),
        ("mediapipe", "mediapipe", "mediapipe"),
    ))
    now = datetime.datetime.now().astimezone()
    return [
        f"CPU: {_cpu_model()}, {os.cpu_count()} logical cores ({usable} usable by this process)",
        f"RAM: {ram:.1f} GiB" if ram else "RAM: unknown",
        f"OS: {platform.system()} {platform.release()}; Python {platform.python_version()}",
        f"Libraries: {versions}, opencv {cv2.__version__}",
        f"Date: {now:%Y-%m-%d %H:%M %Z}; commit {git_commit()}",
        f"Host speed: {host_speed_ms():.0f} ms for a fixed one-thread reference workload (median of 5; lower is "
        "faster). This VM's speed drifts: the same code rendered at 4.4 ms/frame at one hour and 2.9 at another "
        "on 2026-11-25, so compare runs by this figure too",
    ]


def host_speed_ms(reps: int = 5) -> float:
    """Milliseconds for a fixed single-threaded workload (numpy sorting and arithmetic plus a Python
    loop, about what a frame of the pipeline mixes); a yardstick for comparing runs on a shared VM."""
    import time

    import numpy as np

    rng = np.random.default_rng(0)
    data = rng.standard_normal(1 << 20).astype(np.float32)
    times = []
    for _ in range(reps + 1):  # the first is a warm-up
        t = time.perf_counter()
        np.sort(data)
        np.exp(data).sum()
        total = 0
        for i in range(300_000):
            total += i * i % 7
        times.append(1000.0 * (time.perf_counter() - t))
    return float(np.median(times[1:]))
