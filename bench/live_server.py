"""The live benchmark's server: ``python -m bench.live_server TIMINGS.json [emote serve options]``.

This is ``emote serve`` itself (:func:`server.cli.main`: uvicorn with uvloop, the real session manager,
renderer, speech gate and :class:`~server.webrtc.AvatarPeer`), run in its own process as it is deployed,
with two timing hooks added around aiortc's video sending path and nothing else changed:

- :class:`server.tracks.AvatarVideoTrack` ``recv()`` stamps each frame it returns (``frame.opaque``) with
  ``time.monotonic()``: the moment the frame left the session for the encoder;
- :class:`aiortc.codecs.vpx.Vp8Encoder` ``encode()`` records, per frame, how long the frame waited for an
  executor thread after ``recv()`` returned, how long the encoding took (wall and thread CPU time,
  any pixel format conversion aiortc does included) and the encoded size.

aiortc sends the RTP packets right after ``encode()`` returns (packetising and SRTP take well under a
millisecond), so ``recv()`` → encoded is the server's share of a frame's way out after the session.
When the server stops (SIGTERM), the records go to ``TIMINGS.json`` as rows of
``[end time.monotonic(), encoder id, wait_ms, encode_ms, cpu_ms, bytes]``, with the names of the
process's Python threads by kernel thread id (noted twice a second), so that the benchmark can tell
from ``/proc`` which thread pool spent the CPU time.
"""

from __future__ import annotations

import gc
import json
import math
import sys
import threading
import time
from pathlib import Path
from typing import Any

#: One row per encoded video frame (appended from aiortc's executor threads; list.append is atomic).
RECORDS: list[tuple[float, int, float, float, float, int]] = []
#: One row per garbage collection: [end time.monotonic(), generation, milliseconds]. A collection
#: holds the GIL throughout, so every Python thread of the server (event loop, render pool) stalls.
GC_PAUSES: list[tuple[float, int, float]] = []
#: Kernel thread id -> Python thread name, of every thread seen alive.
THREAD_NAMES: dict[int, str] = {}


def note_thread_names() -> None:
    """Keep :data:`THREAD_NAMES` up to date (on a daemon thread; Python does not name kernel threads)."""
    while True:
        THREAD_NAMES.update({t.native_id: t.name for t in threading.enumerate() if t.native_id is not None})
        time.sleep(0.5)


def install_hooks() -> None:
    """Wrap the video track's ``recv`` and the VP8 encoder's ``encode`` with timers (see the module docstring)."""
    from aiortc.codecs import vpx

    from emote.server import tracks

    track_recv = tracks.AvatarVideoTrack.recv
    vp8_encode = vpx.Vp8Encoder.encode

    async def recv(self: Any) -> Any:
        frame = await track_recv(self)
        frame.opaque = time.monotonic()
        return frame

    def encode(self: Any, frame: Any, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        t0, c0 = time.monotonic(), time.thread_time()
        result = vp8_encode(self, frame, force_keyframe)
        t1, c1 = time.monotonic(), time.thread_time()
        left = frame.opaque if isinstance(frame.opaque, float) else math.nan
        RECORDS.append((t1, id(self), 1000 * (t0 - left), 1000 * (t1 - t0), 1000 * (c1 - c0),
                        sum(len(p) for p in result[0])))
        return result

    started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            GC_PAUSES.append((time.monotonic(), info["generation"], 1000 * (time.perf_counter() - started[0])))

    gc.callbacks.append(on_gc)
    tracks.AvatarVideoTrack.recv = recv  # type: ignore[method-assign]
    vpx.Vp8Encoder.encode = encode  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print(__doc__.split("\n\n")[0], file=sys.stderr)
        return 2
    out, serve_options = Path(args[0]), args[1:]
    install_hooks()
    threading.Thread(target=note_thread_names, name="bench-thread-names", daemon=True).start()
    from emote.server.cli import main as emote_main

    try:
        return emote_main(["serve", *serve_options])
    finally:
        rows = [[round(v, 4) if isinstance(v, float) else v for v in row] for row in list(RECORDS)]
        pauses = [[round(t, 4), gen, round(ms, 3)] for t, gen, ms in list(GC_PAUSES)]
        out.write_text(json.dumps({"encode": rows, "threads": dict(THREAD_NAMES), "gc": pauses}))


if __name__ == "__main__":
    sys.exit(main())
