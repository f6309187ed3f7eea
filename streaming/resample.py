"""Streaming sample-rate conversion for live audio.

Live audio arrives in small blocks at whatever rate its source has: 48 kHz
from a browser's Opus track, 16 or 24 kHz from an agent's TTS, 22.05 kHz from
espeak-ng. The session keeps its timeline at 48 kHz (what WebRTC sends back)
and feeds the motion model at 16 kHz, so blocks are converted on the way in
and out. :class:`StreamResampler` wraps libswresample (through PyAV), which
keeps its filter state between calls: consecutive blocks convert as one
continuous signal, without clicks or gaps at block edges. It holds back a few
samples of filter delay; :meth:`StreamResampler.flush` releases them at the
end of a stream.
"""

from __future__ import annotations

import av
import numpy as np

MIN_RATE = 8000
MAX_RATE = 192000


def to_float32(samples: np.ndarray) -> np.ndarray:
    """Mono samples as float32 in [-1, 1]: int16 is scaled, float passes through.

    Args:
        samples: (N,) int16 or float mono audio.

    Raises:
        ValueError: the array is not one-dimensional or of a sample type we read.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"audio samples must be one channel, a 1-D array; got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if samples.dtype.kind == "f":
        return samples.astype(np.float32, copy=False)
    raise ValueError(f"audio samples must be int16 or float, got {samples.dtype}")


class StreamResampler:
    """Converts a continuous mono stream from one rate to another, block by block.

    Args:
        in_rate: sample rate of the blocks given to :meth:`process`.
        out_rate: sample rate of the blocks it returns.
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        for name, rate in (("in_rate", in_rate), ("out_rate", out_rate)):
            if not MIN_RATE <= int(rate) <= MAX_RATE:
                raise ValueError(f"{name}={rate}: sample rates from {MIN_RATE} to {MAX_RATE} Hz are supported")
        self.in_rate = int(in_rate)
        self.out_rate = int(out_rate)
        self._resampler = (
            None if self.in_rate == self.out_rate
            else av.AudioResampler(format="flt", layout="mono", rate=self.out_rate)
        )  # fmt: skip

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Convert the next block.

        Args:
            samples: (N,) mono block at ``in_rate`` (int16 or float).

        Returns:
            (M,) float32 at ``out_rate``; M is about N * out_rate / in_rate
            (less at the start, while the filter fills).
        """
        x = to_float32(samples)
        if self._resampler is None:
            return x.copy()
        if len(x) == 0:
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(x)[None, :], format="flt", layout="mono")
        frame.sample_rate = self.in_rate
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        """The samples still held in the filter (call once, at the end of the stream)."""
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out = self._collect(self._resampler.resample(None))
        self._resampler = av.AudioResampler(format="flt", layout="mono", rate=self.out_rate)
        return out

    @staticmethod
    def _collect(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)
