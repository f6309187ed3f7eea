"""The benchmark report: the machine, the targets, and every timing as markdown.

:func:`render_report` turns the :class:`bench.run.Results` of one run into
the generated section of ``BENCHMARKS.md``: a machine description (CPU,
cores, memory, library versions, date, commit), the project's performance
targets with PASS or FAIL next to the measured numbers, the end-to-end
``emote render`` runs, a table of per-stage timings per portrait (median,
95th percentile and mean, never best-of), audio decoding, how busy the
machine was, and a short account of the method. :func:`replace_section`
puts that section between the ``<!-- bench:start -->`` and
``<!-- bench:end -->`` markers of an existing file and keeps whatever was
written by hand around them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.machine import END, START
from bench.stages import WARMUP_FRAMES, Timing

#: Render target: milliseconds per 512x512 frame on one core.
TARGET_RENDER_MS = 5.0
#: End-to-end target: 60 s of audio in at most 12 s of wall time (5x real time).
TARGET_RTF = 12.0 / 60.0
REPO = Path(__file__).resolve().parent.parent
_HEADER = """# Benchmarks

Measured with `make bench` (`python -m bench.run --write BENCHMARKS.md`). Everything between the
`bench:start` and `bench:end` markers is regenerated on every run; notes outside them are kept.

"""


def _f(ms: float) -> str:
    return f"{ms:.2f}" if abs(ms) < 10 else f"{ms:.1f}"


def _row(label: str, unit: str, t: Any) -> str:
    return f"| {label} | {unit} | {_f(t.median)} | {_f(t.p95)} | {_f(t.mean)} | {t.n} |"


def _verdict(ok: bool) -> str:
    return "**PASS**" if ok else "**FAIL**"


def _targets(res: Any) -> list[str]:
    lines = ["### Targets", "", "| Target | Measured | Verdict |", "|---|---|---|"]
    for name, r in res.portraits.items():
        t = r["render_1core"]
        lines.append(f"| Render ≤ {TARGET_RENDER_MS:g} ms per {r['size'][0]}x{r['size'][1]} frame on one core "
                     f"(mean over every frame), {name} | {_f(t.mean)} ms (median {_f(t.median)}, "
                     f"p95 {_f(t.p95)}) | {_verdict(t.mean <= TARGET_RENDER_MS)} |")
    limit = TARGET_RTF * res.speech_s
    for i, r in enumerate(res.e2e):
        lines.append(f"| `emote render` of {res.speech_s:.0f} s of audio ≤ {limit:.1f} s wall "
                     f"({1 / TARGET_RTF:g}x real time), run {i + 1} ({r['caches'].split(':')[0]} caches) "
                     f"| {r['wall_s']:.1f} s | {_verdict(r['wall_s'] <= limit)} |")
    return lines


def _e2e(res: Any) -> list[str]:
    lines = ["### End to end: `emote render`", "",
             f"`python -m emote.server.cli render <default portrait> speech.wav -o out.mp4` as a subprocess, "
             f"{res.speech_s:.1f} s of speech; wall time measured from outside (interpreter start and "
             "imports included).", "",
             "| Run | Caches | Wall (s) | emote's own timer (s) | Frames | RTF (wall / audio) | x real time "
             "| Load (1 min) before |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(res.e2e):
        inner = f"{r['inner_s']:.1f}" if r["inner_s"] is not None else "?"
        lines.append(f"| {i + 1} | {r['caches']} | {r['wall_s']:.1f} | {inner} | {r['frames']} | {r['rtf']:.3f} "
                     f"| {1 / r['rtf']:.1f} | {r['load']:.2f} |")
    if getattr(res, "compile_s", None) is not None:
        lines += ["", f"Before run 1, the install step's `streaming.offline.warm_kernels` took {res.compile_s:.1f} s "
                  "in a fresh interpreter with an empty numba cache (imports, analysing the default portrait, and "
                  "numba compiling the render kernels; done once at install)."]
    p = res.pipeline
    if p is not None:
        other = p.wall_s - p.analysis_s - p.motion_s - p.render_s - p.encode_wait_s
        lines += ["", f"In-process `streaming.offline.render_file` on the same speech and portrait, warm caches "
                  f"(its `RenderStats`): wall {p.wall_s:.2f} s = portrait preparation {p.analysis_s:.2f} s + motion "
                  f"{p.motion_s:.2f} s + render {p.render_s:.2f} s ({1000 * p.render_s / max(p.frames, 1):.2f} "
                  f"ms/frame while the encoder thread runs) + waiting for the encoder queue {p.encode_wait_s:.2f} s "
                  f"+ decoding, windowing and the rest {other:.2f} s; RTF {p.wall_s / p.duration_s:.3f}."]
    return lines


def _stages(res: Any) -> list[str]:
    lines = ["### Stages", "", "In-process timings (`time.perf_counter` around each call). Mean = total time / units "
             "(throughput); for encoding it includes the final flush.", ""]
    for name, r in res.portraits.items():
        a, enc = r["analysis"], r["encode"]
        w, h = r["size"]
        n = r["render"].n
        lines += [f"#### {name}: {w}x{h} output, {n} frames; load (1 min) {r['load']:.2f} at start", "",
                  "| Stage | Unit | Median | p95 | Mean | n |", "|---|---|---|---|---|---|",
                  f"| Portrait analysis, first call in the process (MediaPipe import) | ms | {_f(a['first_ms'])} "
                  "| | | 1 |",
                  _row("Portrait analysis, cold (`use_cache=False`)", "ms/call", a["cold"]),
                  _row("Portrait analysis, warm (cached)", "ms/call", a["warm"]),
                  _row("Portrait preparation (`prepare_portrait`, warm cache)", "ms/call", r["prepare"]),
                  _row("Motion generation (baseline, 25-frame windows)", "ms/frame", r["motion"]),
                  _row("Render, all cores", "ms/frame", r["render"]),
                  _row("Render, one core (`taskset -c 0`, 1 thread)", "ms/frame", r["render_1core"]),
                  _row("Encode H.264 (`Mp4Writer` defaults: veryfast, crf 20)", "ms/frame", enc["per_frame"]),
                  "", f"Encoder flush and close: {enc['flush_ms']:.0f} ms; file {enc['mbytes']:.1f} MB. "
                  f"One-core child: cores {r['pinned_info']['affinity']}, threads {r['pinned_info']['threads']}.",
                  ""]
    if getattr(res, "generators", None):
        lines += ["#### Motion generators on one core (`taskset -c 0`, one thread, torch included)", "",
                  "Each generator as `emote render` runs it, on the minute of speech pushed in 1 s pieces: ms per "
                  "frame of each push (audio features, windows and the model included); Mean is the whole pass.", "",
                  "| Generator | Unit | Median | p95 | Mean | n |", "|---|---|---|---|---|---|"]
        for name, g in res.generators.items():
            t = Timing.of(g["ms"], mean=g["mean_ms"])
            lines.append(_row(f"{name} ({g['frames']} frames)", "ms/frame", t))
        lines.append("")
    lines += ["#### Audio decoding (`open_audio(...).chunks()`: 16 kHz mono + AAC-ready frames)", "",
              "| Input | Unit | Median | p95 | Mean | n |", "|---|---|---|---|---|---|"]
    lines += [_row(name, "ms per s of audio", t) for name, t in res.decode.items()]
    return lines


def _load(res: Any) -> list[str]:
    s, e = res.load_start, res.load_end
    lines = ["### Machine load", "",
             f"- Load average (1/5/15 min): {s[0]:.2f}/{s[1]:.2f}/{s[2]:.2f} at the start, "
             f"{e[0]:.2f}/{e[1]:.2f}/{e[2]:.2f} at the end ({os.cpu_count()} cores)."]
    if res.others_cores is not None:
        lines.append(f"- Other processes kept {res.others_cores:.2f} cores busy on average during the run "
                     "(machine busy time from /proc/stat minus this run's own CPU time).")
        if res.others_cores > 0.25:
            lines.append("- The machine was shared with other work while measuring: every number above is "
                         "slower than on an idle machine of the same kind.")
    return lines


def _method(res: Any) -> list[str]:
    return [
        "### Method", "",
        f"- Speech: {res.speech_s:.1f} s of English (a short story, five paragraphs at 150-175 words per minute "
        "with 0.6-1.4 s pauses) spoken by espeak-ng via `server.tts.synthesize`, resampled to 44.1 kHz and "
        f"written with `model.media.audio_io.write_wav` into a temporary folder (synthesis took {res.tts_s:.2f} s).",
        "- Portraits: the bundled default (`model.assets.default_portrait_path()`) and scikit-image's "
        "astronaut, written to a temporary PNG. The bench uses its own temporary portrait cache.",
        "- Motion: the baseline through `MotionStream` in 1 s pieces, 25-frame windows (as `render_file` does); "
        "render and encode use that motion, every frame in order.",
        f"- Render: {WARMUP_FRAMES} untimed warm-up frames first (numba compiles or loads its cache there). "
        "The one-core figure comes from a child process under `taskset -c 0` with OMP/NUMBA/OPENBLAS/MKL "
        "threads = 1 and `cv2.setNumThreads(1)`.",
        "- End to end: first the install step's `warm_kernels()` compiles the numba kernels into an empty "
        "`NUMBA_CACHE_DIR` (as `make` does once); run 1 then gets an empty `EMOTE_CACHE_DIR`, so it includes "
        "the MediaPipe analysis a new portrait costs; run 2 reuses that analysis.",
        "- Statistics: median, 95th percentile and mean of all measurements; no best-of.",
        f"- Mode: {'quick (smoke run, fewer repetitions)' if res.quick else 'full'}; the whole bench took "
        f"{res.wall_s:.0f} s.",
    ]


def render_report(res: Any) -> str:
    """The generated section, markers included."""
    lines = [START, "", "## Results (generated by `python -m bench.run`)", "", "### Machine", ""]
    lines += [f"- {m}" for m in res.machine]
    lines += [""] + _targets(res) + [""] + _e2e(res) + [""] + _stages(res) + [""] + _load(res)
    lines += [""] + _method(res) + [""]
    if getattr(res, "live", None) is not None:  # the live-streaming part (bench.live_report)
        from bench.live_report import live_section

        lines += live_section(res.live).splitlines() + [""]
    lines += [END]
    return "\n".join(lines) + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with its marked section replaced by ``section`` (appended when it has none)."""
    start, end = text.find(START), text.find(END)
    if start >= 0 and end > start:
        return text[:start] + section.rstrip("\n") + text[end + len(END):]
    if not text.strip():
        return _HEADER + section
    return text.rstrip("\n") + "\n\n" + section
