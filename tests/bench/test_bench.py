"""Smoke test of the benchmark harness: ``python -m bench.run --quick`` writes a complete report.

The harness runs the real pipeline (speech synthesis, ``emote render`` twice,
every stage on two portraits, the one-core child), so this test is slow and
needs the ``tts`` and ``dev`` extras and ``taskset``. It checks the report's
structure and that hand-written notes outside the markers survive a rewrite,
not the numbers, which depend on the machine.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTIONS = ("### Machine", "### Targets", "### End to end", "### Stages", "### Machine load", "### Method")


@pytest.mark.slow
def test_quick_bench_writes_report(tmp_path: Path) -> None:
    pytest.importorskip("emote.server.tts")
    pytest.importorskip("skimage")
    if shutil.which("taskset") is None:
        pytest.skip("taskset (util-linux) is needed for the one-core timing")
    report = tmp_path / "BENCHMARKS.md"
    report.write_text("# Notes\n\nkept before\n\n<!-- bench:start -->\nold\n<!-- bench:end -->\n\nkept after\n")
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--write", str(report)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = report.read_text()
    assert text.startswith("# Notes\n\nkept before\n") and text.rstrip().endswith("kept after")
    assert "\nold\n" not in text and text.count("<!-- bench:start -->") == 1
    for heading in SECTIONS:
        assert heading in text, heading
    for row in ("Portrait analysis, cold", "Portrait analysis, warm", "Motion generation", "Render, all cores",
                "Render, one core", "Encode H.264", "ms per s of audio", "default (Grace Hopper)", "astronaut"):
        assert row in text, row
    assert text.count("| **PASS** |") + text.count("| **FAIL** |") == 4  # 2 portraits + 2 end-to-end runs
    assert "CPU: " in text and "commit " in text and "Load average" in text and "Host speed: " in text
    assert "`streaming.offline.warm_kernels` took" in text
