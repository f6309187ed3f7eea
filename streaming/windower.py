"""Cuts a stream of 16 kHz audio into windows that drive whole video frames.

Both the offline renderer and the live server push audio here in chunks of
any size and get back :class:`~model.motion.interface.AudioWindow` objects, each
covering a run of video frames plus the context before and the lookahead
after them that the motion generator asked for. A window is released as soon
as its lookahead has arrived; ``finish()`` pads the end of the stream with
silence and releases the rest, so the stream yields exactly
``round(duration * fps)`` frames. Only the samples still needed are kept, so
memory stays bounded however long the stream runs.
"""

from __future__ import annotations

import numpy as np

from emote.model.motion.interface import AudioWindow, frame_start_sample


class AudioWindower:
    """Turns pushed audio into frame-aligned windows.

    Args:
        fps: video frame rate.
        window_frames: frames per window (the last window may be shorter).
        context_ms: audio each window must hold before its first frame.
        lookahead_ms: audio each window must hold after its last frame.
        sample_rate: sample rate of the pushed audio.
    """

    def __init__(
        self,
        *,
        fps: float,
        window_frames: int,
        context_ms: float,
        lookahead_ms: float,
        sample_rate: int = 16000,
    ) -> None:
        if fps <= 0 or window_frames < 1:
            raise ValueError(f"fps must be > 0 and window_frames >= 1, got {fps} and {window_frames}")
        self.fps = fps
        self.window_frames = window_frames
        self.sample_rate = sample_rate
        self.context = int(np.ceil(context_ms * sample_rate / 1000.0))
        self.lookahead = int(np.ceil(lookahead_ms * sample_rate / 1000.0))
        self.next_frame = 0
        self.total_samples = 0
        self._buf = np.zeros(0, np.float32)
        self._buf_start = 0  # stream index of _buf[0]
        self._finished = False

    def _start(self, frame: int) -> int:
        return frame_start_sample(frame, self.fps, self.sample_rate)

    def push(self, samples: np.ndarray) -> list[AudioWindow]:
        """Add audio; returns the windows that became complete.

        Args:
            samples: (N,) float32 mono audio at ``sample_rate``.
        """
        if self._finished:
            raise RuntimeError("push() after finish()")
        samples = np.asarray(samples, np.float32).reshape(-1)
        self._buf = np.concatenate([self._buf, samples])
        self.total_samples += len(samples)
        out = []
        while self._start(self.next_frame + self.window_frames) + self.lookahead <= self.total_samples:
            out.append(self._cut(self.window_frames, final=False))
        return out

    def silence_pending(self) -> None:
        """Replace the audio pushed for frames not yet released with silence.

        An interruption uses this: speech already pushed as lookahead must not
        reach the next frames. Context before the next frame is kept, so the
        motion stays continuous.
        """
        cut = self._start(self.next_frame) - self._buf_start
        if cut < len(self._buf):
            self._buf[max(cut, 0) :] = 0.0

    def finish(self) -> list[AudioWindow]:
        """End of stream: pad with silence and return the remaining windows."""
        if self._finished:
            return []
        self._finished = True
        total_frames = int(round(self.total_samples * self.fps / self.sample_rate))
        out = []
        while self.next_frame < total_frames:
            n = min(self.window_frames, total_frames - self.next_frame)
            out.append(self._cut(n, final=self.next_frame + n >= total_frames))
        if not out:  # push() already released every frame: mark the end with an empty window
            out.append(self._cut(0, final=True))
        return out

    def _cut(self, n_frames: int, final: bool) -> AudioWindow:
        first = self._start(self.next_frame) - self.context
        last = self._start(self.next_frame + n_frames) + self.lookahead
        window = np.zeros(last - first, np.float32)
        # Copy what the buffer holds; positions before the stream or after its end stay zero.
        lo, hi = max(first, self._buf_start), min(last, self._buf_start + len(self._buf))
        if hi > lo:
            window[lo - first : hi - first] = self._buf[lo - self._buf_start : hi - self._buf_start]
        win = AudioWindow(
            start_frame=self.next_frame, n_frames=n_frames, fps=self.fps, sample_rate=self.sample_rate,
            first_sample=first, samples=window, final=final,
        )  # fmt: skip
        self.next_frame += n_frames
        keep_from = max(self._buf_start, self._start(self.next_frame) - self.context)
        self._buf = self._buf[keep_from - self._buf_start :]
        self._buf_start = keep_from
        return win
