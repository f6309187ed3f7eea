"""The `still` motion generator: the portrait exactly as it is, never moving.

The floor of every evaluation metric: whatever the audio, each frame shows
the photo's own pose and expression. A generator whose lip sync, blinks or
head motion do not beat this one has learned nothing from the audio.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from emote.model.motion.interface import AudioWindow, MotionChunk


@dataclass(frozen=True)
class StillState:
    """The portrait's coefficients and the next frame expected."""

    rest: np.ndarray
    next_frame: int


class StillGenerator:
    """A :class:`~model.motion.interface.MotionGenerator` whose every frame is the portrait at rest."""

    name = "still"
    window_frames = 1
    overlap_frames = 0
    context_ms = 0.0
    lookahead_ms = 0.0
    cut_invariant = True

    def initial_state(self, rest: np.ndarray, seed: int) -> StillState:
        return StillState(rest=np.asarray(rest, np.float32).copy(), next_frame=0)

    def generate(self, window: AudioWindow, state: StillState) -> tuple[MotionChunk, StillState]:
        if window.start_frame != state.next_frame:
            raise ValueError(f"window starts at frame {window.start_frame}, expected {state.next_frame}")
        chunk = MotionChunk.still(window.start_frame, window.n_frames, window.fps, state.rest)
        return chunk, dataclasses.replace(state, next_frame=window.start_frame + window.n_frames)
