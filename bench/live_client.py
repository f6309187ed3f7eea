"""One caller of the live benchmark, in its own process: ``python -m bench.live_client OPTIONS``.

The live benchmark (:mod:`bench.live`) starts one of these per call, so that the client's work (VP8 and
Opus decoding, the microphone's Opus encoding) runs beside the server process as a browser on the same
machine would, not inside it. The caller is the tests' in-process aiortc peer
(:class:`tests._rtc_client.RtcClient`: loopback ICE under the same allow-list as the server), signalling
through the server's ``POST /offer``. It keeps only what the benchmark needs of each decoded video frame:
the arrival time, the RTP timestamp and the luma of the mouth box (the whole picture is dropped).

Protocol with the parent, one JSON object per line: the client connects and prints
``{"ready": true, "session_id": ...}`` on stdout; the parent answers ``{"from": T, "seconds": S}`` on stdin
(``T`` on ``time.monotonic()``, which is system-wide); the caller starts talking shortly before ``T``, reads
the session's stats at ``T`` and ``T + S``, hangs up, and writes everything it recorded to ``--out``.

Modes: ``mic`` sends the speech file as its microphone, at real-time pace in 20 ms packets (the avatar
mouths it); ``agent`` sends no microphone and instead pushes the speech's utterances over the agent socket
``/sessions/{id}/audio`` at real-time pace (20 ms messages), with ``end_of_speech`` and a pause after each,
as a voice agent streaming its TTS does (the avatar says them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import av
import numpy as np

from bench.rtc_client import RtcClient

#: Seconds of speech the caller says before the measured window opens (the pipeline reaches steady state).
LEAD_IN_S = {"mic": 1.0, "agent": 0.5}
PACKET_S = 0.02  # 20 ms, the usual Opus packet and the agent's message size here
RATE = 16000  # the speech file's rate


class MouthClient(RtcClient):
    """An :class:`RtcClient` that keeps, per decoded video frame, only the luma inside ``box`` (x0, y0, x1, y1)."""

    def __init__(self, box: tuple[int, int, int, int], *, send_audio: bool) -> None:
        super().__init__(send_audio=send_audio, max_video_frames=5000)
        self.box = box

    def _keep_image(self, frame: av.VideoFrame) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        # aiortc's VP8 decoder gives yuv420p: the first `height` rows of the array are the luma plane.
        if frame.format.name == "yuv420p":
            return frame.to_ndarray()[y0:y1, x0:x1].copy()
        return frame.to_ndarray(format="gray")[y0:y1, x0:x1].copy()


def _http(method: str, url: str, body: dict | None = None, timeout_s: float = 10.0) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def http(method: str, url: str, body: dict | None = None) -> tuple[int, dict]:
    """A JSON request on a worker thread (urllib: no extra dependency for the benchmark)."""
    return await asyncio.to_thread(_http, method, url, body)


async def offer(url: str, sdp: str, kind: str, ids: list[str], wait_s: float = 15.0) -> tuple[str, str]:
    """``POST /offer``, retried while the server is still releasing an earlier call's slot (503)."""
    deadline = time.monotonic() + wait_s
    while True:
        status, body = await http("POST", f"{url}/offer", {"sdp": sdp, "type": kind})
        if status == 200:
            ids.append(body["session_id"])
            return body["sdp"], body["type"]
        if status != 503 or time.monotonic() > deadline:
            raise RuntimeError(f"POST /offer answered {status}: {body}")
        await asyncio.sleep(0.3)


async def sleep_until(t: float) -> None:
    await asyncio.sleep(max(0.0, t - time.monotonic()))


async def agent(url: str, session_id: str, utterances: list[np.ndarray], pauses: list[float], start: float,
                until: float, log: list[list[Any]]) -> None:
    """Push utterances over the agent socket at real-time pace from ``start`` until ``until``."""
    from websockets.asyncio.client import connect

    async with connect(f"ws{url[4:]}/sessions/{session_id}/audio", max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "sample_rate": RATE}))

        async def read() -> None:
            async for message in ws:
                if isinstance(message, str):
                    log.append([time.monotonic(), json.loads(message)])

        reader = asyncio.create_task(read())
        step = int(PACKET_S * RATE)
        t = start
        try:
            said = 0
            while t < until:
                for speech, pause in zip(utterances, pauses, strict=True):
                    for i in range(0, len(speech), step):
                        if t >= until:
                            break
                        await sleep_until(t)
                        await ws.send(speech[i : i + step].astype("<i2").tobytes())
                        if i == 0:
                            log.append([time.monotonic(), {"type": "sent_first", "utterance": said}])
                        t += len(speech[i : i + step]) / RATE
                    log.append([time.monotonic(), {"type": "sent_last", "utterance": said}])
                    said += 1
                    await ws.send(json.dumps({"type": "end_of_speech"}))
                    t += pause
                    if t >= until:
                        break
            await sleep_until(until)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


def speech_timeline(utterances: list[np.ndarray], pauses: list[float], seconds: float) -> np.ndarray:
    """The utterances with their pauses, repeated to at least ``seconds`` (16 kHz int16)."""
    parts: list[np.ndarray] = []
    total = 0
    while total < seconds * RATE:
        for speech, pause in zip(utterances, pauses, strict=True):
            parts += [speech, np.zeros(int(pause * RATE), np.int16)]
            total += len(speech) + int(pause * RATE)
    return np.concatenate(parts)


async def call(args: argparse.Namespace) -> dict[str, Any]:
    data = np.load(args.speech)
    utterances = [data[f"u{i}"] for i in range(int(data["count"]))]
    pauses = [float(p) for p in data["pauses"]]
    box = tuple(int(v) for v in args.box.split(","))
    client = MouthClient(box, send_audio=args.mode == "mic")  # type: ignore[arg-type]
    ids: list[str] = []
    out: dict[str, Any] = {"mode": args.mode}
    try:
        out["connect_s"] = await client.connect(lambda sdp, kind: offer(args.url, sdp, kind, ids), timeout_s=20)
        session_id = ids[0]
        print(json.dumps({"ready": True, "session_id": session_id}), flush=True)
        go = json.loads(await asyncio.to_thread(sys.stdin.readline))
        start, seconds = float(go["from"]), float(go["seconds"])
        talk_from = start - LEAD_IN_S[args.mode]
        events: list[list[Any]] = []
        pushing = None
        await sleep_until(talk_from)
        if args.mode == "mic":
            client.microphone.play(speech_timeline(utterances, pauses, seconds + 2 * LEAD_IN_S["mic"]), RATE)
        else:
            pushing = asyncio.create_task(agent(args.url, session_id, utterances, pauses, talk_from,
                                                start + seconds, events))
        await sleep_until(start)
        out["stats_from"] = (await http("GET", f"{args.url}/sessions/{session_id}/stats"))[1]
        await sleep_until(start + seconds)
        out["stats_to"] = (await http("GET", f"{args.url}/sessions/{session_id}/stats"))[1]
        if pushing is not None:
            await pushing
        out.update(session_id=session_id, window=[start, start + seconds], first_video_s=client.first_video_s,
                   agent_events=events, mic_spans=client.microphone.spans)
        kept = [f for f in client.video if start <= f.arrival_s < start + seconds]
        out["video"] = [[f.arrival_s, f.pts, float(f.image.mean())] for f in kept]
        out["audio"] = [[a.arrival_s, float(np.sqrt(np.mean(a.samples.astype(np.float64) ** 2))), len(a.samples)]
                        for a in client.audio if start <= a.arrival_s < start + seconds]
        out["video_total"] = client.video_count
    finally:
        await client.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.live_client", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--mode", choices=("mic", "agent"), required=True)
    parser.add_argument("--speech", required=True, help="npz of 16 kHz int16 utterances u0..uN-1 and pauses")
    parser.add_argument("--box", required=True, help="mouth box in video pixels: x0,y0,x1,y1")
    parser.add_argument("--out", required=True, help="JSON file for what was recorded")
    args = parser.parse_args(argv)
    result = asyncio.run(call(args))
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
