"""The HTTP and WebSocket face of the live server: one Starlette app on one port.

:func:`create_app` wires the routes of the contract (README "Serve", ``server/openapi.json``) to the
:class:`~server.portraits.PortraitStore` and :class:`~server.sessions.SessionManager`, and maps the
errors they raise to JSON ``{"error": message}`` responses::

    InputError (malformed JSON, SDP, fields)  400      NotFoundError (unknown session, portrait)  404
    PortraitError (no face, not an image)     422      PayloadTooLargeError (body over its limit)  413
    TooManySessionsError, UploadsBusyError    503 + Retry-After
    SayQueueFullError                         429 + Retry-After
    DependencyError (TTS not installed)       501

(the server's errors and their tree are in :mod:`emote.server.errors`)

Blocking work never runs on the event loop: rendering on a shared pool of ``render_threads``,
portrait analysis and session preparation on one thread, speech synthesis on another (espeak-ng is
one global state machine). The app's lifespan closes every session and those pools on shutdown;
tests that drive the app without a lifespan call ``app.state.emote.aclose()`` themselves.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import unicodedata
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive

from emote.model.assets import default_portrait_path
from emote.model.errors import DependencyError, InputError, OptionError, PortraitError
from emote.model.media.audio_io import pcm16
from emote.server import tts
from emote.server.agent_ws import agent_audio_endpoint
from emote.server.config import ServerConfig
from emote.server.errors import (
    BadRequestError,
    BusyError,
    NotFoundError,
    PayloadTooLargeError,
    SayQueueFullError,
    UnknownSessionError,
    UploadsBusyError,
)
from emote.server.face_check import FaceChecker
from emote.server.portraits import PortraitStore
from emote.server.sessions import PeerBuilder, SessionBuilder, SessionManager, session_summary
from emote.server.video_codec import install_video_encoding
from emote.streaming.session import SessionClosed

WEB_CLIENT_DIR = Path(__file__).resolve().parent.parent / "web_client"
OPENAPI_PATH = Path(__file__).resolve().parent / "openapi.json"
#: JSON bodies (an SDP offer is a few kB) are refused beyond this.
MAX_JSON_BYTES = 256 * 1024
#: Room for the multipart boundaries and part headers around an upload of the largest allowed size.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
DEFAULT_VOICE = "en-us"
#: What a refused upload is told to wait: about one face analysis.
UPLOAD_RETRY_AFTER_S = 3
#: How long /say waits for a text with nothing ahead of it to start, to answer with its segment id.
SAY_START_WAIT_S = 0.5

log = logging.getLogger(__name__)


@dataclass
class ServerState:
    """What the routes share; ``app.state.emote``."""

    config: ServerConfig
    portraits: PortraitStore
    manager: SessionManager
    executors: tuple[ThreadPoolExecutor | FaceChecker, ...]

    async def aclose(self) -> None:
        """Close every session, then the worker pools (waiting for work in flight)."""
        await self.manager.aclose()
        for executor in self.executors:
            await asyncio.to_thread(executor.shutdown, True, cancel_futures=True)


def one_torch_thread() -> None:
    """Initialiser of the session worker threads: torch runs each call on the calling thread.

    Live calls run many tiny model calls side by side (the speech gate scores 512 samples at a time,
    a motion model a few frames): extra intra-op threads only spin. With torch's default, one
    OpenMP worker per core, they burned ~0.25 cores per live call (measured). Set per worker thread,
    not for the process, so that nothing else in the process is throttled.
    """
    import torch

    torch.set_num_threads(1)


def create_app(
    config: ServerConfig,
    *,
    build_session: SessionBuilder | None = None,
    build_peer: PeerBuilder | None = None,
    analyze_portrait: Callable[[Path], object] | None = None,
) -> Starlette:
    """The Emote server as an ASGI app.

    Args:
        config: the server settings.
        build_session, build_peer: replace the real session or WebRTC peer (tests pass fakes).
        analyze_portrait: replaces the face analysis that checks uploads (tests pass a cheaper one);
            by default it runs in a worker process (:class:`~server.face_check.FaceChecker`).
    """
    install_video_encoding()
    render = ThreadPoolExecutor(config.render_threads, thread_name_prefix="emote-render",
                                initializer=one_torch_thread)
    prepare = ThreadPoolExecutor(1, thread_name_prefix="emote-prepare", initializer=one_torch_thread)
    speech = ThreadPoolExecutor(1, thread_name_prefix="emote-tts")
    faces = FaceChecker()
    default = config.portrait or default_portrait_path()
    portraits = PortraitStore(default, config.upload_dir, executor=prepare, analyze=analyze_portrait or faces,
                              default_name=None if config.portrait else "Grace Hopper",
                              max_uploads=config.max_stored_uploads)
    manager = SessionManager(config, portraits, render_executor=render, prepare_executor=prepare,
                             build_session=build_session, build_peer=build_peer)
    state = ServerState(config, portraits, manager, (render, prepare, speech, faces))
    routes = _Routes(state, speech)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await state.aclose()

    app = Starlette(
        routes=[
            Route("/", routes.index, methods=["GET"]),
            Route("/health", routes.health, methods=["GET"]),
            Route("/openapi.json", routes.openapi, methods=["GET"]),
            Route("/offer", routes.offer, methods=["POST"]),
            Route("/portraits", routes.list_portraits, methods=["GET"]),
            Route("/portraits", routes.upload_portrait, methods=["POST"]),
            Route("/portraits/{portrait_id}/image", routes.portrait_image, methods=["GET"]),
            Route("/sessions/{session_id}", routes.hang_up, methods=["DELETE"]),
            Route("/sessions/{session_id}/stats", routes.stats, methods=["GET"]),
            Route("/sessions/{session_id}/say", routes.say, methods=["POST"]),
            Route("/sessions/{session_id}/clear", routes.clear, methods=["POST"]),
            WebSocketRoute("/sessions/{session_id}/audio", agent_audio_endpoint),
            Mount("/static", StaticFiles(directory=WEB_CLIENT_DIR, check_dir=False), name="static"),
        ],
        exception_handlers={
            HTTPException: _http_error,
            InputError: _input_error,
            BusyError: _busy,
            DependencyError: _not_installed,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.emote = state
    return app


class _Routes:
    def __init__(self, state: ServerState, speech_executor: ThreadPoolExecutor) -> None:
        self.state = state
        self.config = state.config
        self.speech_executor = speech_executor
        self.openapi_doc = json.loads(OPENAPI_PATH.read_text())
        self.uploads_in_flight = 0

    async def index(self, request: Request) -> Response:
        page = WEB_CLIENT_DIR / "index.html"
        if page.is_file():
            return FileResponse(page, media_type="text/html")
        return HTMLResponse("<!doctype html><title>Emote</title><p>The Emote server is running, but the web client "
                            "(web_client/index.html) is missing. The API is described at "
                            "<a href='/openapi.json'>/openapi.json</a>.</p>")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok", "sessions": self.state.manager.count,
                             "max_sessions": self.config.max_sessions})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.openapi_doc)

    async def offer(self, request: Request) -> Response:
        body = await _json_object(request)
        sdp = _string_field(body, "sdp")
        sdp_type = _string_field(body, "type")
        portrait = _optional_string_field(body, "portrait")
        if sdp_type != "offer":
            raise BadRequestError(f"field 'type' must be \"offer\" (the server answers offers), got {sdp_type!r}")
        if not sdp.strip():
            raise BadRequestError("field 'sdp' is empty; send the browser's offer (RTCPeerConnection.createOffer)")
        managed, answer_sdp, answer_type = await self.state.manager.create_call(sdp, sdp_type, portrait)
        return JSONResponse({"sdp": answer_sdp, "type": answer_type, "session_id": managed.id})

    async def list_portraits(self, request: Request) -> Response:
        return JSONResponse({"portraits": [p.as_json() for p in self.state.portraits.list()]})

    async def upload_portrait(self, request: Request) -> Response:
        if self.uploads_in_flight >= self.config.max_concurrent_uploads:
            raise UploadsBusyError(self.config.max_concurrent_uploads, UPLOAD_RETRY_AFTER_S)
        self.uploads_in_flight += 1
        try:
            return await self._upload_portrait(request)
        finally:
            self.uploads_in_flight -= 1

    async def _upload_portrait(self, request: Request) -> Response:
        limit = self.config.max_upload_bytes
        content_type = request.headers.get("content-type", "")
        if not content_type.startswith("multipart/form-data"):
            raise BadRequestError("send the portrait as multipart/form-data with the image file in the field 'image'")
        _check_content_length(request, limit + MULTIPART_OVERHEAD_BYTES, what="the upload")
        limited = Request(request.scope, _limited_receive(request.receive, limit + MULTIPART_OVERHEAD_BYTES,
                                                          what="the upload"))
        async with limited.form(max_files=1, max_fields=8) as form:
            image = form.get("image")
            if not isinstance(image, UploadFile):
                raise BadRequestError("field 'image' is missing or not a file; "
                                      "send the portrait as a file in the multipart field 'image'")
            data = await image.read(limit + 1)
            filename = image.filename
        if len(data) > limit:
            raise PayloadTooLargeError(f"the image is larger than the upload limit of {limit} bytes; "
                                       "send a smaller photo")
        info, created = await self.state.portraits.add(data, filename)
        return JSONResponse({"portrait_id": info.id, "name": info.name, "image_url": info.as_json()["image_url"]},
                            status_code=201 if created else 200)

    async def portrait_image(self, request: Request) -> Response:
        info = self.state.portraits.get(request.path_params["portrait_id"])
        # Uploads are named by their content, so they never change; the default one may be replaced.
        cache = "no-cache" if info.source == "bundled" else "public, max-age=31536000, immutable"
        return FileResponse(info.path, media_type=info.media_type, headers={"Cache-Control": cache})

    async def hang_up(self, request: Request) -> Response:
        await self.state.manager.close_session(request.path_params["session_id"])
        return Response(status_code=204)

    async def stats(self, request: Request) -> Response:
        managed = self.state.manager.get(request.path_params["session_id"])
        stats = dataclasses.asdict(managed.session.stats())
        return JSONResponse({**session_summary(managed), **stats})

    async def say(self, request: Request) -> Response:
        managed = self.state.manager.get(request.path_params["session_id"])
        body = await _json_object(request)
        text = _string_field(body, "text")
        voice = _optional_string_field(body, "voice") or DEFAULT_VOICE
        if not _speakable(text):
            raise BadRequestError("field 'text' is empty (only spaces or invisible characters); give the words "
                                  "the avatar should say")
        if len(text) > self.config.max_say_chars:
            raise BadRequestError(f"field 'text' has {len(text)} characters; the limit is "
                                  f"{self.config.max_say_chars}: send long texts in several requests")
        if not tts.espeak_available():
            raise DependencyError("text-to-speech needs espeak-ng, which is not installed on the server; "
                                  "install the tts extra: pip install 'emote[tts]'")
        loop = asyncio.get_running_loop()
        try:
            samples, rate = await loop.run_in_executor(self.speech_executor, _synthesize_pcm16, text, voice)
        except OptionError as exc:
            raise BadRequestError(f"field 'voice': {exc}") from None
        try:
            ticket = managed.say(samples, rate)
        except SessionClosed:
            raise UnknownSessionError(managed.id) from None
        segment_id = None
        if ticket.ahead == 0:  # it starts now: its segment id is known as soon as its first second is queued
            with contextlib.suppress(TimeoutError):
                segment_id = await asyncio.wait_for(asyncio.shield(ticket.started), SAY_START_WAIT_S)
        return JSONResponse({"segment_id": segment_id, "duration_s": round(ticket.duration_s, 3),
                             "texts_ahead": ticket.ahead}, status_code=202)

    async def clear(self, request: Request) -> Response:
        managed = self.state.manager.get(request.path_params["session_id"])
        await managed.clear()
        return Response(status_code=204)


def _speakable(text: str) -> bool:
    """Whether ``text`` has anything but whitespace and invisible characters (controls, NUL, zero-width)."""
    return any(not ch.isspace() and not unicodedata.category(ch).startswith("C") for ch in text)


def _synthesize_pcm16(text: str, voice: str) -> tuple[np.ndarray, int]:
    """Speech for ``text`` as int16 (half the memory of float while it waits in the session's text queue)."""
    samples, rate = tts.synthesize(text, voice=voice)
    return pcm16(samples), rate


# -- request bodies ----------------------------------------------------------------------------

async def _json_object(request: Request) -> dict[str, Any]:
    _check_content_length(request, MAX_JSON_BYTES, what="the JSON body")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_JSON_BYTES:
            raise PayloadTooLargeError(f"the JSON body is larger than {MAX_JSON_BYTES} bytes")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the request body is not valid JSON ({exc}); send a JSON object") from None
    except RecursionError:
        raise BadRequestError("the request body nests JSON too deeply; send a flat JSON object") from None
    if not isinstance(data, dict):
        raise BadRequestError(f"the request body must be a JSON object, not {type(data).__name__}")
    return data


def _string_field(body: dict[str, Any], name: str) -> str:
    value = _optional_string_field(body, name)
    if value is None:
        raise BadRequestError(f"field '{name}' is missing from the JSON body")
    return value


def _optional_string_field(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"field '{name}' must be a string, got {type(value).__name__}")
    return value


def _check_content_length(request: Request, limit: int, *, what: str) -> None:
    """Refuse early, before reading, when the client says the body is too large."""
    header = request.headers.get("content-length")
    if header is None:
        return
    try:
        length = int(header)
    except ValueError:
        raise BadRequestError(f"the Content-Length header {header!r} is not a number") from None
    if length > limit:
        raise PayloadTooLargeError(f"{what} is {length} bytes; the limit is {limit}: send a smaller one")


def _limited_receive(receive: Receive, limit: int, *, what: str) -> Callable[[], Awaitable[Message]]:
    """``receive`` that raises :class:`PayloadTooLargeError` once more than ``limit`` body bytes arrived
    (a client may send more than its Content-Length said, or none at all)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLargeError(f"{what} is larger than the limit of {limit} bytes: send a smaller one")
        return message

    return wrapped


# -- errors --------------------------------------------------------------------------------------

def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return _error(exc.status_code, str(exc.detail), dict(exc.headers or {}))


async def _input_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, NotFoundError):
        return _error(404, str(exc))
    if isinstance(exc, PayloadTooLargeError):
        return _error(413, str(exc))
    if isinstance(exc, PortraitError):
        return _error(422, str(exc))
    return _error(400, str(exc))


async def _busy(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BusyError)
    status = 429 if isinstance(exc, SayQueueFullError) else 503
    return _error(status, str(exc), {"Retry-After": str(exc.retry_after_s)})


async def _not_installed(request: Request, exc: Exception) -> Response:
    return _error(501, str(exc))


async def _internal_error(request: Request, exc: Exception) -> Response:
    # Starlette logs the exception and re-raises it to the server after this response is sent.
    return _error(500, "internal server error; the server log has the details")
