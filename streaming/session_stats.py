"""What a live session reports about itself: counters and latency percentiles.

The latency of a frame is the time from the arrival of the audio it shows
to the moment the frame starts playing, i.e. leaves the session for the video
encoder. It covers the windower's lookahead, waiting for the rest of the
window, the model and renderer, and the playout queue. It is measured for
live audio only: microphone audio, and speech that arrived while the pipeline
was waiting for it (an agent streaming its TTS as it is generated). Speech
pushed ahead of time waits for the speech before it by design, so its queueing
is not latency. The last ``capacity`` values are kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np


class LatencyStats:
    """A bounded record of latencies in milliseconds."""

    def __init__(self, capacity: int = 3000) -> None:
        self._values: deque[float] = deque(maxlen=capacity)

    def add(self, ms: float) -> None:
        self._values.append(float(ms))

    def __len__(self) -> int:
        return len(self._values)

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile, or ``None`` before any frame carried audio."""
        if not self._values:
            return None
        return float(np.percentile(np.fromiter(self._values, float), q))


@dataclass(frozen=True)
class SessionStats:
    """A snapshot of a session.

    Attributes:
        frames: video frame periods played so far.
        late_frames: periods where nothing was ready (the last image repeated).
        dropped_frames: frames without speech dropped to catch up after late ones.
        skipped_periods: periods skipped because a track fell behind the clock.
        queued_frames: rendered frames waiting to play.
        queued_speech_s: speech waiting to be rendered.
        step_ms_mean: mean time of one 20 ms tick through the model and renderer.
        latency_ms_p50: median audio-arrival-to-frame latency (None: no audio yet).
        latency_ms_p95: its 95th percentile.
        latency_samples: how many frames the percentiles cover.
    """

    frames: int
    late_frames: int
    dropped_frames: int
    skipped_periods: int
    queued_frames: int
    queued_speech_s: float
    step_ms_mean: float
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    latency_samples: int
