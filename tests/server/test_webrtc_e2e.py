"""End to end over WebRTC: an in-process aiortc caller talks to an AvatarPeer on loopback.

Most tests use the real AvatarSession, motion generator and speech gate with a fake renderer that paints
what matters into the picture: the lip coefficients as grey stripes (so "the lips move" and "the lips hold
still" can be read back from decoded VP8 frames) and the render count in binary (so order and repeats are
visible). One test runs the real renderer on the bundled portrait. Run inside a loopback-only namespace
(``unshare -rn``), as ``make test`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, VideoStreamTrack
from aiortc.mediastreams import MediaStreamError

from bench.rtc_client import AnswerFn, RtcClient
from emote.model.motion.baseline.generator import BaselineGenerator
from emote.model.motion.baseline.mouth_dynamics import MOUTH_CHANNELS
from emote.model.motion.interface import COEFF_INDEX, N_COEFFS
from emote.server.errors import SignalingError
from emote.server.ice import IceGuard, IcePolicy, rtc_configuration
from emote.server.tracks import AvatarAudioTrack, AvatarVideoTrack
from emote.server.webrtc import AvatarPeer
from emote.streaming.session import (
    AudioOut,
    AvatarSession,
    PlaybackFinished,
    SessionClosed,
    SessionConfig,
    SessionEvent,
    VideoOut,
)  # fmt: skip
from emote.streaming.speech_gate import SpeechGate, load_vad_model
from tests._fixtures import run_generator

LIPS = [COEFF_INDEX[name] for name in (*MOUTH_CHANNELS, "mouthLowerDownLeft", "mouthLowerDownRight")]
JAW = LIPS.index(COEFF_INDEX["jawOpen"])
WIDTH, HEIGHT, BLOCK, BITS = 256, 128, 16, 16
PORTRAIT = Path(__file__).resolve().parents[2] / "model" / "assets" / "default_portrait.jpg"


class PaintingRenderer:
    """A fake renderer: lip coefficients as grey stripes on top, the render count in binary below."""

    size = (WIDTH, HEIGHT)

    def __init__(self) -> None:
        self.renders = 0

    def render(self, pose: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
        image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
        for i, k in enumerate(LIPS):
            image[: HEIGHT // 2, i * BLOCK : (i + 1) * BLOCK] = round(float(np.clip(coeffs[k], 0, 1)) * 255)
        for bit in range(BITS):
            if (self.renders >> bit) & 1:
                image[HEIGHT // 2 :, bit * BLOCK : (bit + 1) * BLOCK] = 255
        self.renders += 1
        return image


def read_lips(image: np.ndarray) -> np.ndarray:
    """(len(LIPS),) lip coefficients read back from a decoded frame (block centres, away from VP8 edges)."""
    top = image[HEIGHT // 8 : 3 * HEIGHT // 8].astype(np.float32).mean(axis=2)
    return np.array([top[:, i * BLOCK + 4 : (i + 1) * BLOCK - 4].mean() / 255 for i in range(len(LIPS))])


def read_index(image: np.ndarray) -> int:
    """The render count painted into a decoded frame."""
    bottom = image[5 * HEIGHT // 8 : 7 * HEIGHT // 8].astype(np.float32).mean(axis=2)
    return sum(1 << b for b in range(BITS) if bottom[:, b * BLOCK + 4 : (b + 1) * BLOCK - 4].mean() > 128)


def rest_expression() -> np.ndarray:
    rest = np.zeros(N_COEFFS, np.float32)
    rest[COEFF_INDEX["jawOpen"]] = 0.05
    rest[COEFF_INDEX["mouthSmileLeft"]] = rest[COEFF_INDEX["mouthSmileRight"]] = 0.2
    return rest


def speech(text: str) -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng, or a vowel-like buzz in syllable bursts when TTS is not installed."""
    from emote.server import tts

    if tts.espeak_available():
        samples, rate = tts.synthesize(text)
        return samples, rate
    rate = 16000
    t = np.arange(int(1.6 * rate)) / rate
    voice = sum(np.sin(2 * np.pi * f * t) / (i + 1) for i, f in enumerate((140, 280, 700, 1200)))
    syllables = (np.sin(2 * np.pi * 4 * t) > 0).astype(np.float32)
    return (0.2 * voice * syllables).astype(np.float32), rate


@pytest.fixture(scope="module")
def vad_model() -> object:
    """silero-vad loaded once (about 2 s); each test still gets its own gate state."""
    return load_vad_model()


@pytest.fixture(scope="module", autouse=True)
def _warm_motion_model() -> None:
    """Compile the generator's numba kernels before any call, so the first second of a call is not late."""
    run_generator(BaselineGenerator(), speech("warm up")[0][:16000], rest=rest_expression())


class Recorder:
    """What the server side reported during a call: on_closed calls and session events."""

    def __init__(self) -> None:
        self.closed: list[float] = []  # time.monotonic() of each on_closed call
        self.events: list[SessionEvent] = []
        self._changed = asyncio.Event()

    def on_closed(self) -> None:
        self.closed.append(time.monotonic())
        self._changed.set()

    def on_event(self, event: SessionEvent) -> None:
        self.events.append(event)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_closed(self, timeout_s: float) -> float:
        """Seconds until the server's on_closed fired."""
        start = time.monotonic()
        await self.wait_for(lambda: bool(self.closed), timeout_s)
        return self.closed[0] - start


@dataclass
class Call:
    session: AvatarSession
    peer: AvatarPeer
    client: RtcClient
    server: Recorder


def answer_with(peer: AvatarPeer) -> AnswerFn:
    """Signalling straight into the peer (the HTTP layer does the same over POST /offer)."""

    async def answer(sdp: str, kind: str) -> tuple[str, str]:
        description = await peer.answer(sdp, kind)
        return description.sdp, description.type

    return answer


@contextlib.asynccontextmanager
async def avatar_call(
    *,
    renderer: object | None = None,
    rest: np.ndarray | None = None,
    speech_gate: SpeechGate | bool = False,
    send_audio: bool = True,
    **peer_options: float,
) -> AsyncIterator[Call]:
    """A started session, its peer and a connected client; afterwards everything closed and no task left."""
    session = AvatarSession(
        renderer or PaintingRenderer(), BaselineGenerator(), rest_expression() if rest is None else rest,
        config=SessionConfig(), speech_gate=speech_gate,
    )  # fmt: skip
    await session.start()
    server = Recorder()
    session.add_listener(server.on_event)
    peer = AvatarPeer(session, policy=IcePolicy(), on_closed=server.on_closed, **peer_options)
    call = Call(session, peer, RtcClient(max_video_frames=1000, send_audio=send_audio), server)
    try:
        await call.client.connect(answer_with(peer), timeout_s=5)
        yield call
    finally:
        await call.client.close()
        await peer.close()
        await session.aclose()
    assert len(server.closed) == 1, "on_closed must fire exactly once"
    for _ in range(5):
        await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
    assert not left, f"tasks left running: {left}"


def window(call: Call, start_s: float, end_s: float) -> list[np.ndarray]:
    """Decoded frames that arrived between two time.monotonic() instants."""
    return [f.image for f in call.client.video if start_s <= f.arrival_s < end_s]


class ScriptedSource:
    """A session stand-in for the tracks: two outputs, then closed."""

    def __init__(self) -> None:
        self.video = [VideoOut(7, np.full((16, 32, 3), 200, np.uint8), False),
                      VideoOut(9, np.zeros((16, 32, 3), np.uint8), True)]  # fmt: skip
        self.audio = [AudioOut(5, np.arange(960, dtype=np.int16))]

    async def next_video(self) -> VideoOut:
        if not self.video:
            raise SessionClosed("closed")
        return self.video.pop(0)

    async def next_audio(self) -> AudioOut:
        if not self.audio:
            raise SessionClosed("closed")
        return self.audio.pop(0)


@pytest.mark.asyncio
async def test_tracks_stamp_the_session_timeline_and_end_with_the_session() -> None:
    source = ScriptedSource()
    video, audio = AvatarVideoTrack(source, fps=25.0), AvatarAudioTrack(source)
    first, second = await video.recv(), await video.recv()
    assert (first.width, first.height, first.format.name) == (32, 16, "yuv420p")  # what VP8 encodes
    assert np.abs(first.to_ndarray(format="rgb24")[0, 0].astype(int) - 200).max() <= 2
    assert (first.pts, second.pts, first.time_base) == (7 * 3600, 9 * 3600, Fraction(1, 90000))
    assert (video.frames_sent, video.late_frames) == (2, 1)
    chunk = await audio.recv()
    assert (chunk.samples, chunk.sample_rate, chunk.format.name, chunk.layout.name) == (960, 48000, "s16", "mono")
    assert (chunk.pts, chunk.time_base) == (5 * 960, Fraction(1, 48000))
    assert (chunk.to_ndarray()[0] == np.arange(960)).all()
    for track in (video, audio):
        with pytest.raises(MediaStreamError):
            await track.recv()
        assert track.readyState == "ended"


@pytest.mark.asyncio
async def test_answer_refuses_what_is_not_an_offer() -> None:
    offers = []
    for kinds in (("audio",), ("video", "audio")):
        pc = RTCPeerConnection(rtc_configuration())
        for kind in kinds:
            pc.addTransceiver(kind, direction="recvonly" if kind == "video" else "sendrecv")
        IceGuard(IcePolicy()).attach(pc)
        await pc.setLocalDescription(await pc.createOffer())
        offers.append(pc.localDescription.sdp)
        await pc.close()
    audio_only, video_offer = offers
    session = AvatarSession(PaintingRenderer(), BaselineGenerator(), rest_expression(), speech_gate=False)
    no_candidates = "\r\n".join(line for line in video_offer.split("\r\n") if not line.startswith("a=candidate:"))
    lan_only = video_offer.replace(" 127.0.0.1 ", " 192.168.1.20 ")
    cases = [
        (audio_only, "answer", "type 'answer'"),
        (no_candidates, "offer", "no ICE candidates"),
        (lan_only, "offer", r"none of the offer's ICE candidates \(192.168.1.20\)"),
        ("", "offer", "sdp is empty"),
        ("hello", "offer", "no m= line"),
        ("v=0\r\nm=video\r\n", "offer", "cannot be parsed"),
        (audio_only, "offer", "does not receive video"),
        ("v=0\r\n" * 30_000, "offer", "more than"),
    ]
    try:
        for sdp, kind, message in cases:
            closed: list[int] = []
            peer = AvatarPeer(session, policy=IcePolicy(), on_closed=lambda c=closed: c.append(1))
            with pytest.raises(SignalingError, match=message):
                await peer.answer(sdp, kind)
            assert closed == [1] and peer.connection_state == "closed"
            await peer.close()
            assert closed == [1]
    finally:
        await session.aclose()


async def browser_like_offer(*, video: str = "recvonly") -> str:
    """An offer as a browser makes it: video (``video`` direction) and a send-receive microphone."""
    pc = RTCPeerConnection(rtc_configuration())
    try:
        pc.addTransceiver("video", direction=video)
        pc.addTransceiver("audio", direction="sendrecv")
        IceGuard(IcePolicy()).attach(pc)
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


def _mangle(sdp: str, case: str) -> str:
    lines = sdp.split("\r\n")
    if case == "no a=setup":
        lines = [line for line in lines if not line.startswith("a=setup:")]
    elif case == "no rtx rtpmap":
        lines = [line for line in lines if "rtx/90000" not in line]
    elif case == "broken a=msid":
        lines = [line.split(" ")[0] + " " if line.startswith("a=msid:") else line for line in lines]
    elif case == "broken BUNDLE":
        lines = ["a=group:BUNDLE x 1" if line.startswith("a=group:BUNDLE") else line for line in lines]
    elif case == "no a=rtcp-mux":
        lines = [line for line in lines if line != "a=rtcp-mux"]
    elif case == "bad candidate port":
        lines = [" ".join(f[:5] + ["99999999999"] + f[6:]) if (f := line.split(" "))[0].startswith("a=candidate")
                 else line for line in lines]
    return "\r\n".join(lines)


@pytest.mark.asyncio
async def test_mangled_offers_are_400_with_a_message_and_leave_nothing_behind(tmp_path: Path) -> None:
    from tests.server.test_server_http import Fakes, fake_app

    httpx = pytest.importorskip("httpx")
    loop = asyncio.get_running_loop()
    loop_errors: list[dict[str, object]] = []  # "Task exception was never retrieved" and the like
    loop.set_exception_handler(lambda _, context: loop_errors.append(context))
    fakes = Fakes()
    app = fake_app(tmp_path, fakes)
    manager = app.state.emote.manager
    manager._build_peer = lambda session, on_closed: AvatarPeer(session, policy=IcePolicy(), on_closed=on_closed)
    base = await browser_like_offer()
    cases = {"no a=setup": "a=setup", "no rtx rtpmap": "a=rtpmap", "broken a=msid": "cannot be answered",
             "broken BUNDLE": "BUNDLE", "no a=rtcp-mux": "RTCP mux", "bad candidate port": "port"}
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emote") as client:
            for case, words in cases.items():
                mangled = _mangle(base, case)
                assert mangled != base, case
                response = await client.post("/offer", json={"sdp": mangled, "type": "offer"})
                assert response.status_code == 400, (case, response.text)
                assert words in response.json()["error"], (case, response.json())
            assert (await client.get("/health")).json()["sessions"] == 0
            ok = await client.post("/offer", json={"sdp": base, "type": "offer"})  # the unmangled one is fine
            assert ok.status_code == 200, ok.text
            assert (await client.delete(f"/sessions/{ok.json()['session_id']}")).status_code == 204
        assert manager.count == 0 and len(fakes.sessions) == len(cases) + 1
        assert all(s.closed for s in fakes.sessions)
        for _ in range(5):
            await asyncio.sleep(0.05)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        assert not left, f"tasks left running: {left}"
        assert not loop_errors, loop_errors
    finally:
        loop.set_exception_handler(None)
        await app.state.emote.aclose()


@pytest.mark.asyncio
async def test_call_delivers_ordered_frames_at_25_fps_and_holds_still_in_silence() -> None:
    # No microphone: with one the session adds frames of its own (see test_callers_voice_...).
    async with avatar_call(send_audio=False) as call:
        client = call.client
        assert client.connected_s is not None and client.connected_s < 2.0
        await client.wait_video(60, timeout_s=5)
        assert client.first_video_s is not None and client.first_video_s < 2.0
        frames = list(client.video)[10:]
        assert client.images().shape[1:] == (HEIGHT, WIDTH, 3)
        steps = np.diff([read_index(f.image) for f in frames])
        assert steps.min() >= 0, "frames out of order"
        # Every rendered frame is shown once, one per 40 ms on the 90 kHz clock. A loaded machine may
        # repeat a late frame (step 0) or skip one to catch up, never often.
        assert np.mean(steps == 1) >= 0.9, np.unique(steps, return_counts=True)
        pts_steps = np.diff([f.pts for f in frames])
        assert (pts_steps % 3600 == 0).all() and np.mean(pts_steps == 3600) >= 0.9, pts_steps
        fps = (len(frames) - 1) / (frames[-1].arrival_s - frames[0].arrival_s)
        assert 20 < fps < 30, fps
        lips = np.array([read_lips(f.image) for f in frames])
        assert np.ptp(lips, axis=0).max() < 0.02, "the lips moved in silence"
        assert len(client.audio) > 50 and not client.received_audio().any(), "the avatar should be silent"
        addresses = {line.split()[4] for line in client.answer_sdp.splitlines() if line.startswith("a=candidate:")}
        assert addresses == {"127.0.0.1"}
        stats = call.session.stats()
        print(f"\nsetup {client.connected_s * 1000:.0f} ms, first frame {client.first_video_s * 1000:.0f} ms, "
              f"{fps:.1f} fps over {len(frames)} frames, {stats.late_frames} late, {stats.dropped_frames} dropped")


@pytest.mark.asyncio
async def test_callers_voice_moves_the_lips_and_silence_stills_them(vad_model: object) -> None:
    samples, rate = speech("Hello there, how are you?")
    async with avatar_call(speech_gate=SpeechGate(model=vad_model)) as call:
        client = call.client
        await asyncio.sleep(1.0)
        client.microphone.play(samples, rate)
        await asyncio.sleep(len(samples) / rate + 1.4)
        (start_s, end_s), = client.microphone.spans
        assert call.peer.microphone_frames > 100
        before = np.array([read_lips(im) for im in window(call, start_s - 0.5, start_s)])
        during = np.array([read_lips(im) for im in window(call, start_s + 0.4, end_s)])
        after = np.array([read_lips(im) for im in window(call, end_s + 1.0, end_s + 1.4)])
        assert len(before) > 10 and len(during) > 20 and len(after) > 8
        assert np.ptp(before, axis=0).max() < 0.02, "the lips moved before the caller spoke"
        assert np.ptp(during[:, JAW]) > 0.15, "the lips did not follow the caller's voice"
        assert np.ptp(after, axis=0).max() < 0.02, "the lips kept moving after the caller stopped"
        assert not client.received_audio().any(), "the caller's voice must not be echoed back"
        stats = call.session.stats()
        print(f"\nmicrophone call: {stats.frames} frames, {stats.dropped_frames} dropped, {stats.late_frames} late, "
              f"latency p50 {stats.latency_ms_p50:.0f} ms p95 {stats.latency_ms_p95:.0f} ms")


@pytest.mark.asyncio
async def test_pushed_speech_is_heard_in_sync_with_the_lips() -> None:
    samples, rate = speech("One, two, three.")
    async with avatar_call() as call:
        await call.client.wait_video(10, timeout_s=5)
        segment = await call.session.push_speech(samples, rate)
        call.session.end_of_speech()
        events = call.server.events
        duration_s = len(samples) / rate
        await call.server.wait_for(lambda: any(isinstance(e, PlaybackFinished) for e in events), duration_s + 3)
        await asyncio.sleep(0.3)
        assert events[-1] == PlaybackFinished(segment, pytest.approx(duration_s, abs=0.05), False)
        client = call.client
        heard = [f for f in client.audio if np.sqrt(np.mean(f.samples.astype(np.float32) ** 2)) > 300]
        assert len(heard) * 0.02 > 0.5 * len(samples) / rate, "the speech did not come back as audio"
        jaw = [(f.arrival_s, read_lips(f.image)[JAW]) for f in client.video]
        moving = [t for t, value in jaw if value > jaw[0][1] + 0.1]
        assert moving, "the lips did not move with the speech"
        offset_ms = 1000 * (moving[0] - heard[0].arrival_s)
        print(f"\nfirst open mouth arrived {offset_ms:+.0f} ms after the first loud audio")
        assert abs(offset_ms) < 200


class CountingCamera(VideoStreamTrack):
    """A caller's camera that counts the frames its connection pulled to send."""

    def __init__(self) -> None:
        super().__init__()
        self.frames = 0

    async def recv(self) -> av.VideoFrame:
        self.frames += 1
        return await super().recv()


@pytest.mark.asyncio
async def test_a_callers_camera_is_never_received() -> None:
    session = AvatarSession(PaintingRenderer(), BaselineGenerator(), rest_expression(), speech_gate=False)
    await session.start()
    server = Recorder()
    peer = AvatarPeer(session, policy=IcePolicy(), on_closed=server.on_closed)
    camera = CountingCamera()
    pc = RTCPeerConnection(rtc_configuration())
    received: list[float] = []
    a_second = asyncio.Event()

    async def watch(track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                await track.recv()
                received.append(time.monotonic())
                if len(received) >= 25:
                    a_second.set()

    watchers: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: watchers.append(asyncio.ensure_future(watch(track))) if track.kind == "video"
          else None)
    try:
        camera_transceiver = pc.addTransceiver(camera, direction="sendrecv")  # a browser with its camera on
        pc.addTransceiver("audio", direction="recvonly")
        IceGuard(IcePolicy()).attach(pc)
        await pc.setLocalDescription(await pc.createOffer())
        answer = await peer.answer(pc.localDescription.sdp, "offer")
        video_section = answer.sdp.split("m=video", 1)[1].split("m=audio", 1)[0]
        assert "a=sendonly" in video_section
        await pc.setRemoteDescription(answer)
        await asyncio.wait_for(a_second.wait(), 5)  # a second of the avatar arrives...
        assert camera_transceiver.currentDirection == "recvonly"
        assert camera.frames == 0  # ...and not one camera frame was sent to be decoded
    finally:
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        await pc.close()
        await peer.close()
        await session.aclose()


@pytest.mark.asyncio
async def test_caller_hanging_up_closes_the_peer() -> None:
    async with avatar_call() as call:
        await call.client.wait_video(5)
        await call.client.close()
        took_s = await call.server.wait_closed(timeout_s=3)
        assert call.peer.end_reason == "connection closed"
        print(f"\nhang-up noticed in {took_s * 1000:.0f} ms")


@pytest.mark.asyncio
async def test_vanished_caller_is_released_within_seconds() -> None:
    async with avatar_call(silence_timeout_s=1.5) as call:
        await call.client.wait_video(5)
        await call.client.vanish()
        took_s = await call.server.wait_closed(timeout_s=4)
        assert "vanished" in (call.peer.end_reason or "")
        assert 1.0 < took_s < 3.0
        assert call.peer.connection_state == "closed"
        print(f"\nvanished caller released after {took_s:.2f} s")


@pytest.mark.asyncio
async def test_real_renderer_streams_the_bundled_portrait() -> None:
    from emote.model.render.registry import make_renderer, prepare_portrait

    kind = make_renderer()
    prepared = prepare_portrait(PORTRAIT, renderer=kind)
    framed, renderer = prepared.framed, kind.session(prepared)
    samples, rate = speech("Good morning, nice to see you.")
    mouth = framed.landmarks[[13, 14, 61, 291], :2]
    (x0, y0), (x1, y1) = mouth.min(axis=0).astype(int) - 12, mouth.max(axis=0).astype(int) + 12
    async with avatar_call(renderer=renderer, rest=framed.rest) as call:
        client = call.client
        await client.wait_video(25, timeout_s=5)
        quiet_until = time.monotonic()
        await call.session.push_speech(samples, rate)
        call.session.end_of_speech()
        await asyncio.sleep(len(samples) / rate + 0.3)
        frames = list(client.video)
        assert frames[-1].image.shape == (512, 512, 3)
        steady = frames[5:]
        fps = (len(steady) - 1) / (steady[-1].arrival_s - steady[0].arrival_s)
        stats = call.session.stats()

        def mouth_motion(images: list[np.ndarray]) -> float:
            crops = np.array([im[y0:y1, x0:x1].astype(np.float32) for im in images])
            return float(np.abs(np.diff(crops, axis=0)).mean())

        quiet = mouth_motion([f.image for f in steady if f.arrival_s < quiet_until])
        talking = mouth_motion([f.image for f in steady if f.arrival_s > quiet_until + 0.4])
        print(f"\n512x512: {fps:.1f} fps, {stats.late_frames}/{stats.frames} late, mouth motion quiet {quiet:.2f} "
              f"vs talking {talking:.2f}, latency p50 {stats.latency_ms_p50} ms")  # fmt: skip
        assert 20 < fps < 30
        assert talking > 3 * quiet


def test_video_bitrate_is_capped_for_every_encoder() -> None:
    from aiortc.codecs import vpx

    from emote.server.video_codec import MAX_VIDEO_BITRATE, install_video_encoding

    install_video_encoding(MAX_VIDEO_BITRATE)
    install_video_encoding(MAX_VIDEO_BITRATE)  # at start-up, once: again with the same ceiling is harmless
    with pytest.raises(RuntimeError, match="ceiling"):
        install_video_encoding(2 * MAX_VIDEO_BITRATE)  # would change every running call
    encoder = vpx.Vp8Encoder()
    encoder.target_bitrate = 2_000_000  # what a receiver's bandwidth estimate asks for over loopback
    assert encoder.target_bitrate == MAX_VIDEO_BITRATE
    encoder.target_bitrate = 300_000
    assert encoder.target_bitrate == 300_000  # below the ceiling, the estimate still rules


def test_vp8_encoder_is_tuned_and_its_video_decodes_faithfully(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every VP8 call gets the tuned encoder; what it sends decodes close to what was rendered."""
    import aiortc.codecs
    from aiortc.codecs import get_decoder, get_encoder, vpx
    from aiortc.jitterbuffer import JitterFrame
    from aiortc.rtcrtpparameters import RTCRtpCodecParameters

    from emote.server.video_codec import MAX_VIDEO_BITRATE, VP8_TUNING, AvatarVp8Encoder, install_video_encoding

    opened: list[tuple[int, dict[str, str]]] = []  # (bit rate, options) of each libvpx context, before it opens
    real_open = AvatarVp8Encoder._open

    def spy_open(self: AvatarVp8Encoder, width: int, height: int) -> Any:
        codec = real_open(self, width, height)
        opened.append((codec.bit_rate, dict(codec.options)))
        return codec

    monkeypatch.setattr(AvatarVp8Encoder, "_open", spy_open)
    install_video_encoding(MAX_VIDEO_BITRATE)
    params = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    encoder, decoder = get_encoder(params), get_decoder(params)
    assert isinstance(encoder, AvatarVp8Encoder) and aiortc.codecs.Vp8Encoder is AvatarVp8Encoder
    import cv2

    photo = cv2.resize(pytest.importorskip("skimage.data").astronaut(), (256, 256))
    psnr = []
    for i in range(20):
        rgb = np.roll(photo, i, axis=1)  # a picture that moves a little every frame
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frame.pts, frame.time_base = i * 3600, Fraction(1, 90000)
        payloads, timestamp = encoder.encode(frame)
        data = b"".join(vpx.vp8_depayload(p) for p in payloads)
        for out in decoder.decode(JitterFrame(data=data, timestamp=timestamp)):
            got = out.to_ndarray(format="rgb24").astype(np.float64)
            psnr.append(10 * np.log10(255**2 / np.mean((got - rgb) ** 2)))
    assert len(psnr) == 20 and min(psnr[3:]) > 28, psnr
    assert len(opened) == 1 and opened[0][0] == MAX_VIDEO_BITRATE
    assert {k: opened[0][1][k] for k in VP8_TUNING} == VP8_TUNING
    first = encoder.codec
    encoder.target_bitrate = 300_000  # the receiver's estimate fell by 40 %: a new context at the new rate
    frame = av.VideoFrame.from_ndarray(photo, format="rgb24")
    frame.pts, frame.time_base = 20 * 3600, Fraction(1, 90000)
    encoder.encode(frame)
    assert encoder.codec is not first and encoder.codec.bit_rate == 300_000
    assert len(opened) == 2 and opened[1][0] == 300_000 and opened[1][1]["noise-sensitivity"] == "0"
    # A context aiortc made itself (the bitrate moved between our check and its own) is replaced by a tuned one.
    encoder.codec = av.CodecContext.create("libvpx", "w")
    encoder.codec.width, encoder.codec.height, encoder.codec.bit_rate = 256, 256, 300_000
    encoder.codec.pix_fmt = "yuv420p"
    frame.pts = 21 * 3600
    encoder.encode(frame)
    assert len(opened) == 3 and encoder.codec.bit_rate == 300_000
