"""``emote serve`` as a person runs it: a real process on 127.0.0.1, a real call, a clean stop.

Each test starts the server as a subprocess on a free loopback port (``--port 0``; the address is
read from its first line of output) and talks to it over HTTP, WebSocket and WebRTC (the in-process
aiortc caller of tests/_rtc_client.py). The main test makes a call, lets an agent and ``/say`` make
the avatar speak into it, then stops the server with SIGTERM while the call is live: the process must
close the session, end the call and exit with 0. The others cover Ctrl-C and the errors a person
can make on the command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bench.rtc_client import RtcClient
from emote.server import tts

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0


class Served:
    """A running ``emote serve`` process."""

    def __init__(self, process: asyncio.subprocess.Process, url: str, log: Path) -> None:
        self.process = process
        self.url = url
        self.log = log

    async def stop(self, sig: signal.Signals) -> int:
        self.process.send_signal(sig)
        return await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_S)

    def stderr(self) -> str:
        return self.log.read_text()


async def run_cli(tmp_path: Path, *args: str) -> tuple[asyncio.subprocess.Process, Path]:
    log = tmp_path / "stderr.txt"
    # stderr goes to a file, not a pipe: the server's log can never fill it and block the server.
    with log.open("wb") as err:  # noqa: ASYNC230 - creating an empty file
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "emote.server.cli", "serve", *args, cwd=ROOT, stdout=asyncio.subprocess.PIPE,
            stderr=err, env={**os.environ, "EMOTE_DATA_DIR": str(tmp_path / "data")})
    return process, log


@asynccontextmanager
async def emote_serve(tmp_path: Path, *args: str) -> AsyncIterator[Served]:
    process, log = await run_cli(tmp_path, "--port", "0", *args)
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)).decode()
        assert line.startswith("emote: serving on http://127.0.0.1:"), (line, log.read_text())
        yield Served(process, line.split()[3], log)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.skipif(not tts.espeak_available(), reason="espeak-ng (the tts extra) is not installed")
@pytest.mark.asyncio
async def test_a_live_call_with_agent_speech_then_sigterm_stops_cleanly(tmp_path: Path) -> None:
    speech, rate = tts.synthesize("Hello from the agent.")
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2")
    async with emote_serve(tmp_path, "--max-sessions", "1") as served, \
            httpx.AsyncClient(base_url=served.url, timeout=20.0) as http:
        assert (await http.get("/health")).json() == {"status": "ok", "sessions": 0, "max_sessions": 1}
        session_ids: list[str] = []

        async def answer(sdp: str, kind: str) -> tuple[str, str]:
            response = await http.post("/offer", json={"sdp": sdp, "type": kind, "portrait": "default"})
            assert response.status_code == 200, response.text
            session_ids.append(response.json()["session_id"])
            return response.json()["sdp"], response.json()["type"]

        caller = RtcClient(send_audio=False)
        try:
            await caller.connect(answer)
            await caller.wait_video(10)
            session_id = session_ids[0]
            busy = await http.post("/offer", json={"sdp": caller.offer_sdp, "type": "offer"})
            assert busy.status_code == 503 and "retry-after" in busy.headers

            ws_url = served.url.replace("http://", "ws://") + f"/sessions/{session_id}/audio"
            async with connect(ws_url) as agent:
                await agent.send(json.dumps({"type": "start", "sample_rate": rate}))
                assert json.loads(await agent.recv())["type"] == "started"
                await agent.send(pcm.tobytes())
                await agent.send(json.dumps({"type": "end_of_speech"}))
                assert json.loads(await asyncio.wait_for(agent.recv(), 5.0))["type"] == "playback_started"
                finished = json.loads(await asyncio.wait_for(agent.recv(), 10.0))
                assert finished["type"] == "playback_finished" and not finished["interrupted"]
                assert finished["position_s"] == pytest.approx(len(pcm) / rate, abs=0.1)

                said = await http.post(f"/sessions/{session_id}/say", json={"text": "And hello from text."})
                assert said.status_code == 202
                assert json.loads(await asyncio.wait_for(agent.recv(), 5.0)) == {
                    "type": "playback_started", "segment_id": said.json()["segment_id"]}
                stats = (await http.get(f"/sessions/{session_id}/stats")).json()
                assert stats["viewer"] and stats["agent_connected"] and stats["frames"] > 10
                assert (await http.get("/health")).json()["sessions"] == 1

                # SIGTERM with the call, the agent socket and the text speech all live.
                assert await served.stop(signal.SIGTERM) == 0
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(agent.recv(), 5.0)
            await caller.wait_closed(timeout_s=10.0)
        finally:
            await caller.close()
    log = served.stderr()
    assert f"session {session_id} closed" in log and "stopped; every session was closed" in log
    assert "Traceback" not in log and "ERROR" not in log


@pytest.mark.asyncio
async def test_ctrl_c_stops_the_server_with_exit_code_0(tmp_path: Path) -> None:
    async with emote_serve(tmp_path) as served, httpx.AsyncClient(base_url=served.url) as http:
        page = await http.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert (await http.get("/openapi.json")).json()["openapi"].startswith("3.1")
        ids = [p["id"] for p in (await http.get("/portraits")).json()["portraits"]]
        assert ids == ["default"]
        bad = await http.post("/offer", json={"sdp": "nonsense", "type": "offer"})
        assert bad.status_code == 400 and "error" in bad.json()
        assert (await http.get("/health")).json()["sessions"] == 0
        assert await served.stop(signal.SIGINT) == 0
    assert "Traceback" not in served.stderr()


@pytest.mark.asyncio
async def test_a_portrait_without_a_face_or_a_busy_port_is_a_one_line_error(tmp_path: Path) -> None:
    not_an_image = tmp_path / "holiday.jpg"
    not_an_image.write_text("these are not pixels")
    process, log = await run_cli(tmp_path, "--port", "0", "--portrait", str(not_an_image))
    assert await asyncio.wait_for(process.wait(), STARTUP_TIMEOUT_S) == 2
    assert "holiday.jpg" in log.read_text() and "Traceback" not in log.read_text()

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        process, log = await run_cli(tmp_path, "--port", port)
        assert await asyncio.wait_for(process.wait(), STARTUP_TIMEOUT_S) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in log.read_text()


def test_lan_options_reach_the_ice_policy() -> None:
    from emote.model.errors import OptionError
    from emote.server.cli import build_parser, serve_config

    args = build_parser().parse_args([
        "serve", "--host", "192.168.1.10", "--ice-address", "192.168.1.10",
        "--ice-remote-network", "192.168.1.0/24", "--ice-remote-network", "fd00::/8"])
    config = serve_config(args)
    assert config.ice_remote_networks == ("192.168.1.0/24", "fd00::/8")
    policy = config.ice_policy()
    assert policy.allowed_addresses == ("192.168.1.10",)
    assert policy.allows_remote("192.168.1.77") and policy.allows_remote("fd00::5")
    assert not policy.allows_remote("10.0.0.3")
    default = serve_config(build_parser().parse_args(["serve"])).ice_policy()
    assert default.allowed_addresses == ("127.0.0.1",) and not default.allows_remote("192.168.1.77")
    for bad in (["--ice-remote-network", "the-lan"], ["--ice-address", "0.0.0.0"]):
        with pytest.raises(OptionError):
            serve_config(build_parser().parse_args(["serve", *bad]))


def test_the_motion_option_chooses_every_sessions_generator(tmp_path: Path) -> None:
    from emote.model.errors import OptionError
    from emote.server.cli import build_parser, main, serve_config

    assert serve_config(build_parser().parse_args(["serve"])).motion == "baseline"
    assert serve_config(build_parser().parse_args(["serve", "--motion", "diffusion"])).motion == "diffusion"
    assert serve_config(build_parser().parse_args(["serve", "--motion", "still"])).motion == "still"
    with pytest.raises(OptionError, match=r"--motion 'wobble'.*baseline, still, diffusion"):
        serve_config(build_parser().parse_args(["serve", "--motion", "wobble"]))
    # The same check guards emote eval before any video is touched.
    assert main(["eval", str(tmp_path), "--motion", "baseline,wobble", "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
