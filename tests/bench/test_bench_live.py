"""The live-streaming benchmark: its arithmetic on synthetic data, and a quick real run (slow).

The quick run starts ``emote serve`` and real aiortc callers over loopback (run it inside the loopback
namespace, as ``make test`` does); it checks that the live part of BENCHMARKS.md is complete and that
``--only live`` leaves everything else in the file alone, not the numbers, which depend on the machine.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.live import gc_summary
from bench.live_report import LIVE_END, LIVE_START, keep_live, max_sessions, replace_live
from bench.live_stats import av_offset, encode_summary, mouth_box, summarize_call
from bench.machine import END, START

REPO = Path(__file__).resolve().parents[2]


def syllables(t: np.ndarray) -> np.ndarray:
    """A loudness-like curve: irregular bursts (no period, so only one lag fits)."""
    rng = np.random.default_rng(3)
    centres = np.cumsum(rng.uniform(0.12, 0.45, 200))
    return sum(np.exp(-0.5 * ((t - c) / 0.04) ** 2) for c in centres)  # type: ignore[return-value]


@pytest.mark.parametrize("lag_ms", [-80.0, 0.0, 37.0, 120.0])
def test_av_offset_finds_how_late_the_audio_is(lag_ms: float) -> None:
    video_t = np.arange(0.0, 12.0, 0.04) + 0.013
    audio_t = np.arange(0.0, 12.0, 0.02) + 0.005
    mouth = syllables(video_t)
    level = syllables(audio_t - lag_ms / 1000)  # the sound comes lag_ms after the mouth
    offset_ms, r = av_offset(video_t, mouth, audio_t, level)
    assert offset_ms == pytest.approx(lag_ms, abs=4.0)
    assert r > 0.95


def test_av_offset_needs_a_second_in_common() -> None:
    t = np.arange(0.0, 1.2, 0.04)
    assert np.isnan(av_offset(t, np.sin(t), t, np.sin(t))[0])


def test_call_summary_counts_the_window_only() -> None:
    stats = {"frames": 100, "late_frames": 3, "dropped_frames": 1, "skipped_periods": 0, "latency_ms_p50": 150.0,
             "latency_ms_p95": 190.0, "latency_samples": 80, "step_ms_mean": 6.0}
    later = {**stats, "frames": 600, "late_frames": 8, "skipped_periods": 2}
    video = [[10.0 + i * 0.04, i * 3600, 90.0] for i in range(498)]
    c = summarize_call({"window": [10.0, 30.0], "stats_from": stats, "stats_to": later, "video": video}, 25.0)
    assert (c["frames"], c["late"], c["dropped"], c["skipped"]) == (500, 5, 0, 2)
    assert c["late_share"] == pytest.approx(0.01) and c["received_fps"] == pytest.approx(24.9)
    assert c["gap_p95_ms"] == pytest.approx(40.0) and c["latency_p95_ms"] == 190.0


def test_encode_summary_keeps_the_window_and_splits_per_call() -> None:
    rows = [[5.0 + i * 0.02, i % 2, 1.0, 6.0 + (i % 5), 5.0, 2500] for i in range(1000)]
    e = encode_summary(rows, 6.0, 16.0)
    assert e["frames"] == 500 and e["encoders"] == 2 and e["fps_per_encoder"] == pytest.approx(25.0)
    assert e["total_p50_ms"] == pytest.approx(9.0) and e["kbit_s_per_encoder"] == pytest.approx(500.0)
    assert encode_summary(rows, 100.0, 110.0) == {"frames": 0}


def test_gc_summary_counts_the_window_only() -> None:
    pauses = [[9.0, 2, 120.0], [10.5, 0, 1.5], [11.0, 2, 95.0], [12.0, 1, 4.0], [20.5, 2, 300.0]]
    g = gc_summary(pauses, 10.0, 20.0)
    assert g["count"] == [1, 1, 1] and g["max_ms"] == 95.0 and g["total_ms"] == 100.5
    assert gc_summary([], 0.0, 1.0) == {"count": [0, 0, 0], "max_ms": 0.0, "total_ms": 0.0}


def test_mouth_box_surrounds_the_lips_inside_the_picture() -> None:
    landmarks = np.zeros((478, 3), np.float32)
    for index, point in {61: (224, 276), 291: (300, 273), 0: (260, 269), 17: (261, 288)}.items():
        landmarks[index, :2] = point
    x0, y0, x1, y1 = mouth_box(landmarks, 512)
    assert x0 < 224 and x1 > 300 and y0 <= 269 and y1 > 288 and 0 <= x0 < x1 <= 512 and 0 <= y0 < y1 <= 512


def test_only_the_live_part_is_replaced_and_carried_over() -> None:
    live_a = f"{LIVE_START}\nlive A\n{LIVE_END}\n"
    live_b = f"{LIVE_START}\nlive B\n{LIVE_END}\n"
    doc = f"# Notes\n\n{START}\noffline 1\n{END}\n\nkept\n"
    with_a = replace_live(doc, live_a)
    assert f"offline 1\n{LIVE_START}\nlive A\n" in with_a and with_a.endswith(f"{END}\n\nkept\n")
    with_b = replace_live(with_a, live_b)
    assert "live A" not in with_b and with_b.count(LIVE_START) == 1 and "offline 1" in with_b
    regenerated = f"# Notes\n\n{START}\noffline 2\n{END}\n\nkept\n"  # an offline-only run dropped the live part
    carried = keep_live(with_b, regenerated)
    assert "offline 2" in carried and "live B" in carried and carried.index("live B") < carried.index(END)
    fresh = replace_live("", live_a)
    assert fresh.startswith(START) and "live A" in fresh and fresh.rstrip().endswith(END)


def test_max_sessions_is_the_largest_count_that_held_25_fps() -> None:
    ok = {"late_share": 0.002, "received_fps": 25.0}
    late = {"late_share": 0.03, "received_fps": 24.9}

    class Res:
        phases = [{"mode": "mic", "sessions": 1, "calls": [ok]}, {"mode": "agent", "sessions": 1, "calls": [late]},
                  {"mode": "mic", "sessions": 2, "calls": [ok, ok]}, {"mode": "mic", "sessions": 3,
                                                                      "calls": [ok, late, ok]}]

    assert max_sessions(Res()) == 2


@pytest.mark.slow
def test_quick_live_bench_writes_its_section(tmp_path: Path) -> None:
    from emote.server import tts

    if not tts.espeak_available():
        pytest.skip("espeak-ng (the tts extra) speaks the benchmark's speech")
    report = tmp_path / "BENCHMARKS.md"
    report.write_text(f"# Notes\n\nkept before\n\n{START}\noffline numbers\n{END}\n\nkept after\n")
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--only", "live", "--quick", "--write", str(report)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("# Notes\n\nkept before\n") and text.rstrip().endswith("kept after")
    assert "offline numbers" in text and text.count(LIVE_START) == 1 and text.index(LIVE_END) < text.index(END)
    for heading in ("#### Targets", "#### Latency", "#### Calls", "#### A/V offset", "#### Method"):
        assert heading in text, heading
    for row in ("mic x1", "agent x1", "mic x2", "Latency p95 ≤ 250 ms", "concurrent calls", "Load average",
                "Garbage collections in the server"):
        assert row in text, row
    assert text.count("| **met** |") + text.count("| **missed** |") == 4
    assert "| **PASS** |" not in text  # the offline targets' verdicts stay the offline part's own
