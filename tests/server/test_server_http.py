"""The HTTP contract of ``emote serve``, called in-process through httpx's ASGI transport (no sockets).

Sessions and WebRTC peers are fakes here (:class:`FakeSession`, :class:`FakePeer`, also used by
tests/test_agent_ws.py), so these tests are about the server's own behaviour: routes, JSON errors
naming the field, limits (413, 503 + Retry-After), session lifetimes (hang-up, a vanished client,
shutdown), portrait uploads, and text-to-speech. A few tests use the real components: the face
analysis that checks uploads, espeak-ng, and one real :class:`~streaming.session.AvatarSession`.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image
from starlette.applications import Starlette
from starlette.routing import Route

from emote.model.assets import default_portrait_path
from emote.model.errors import OptionError
from emote.server import tts
from emote.server.app import create_app
from emote.server.config import ServerConfig
from emote.server.errors import SignalingError
from emote.server.portraits import PortraitInfo
from emote.streaming.session import (
    PlaybackFinished,
    PlaybackStarted,
    SessionClosed,
    SessionEvent,
    SessionFailed,
    SessionStats,
)

OFFER = {"sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
         "type": "offer"}


class FakeSession:
    """Stands in for :class:`~streaming.session.AvatarSession`: records its inputs, and plays a segment
    the moment it is ended (``playback_finished`` at the segment's full length) or cleared.

    :meth:`hold` and :meth:`allow` make ``push_speech`` wait, as the real session's back-pressure does.
    """

    def __init__(self, portrait: PortraitInfo) -> None:
        self.portrait = portrait
        self.config = SimpleNamespace(fps=25.0)  # what the real WebRTC peer reads
        self.pushed: list[tuple[np.ndarray, int, int]] = []  # (samples, rate, segment id)
        self.calls: list[str] = []
        self.events: list[SessionEvent] = []
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.budget: int | None = None  # pushes accepted before the next ones wait (None: no limit)
        self.waiting = asyncio.Event()  # a push is waiting for budget
        self.ended = asyncio.Event()  # end_of_speech was called
        self.started = False
        self.closed = False
        self._closed = asyncio.Event()
        self._listeners: list[Callable[[SessionEvent], None]] = []
        self._open: int | None = None
        self._open_s = 0.0
        self._next_id = 1

    async def start(self) -> None:
        self.started = True

    async def aclose(self) -> None:
        self.closed = True
        self._closed.set()
        self.flowing.set()

    def add_listener(self, listener: Callable[[SessionEvent], None]) -> None:
        self._listeners.append(listener)

    def _emit(self, event: SessionEvent) -> None:
        self.events.append(event)
        for listener in self._listeners:
            listener(event)

    def hold(self) -> None:
        """Make pushes wait (the session holds all the speech it can)."""
        self.allow(0)

    def allow(self, pushes: int | None = None) -> None:
        """Accept this many more pushes (None: any number)."""
        self.budget = pushes
        self.waiting.clear()
        self.flowing.set()

    async def push_speech(self, samples: np.ndarray, sample_rate: int) -> int:
        while self.budget is not None and self.budget <= 0 and not self.closed:
            self.flowing.clear()
            self.waiting.set()
            await self.flowing.wait()
        if self.budget is not None:
            self.budget -= 1
        if self.closed:
            raise SessionClosed("closed")
        if self._open is None:
            self._open, self._open_s, self._next_id = self._next_id, 0.0, self._next_id + 1
            self._emit(PlaybackStarted(self._open))
        self.pushed.append((np.array(samples, copy=True), sample_rate, self._open))
        self.calls.append("push")
        self._open_s += len(samples) / sample_rate
        return self._open

    def end_of_speech(self) -> None:
        self.calls.append("end")
        self.ended.set()
        if self._open is not None:
            self._emit(PlaybackFinished(self._open, round(self._open_s, 3), False))
            self._open = None

    def clear(self) -> None:
        self.calls.append("clear")
        if self._open is not None:
            self._emit(PlaybackFinished(self._open, 0.0, True))
            self._open = None

    async def next_video(self) -> None:
        await self._closed.wait()
        raise SessionClosed("closed")

    next_audio = next_video

    def stats(self) -> SessionStats:
        return SessionStats(frames=10, late_frames=1, dropped_frames=0, skipped_periods=0, queued_frames=2,
                            queued_speech_s=0.0, step_ms_mean=5.0, latency_ms_p50=80.0, latency_ms_p95=120.0,
                            latency_samples=10)

    def samples_of(self, segment_id: int) -> np.ndarray:
        return np.concatenate([s for s, _, seg in self.pushed if seg == segment_id])


class FakePeer:
    """Stands in for :class:`~server.webrtc.AvatarPeer`: answers offers with an ``m=video`` line and calls
    ``on_closed`` once, on :meth:`close` or when the test makes the client :meth:`vanish`."""

    def __init__(self, session: FakeSession, on_closed: Callable[[], None]) -> None:
        self.session = session
        self._on_closed = on_closed
        self.closed = False

    async def answer(self, sdp: str, type: str) -> SimpleNamespace:
        if "m=video" not in sdp:
            await self.close()
            raise SignalingError("the offer cannot be answered: it does not receive video")
        return SimpleNamespace(sdp="v=0\r\ns=fake answer\r\n", type="answer")

    async def close(self) -> None:
        self.vanish()

    def vanish(self) -> None:
        if not self.closed:
            self.closed = True
            self._on_closed()


class Fakes:
    """Builds fake sessions and peers, and remembers them."""

    def __init__(self) -> None:
        self.sessions: list[FakeSession] = []
        self.peers: list[FakePeer] = []

    async def session(self, portrait: PortraitInfo) -> FakeSession:
        self.sessions.append(FakeSession(portrait))
        return self.sessions[-1]

    def peer(self, session: Any, on_closed: Callable[[], None]) -> FakePeer:
        self.peers.append(FakePeer(session, on_closed))
        return self.peers[-1]


def accept_any(path: Path) -> None:
    """A face analysis that accepts every image (the real one is tested separately)."""


def fake_app(tmp_path: Path, fakes: Fakes, **options: Any) -> Starlette:
    config = ServerConfig(data_dir=tmp_path / "data", **options)
    return create_app(config, build_session=fakes.session, build_peer=fakes.peer,  # type: ignore[arg-type]
                      analyze_portrait=accept_any)


@pytest_asyncio.fixture
async def app_client(tmp_path: Path) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient, Fakes]]:
    fakes = Fakes()
    app = fake_app(tmp_path, fakes, max_sessions=2, max_upload_bytes=64 * 1024)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emote") as client:
        yield app, client, fakes
    await app.state.emote.aclose()


def png_bytes(size: int = 64, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- basics ----------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_health_and_unknown_routes_answer_json(app_client: Any) -> None:
    _, client, _ = app_client
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "sessions": 0, "max_sessions": 2}
    missing = await client.get("/nowhere")
    assert missing.status_code == 404 and "error" in missing.json()
    wrong_method = await client.put("/health")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


@pytest.mark.asyncio
async def test_index_serves_the_web_client(app_client: Any) -> None:
    from emote.server.app import WEB_CLIENT_DIR

    _, client, _ = app_client
    response = await client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text == (WEB_CLIENT_DIR / "index.html").read_text()  # the page itself, byte for byte
    assert "missing" not in response.text  # not the fallback page
    script = await client.get("/static/app.js")
    assert script.status_code == 200 and script.text == (WEB_CLIENT_DIR / "app.js").read_text()


@pytest.mark.asyncio
async def test_a_missing_web_client_gets_a_page_that_says_so(app_client: Any, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    from emote.server import app as app_module

    monkeypatch.setattr(app_module, "WEB_CLIENT_DIR", tmp_path / "gone")
    _, client, _ = app_client
    response = await client.get("/")
    assert response.status_code == 200 and "web client" in response.text and "missing" in response.text
    assert "/openapi.json" in response.text


@pytest.mark.asyncio
async def test_openapi_document_describes_every_http_route(app_client: Any) -> None:
    app, client, _ = app_client
    response = await client.get("/openapi.json")
    assert response.status_code == 200
    doc = response.json()
    assert doc["openapi"].startswith("3.1")
    served = {(route.path, method.lower()) for route in app.routes if isinstance(route, Route)
              for method in route.methods or () if method != "HEAD"}
    described = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == described
    # Every $ref points at a schema that exists.
    refs = {ref.rsplit("/", 1)[1] for ref in _refs(doc)}
    assert refs <= set(doc["components"]["schemas"])


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


@pytest.mark.parametrize(("options", "field"), [
    ({"max_sessions": 0}, "max_sessions"),
    ({"port": 70000}, "port"),
    ({"max_upload_bytes": True}, "max_upload_bytes"),
    ({"fps": 0}, "fps"),
    ({"ice_addresses": "127.0.0.1"}, "ice_addresses"),
    ({"ice_addresses": ("localhost",)}, "ice_addresses"),
    ({"ice_remote_networks": "192.168.1.0/24"}, "ice_remote_networks"),
    ({"ice_remote_networks": ("the-lan",)}, "ice_remote_networks"),
    ({"host": ""}, "host"),
])
def test_config_refuses_nonsense_naming_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(OptionError, match=field):
        ServerConfig(**options)


@pytest.mark.asyncio
async def test_real_peers_get_the_configured_ice_policy(tmp_path: Path) -> None:
    fakes = Fakes()
    config = ServerConfig(data_dir=tmp_path / "data", ice_addresses=("192.168.1.10",),
                          ice_remote_networks=("192.168.1.0/24",))
    app = create_app(config, build_session=fakes.session)  # type: ignore[arg-type]
    manager = app.state.emote.manager
    peer = manager._build_peer(await fakes.session(manager.portraits.default), lambda: None)
    try:
        assert peer.policy == config.ice_policy()
        assert peer.policy.allows_remote("192.168.1.77") and not peer.policy.allows_remote("10.1.2.3")
    finally:
        await peer.close()
        await app.state.emote.aclose()


# -- offers and session lifetimes -------------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "field"), [
    (b"{not json", "JSON"),
    (b"[1, 2]", "JSON object"),
    (json.dumps({"type": "offer"}).encode(), "'sdp'"),
    (json.dumps({"sdp": OFFER["sdp"]}).encode(), "'type'"),
    (json.dumps({"sdp": 5, "type": "offer"}).encode(), "'sdp'"),
    (json.dumps({"sdp": OFFER["sdp"], "type": "answer"}).encode(), "'type'"),
    (json.dumps({**OFFER, "portrait": 3}).encode(), "'portrait'"),
    (json.dumps({"sdp": "v=0\r\n", "type": "offer"}).encode(), "does not receive video"),
    (b"[" * 100_000 + b"]" * 100_000, "nests JSON too deeply"),
])
async def test_malformed_offers_are_400_naming_the_problem(app_client: Any, body: bytes, field: str) -> None:
    _, client, fakes = app_client
    response = await client.post("/offer", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert field in response.json()["error"]
    assert (await client.get("/health")).json()["sessions"] == 0
    assert all(s.closed for s in fakes.sessions)


@pytest.mark.asyncio
async def test_offer_answers_and_hang_up_releases_everything(app_client: Any) -> None:
    _, client, fakes = app_client
    response = await client.post("/offer", json=OFFER)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "answer" and "fake answer" in answer["sdp"]
    session_id = answer["session_id"]
    assert len(session_id) >= 16
    session, peer = fakes.sessions[0], fakes.peers[0]
    assert session.started and session.portrait.id == "default"
    assert (await client.get("/health")).json()["sessions"] == 1

    stats = await client.get(f"/sessions/{session_id}/stats")
    assert stats.status_code == 200
    assert stats.json()["frames"] == 10 and stats.json()["viewer"] is True

    assert (await client.delete(f"/sessions/{session_id}")).status_code == 204
    assert peer.closed and session.closed
    assert (await client.get("/health")).json()["sessions"] == 0
    for method, path in [("DELETE", ""), ("GET", "/stats"), ("POST", "/clear")]:
        gone = await client.request(method, f"/sessions/{session_id}{path}")
        assert gone.status_code == 404 and session_id in gone.json()["error"]


@pytest.mark.asyncio
async def test_unknown_portrait_is_404(app_client: Any) -> None:
    _, client, fakes = app_client
    response = await client.post("/offer", json={**OFFER, "portrait": "0123456789abcdef"})
    assert response.status_code == 404
    assert "0123456789abcdef" in response.json()["error"]
    assert fakes.sessions == []


@pytest.mark.asyncio
async def test_beyond_max_sessions_is_503_with_retry_after(app_client: Any) -> None:
    _, client, _ = app_client
    first, second = [(await client.post("/offer", json=OFFER)).json()["session_id"] for _ in range(2)]
    refused = await client.post("/offer", json=OFFER)
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) > 0
    assert "2 session" in refused.json()["error"]
    await client.delete(f"/sessions/{first}")
    assert (await client.post("/offer", json=OFFER)).status_code == 200


@pytest.mark.asyncio
async def test_concurrent_offers_never_overshoot_the_limit(app_client: Any) -> None:
    _, client, fakes = app_client
    responses = await asyncio.gather(*(client.post("/offer", json=OFFER) for _ in range(6)))
    assert sorted(r.status_code for r in responses) == [200, 200, 503, 503, 503, 503]
    assert len(fakes.sessions) == 2


@pytest.mark.asyncio
async def test_a_vanished_client_is_released(app_client: Any) -> None:
    app, client, fakes = app_client
    ids = [(await client.post("/offer", json=OFFER)).json()["session_id"] for _ in range(2)]
    managed = app.state.emote.manager.get(ids[0])
    fakes.peers[0].vanish()  # the browser went away: the peer reports it
    await asyncio.wait_for(managed.closed.wait(), 2.0)
    assert fakes.sessions[0].closed and app.state.emote.manager.count == 1
    assert (await client.get(f"/sessions/{ids[0]}/stats")).status_code == 404
    assert (await client.get(f"/sessions/{ids[1]}/stats")).status_code == 200  # the other plays on
    assert not fakes.sessions[1].closed


@pytest.mark.asyncio
async def test_a_failed_session_is_released(app_client: Any) -> None:
    app, client, fakes = app_client
    session_id = (await client.post("/offer", json=OFFER)).json()["session_id"]
    managed = app.state.emote.manager.get(session_id)
    fakes.sessions[0]._emit(SessionFailed("RuntimeError('the renderer broke')"))  # its producer stopped
    await asyncio.wait_for(managed.closed.wait(), 2.0)
    assert fakes.sessions[0].closed and fakes.peers[0].closed and app.state.emote.manager.count == 0


@pytest.mark.asyncio
async def test_shutdown_closes_every_session_and_refuses_new_ones(tmp_path: Path) -> None:
    fakes = Fakes()
    app = fake_app(tmp_path, fakes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emote") as client:
        for _ in range(2):
            assert (await client.post("/offer", json=OFFER)).status_code == 200
        await app.state.emote.aclose()
        assert all(s.closed for s in fakes.sessions) and all(p.closed for p in fakes.peers)
        assert (await client.get("/health")).json()["sessions"] == 0
        assert (await client.post("/offer", json=OFFER)).status_code == 503


@pytest.mark.asyncio
async def test_json_body_over_the_limit_is_413(app_client: Any) -> None:
    _, client, _ = app_client
    big = {"sdp": "x" * 300_000, "type": "offer"}
    assert (await client.post("/offer", json=big)).status_code == 413


# -- portraits ------------------------------------------------------------------------------------

@pytest.mark.asyncio
async def test_default_portrait_is_listed_and_served(app_client: Any) -> None:
    _, client, _ = app_client
    listing = (await client.get("/portraits")).json()["portraits"]
    assert listing == [{"id": "default", "name": "Grace Hopper", "source": "bundled",
                        "image_url": "/portraits/default/image"}]
    image = await client.get("/portraits/default/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == default_portrait_path().read_bytes()
    assert (await client.get("/portraits/nope/image")).status_code == 404


@pytest.mark.asyncio
async def test_upload_is_kept_listed_and_found_again_after_a_restart(app_client: Any, tmp_path: Path) -> None:
    _, client, fakes = app_client
    data = png_bytes()
    response = await client.post("/portraits", files={"image": ("dir/me.png", data, "image/png")})
    assert response.status_code == 201, response.text
    portrait_id = response.json()["portrait_id"]
    assert len(portrait_id) == 16 and response.json()["name"] == "me.png"
    again = await client.post("/portraits", files={"image": ("copy.png", data, "image/png")})
    assert again.status_code == 200 and again.json()["portrait_id"] == portrait_id

    listing = (await client.get("/portraits")).json()["portraits"]
    assert [p["id"] for p in listing] == ["default", portrait_id]
    assert listing[1]["source"] == "uploaded" and listing[1]["name"] == "me.png"
    image = await client.get(listing[1]["image_url"])
    assert image.content == data and image.headers["content-type"] == "image/png"
    assert not [p for p in (tmp_path / "data" / "portraits").iterdir() if p.name.startswith(".")]  # no temp files

    assert (await client.post("/offer", json={**OFFER, "portrait": portrait_id})).status_code == 200
    assert fakes.sessions[-1].portrait.path.read_bytes() == data

    restarted = fake_app(tmp_path, Fakes())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=restarted), base_url="http://emote") as other:
        ids = [p["id"] for p in (await other.get("/portraits")).json()["portraits"]]
        assert ids == ["default", portrait_id]
    await restarted.state.emote.aclose()


@pytest.mark.asyncio
async def test_upload_limits_and_malformed_uploads(app_client: Any) -> None:
    _, client, _ = app_client
    too_big = png_bytes(200)  # ~120 kB of noise, over the 64 KiB cap of this app
    assert len(too_big) > 64 * 1024
    response = await client.post("/portraits", files={"image": ("big.png", too_big, "image/png")})
    assert response.status_code == 413 and "limit" in response.json()["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the cap applies while reading
        yield b'--zzz\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n\r\n'
        for _ in range(100):
            yield b"x" * 4096
    streamed = await client.post("/portraits", content=chunks(),
                                 headers={"content-type": "multipart/form-data; boundary=zzz"})
    assert streamed.status_code == 413

    missing = await client.post("/portraits", files={"photo": ("a.png", png_bytes(), "image/png")})
    assert missing.status_code == 400 and "'image'" in missing.json()["error"]
    not_multipart = await client.post("/portraits", content=png_bytes(), headers={"content-type": "image/png"})
    assert not_multipart.status_code == 400 and "multipart" in not_multipart.json()["error"]
    text = await client.post("/portraits", files={"image": ("notes.txt", b"hello there", "text/plain")})
    assert text.status_code == 422 and "notes.txt" in text.json()["error"]
    assert "JPEG, PNG or WebP" in text.json()["error"] and " object at 0x" not in text.json()["error"]
    assert [p["id"] for p in (await client.get("/portraits")).json()["portraits"]] == ["default"]


@pytest.mark.asyncio
async def test_concurrent_uploads_beyond_the_limit_are_503_with_retry_after(tmp_path: Path) -> None:
    release = threading.Event()
    analysing = threading.Semaphore(0)

    def slow_analysis(path: Path) -> None:
        analysing.release()
        release.wait(5.0)

    app = create_app(ServerConfig(data_dir=tmp_path / "data", max_concurrent_uploads=2),
                     build_session=Fakes().session, analyze_portrait=slow_analysis)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emote") as client:
        def upload(seed: int) -> Any:
            return client.post("/portraits", files={"image": (f"{seed}.png", png_bytes(seed=seed), "image/png")})

        first, second = asyncio.create_task(upload(1)), asyncio.create_task(upload(2))
        await asyncio.to_thread(analysing.acquire, True, 5.0)  # the first is being analysed, the second waits
        await asyncio.sleep(0.1)
        refused = await upload(3)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0
        assert "upload" in refused.json()["error"]
        release.set()
        assert [(await t).status_code for t in (first, second)] == [201, 201]
        assert (await upload(3)).status_code == 201  # room again
    await app.state.emote.aclose()


@pytest.mark.asyncio
async def test_stored_uploads_are_capped_oldest_out_never_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from emote.model.face.portrait import cached_analysis_path

    monkeypatch.setenv("EMOTE_CACHE_DIR", str(tmp_path / "analysis-cache"))
    fakes = Fakes()
    app = fake_app(tmp_path, fakes, max_stored_uploads=3)
    folder = tmp_path / "data" / "portraits"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emote") as client:
        async def upload(seed: int) -> str:
            response = await client.post("/portraits", files={"image": (f"{seed}.png", png_bytes(seed=seed),
                                                                        "image/png")})
            assert response.status_code in (200, 201), response.text
            return response.json()["portrait_id"]

        ids = [await upload(seed) for seed in range(3)]
        # What the real face analysis would have cached for the first upload (the fake analyser writes none).
        cached = cached_analysis_path(folder / f"{ids[0]}.png", face_index=0)
        cached.parent.mkdir(parents=True)
        cached.write_bytes(b"analysis")
        ids.append(await upload(3))
        listed = [p["id"] for p in (await client.get("/portraits")).json()["portraits"]]
        assert listed == ["default", *ids[1:]]  # the oldest upload went
        assert (await client.get(f"/portraits/{ids[0]}/image")).status_code == 404
        assert not list(folder.glob(f"{ids[0]}.*"))  # image and sidecar deleted
        assert not cached.exists()  # and the face analysis cached for it
        assert await upload(1) == ids[1]  # uploaded again: now the most recent
        await upload(4)
        listed = [p["id"] for p in (await client.get("/portraits")).json()["portraits"]]
        assert listed[0] == "default" and ids[2] not in listed and listed[1:] == [ids[3], ids[1], listed[-1]]
        assert len(list(folder.glob("*.json"))) == 3
    await app.state.emote.aclose()
    restarted = fake_app(tmp_path, Fakes(), max_stored_uploads=2)  # a lower cap applies at start too
    assert [p.id for p in restarted.state.emote.portraits.list()] == ["default", *listed[2:]]
    await restarted.state.emote.aclose()


@pytest.mark.asyncio
async def test_uploads_are_checked_by_the_real_face_analysis(tmp_path: Path) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    app = create_app(ServerConfig(data_dir=tmp_path / "data"), build_session=Fakes().session)  # type: ignore[arg-type]
    face = io.BytesIO()
    Image.fromarray(skimage_data.astronaut()).save(face, format="JPEG")
    gradient = io.BytesIO()
    Image.fromarray(np.tile(np.linspace(0, 255, 256, dtype=np.uint8), (256, 1))).save(gradient, format="PNG")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emote") as client:
        accepted = await client.post("/portraits", files={"image": ("astronaut.jpg", face.getvalue(), "image/jpeg")})
        assert accepted.status_code == 201, accepted.text
        refused = await client.post("/portraits", files={"image": ("wall.png", gradient.getvalue(), "image/png")})
        assert refused.status_code == 422
        message = refused.json()["error"]
        assert message.startswith("wall.png: no face was found") and str(tmp_path) not in message
        ids = [p["id"] for p in (await client.get("/portraits")).json()["portraits"]]
        assert ids == ["default", accepted.json()["portrait_id"]]
    await app.state.emote.aclose()


# -- text to speech ---------------------------------------------------------------------------------

needs_tts = pytest.mark.skipif(not tts.espeak_available(), reason="espeak-ng (the tts extra) is not installed")


@needs_tts
@pytest.mark.asyncio
async def test_say_speaks_the_text_as_one_segment(app_client: Any) -> None:
    _, client, fakes = app_client
    session_id = (await client.post("/offer", json=OFFER)).json()["session_id"]
    response = await client.post(f"/sessions/{session_id}/say", json={"text": "Hello there, how are you today?"})
    assert response.status_code == 202, response.text
    body = response.json()
    session = fakes.sessions[0]
    await asyncio.wait_for(session.ended.wait(), 2.0)
    samples = session.samples_of(body["segment_id"])
    rate = session.pushed[0][1]
    assert rate == 22050 and 1.0 < body["duration_s"] < 4.0
    assert len(samples) / rate == pytest.approx(body["duration_s"], abs=1e-3)
    assert {seg for _, _, seg in session.pushed} == {body["segment_id"]}  # one segment, in 1 s pieces
    assert session.calls.count("end") == 1 and session.calls[-1] == "end"


@needs_tts
@pytest.mark.asyncio
async def test_clear_stops_a_long_text_and_the_next_one_plays(app_client: Any) -> None:
    _, client, fakes = app_client
    session_id = (await client.post("/offer", json=OFFER)).json()["session_id"]
    session = fakes.sessions[0]
    session.allow(2)  # the session takes two pieces, then holds all the speech it can: pushes wait
    said = await client.post(f"/sessions/{session_id}/say", json={"text": "One two three. " * 4})
    assert said.status_code == 202 and said.json()["texts_ahead"] == 0
    first = said.json()["segment_id"]
    assert first is not None
    await asyncio.wait_for(session.waiting.wait(), 2.0)
    assert len(session.pushed) == 2 and "end" not in session.calls  # the third piece waits
    assert (await client.post(f"/sessions/{session_id}/clear")).status_code == 204
    assert session.events[-1] == PlaybackFinished(first, 0.0, True)
    session.allow()
    second = (await client.post(f"/sessions/{session_id}/say", json={"text": "Yes."})).json()["segment_id"]
    await asyncio.wait_for(session.ended.wait(), 2.0)
    assert second not in (first, None)
    assert {seg for _, _, seg in session.pushed} == {first, second}  # the rest of the first was dropped
    assert session.events[-1] == PlaybackFinished(second, pytest.approx(len(session.samples_of(second)) / 22050,
                                                                        abs=1e-3), False)


@needs_tts
@pytest.mark.asyncio
async def test_say_answers_at_once_while_earlier_texts_wait_and_a_full_queue_is_429(app_client: Any) -> None:
    app, client, fakes = app_client
    session_id = (await client.post("/offer", json=OFFER)).json()["session_id"]
    session = fakes.sessions[0]
    session.allow(1)  # the first text's first piece is taken, then the session is "full"
    loop = asyncio.get_running_loop()
    texts = [f"Text number {k}, which is long enough to take a few seconds to say." for k in range(10)]
    answers = []
    for text in texts:
        asked = loop.time()
        answers.append(await client.post(f"/sessions/{session_id}/say", json={"text": text}))
        assert loop.time() - asked < 0.6  # never waits for the texts ahead (was: until they were queued)
    assert [a.status_code for a in answers] == [202] * 9 + [429]
    assert [a.json()["texts_ahead"] for a in answers[:9]] == list(range(9))
    assert answers[0].json()["segment_id"] == 1 and all(a.json()["segment_id"] is None for a in answers[1:9])
    assert int(answers[9].headers["retry-after"]) >= 1 and "8 texts" in answers[9].json()["error"]
    all_said = asyncio.Event()
    app.state.emote.manager.get(session_id).subscribe(
        lambda e: session.calls.count("end") == 9 and all_said.set())
    session.allow()  # playback made room: the texts are said in order, one segment each
    await asyncio.wait_for(all_said.wait(), 5.0)
    segments = [seg for _, _, seg in session.pushed]
    assert segments == sorted(segments) and len(set(segments)) == 9

    session.hold()
    for text in texts[:3]:
        assert (await client.post(f"/sessions/{session_id}/say", json={"text": text})).status_code == 202
    await asyncio.wait_for(session.waiting.wait(), 2.0)
    pushed = len(session.pushed)
    assert (await client.post(f"/sessions/{session_id}/clear")).status_code == 204  # empties the queue too
    session.allow()
    await asyncio.sleep(0.2)
    assert len(session.pushed) == pushed and app.state.emote.manager.get(session_id)._texts.waiting == []
    again = await client.post(f"/sessions/{session_id}/say", json={"text": "Yes."})
    assert again.status_code == 202 and again.json()["texts_ahead"] == 0 and again.json()["segment_id"] == 10


@pytest.mark.asyncio
async def test_a_clear_right_after_a_say_does_not_block_the_next_one(app_client: Any) -> None:
    app, client, fakes = app_client
    session_id = (await client.post("/offer", json=OFFER)).json()["session_id"]
    managed = app.state.emote.manager.get(session_id)
    first = managed.say(np.zeros(3 * 22050, np.int16), 22050)  # said by a task...
    await managed.clear()  # ...cancelled before it ever ran
    assert await first.started is None
    second = managed.say(np.zeros(100, np.int16), 22050)
    assert await asyncio.wait_for(second.started, 1.0) == 1 and second.ahead == 0
    await asyncio.wait_for(fakes.sessions[0].ended.wait(), 1.0)
    assert fakes.sessions[0].calls == ["clear", "push", "end"]


@needs_tts
@pytest.mark.asyncio
@pytest.mark.parametrize(("body", "status", "words"), [
    ({}, 400, ["'text'"]),
    ({"text": "   "}, 400, ["'text'", "empty"]),
    ({"text": "\x00\x00 \u200b\t"}, 400, ["'text'", "empty"]),
    ({"text": "a" * 1001}, 400, ["'text'", "1001", "1000"]),
    ({"text": "hi", "voice": "klingon-xx"}, 400, ["'voice'", "klingon-xx", "en-us"]),
    ({"text": "hi", "voice": 7}, 400, ["'voice'"]),
])
async def test_say_refuses_bad_requests_naming_the_field(
    app_client: Any, body: dict[str, Any], status: int, words: list[str]
) -> None:
    _, client, fakes = app_client
    session_id = (await client.post("/offer", json=OFFER)).json()["session_id"]
    response = await client.post(f"/sessions/{session_id}/say", json=body)
    assert response.status_code == status
    assert all(word in response.json()["error"] for word in words), response.json()
    assert fakes.sessions[0].pushed == []


@pytest.mark.asyncio
async def test_say_without_tts_is_501_with_the_install_hint(app_client: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _, client, _ = app_client
    monkeypatch.setattr(tts, "espeak_available", lambda: False)
    session_id = (await client.post("/offer", json=OFFER)).json()["session_id"]
    response = await client.post(f"/sessions/{session_id}/say", json={"text": "hello"})
    assert response.status_code == 501 and "emote[tts]" in response.json()["error"]
    assert (await client.post("/sessions/nope/say", json={"text": "hello"})).status_code == 404


# -- the real session ---------------------------------------------------------------------------------

@needs_tts
@pytest.mark.asyncio
async def test_a_real_session_without_a_viewer_speaks_and_closes(tmp_path: Path) -> None:
    app = create_app(ServerConfig(data_dir=tmp_path / "data"))
    manager = app.state.emote.manager
    managed = await manager.create_session()
    events: list[SessionEvent] = []
    finished = asyncio.Event()
    managed.subscribe(lambda e: (events.append(e), isinstance(e, PlaybackFinished) and finished.set()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://emote") as client:
        said = await client.post(f"/sessions/{managed.id}/say", json={"text": "Hi."})
        assert said.status_code == 202
        segment, duration_s = said.json()["segment_id"], said.json()["duration_s"]
        await asyncio.wait_for(finished.wait(), duration_s + 3.0)
        assert events[0] == PlaybackStarted(segment)
        assert events[1].segment_id == segment and not events[1].interrupted
        stats = (await client.get(f"/sessions/{managed.id}/stats")).json()
        assert stats["frames"] > 10 and stats["viewer"] is False and stats["latency_ms_p50"] is not None
        assert (await client.delete(f"/sessions/{managed.id}")).status_code == 204
    assert managed.session.closed and all(t.done() for t in managed._sinks)
    assert manager.count == 0
    await app.state.emote.aclose()


@pytest.mark.asyncio
async def test_real_sessions_reuse_warm_speech_gates_and_the_prepared_portrait(tmp_path: Path) -> None:
    import torch

    threads = torch.get_num_threads()
    app = create_app(ServerConfig(data_dir=tmp_path / "data", max_sessions=2, size=128, motion="still"))
    manager = app.state.emote.manager
    pool = manager._gates
    assert manager.gates_ready is not None
    await asyncio.wrap_future(manager.gates_ready)  # started with the server, on its preparation thread
    assert len(pool._free) == 2
    first = await manager.create_session()
    lease = manager._leases[first.session]
    gate = lease._gate
    assert gate is not None and len(pool._free) == 1
    prepared = first.session.renderer.prepared
    for array in (prepared.framed.image, prepared.layers.atlas, prepared.uv, prepared.deformer.basis_px):
        assert not array.flags.writeable  # shared between sessions: read-only
    await manager.close_session(first.id)
    assert lease._gate is None and gate in pool._free and len(pool._free) == 2  # back, reset
    assert not lease.process(np.ones(512, np.float32)).any()  # a late step of the closed session: gate shut
    second = await manager.create_session()
    assert manager._leases[second.session]._gate in (gate, *pool._free)
    assert second.session.renderer.prepared is prepared  # the portrait was not prepared again
    assert second.session.renderer is not first.session.renderer  # each session renders on its own
    assert second.session.generator.name == "still"  # emote serve --motion still
    # torch runs one thread per call on the session workers (many tiny calls side by side), and only there.
    assert await asyncio.get_running_loop().run_in_executor(manager._executor, torch.get_num_threads) == 1
    assert torch.get_num_threads() == threads
    await app.state.emote.aclose()
    assert manager._leases == {} and len(pool._free) == 2


@pytest.mark.asyncio
async def test_evicting_an_upload_of_the_default_photo_keeps_the_defaults_analysis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from emote.model.face.portrait import cached_analysis_path
    from emote.server.portraits import PortraitStore

    monkeypatch.setenv("EMOTE_CACHE_DIR", str(tmp_path / "analysis-cache"))
    default = tmp_path / "default.png"
    default.write_bytes(png_bytes(seed=7))
    kept = cached_analysis_path(default, face_index=0)
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"the default portrait's analysis")
    executor = ThreadPoolExecutor(1)
    store = PortraitStore(default, tmp_path / "uploads", executor=executor, analyze=lambda path: None, max_uploads=1)
    same, _ = await store.add(default.read_bytes(), "me-too.png")  # someone uploads the default photo
    await store.add(png_bytes(seed=8), "other.png")  # which evicts that upload
    executor.shutdown(wait=True)
    assert not same.path.exists() and kept.read_bytes() == b"the default portrait's analysis"
