"""The portraits a session can animate: the default one and those people upload.

``GET /portraits`` lists them, ``POST /portraits`` adds one, ``POST /offer`` names one by id. The
default portrait (the bundled Grace Hopper photograph, or ``emote serve --portrait``) has the id
``default``; an upload's id is the first 16 hex digits of the SHA-256 of its bytes, so uploading the
same photo twice gives the same id. Uploads are checked before they are kept: the image is decoded
and the face analysed (:func:`model.face.portrait.analyze_portrait`, which also fills the analysis cache
the session will read; the app runs it in a worker process, :mod:`server.face_check`), and a
picture without a usable face is refused with the analyser's message. Accepted files are written
atomically (temporary file, then rename) under the data folder with a small JSON sidecar holding
the uploaded file name, and are found again after a restart. At most ``max_uploads`` are kept: a
new one beyond that deletes the least recently uploaded, with its cached analysis (never the
default portrait, nor its analysis).

The renderers' prepared portraits outlive a session too (:class:`PreparedPortraits`), so that starting a
session does not stall the others (warm speech gates: :mod:`server.speech_gates`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from PIL import Image, UnidentifiedImageError

from emote.model.errors import NotAnImageError, PortraitError
from emote.model.face.portrait import analyze_portrait, cached_analysis_path
from emote.model.render.interface import FrameRenderer, PreparedPortrait, Renderer
from emote.model.render.meshwarp.reference import load_mouths
from emote.model.render.registry import make_renderer, prepare_portrait
from emote.server.errors import UnknownPortraitError
from emote.server.portrait_clips import CLIP_SUFFIX, MOUTHS_SUFFIX, is_video

DEFAULT_ID = "default"
ID_HEX_DIGITS = 16
# Formats kept as they are (the browser can show them); the suffix decides the served media type.
_SUFFIXES = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp", "TIFF": ".tif"}
_MEDIA_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
                ".gif": "image/gif", ".bmp": "image/bmp", ".tif": "image/tiff", ".tiff": "image/tiff"}
_ID_RE = re.compile(rf"^[0-9a-f]{{{ID_HEX_DIGITS}}}$")
_MAX_NAME_CHARS = 120

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PortraitInfo:
    """One portrait the server can animate.

    Attributes:
        id: ``"default"`` or 16 hex digits of the image's SHA-256.
        name: a human-readable name (the uploaded file's name without folders, or the file's stem).
        source: ``"bundled"`` for the default portrait, ``"uploaded"`` otherwise.
        path: the image file on the server's disk.
        media_type: the image's MIME type.
        reference: real mouths of the person (uploaded as a clip, :mod:`~server.portrait_clips`), or None.
    """

    id: str
    name: str
    source: Literal["bundled", "uploaded"]
    path: Path
    media_type: str
    reference: Path | None = None

    def as_json(self) -> dict[str, str]:
        """The entry ``GET /portraits`` returns."""
        return {"id": self.id, "name": self.name, "source": self.source, "image_url": f"/portraits/{self.id}/image"}


class PortraitStore:
    """The default portrait plus the uploads kept in ``upload_dir``.

    Args:
        default_portrait: the image animated when an offer names no portrait.
        upload_dir: folder for uploads (created on the first one).
        executor: where face analysis and the deletion of evicted uploads run (never on the event
            loop). Give it one thread: jobs must run one at a time, in order, so that deleting an
            evicted upload never overlaps its being uploaded again. ``None`` = the loop's default.
        analyze: checks an image file and raises :class:`PortraitError` when it cannot be animated;
            defaults to running the face analysis. Tests pass a cheaper one.
        default_name: how the default portrait is listed (default: its file name without suffix).
        max_uploads: uploads kept; adding one more deletes the least recently uploaded (uploading the
            same file again counts as uploading it now). The default portrait is never deleted.
    """

    def __init__(
        self,
        default_portrait: Path,
        upload_dir: Path,
        *,
        executor: Executor | None = None,
        analyze: Callable[[Path], object] | None = None,
        default_name: str | None = None,
        max_uploads: int = 200,
    ) -> None:
        self.upload_dir = Path(upload_dir)
        self.max_uploads = max_uploads
        self._executor = executor
        self._analyze = analyze or _analyze_face
        default = Path(default_portrait)
        self._default = PortraitInfo(DEFAULT_ID, default_name or default.stem, "bundled", default, _media_type(default))
        self._uploaded: dict[str, PortraitInfo] = {}  # least recently uploaded first
        # The default portrait's cached analysis stays even if the same photo was uploaded and evicted.
        self._keep: set[Path] = set()
        with contextlib.suppress(OSError):
            self._keep.add(cached_analysis_path(default, face_index=0))
        self._load_existing()
        for info in self._evict():
            self._delete(info)

    @property
    def default(self) -> PortraitInfo:
        """The portrait used when an offer names none."""
        return self._default

    def list(self) -> builtins.list[PortraitInfo]:
        """The default portrait first, then the uploads in the order they were added (oldest first)."""
        return [self._default, *self._uploaded.values()]

    def get(self, portrait_id: str | None) -> PortraitInfo:
        """The portrait with this id (``None`` = the default).

        Raises:
            UnknownPortraitError: no portrait has that id.
        """
        if portrait_id is None or portrait_id == DEFAULT_ID:
            return self._default
        try:
            return self._uploaded[portrait_id]
        except KeyError:
            raise UnknownPortraitError(portrait_id) from None

    async def add(self, data: bytes, filename: str | None) -> tuple[PortraitInfo, bool]:
        """Check an uploaded image and keep it.

        Args:
            data: the file's bytes.
            filename: the name the client gave it (only used for messages and listing).

        Returns:
            The portrait, and whether it is new (False when the same bytes were uploaded before).

        Raises:
            PortraitError: (or a subclass) not an image, no face, face too small; the message names
                the uploaded file and says what to do.
        """
        name = _clean_name(filename)
        portrait_id = hashlib.sha256(data).hexdigest()[:ID_HEX_DIGITS]
        if (known := self._uploaded.pop(portrait_id, None)) is not None:
            self._uploaded[portrait_id] = known  # uploaded again: now the most recent
            with contextlib.suppress(OSError):
                os.utime(known.path)  # the order survives a restart
            return known, False
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(self._executor, self._check_and_save, data, name, portrait_id)
        # Two identical uploads may both get here; the second finds the same file and entry.
        info = self._uploaded.setdefault(portrait_id, info)
        for old in self._evict():
            # Hashing and deleting a 10 MiB file would stall the event loop for tens of milliseconds;
            # shielded, so that a client hanging up does not leave the files behind.
            await asyncio.shield(loop.run_in_executor(self._executor, self._delete, old))
        return info, True

    def _evict(self) -> builtins.list[PortraitInfo]:
        """Forget the least recently uploaded portraits beyond :attr:`max_uploads`; returns them (their
        files are deleted by :func:`_delete_upload`, off the event loop)."""
        evicted = []
        while len(self._uploaded) > self.max_uploads:
            oldest = next(iter(self._uploaded.values()))
            del self._uploaded[oldest.id]
            evicted.append(oldest)
            log.info("portrait %s (%s) deleted: more than %d uploads are kept", oldest.id, oldest.name,
                     self.max_uploads)
        return evicted

    def _delete(self, info: PortraitInfo) -> None:
        """Delete an evicted upload's image, name file and cached face analysis (on the executor)."""
        if info.id in self._uploaded:
            return  # uploaded again since it was evicted
        paths = [info.path, info.path.with_suffix(".json"), info.path.with_suffix(MOUTHS_SUFFIX)]
        with contextlib.suppress(OSError):
            paths.append(cached_analysis_path(info.path, face_index=0))  # what the face analysis cached
        for path in paths:
            if path not in self._keep:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _check_and_save(self, data: bytes, name: str, portrait_id: str) -> PortraitInfo:
        """Runs on a worker thread: sniff the format, analyse the face, write the file atomically."""
        try:
            with Image.open(io.BytesIO(data)) as img:
                fmt = img.format or ""
        except UnidentifiedImageError:
            if is_video(data):
                return self._save_clip(data, name, portrait_id)
            raise NotAnImageError(f"{name}: not a readable image or video (no format recognised in its bytes); "
                                  "upload a JPEG, PNG or WebP photo, or a short clip of the person talking") from None
        except Image.DecompressionBombError:
            raise NotAnImageError(f"{name}: the picture has too many pixels to be an image this server "
                                  "reads; upload a photo of at most a few thousand pixels a side") from None
        except (OSError, ValueError) as exc:
            raise NotAnImageError(f"{name}: not a readable image ({exc}); upload a JPEG, PNG or WebP photo") from exc
        suffix = _SUFFIXES.get(fmt)
        if suffix is None:
            raise NotAnImageError(f"{name}: {fmt or 'this'} images are not accepted; upload a JPEG, PNG or WebP photo")
        final = self.upload_dir / f"{portrait_id}{suffix}"
        tmp = self.upload_dir / f".{portrait_id}.{uuid.uuid4().hex}.tmp{suffix}"
        self._analyse_and_keep(data, name, portrait_id, tmp, [(tmp, final)])
        log.info("portrait %s (%s) uploaded, %d bytes", portrait_id, name, len(data))
        return PortraitInfo(portrait_id, name, "uploaded", final, _media_type(final))

    def _save_clip(self, data: bytes, name: str, portrait_id: str) -> PortraitInfo:
        """Runs on a worker thread: a clip's portrait frame and reference mouths (:mod:`~server.portrait_clips`)."""
        final = self.upload_dir / f"{portrait_id}.png"
        tmp = self.upload_dir / f".{portrait_id}.{uuid.uuid4().hex}{CLIP_SUFFIX}"
        mouths = final.with_suffix(MOUTHS_SUFFIX)
        self._analyse_and_keep(data, name, portrait_id, tmp, [(tmp.with_suffix(MOUTHS_SUFFIX), mouths),
                                                             (tmp.with_suffix(".png"), final)])
        log.info("portrait %s (%s) uploaded as a clip, %d bytes", portrait_id, name, len(data))
        return PortraitInfo(portrait_id, name, "uploaded", final, _media_type(final), mouths)

    def _analyse_and_keep(self, data: bytes, name: str, portrait_id: str, tmp: Path,
                          moves: builtins.list[tuple[Path, Path]]) -> None:
        """Write ``data`` to ``tmp``, analyse it, then write the name file and rename what the analysis made
        (``moves``: temporary → final, the portrait last); nothing temporary is left, whatever happens."""
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        try:
            tmp.write_bytes(data)
            try:
                self._analyze(tmp)
            except PortraitError as exc:
                # The analyser names the file it read; the person knows it by the name they uploaded.
                raise type(exc)(str(exc).replace(str(tmp), name)) from None
            _write_atomic(self.upload_dir / f"{portrait_id}.json", json.dumps({"name": name}).encode())
            for source, target in moves:
                os.replace(source, target)
        finally:
            for path in [tmp, *(source for source, _ in moves)]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _load_existing(self) -> None:
        if not self.upload_dir.is_dir():
            return
        found = []
        for path in self.upload_dir.iterdir():
            if path.name.startswith(".") or path.suffix not in _MEDIA_TYPES or not _ID_RE.match(path.stem):
                continue
            name = path.stem
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                name = _clean_name(json.loads((path.with_suffix(".json")).read_text())["name"])
            mouths = path.with_suffix(MOUTHS_SUFFIX)
            found.append((path.stat().st_mtime, PortraitInfo(path.stem, name, "uploaded", path, _media_type(path),
                                                              mouths if mouths.is_file() else None)))
        for _, info in sorted(found, key=lambda item: item[0]):
            self._uploaded[info.id] = info


class PreparedPortraits:
    """Prepared portraits, kept for the next session on the same portrait.

    A session needs a frame renderer of its own (it keeps per-frame buffers), but what that is built
    from depends only on the portrait and the video size: the analysis (cached on disk, ~10 ms to
    load), the framing, textures, meshes and deformer (~60-90 ms more). The renderer's immutable
    :class:`~emote.model.render.interface.PreparedPortrait` is kept for the :attr:`entries` portraits
    used last and shared by the sessions that animate them. Thread-safe (sessions are prepared on a
    worker thread).
    """

    def __init__(self, entries: int = 4, renderer: Renderer[Any] | None = None) -> None:
        self.entries = entries
        self.renderer_kind = renderer or make_renderer()
        self._kept: OrderedDict[tuple[str, str, int], PreparedPortrait] = OrderedDict()
        self._lock = threading.Lock()

    def renderer(self, info: PortraitInfo, size: int) -> tuple[PreparedPortrait, FrameRenderer]:
        """The prepared portrait (shared, read-only) and a new frame renderer for it, at ``size``."""
        key = (info.id, str(info.path), size)
        with self._lock:
            prepared = self._kept.get(key)
            if prepared is not None:
                self._kept.move_to_end(key)
        if prepared is None:
            kind = self.renderer_kind  # a portrait uploaded as a clip is drawn with its own mouths
            if info.reference is not None:
                kind = make_renderer(kind.name, reference=load_mouths(info.reference))
            prepared = prepare_portrait(info.path, size=size, face_index=0, renderer=kind)
            with self._lock:
                self._kept[key] = prepared
                while len(self._kept) > self.entries:
                    self._kept.popitem(last=False)
        return prepared, self.renderer_kind.session(prepared)


def _analyze_face(path: Path) -> object:
    # face_index=0: the largest face, without the several-faces warning (the same cache entry as None).
    return analyze_portrait(path, face_index=0)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _clean_name(filename: str | None) -> str:
    """The uploaded file's base name, printable and short; ``upload`` when none was given."""
    base = re.split(r"[\\/]", filename or "")[-1]
    clean = "".join(ch for ch in base if ch.isprintable()).strip()
    return clean[:_MAX_NAME_CHARS] or "upload"


def _media_type(path: Path) -> str:
    return _MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream")
