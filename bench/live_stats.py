"""The arithmetic of the live benchmark: per-call summaries, VP8 timings, CPU shares, the A/V offset.

Pure functions over what :mod:`bench.live_client` recorded and :mod:`bench.live_server` timed, kept apart
from the orchestration in :mod:`bench.live` so that the tests can check them on synthetic data.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Landmarks of the mouth in MediaPipe's face mesh: corners, outer top and bottom lip.
MOUTH_CORNERS, LIP_TOP, LIP_BOTTOM = (61, 291), 0, 17


def mouth_box(landmarks: np.ndarray, size: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in video pixels around the lips and the jaw's opening, from the framed landmarks."""
    xs = landmarks[list(MOUTH_CORNERS), 0]
    width = float(xs.max() - xs.min())
    x0, x1 = xs.min() - 0.1 * width, xs.max() + 0.1 * width
    y0, y1 = landmarks[LIP_TOP, 1], landmarks[LIP_BOTTOM, 1] + 0.4 * width  # the jaw drops as it opens
    return tuple(int(np.clip(round(float(v)), 0, size)) for v in (x0, y0, x1, y1))  # type: ignore[return-value]


def av_offset(video_t: np.ndarray, mouth: np.ndarray, audio_t: np.ndarray, level: np.ndarray,
              max_lag_s: float = 0.3, step_s: float = 0.005) -> tuple[float, float]:
    """The lag (ms) at which the audio level best follows the mouth's opening, and that correlation.

    Both series are interpolated onto one ``step_s`` grid over the times they share; the lag ``d`` with
    the highest Pearson correlation of ``mouth(t)`` with ``level(t + d)`` (refined between grid steps by
    a parabola) is returned. Positive: the sound comes after the mouth movement that goes with it (audio
    late). ``(nan, nan)`` when the series overlap for less than a second.
    """
    t0 = max(video_t[0], audio_t[0]) + max_lag_s
    t1 = min(video_t[-1], audio_t[-1]) - max_lag_s
    if t1 - t0 < 1.0:
        return float("nan"), float("nan")
    grid = np.arange(t0, t1, step_s)
    m = np.interp(grid, video_t, mouth)
    lags = np.arange(-round(max_lag_s / step_s), round(max_lag_s / step_s) + 1) * step_s
    r = np.array([_pearson(m, np.interp(grid + lag, audio_t, level)) for lag in lags])
    if not np.isfinite(r).any():
        return float("nan"), float("nan")
    k = int(np.nanargmax(r))
    shift = 0.0
    if 0 < k < len(r) - 1 and np.isfinite(r[k - 1 : k + 2]).all():
        curvature = r[k - 1] - 2 * r[k] + r[k + 1]
        if curvature < 0:
            shift = 0.5 * (r[k - 1] - r[k + 1]) / curvature
    return 1000.0 * float(lags[k] + shift * step_s), float(r[k])


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / norm) if norm > 0 else float("nan")


def _pct(values: Any, q: float) -> float | None:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(np.percentile(v, q)) if len(v) else None


def summarize_call(raw: dict[str, Any], fps: float) -> dict[str, Any]:
    """One call over its measured window: the session's counters and latency, and what the caller received."""
    a, b = raw["window"]
    seconds = b - a
    s0, s1 = raw["stats_from"], raw["stats_to"]
    frames = s1["frames"] - s0["frames"]
    arrivals = np.array([v[0] for v in raw["video"]])
    gaps = np.diff(arrivals) * 1000 if len(arrivals) > 1 else np.zeros(0)
    return {
        "frames": frames,
        "late": s1["late_frames"] - s0["late_frames"],
        "late_share": (s1["late_frames"] - s0["late_frames"]) / max(frames, 1),
        "dropped": s1["dropped_frames"] - s0["dropped_frames"],
        "skipped": s1["skipped_periods"] - s0["skipped_periods"],
        "periods_per_s": frames / seconds,
        "received_fps": len(arrivals) / seconds,
        "gap_p95_ms": _pct(gaps, 95),
        "gap_max_ms": float(gaps.max()) if len(gaps) else None,
        "latency_p50_ms": s1["latency_ms_p50"],
        "latency_p95_ms": s1["latency_ms_p95"],
        "latency_samples": s1["latency_samples"],
        "step_ms_mean": s1["step_ms_mean"],
        "connect_s": raw.get("connect_s"),
        "first_video_s": raw.get("first_video_s"),
        "fps_target": fps,
    }


def encode_summary(records: list[list[float]], start: float, end: float) -> dict[str, Any]:
    """VP8 timings of the frames encoded between ``start`` and ``end`` (see :mod:`bench.live_server`)."""
    rows = np.array([r for r in records if start <= r[0] < end], np.float64).reshape(-1, 6)
    if not len(rows):
        return {"frames": 0}
    wait, encode, cpu, size = rows[:, 2], rows[:, 3], rows[:, 4], rows[:, 5]
    encoders = len(set(rows[:, 1].tolist()))
    seconds = end - start
    return {
        "frames": len(rows), "encoders": encoders, "fps_per_encoder": len(rows) / encoders / seconds,
        "wait_p50_ms": _pct(wait, 50), "wait_p95_ms": _pct(wait, 95),
        "encode_p50_ms": _pct(encode, 50), "encode_p95_ms": _pct(encode, 95),
        "total_p50_ms": _pct(wait + encode, 50), "total_p95_ms": _pct(wait + encode, 95),
        "cpu_mean_ms": float(cpu.mean()), "kbit_s_per_encoder": float(size.sum()) * 8 / 1000 / seconds / encoders,
    }


def _proc_cpu_s(pid: int | str) -> float:
    """User + system CPU seconds of a process or ``pid/task/tid`` thread (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _machine_busy_s() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, by kernel thread id (as a string: it goes through JSON)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    return {tid: _proc_cpu_s(f"{pid}/task/{tid}") for tid in tids}  # type: ignore[arg-type]


def cpu_sample(pids: dict[str, list[int]], threads_of: int | None = None) -> dict[str, Any]:
    """CPU seconds so far of each named group of processes and of the whole machine, with the time;
    with ``threads_of``, also of each thread of that process (under ``"threads"``)."""
    sample: dict[str, Any] = {name: sum(_proc_cpu_s(p) for p in group) for name, group in pids.items()}
    sample["busy"] = _machine_busy_s()
    sample["t"] = time.monotonic()
    if threads_of is not None:
        sample["threads"] = _thread_cpu_s(threads_of)
    return sample


#: Thread name prefixes of the server -> what runs there.
THREAD_GROUPS = (
    ("emote-render", "render pool: motion model, renderer, speech gate"),
    ("MainThread", "event loop: aiortc RTP/RTCP/SRTP, ICE, session, HTTP"),
    ("uvloop", "default executor: VP8 and Opus encoding"),
    ("asyncio", "default executor: VP8 and Opus encoding"),
    ("audio-decoder", "aiortc decoder threads: the caller's Opus"),
    ("emote-prepare", "session preparation"),
)


def thread_cores(before: dict[str, float], after: dict[str, float], names: dict[str, str],
                 seconds: float) -> dict[str, float]:
    """Cores each group of the server's threads kept busy between two samples (see :data:`THREAD_GROUPS`)."""
    cores: dict[str, float] = {}
    for tid, cpu in after.items():
        name = names.get(tid, "")
        group = next((g for prefix, g in THREAD_GROUPS if name.startswith(prefix)),
                     "other Python threads" if name else "threads outside Python (torch, libvpx)")
        cores[group] = cores.get(group, 0.0) + (cpu - before.get(tid, 0.0)) / seconds
    return cores


def segment_latency(events: list[list[Any]]) -> dict[str, Any]:
    """Agent speech, segment by segment: first 20 ms sent → ``playback_started``, last sent → ``playback_finished``.

    Both events fire as the segment's first or last frame leaves the session, so these are the latencies of
    a segment's first and last audio (the WebSocket's own delay, well under a millisecond here, included).
    """
    sent: dict[tuple[str, int], float] = {}
    played: dict[tuple[str, int], float] = {}
    for t, message in events:
        kind = message.get("type")
        if kind in ("sent_first", "sent_last"):
            sent[(kind, message["utterance"] + 1)] = t
        elif kind == "playback_started":
            played[("sent_first", message["segment_id"])] = t
        elif kind == "playback_finished" and not message.get("interrupted"):
            played[("sent_last", message["segment_id"])] = t
    onset = [1000 * (played[k] - sent[k]) for k in sent if k in played and k[0] == "sent_first"]
    end = [1000 * (played[k] - sent[k]) for k in sent if k in played and k[0] == "sent_last"]
    return {"segments": len(onset), "onset_p50_ms": _pct(onset, 50), "onset_max_ms": max(onset, default=None),
            "end_p50_ms": _pct(end, 50), "end_max_ms": max(end, default=None), "onset_ms": onset, "end_ms": end}
