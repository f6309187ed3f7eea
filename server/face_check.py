"""Face analysis of uploaded portraits in a separate process, so that live calls never stall.

MediaPipe holds the GIL through parts of its work: run on a thread of the server, the analysis of
one upload stalled the event loop 30-60 ms at a time (measured with a 5 ms ticker), long enough to
make another caller's frames late; from a worker process the loop's worst delay was 3.7 ms.
:class:`FaceChecker` runs it in one worker process, started on the first upload (about a second)
and kept for the next. The worker writes the analysis into the same on-disk cache
(``EMOTE_CACHE_DIR``), so the session that then uses the portrait reads it from there without
MediaPipe. A worker that dies (out of memory on a huge picture, killed) is replaced on the next call.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from emote.model.errors import PortraitError

log = logging.getLogger(__name__)

#: An analysis takes 0.1-0.6 s (a clip's 30 s: about 15 s); a worker this slow is stuck and is replaced.
TIMEOUT_S = 60.0


def _ignore_sigint() -> None:
    """The worker's initializer: Ctrl-C on the server's terminal reaches its whole process group, and
    the server shuts the worker down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def check_portrait_file(path: str) -> int:
    """Runs in the worker: analyse the largest face (filling the cache); returns the worker's pid. A clip
    (:data:`~server.portrait_clips.CLIP_SUFFIX`) first gives its portrait frame and reference mouths
    (:func:`~server.portrait_clips.prepare_clip`), and the frame is analysed."""
    from emote.model.face.portrait import analyze_portrait
    from emote.server.portrait_clips import CLIP_SUFFIX, prepare_clip

    if path.endswith(CLIP_SUFFIX):
        path = str(prepare_clip(Path(path))[0])
    analyze_portrait(path, face_index=0)  # face_index=0: the largest, no several-faces warning
    return os.getpid()


class FaceChecker:
    """Callable ``(path) -> pid``: raises what the face analysis raises for a picture it cannot use."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False

    def __call__(self, path: Path) -> int:
        for attempt in range(2):
            pool = self._get_pool()
            try:
                return pool.submit(check_portrait_file, os.fspath(path)).result(timeout=TIMEOUT_S)
            except FutureTimeout:
                log.warning("the face analysis worker took over %.0f s; starting another", TIMEOUT_S)
                self._drop(pool, kill=True)
                raise PortraitError(f"{path}: the face analysis did not finish in {TIMEOUT_S:.0f} s; try "
                                    "a smaller photo, a few thousand pixels a side at most") from None
            except BrokenProcessPool:
                log.warning("the face analysis worker died; starting another")
                self._drop(pool)
                if attempt:
                    raise PortraitError(f"{path}: the face analysis stopped twice on this picture (out of "
                                        "memory?); try a smaller photo, a few thousand pixels a side at most") from None
        raise AssertionError("unreachable")

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("the face analysis worker was shut down")
            if self._pool is None:
                # spawn, not fork: the server has threads (uvicorn, torch, aiortc) that fork would copy badly.
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_ignore_sigint)
            return self._pool

    def _drop(self, pool: ProcessPoolExecutor, *, kill: bool = False) -> None:
        with self._lock:
            if self._pool is pool:
                self._pool = None
        if kill:
            for process in list(getattr(pool, "_processes", {}).values()):  # no public way to stop a stuck one
                process.kill()
        pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop the worker (the signature of ``Executor.shutdown``, so the app closes it with its pools)."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)
