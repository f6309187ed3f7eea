"""The live-streaming benchmark: real calls to a real ``emote serve`` over loopback, measured.

:func:`run_live` starts the server (:mod:`bench.live_server`: ``emote serve`` in its own process, the
bundled portrait at 512x512 and 25 fps, ``BaselineGenerator``, the silero-vad speech gate, aiortc VP8,
the ICE allow-list on 127.0.0.1) and then plays five phases of calls, each caller an aiortc peer in a
process of its own (:mod:`bench.live_client`) that receives the avatar's video and audio:

1. ``mic x1``: one caller speaks into its microphone (espeak-ng speech with pauses, real-time 20 ms
   packets); the avatar mouths it. Latency of live microphone audio, sustained fps, late frames.
2. ``agent x1``: one caller only watches and listens while an agent pushes speech over the agent socket
   at real-time pace; the avatar says it. Latency of live agent speech, and the A/V offset at the peer.
3. ``mic x2`` and 4. ``mic x3``: two and three such microphone calls at once (concurrency);
5. ``mic x2`` again with the callers at ``nice 19``: the server has the cores first, closer to a
   deployment where the callers' decoding runs on other machines (not counted for the targets).

Each phase measures a window of fixed length that opens only once all of its callers are connected and
talking (a full run first waits, briefly, for other processes on the machine to quieten). From each
call: the session's own counters at both ends of the window (``GET /sessions/{id}/stats``: frame
periods, late, dropped and skipped ones; latency percentiles), the decoded frames' arrival times
(received fps) and the mouth box's luma per frame, the received audio's level per 20 ms. From the
server: per-frame VP8 timings (``recv()`` → encoded). From ``/proc``: CPU time of the server (per
thread pool), of the callers, and of everything else on the machine during each window.

The A/V offset cross-correlates the mouth's darkness (an open mouth shows the dark inside) with the
audio envelope over arrival time; the same computation on an offline render of the same speech gives
the offset built into the content (the generator's lip lead and the mouth's own dynamics), so the
difference is what transport and playout add.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from bench.live_stats import (
    av_offset,
    cpu_sample,
    encode_summary,
    mouth_box,
    segment_latency,
    summarize_call,
    thread_cores,
)
from emote.model.motion.registry import DEFAULT_GENERATOR

REPO = Path(__file__).resolve().parent.parent
FPS = 25.0
SIZE = 512
class Phase(NamedTuple):
    """Calls made at once, and how long they are measured."""

    name: str
    mode: str  # "mic" or "agent" (see bench.live_client)
    sessions: int
    seconds: float
    nice: int = 0  # the callers' niceness: 19 lets the server have the cores first


PHASES = (Phase("mic x1", "mic", 1, 22.0), Phase("agent x1", "agent", 1, 16.0), Phase("mic x2", "mic", 2, 20.0),
          Phase("mic x3", "mic", 3, 20.0), Phase("mic x2, callers at nice 19", "mic", 2, 20.0, nice=19))
#: The smoke test's run.
QUICK_PHASES = (Phase("mic x1", "mic", 1, 4.0), Phase("agent x1", "agent", 1, 5.0), Phase("mic x2", "mic", 2, 4.0))
PAUSES_S = (0.5, 0.8, 0.4, 1.1, 0.6, 0.9)  # between utterances, in turn
#: Before each phase of a full run, wait up to QUIET_WAIT_S for other processes to use less than this.
QUIET_CORES = 0.2
QUIET_WAIT_S = 30.0


def log(message: str) -> None:
    print(f"[bench live] {message}", file=sys.stderr, flush=True)


@dataclass
class LiveResults:
    """What the live benchmark measured; :mod:`bench.live_report` writes it as markdown."""

    quick: bool
    netns: bool = False
    machine: list[str] = field(default_factory=list)
    load_start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    speech_s: float = 0.0
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    server_start_s: float = 0.0
    phases: list[dict[str, Any]] = field(default_factory=list)
    reference: dict[str, float] = field(default_factory=dict)  # offline render of the agent speech
    lead_s: float = 0.0  # the generator's designed lip lead (model.motion.baseline.generator.LEAD_S)
    motion: str = DEFAULT_GENERATOR  # the server's motion generator (emote serve --motion)
    wall_s: float = 0.0


def in_loopback_namespace() -> bool:
    """True when this process sees no network interface but loopback (``unshare -rn``)."""
    try:
        return [name for _, name in socket.if_nameindex()] == ["lo"]  # this namespace's view (not /sys's)
    except OSError:
        return False


def utterances(min_seconds: float) -> tuple[list[np.ndarray], list[float]]:
    """Sentences of the benchmark story spoken by espeak-ng (16 kHz int16), at least ``min_seconds`` in all."""
    from scipy.signal import resample_poly

    from bench.speech import PARAGRAPHS
    from emote.model.media.audio_io import pcm16
    from emote.server.tts import synthesize

    said: list[np.ndarray] = []
    pauses: list[float] = []
    total = 0.0
    for text, wpm, _ in PARAGRAPHS:
        for sentence in re.findall(r"[^.?!:]+[.?!:]", text):
            samples, rate = synthesize(sentence.strip(), words_per_minute=wpm)
            g = np.gcd(16000, rate)
            x = resample_poly(samples.astype(np.float32), 16000 // g, rate // g)
            said.append(pcm16(x))
            pauses.append(PAUSES_S[len(pauses) % len(PAUSES_S)])
            total += len(x) / 16000 + pauses[-1]
            if total >= min_seconds:
                return said, pauses
    return said, pauses


def reference_offset(portrait: Path, said: list[np.ndarray], pauses: list[float], box: tuple[int, ...],
                     seconds: float, motion: str = DEFAULT_GENERATOR) -> dict[str, float]:
    """The A/V offset of an offline render of the agent's speech, measured as at the peer."""
    from bench.stages import make_motion
    from emote.model.render.registry import make_renderer, prepare_portrait

    parts: list[np.ndarray] = [np.zeros(8000, np.int16)]
    for speech, pause in zip(said, pauses, strict=True):
        parts += [speech, np.zeros(int(pause * 16000), np.int16)]
    audio = np.concatenate(parts)[: int(seconds * 16000)].astype(np.float32) / 32768
    kind = make_renderer()
    prepared = prepare_portrait(portrait, size=SIZE, face_index=0, renderer=kind)
    renderer = kind.session(prepared)
    pose, coeffs, _ = make_motion(audio, prepared.framed.rest, fps=FPS, motion=motion)
    x0, y0, x1, y1 = box
    weights = np.array([0.257, 0.504, 0.098], np.float32)  # BT.601 luma, as the I420 conversion computes it
    luma = np.array([16 + float((renderer.render(p, c)[y0:y1, x0:x1].astype(np.float32) @ weights).mean())
                     for p, c in zip(pose, coeffs, strict=True)])
    chunks = audio[: len(audio) // 320 * 320].reshape(-1, 320)
    level = np.sqrt(np.mean(chunks.astype(np.float64) ** 2, axis=1)) * 32768
    video_t = np.arange(len(luma)) / FPS + 0.5 / FPS  # each frame's content is centred in its period
    offset_ms, r = av_offset(video_t, -luma, np.arange(len(level)) * 0.02 + 0.01, np.sqrt(level))
    return {"offset_ms": offset_ms, "r": r, "frames": float(len(luma))}


def gc_summary(pauses: list[list[float]], start: float, end: float) -> dict[str, Any]:
    """The server's garbage collections that ended inside [start, end]: count per generation, longest, total."""
    inside = [(int(gen), ms) for t, gen, ms in pauses if start <= t <= end]
    return {"count": [sum(g == k for g, _ in inside) for k in range(3)],
            "max_ms": max((ms for _, ms in inside), default=0.0), "total_ms": sum(ms for _, ms in inside)}


async def _http_json(url: str) -> dict:
    from bench.live_client import http

    return (await http("GET", url))[1]


def _log_file(path: Path) -> Any:
    """A child's stderr goes to a file (shown when it fails); the child holds it open, the parent closes its copy."""
    return path.open("wb")


async def start_server(tmp: Path, env: dict[str, str], max_sessions: int,
                       motion: str = DEFAULT_GENERATOR) -> tuple[Any, str]:
    cmd = [sys.executable, "-m", "bench.live_server", str(tmp / "server-timings.json"), "--port", "0",
           "--max-sessions", str(max_sessions), "--data-dir", str(tmp / "data"), "--motion", motion]
    with _log_file(tmp / "server.log") as stderr:
        proc = await asyncio.create_subprocess_exec(*cmd, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE,
                                                    stderr=stderr)
    async with asyncio.timeout(120):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise RuntimeError(f"emote serve exited early:\n{(tmp / 'server.log').read_text()[-3000:]}")
            if match := re.search(r"serving on (http://[\d.]+:\d+)", line):
                return proc, match[1]


async def stop_server(proc: Any, tmp: Path) -> dict[str, Any]:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        await proc.wait()
    path = tmp / "server-timings.json"
    if not path.exists():
        raise RuntimeError(f"the server left no timings:\n{(tmp / 'server.log').read_text()[-3000:]}")
    return json.loads(path.read_text())


async def wait_for_quiet(server_pid: int, max_wait_s: float, step_s: float = 3.0) -> float:
    """Wait (at most ``max_wait_s``) until other processes keep less than :data:`QUIET_CORES` busy.

    On a shared machine every number of a phase depends on what else runs; the report shows how busy
    the others were during each window, and this gives each window a better chance to start quiet.
    Returns the cores the others used in the last ``step_s``.
    """
    others = 0.0
    deadline = time.monotonic() + max_wait_s
    while True:
        before = cpu_sample({"server": [server_pid]})
        await asyncio.sleep(step_s)
        after = cpu_sample({"server": [server_pid]})
        others = max(0.0, (after["busy"] - before["busy"]) - (after["server"] - before["server"])) / step_s
        if others < QUIET_CORES or time.monotonic() >= deadline:
            return others


async def run_phase(phase: Phase, url: str, server_pid: int, tmp: Path, env: dict[str, str],
                    box: tuple[int, ...], quiet_wait_s: float = 0.0) -> dict[str, Any]:
    """The phase's callers at once; everything measured over one window of ``phase.seconds``."""
    name, mode, n, seconds, nice = phase
    if quiet_wait_s > 0 and (others := await wait_for_quiet(server_pid, quiet_wait_s)) >= QUIET_CORES:
        log(f"other processes still keep {others:.2f} cores busy; measuring {name} anyway")
    slug = re.sub(r"\W+", "-", name)
    outs = [tmp / f"{slug}-{i}.json" for i in range(n)]
    procs = []
    for i in range(n):
        cmd = ["nice", "-n", str(nice)] * bool(nice) + [
            sys.executable, "-m", "bench.live_client", "--url", url, "--mode", mode,
            "--speech", str(tmp / "speech.npz"), "--box", ",".join(map(str, box)), "--out", str(outs[i])]
        with _log_file(tmp / f"{slug}-{i}.log") as stderr:
            procs.append(await asyncio.create_subprocess_exec(
                *cmd, cwd=REPO, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=stderr))
    try:
        for i, proc in enumerate(procs):
            async with asyncio.timeout(90):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise RuntimeError(f"caller {i} of {name} ended early:\n"
                                           f"{(tmp / f'{slug}-{i}.log').read_text()[-3000:]}")
                    if line.startswith(b"{") and json.loads(line).get("ready"):
                        break
        start = time.monotonic() + 1.5  # the callers start talking before the window opens
        for proc in procs:
            proc.stdin.write(json.dumps({"from": start, "seconds": seconds}).encode() + b"\n")
            await proc.stdin.drain()
        pids = {"server": [server_pid], "callers": [p.pid for p in procs]}
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        cpu0 = cpu_sample(pids, threads_of=server_pid)
        await asyncio.sleep(max(0.0, start + seconds - time.monotonic()))
        cpu1 = cpu_sample(pids, threads_of=server_pid)
        for i, proc in enumerate(procs):
            async with asyncio.timeout(60):
                if await proc.wait() != 0:
                    raise RuntimeError(f"caller {i} of {name} failed:\n{(tmp / f'{slug}-{i}.log').read_text()[-3000:]}")
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    calls = [summarize_call(json.loads(out.read_text()), FPS) for out in outs]
    for _ in range(75):  # the server releases the calls' slots before the next phase
        if not (await _http_json(f"{url}/health"))["sessions"]:
            break
        await asyncio.sleep(0.2)
    else:
        raise RuntimeError(f"the server still holds sessions 15 s after the calls of {name} hung up")
    wall = cpu1["t"] - cpu0["t"]
    cpu = {k: (cpu1[k] - cpu0[k]) / wall for k in ("server", "callers", "busy")}
    cpu["others"] = max(0.0, cpu["busy"] - cpu["server"] - cpu["callers"])
    raw = [json.loads(out.read_text()) for out in outs] if mode == "agent" else []
    return {"name": name, "mode": mode, "sessions": n, "seconds": seconds, "nice": nice,
            "window": [start, start + seconds],
            "calls": calls, "cpu": cpu, "threads": [cpu0["threads"], cpu1["threads"]], "raw": raw}


async def _run(res: LiveResults, tmp: Path, phases: tuple[Phase, ...]) -> None:
    from emote.model.assets import default_portrait_path
    from emote.model.render.registry import prepare_portrait

    env = {**os.environ, "EMOTE_CACHE_DIR": str(tmp / "portrait-cache")}
    os.environ["EMOTE_CACHE_DIR"] = env["EMOTE_CACHE_DIR"]  # this process's own portrait analysis too
    portrait = default_portrait_path()
    log("synthesising speech")
    longest = max(p.seconds for p in phases) + 3.0
    said, pauses = utterances(longest)
    res.speech_s = sum(len(s) for s in said) / 16000 + sum(pauses)
    np.savez(tmp / "speech.npz", count=len(said), pauses=np.array(pauses), **{f"u{i}": s for i, s in enumerate(said)})
    framed = prepare_portrait(portrait, size=SIZE, face_index=0).framed
    res.box = mouth_box(framed.landmarks, SIZE)
    log("offline reference render of the agent's speech (A/V offset built into the content)")
    agent_s = next(p.seconds for p in phases if p.mode == "agent")
    res.reference = reference_offset(portrait, said, pauses, res.box, agent_s + 0.5, res.motion)
    log("starting emote serve")
    t = time.perf_counter()
    server, url = await start_server(tmp, env, max(p.sessions for p in phases), res.motion)
    res.server_start_s = time.perf_counter() - t
    try:
        for phase in phases:
            log(f"phase {phase.name}: {phase.sessions} call(s), {phase.seconds:.0f} s measured "
                f"(load {os.getloadavg()[0]:.2f})")
            try:
                res.phases.append(await run_phase(phase, url, server.pid, tmp, env, res.box,
                                                  quiet_wait_s=0.0 if res.quick else QUIET_WAIT_S))
            except RuntimeError as exc:
                raise RuntimeError(f"{exc}\n-- the server's log ends with:\n"
                                   f"{(tmp / 'server.log').read_text()[-4000:]}") from None
    finally:
        timings = await stop_server(server, tmp)
    for phase in res.phases:
        phase["encode"] = encode_summary(timings["encode"], *phase["window"])
        phase["server_threads"] = thread_cores(*phase.pop("threads"), timings["threads"], phase["seconds"])
        phase["gc"] = gc_summary(timings.get("gc", []), *phase["window"])
        if phase["mode"] == "agent":
            raw = phase.pop("raw")[0]
            video, audio = np.array(raw["video"]), np.array(raw["audio"])
            offset_ms, r = av_offset(video[:, 0] + 0.5 / FPS, -video[:, 2], audio[:, 0] + 0.01, np.sqrt(audio[:, 1]))
            phase["av"] = {"offset_ms": offset_ms, "r": r, "video_frames": len(video), "audio_frames": len(audio)}
            phase["segments"] = segment_latency(raw["agent_events"])
        else:
            phase.pop("raw")


def run_live(quick: bool, motion: str = DEFAULT_GENERATOR) -> LiveResults:
    """Measure the live server on this machine (see the module docstring).

    About 2 minutes (40 s with ``quick``); a full run on a busy machine waits up to
    :data:`QUIET_WAIT_S` before each phase for the other processes to quieten.
    """
    from bench.machine import machine_lines
    from emote.model.motion.baseline.generator import LEAD_S

    # Only the baseline moves the lips ahead of their sound on purpose (LEAD_S); a learned model has no such lead.
    res = LiveResults(quick=quick, netns=in_loopback_namespace(), lead_s=LEAD_S if motion == "baseline" else 0.0,
                      motion=motion)
    if not res.netns:
        log("not in a loopback-only network namespace (make bench runs in one); the ICE allow-list and the "
            "127.0.0.1 listener keep every packet on loopback anyway")
    t = time.perf_counter()
    res.machine = machine_lines()
    res.load_start = os.getloadavg()
    saved = os.environ.get("EMOTE_CACHE_DIR")
    try:
        with tempfile.TemporaryDirectory(prefix="emote-bench-live-") as tmp:
            asyncio.run(_run(res, Path(tmp), QUICK_PHASES if quick else PHASES))
    finally:
        if saved is None:
            os.environ.pop("EMOTE_CACHE_DIR", None)
        else:
            os.environ["EMOTE_CACHE_DIR"] = saved
    res.load_end = os.getloadavg()
    res.wall_s = time.perf_counter() - t
    return res
