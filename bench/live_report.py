"""The live benchmark's part of BENCHMARKS.md: targets, latency, calls per phase, VP8, A/V offset.

:func:`live_section` turns :class:`bench.live.LiveResults` into markdown between its own markers
(``<!-- bench:live:start -->`` / ``<!-- bench:live:end -->``), which sit inside the generated block of
:mod:`bench.report`; :func:`replace_live` swaps only that part of a file (``python -m bench.run --only
live``), and :func:`keep_live` carries it over when only the offline part is regenerated.
"""

from __future__ import annotations

import math
from typing import Any

from bench.live import QUIET_CORES, QUIET_WAIT_S
from bench.machine import END, START

LIVE_START = "<!-- bench:live:start -->"
LIVE_END = "<!-- bench:live:end -->"
TARGET_LATENCY_MS = 250.0
TARGET_LATE_SHARE = 0.01
TARGET_FPS = 24.5
TARGET_SESSIONS = 2


def _n(v: float | None, digits: int = 0) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _phase(res: Any, mode: str, sessions: int) -> dict | None:
    return next((p for p in res.phases if p["mode"] == mode and p["sessions"] == sessions and not p.get("nice")),
                None)


def _sum(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a + b


def leaving(phase: dict) -> tuple[float | None, float | None]:
    """Audio arrival → frame encoded, p50 and p95: the session's latency plus the encoder's, call by call."""
    calls, enc = phase["calls"], phase["encode"]
    p50 = max((_sum(c["latency_p50_ms"], enc.get("total_p50_ms")) or math.nan for c in calls), default=None)
    p95 = max((_sum(c["latency_p95_ms"], enc.get("total_p95_ms")) or math.nan for c in calls), default=None)
    return p50, p95


def call_ok(call: dict) -> bool:
    return call["late_share"] < TARGET_LATE_SHARE and call["received_fps"] >= TARGET_FPS


def max_sessions(res: Any) -> int:
    """The largest number of simultaneous microphone calls that all kept 25 fps with < 1 % late frames."""
    held = [p["sessions"] for p in res.phases
            if p["mode"] == "mic" and not p.get("nice") and all(call_ok(c) for c in p["calls"])]
    return max(held, default=0)


def _targets(res: Any) -> list[str]:
    lines = ["#### Targets", "", "| Target | Measured | Verdict |", "|---|---|---|"]
    for mode, label in (("mic", "microphone audio from a WebRTC caller"), ("agent", "agent speech pushed at "
                                                                          "real-time pace")):
        phase = _phase(res, mode, 1)
        if phase is None:
            continue
        p50, p95 = leaving(phase)
        c, enc = phase["calls"][0], phase["encode"]
        ok = p95 is not None and p95 <= TARGET_LATENCY_MS
        lines.append(f"| Latency p95 ≤ {TARGET_LATENCY_MS:g} ms from audio arrival to the frame leaving the server "
                     f"(lookahead and VP8 included), {label}, one call | {_n(p95)} ms (session "
                     f"{_n(c['latency_p95_ms'])} + VP8 {_n(enc.get('total_p95_ms'))}); p50 {_n(p50)} ms "
                     f"| {_verdict(ok)} |")
    phase = _phase(res, "mic", 1)
    if phase is not None:
        c = phase["calls"][0]
        lines.append(f"| 25 fps with < 1 % late frames, one call for {phase['seconds']:.0f} s | "
                     f"{c['received_fps']:.2f} fps received, {100 * c['late_share']:.1f} % late "
                     f"| {_verdict(call_ok(c))} |")
    tried = sorted({p["sessions"] for p in res.phases if p["mode"] == "mic" and not p.get("nice")})
    n = max_sessions(res)
    lines.append(f"| ≥ {TARGET_SESSIONS} concurrent calls at 25 fps (≥ {TARGET_FPS} fps received, < 1 % late), "
                 f"512x512, VP8 encoding included | {n} (tried {', '.join(map(str, tried))}) "
                 f"| {_verdict(n >= TARGET_SESSIONS)} |")
    return lines


def _latency(res: Any) -> list[str]:
    lines = ["#### Latency: audio chunk arrival → the first frame showing it leaves the server", "",
             "| Audio | Session p50 (ms) | Session p95 | VP8 `recv()` → encoded p50 | p95 | Leaving the server p50 | "
             "p95 | Frames with live audio |", "|---|---|---|---|---|---|---|---|"]
    for phase in res.phases:
        enc = phase["encode"]
        p50, p95 = leaving(phase)
        for i, c in enumerate(phase["calls"]):
            lines.append(f"| {phase['name']}, call {i + 1} | {_n(c['latency_p50_ms'])} | {_n(c['latency_p95_ms'])} | "
                         f"{_n(enc.get('total_p50_ms'), 1)} | {_n(enc.get('total_p95_ms'), 1)} | "
                         f"{_n(_sum(c['latency_p50_ms'], enc.get('total_p50_ms')))} | "
                         f"{_n(_sum(c['latency_p95_ms'], enc.get('total_p95_ms')))} | {c['latency_samples']} |")
    lines += ["", "Session latency: the session's own percentiles (`GET /sessions/{id}/stats`, the whole call: "
              "arrival of live audio → its frame leaves the session for the encoder; the windower's lookahead, "
              "model, render and playout queue included). VP8: per frame in the server, from the video track's "
              "`recv()` returning to `Vp8Encoder.encode` returning (waiting for an executor thread, any pixel "
              "format conversion, encoding; the RTP packets go out right after). Leaving the server: their sum, "
              "p95 as the sum of the two p95s (an upper estimate)."]
    agent = _phase(res, "agent", 1)
    seg = agent.get("segments") if agent else None
    if seg and seg["segments"]:
        lines += ["", f"Agent speech seen from the agent ({seg['segments']} segments): its first 20 ms sent → "
                  f"`playback_started` p50 {_n(seg['onset_p50_ms'])} ms (max {_n(seg['onset_max_ms'])}); its last "
                  f"20 ms sent → `playback_finished` p50 {_n(seg['end_p50_ms'])} ms (max {_n(seg['end_max_ms'])}). "
                  "Both events fire as that frame leaves the session."]
    return lines


def _calls(res: Any) -> list[str]:
    lines = ["#### Calls: fps, late frames and CPU per phase", "",
             "| Phase | Call | Received fps | Late | Dropped | Skipped periods | Frame gap p95 / max (ms) "
             "| Model + render per 20 ms tick (ms) | Connect (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for phase in res.phases:
        for i, c in enumerate(phase["calls"]):
            lines.append(f"| {phase['name']} | {i + 1} | {c['received_fps']:.2f} | {c['late']}/{c['frames']} "
                         f"({100 * c['late_share']:.1f} %) | {c['dropped']} | {c['skipped']} | "
                         f"{_n(c['gap_p95_ms'])} / {_n(c['gap_max_ms'])} | {_n(c['step_ms_mean'], 1)} | "
                         f"{_n(c['connect_s'], 2)} |")
    lines += ["", "| Phase | Seconds measured | Server process (cores) | Caller processes (cores) | "
              "Everything else (cores) | VP8 frames/s per call | VP8 wait p50/p95 (ms) | VP8 encode p50/p95 (ms) | "
              "VP8 CPU per frame (ms) | kbit/s per call |", "|---|---|---|---|---|---|---|---|---|---|"]
    for phase in res.phases:
        cpu, enc = phase["cpu"], phase["encode"]
        lines.append(f"| {phase['name']} | {phase['seconds']:.0f} | {cpu['server']:.2f} | {cpu['callers']:.2f} | "
                     f"{cpu['others']:.2f} | {_n(enc.get('fps_per_encoder'), 1)} | {_n(enc.get('wait_p50_ms'), 1)} / "
                     f"{_n(enc.get('wait_p95_ms'), 1)} | {_n(enc.get('encode_p50_ms'), 1)} / "
                     f"{_n(enc.get('encode_p95_ms'), 1)} | {_n(enc.get('cpu_mean_ms'), 1)} | "
                     f"{_n(enc.get('kbit_s_per_encoder'))} |")
    groups = list(dict.fromkeys(g for p in res.phases for g in sorted(p.get("server_threads", {}))))
    if groups:
        lines += ["", "Where the server's CPU goes (cores, from `/proc/<pid>/task`, threads told apart by their "
                  "Python names):", "", "| Phase | " + " | ".join(groups) + " |", "|---" * (len(groups) + 1) + "|"]
        for phase in res.phases:
            threads = phase.get("server_threads", {})
            lines.append(f"| {phase['name']} | " + " | ".join(_n(threads.get(g), 2) for g in groups) + " |")
    gc_rows = [(p["name"], p["gc"]) for p in res.phases if p.get("gc") is not None]
    if gc_rows:
        lines += ["", "Garbage collections in the server during each window (each holds the GIL, stalling every "
                  "Python thread):", "", "| Phase | Collections (gen 0/1/2) | Longest (ms) | Total (ms) |",
                  "|---|---|---|---|"]
        for name, g in gc_rows:
            lines.append(f"| {name} | {g['count'][0]}/{g['count'][1]}/{g['count'][2]} | {_n(g['max_ms'], 1)} | "
                         f"{_n(g['total_ms'], 1)} |")
    return lines


def _av(res: Any) -> list[str]:
    phase = _phase(res, "agent", 1)
    if phase is None or "av" not in phase:
        return []
    av, ref = phase["av"], res.reference
    lead = 1000 * res.lead_s
    return ["#### A/V offset at the receiving peer", "",
            "| Measure | Offset (ms, positive = audio late) | Correlation r |", "|---|---|---|",
            f"| At the peer: decoded frames' arrival vs decoded audio's arrival ({av['video_frames']} frames) "
            f"| {_n(av['offset_ms'], 1)} | {_n(av['r'], 2)} |",
            f"| The same speech rendered offline, on its own timeline (what the content holds) | "
            f"{_n(ref.get('offset_ms'), 1)} | {_n(ref.get('r'), 2)} |",
            f"| Added by transport and playout (peer − offline) | "
            f"{_n(av['offset_ms'] - ref.get('offset_ms', math.nan), 1)} | |",
            f"| At the peer without the generator's designed {lead:g} ms lip lead (`LEAD_S` of the baseline) | "
            f"{_n(av['offset_ms'] - lead, 1)} | |", "",
            "Mouth opening: the mean luma of the mouth box (from the portrait's landmarks, "
            f"x0,y0,x1,y1 = {','.join(map(str, res.box))}) negated (an open mouth shows its dark inside); audio: "
            "the square root of each 20 ms frame's RMS. Each frame is placed at the middle of the interval it is "
            "shown or heard from its arrival; the offset is the lag of best Pearson correlation within ±300 ms "
            "(5 ms steps, refined by a parabola). The generator moves the lips 50 ms ahead of their sound, and its "
            "mouth spring lags, so the content itself is only a little ahead of the audio. The receiving peer here "
            "is aiortc, whose jitter buffers hand out an audio frame once 4 later ones have arrived (about 80 ms) "
            "and a video frame once the next one starts (about 40 ms): that difference, less VP8's longer encode "
            "and decode, is what transport adds; a browser's adaptive jitter buffer and A/V sync behave "
            "differently. The same 80 ms audio hold applies to the caller's microphone in the server before "
            "`push_microphone`, outside the session latency above."]


def live_section(res: Any) -> str:
    """The live part of the generated block, its markers included."""
    s, e = res.load_start, res.load_end
    others = [p["cpu"]["others"] for p in res.phases]
    net = ("inside a loopback-only network namespace (`unshare -rn`)" if res.netns else
           "on the host network (the ICE allow-list and the 127.0.0.1 listener keep every packet on loopback)")
    lines = [LIVE_START, "", "### Live streaming: WebRTC calls to `emote serve` over loopback", ""]
    lines += [f"- {m}" for m in res.machine]
    lines += [f"- Network: {net}.",
              f"- Load average (1/5/15 min) {s[0]:.2f}/{s[1]:.2f}/{s[2]:.2f} at the start, {e[0]:.2f}/{e[1]:.2f}/"
              f"{e[2]:.2f} at the end; other processes kept {min(others, default=0):.2f}–{max(others, default=0):.2f}"
              " cores busy during the measured windows (from /proc; the callers and the server are not counted).",
              f"- Mode: {'quick (smoke run)' if res.quick else 'full'}; the live part took {res.wall_s:.0f} s "
              f"(server start {res.server_start_s:.1f} s).", ""]
    lines += _targets(res) + [""] + _latency(res) + [""] + _calls(res) + [""] + _av(res) + [""]
    lines += ["#### Method", "",
              "- Server: `emote serve` in its own process (`python -m bench.live_server`, which adds only timers "
              "around aiortc's video track and VP8 encoder): uvicorn + uvloop, the bundled portrait at 512x512, "
              f"25 fps, the `{getattr(res, 'motion', 'baseline')}` motion generator, the silero-vad speech gate on "
              "microphone audio, 2 render threads, aiortc "
              "VP8 and Opus, ICE limited to 127.0.0.1.",
              "- Callers: one process each (`python -m bench.live_client`), the tests' aiortc peer "
              "(`tests/_rtc_client.py`) calling `POST /offer`: receives video and audio (decoding both), and in the "
              "microphone phases sends speech as its microphone in real-time 20 ms Opus packets. The callers share "
              "the server's 2 cores, as a browser on the same machine would. The last phase runs its callers at "
              "`nice 19`, so that the server gets the cores first (closer to callers on other machines); it is "
              "shown for diagnosis and not counted for the targets.",
              f"- Speech: sentences of the benchmark story (`bench.speech`) spoken by espeak-ng, with 0.4–1.1 s pauses "
              f"between them ({res.speech_s:.0f} s in all, repeated as needed). In the agent phase the caller sends no "
              "microphone; the same sentences go over `WS /sessions/{id}/audio` in 20 ms messages at real-time pace, "
              "each followed by `end_of_speech` and its pause.",
              f"- Before each phase of a full run the bench waits up to {QUIET_WAIT_S:.0f} s for other processes to "
              f"use less than {QUIET_CORES} cores; what they used during each window is in the CPU table.",
              "- Each phase measures one window that opens 1.5 s after all its callers are connected (they start "
              "talking 0.5–1 s before it); counters are differences across the window, latency percentiles cover the "
              "whole call. Late: frame periods with nothing rendered in time (the last image repeats). A call holds "
              f"25 fps when it has < 1 % late frames and receives ≥ {TARGET_FPS} frames per second.", "", LIVE_END]
    return "\n".join(lines) + "\n"


def _find(text: str) -> tuple[int, int]:
    start, end = text.find(LIVE_START), text.find(LIVE_END)
    return (start, end + len(LIVE_END)) if start >= 0 and end > start else (-1, -1)


def replace_live(text: str, section: str) -> str:
    """``text`` with its live part replaced by ``section`` (put before the generated block's end if absent)."""
    start, end = _find(text)
    if start >= 0:
        return text[:start] + section.rstrip("\n") + text[end:]
    block_end = text.find(END)
    if text.find(START) >= 0 and block_end > text.find(START):
        return text[:block_end] + section + "\n" + text[block_end:]
    return text.rstrip("\n") + ("\n\n" if text.strip() else "") + f"{START}\n\n{section}\n{END}\n"


def keep_live(old_text: str, new_text: str) -> str:
    """``new_text`` with the live part of ``old_text`` carried over when ``new_text`` has none."""
    start, end = _find(old_text)
    if start < 0 or _find(new_text)[0] >= 0:
        return new_text
    return replace_live(new_text, old_text[start:end] + "\n")
