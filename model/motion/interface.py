"""The motion interface between audio-to-motion generators and the renderer.

A *motion frame* describes one video frame: the head pose relative to the
portrait plus Apple ARKit's 52 expression coefficients (absolute values in
[0, 1], the same scale MediaPipe's Face Landmarker measures on real video).
Generators produce :class:`MotionChunk` objects window by window and carry an
explicit, frozen state from one window to the next; they declare their window
size, so that the offline renderer and the streaming server cut the audio the
same way, drive the very same code and get the same frames. The renderer only
ever sees motion; it never sees audio.

Conventions
    pose[:, 0:3]  yaw, pitch, roll in degrees *relative to the portrait*
                  (0 = as in the photo); yaw > 0 turns the face to the
                  viewer's right, pitch > 0 tips the chin down (a nod),
                  roll > 0 tilts the head clockwise on screen.
    pose[:, 3:5]  head translation x, y in units of the face width
                  (x to the right, y down), relative to the portrait.
    pose[:, 5]    head scale relative to the portrait (1.0 = unchanged).
    coeffs        (T, 52) ARKit blendshape weights in ``ARKIT_NAMES`` order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

#: ARKit's 52 blendshapes. MediaPipe reports 51 of them (all but tongueOut)
#: plus a ``_neutral`` score, by name; :func:`coeffs_from_named` maps them.
ARKIT_NAMES: tuple[str, ...] = (
    "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose", "mouthDimpleLeft", "mouthDimpleRight", "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft", "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper",
    "mouthSmileLeft", "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight", "noseSneerLeft", "noseSneerRight",
    "tongueOut",
)  # fmt: skip
N_COEFFS = len(ARKIT_NAMES)
COEFF_INDEX: dict[str, int] = {name: i for i, name in enumerate(ARKIT_NAMES)}
POSE_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll", "x", "y", "scale")
N_POSE = len(POSE_NAMES)
assert N_COEFFS == 52


def coeffs_from_named(scores: dict[str, float]) -> np.ndarray:
    """ARKit coefficient vector (52,) from a ``{name: score}`` mapping.

    Names that are not ARKit blendshapes (MediaPipe's ``_neutral``) are ignored;
    missing ones (``tongueOut``) are 0.
    """
    out = np.zeros(N_COEFFS, np.float32)
    for name, value in scores.items():
        i = COEFF_INDEX.get(name)
        if i is not None:
            out[i] = value
    return out


#: The coefficients that part the lips. A portrait may be taken mid-word or smiling with its teeth
#: showing; a generator's rest is that face with these at 0, so silence shows the mouth shut and speech
#: opens it from shut (a rest that kept them would read speech as the mouth closing).
LIP_OPENERS: tuple[str, ...] = ("jawOpen", "mouthUpperUpLeft", "mouthUpperUpRight", "mouthLowerDownLeft",
                                "mouthLowerDownRight")


def closed_mouth(rest: np.ndarray) -> np.ndarray:
    """A copy of the (52,) ``rest`` coefficients with the lips shut (:data:`LIP_OPENERS` at 0)."""
    out = np.asarray(rest, np.float32).copy()
    out[[COEFF_INDEX[name] for name in LIP_OPENERS]] = 0.0
    return out


def neutral_pose(n_frames: int) -> np.ndarray:
    """(n_frames, 6) pose array meaning "exactly as in the portrait"."""
    pose = np.zeros((n_frames, N_POSE), np.float32)
    pose[:, 5] = 1.0
    return pose


@dataclass(frozen=True)
class MotionChunk:
    """Motion for ``len(self)`` consecutive video frames.

    Attributes:
        start_frame: index of the first frame in the whole stream.
        fps: frames per second.
        pose: (T, 6) float32, see the module docstring.
        coeffs: (T, 52) float32 ARKit weights in ``ARKIT_NAMES`` order.
    """

    start_frame: int
    fps: float
    pose: np.ndarray
    coeffs: np.ndarray

    def __post_init__(self) -> None:
        if self.pose.ndim != 2 or self.pose.shape[1] != N_POSE:
            raise ValueError(f"pose must be (T, {N_POSE}), got {self.pose.shape}")
        if self.coeffs.shape != (self.pose.shape[0], N_COEFFS):
            raise ValueError(f"coeffs must be ({self.pose.shape[0]}, {N_COEFFS}), got {self.coeffs.shape}")

    def __len__(self) -> int:
        return int(self.pose.shape[0])

    @classmethod
    def still(cls, start_frame: int, n_frames: int, fps: float, rest: np.ndarray) -> MotionChunk:
        """Frames that show the portrait exactly as it is (pose 0, its own coefficients)."""
        coeffs = np.repeat(rest.astype(np.float32)[None, :], n_frames, axis=0)
        return cls(start_frame, fps, neutral_pose(n_frames), coeffs)

    @classmethod
    def concat(cls, chunks: list[MotionChunk]) -> MotionChunk:
        """Join consecutive chunks into one (they must follow each other)."""
        if not chunks:
            raise ValueError("concat needs at least one chunk")
        for a, b in zip(chunks, chunks[1:], strict=False):
            if b.start_frame != a.start_frame + len(a):
                raise ValueError(f"chunks are not consecutive: {a.start_frame}+{len(a)} then {b.start_frame}")
        return cls(
            chunks[0].start_frame,
            chunks[0].fps,
            np.concatenate([c.pose for c in chunks]),
            np.concatenate([c.coeffs for c in chunks]),
        )

    def coeff(self, name: str) -> np.ndarray:
        """(T,) curve of one named coefficient."""
        return self.coeffs[:, COEFF_INDEX[name]]


@dataclass(frozen=True)
class AudioWindow:
    """The audio that drives ``n_frames`` video frames, with context and lookahead.

    ``samples[k]`` is the stream's sample number ``first_sample + k`` (16 kHz mono
    float32 in [-1, 1]); samples before the stream start or after its end are
    zeros. The window covers, in stream samples, at least
    ``[frame_start_sample(start_frame) - context, frame_start_sample(start_frame
    + n_frames) + lookahead)``, so a generator can compute every frame from
    absolute sample positions and give the same result however the stream was
    cut into windows.

    Attributes:
        start_frame: index of the first video frame this window drives.
        n_frames: number of video frames it drives (>= 0).
        fps: video frame rate.
        sample_rate: audio sample rate (16000).
        first_sample: stream index of ``samples[0]`` (negative at the start).
        samples: (N,) float32 mono audio.
        final: True for the last window of a stream (which may drive no frames).
    """

    start_frame: int
    n_frames: int
    fps: float
    sample_rate: int
    first_sample: int
    samples: np.ndarray
    final: bool = False

    def frame_start_sample(self, frame: int) -> int:
        """Stream sample index where video frame ``frame`` begins."""
        return frame_start_sample(frame, self.fps, self.sample_rate)


def frame_start_sample(frame: int, fps: float, sample_rate: int) -> int:
    """Stream sample index at which video frame ``frame`` begins."""
    return int(round(frame * sample_rate / fps))


StateT = TypeVar("StateT")


class MotionGenerator(Protocol[StateT]):
    """Audio → motion, one window at a time, with explicit carried state.

    A generator declares how the audio must be cut for it, and every caller (the offline
    renderer, the live session, evaluation, benchmarks) cuts it exactly so, on the same frame
    grid (:class:`~emote.streaming.animator.MotionStream` does it). The promise is therefore
    that the same audio gives the same motion offline and live, however it arrives in chunks;
    not that any cut into windows gives the same motion (a model conditioned on fixed windows
    cannot keep that).

    Attributes:
        name: the name it is registered under (``--motion NAME``).
        window_frames: video frames each window drives (the last window of a stream may be
            shorter). Live latency grows with it: a window is complete only when its last
            frame's audio (and the lookahead) has arrived.
        overlap_frames: frames at the end of one window that the next is conditioned on
            (a model's "motion frames"); they are carried in the state, and the windower gives
            each window their audio as context too. 0 when the generator needs none.
        context_ms: audio each window must hold before its first frame (at least the overlap).
        lookahead_ms: audio each window must hold after its last frame.
        cut_invariant: True when the motion does not depend on where windows are cut (the
            analytic generators compute every frame from absolute sample positions). A caller
            that already holds several windows' audio (offline rendering) may then generate them
            as one longer window, which is cheaper, and still get exactly the live motion. A model
            conditioned on fixed windows is False: every caller cuts ``window_frames``.

    ``generate`` must be a pure function of (window, state): same inputs, same motion, and the
    state is never changed in place (a caller may keep an old state and generate from it again).
    """

    name: str
    window_frames: int
    overlap_frames: int
    context_ms: float
    lookahead_ms: float
    cut_invariant: bool

    def initial_state(self, rest: np.ndarray, seed: int) -> StateT:
        """State before the first window.

        Args:
            rest: (52,) the portrait's own coefficients, measured on the photo.
            seed: random seed; the same seed gives the same motion.
        """
        ...

    def generate(self, window: AudioWindow, state: StateT) -> tuple[MotionChunk, StateT]:
        """Motion for ``window.n_frames`` frames, and the state to carry on."""
        ...
