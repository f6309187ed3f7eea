"""From one real talking video to training clips: motion as the renderer takes it, and the audio under it.

Every frame is measured the way ``emote eval`` measures video (:mod:`~emote.model.face.tracks`:
MediaPipe's landmarks and 52 ARKit blendshapes), and turned into the project's motion
representation (:mod:`~emote.model.motion.interface`): the head pose relative to the clip's own
reference frame (the frame nearest the clip's median pose), expressed about the renderer's pivot
(:func:`~emote.model.face.pose.relative_pose`), and the blendshapes as MediaPipe reports them. The
motion is resampled to :data:`FPS` so that every clip shares one time grid with the audio.

Camera motion is separated from head motion where it can be: a cut or a jump of the face between
two frames (a scene change, a jump in the edit) ends a clip, and the slow drift of the face's
position and size (a pan or a zoom) is removed from the head's translation and scale by
subtracting a centred moving median of :data:`CAMERA_WINDOW_S`; rotation is left as measured.

A video that cannot teach lip sync is refused with :class:`UnusableVideo`, whose message says why:
no audio track, silent audio, no face in most frames, two faces, or a voice that does not follow
the mouth (a dubbed or off-screen voice: the best correlation of mouth opening and loudness within
±:data:`SYNC_MAX_LAG` frames is below :data:`MIN_SYNC_R`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emote.model.errors import AudioError, EmoteError
from emote.model.face.blendshape_basis import BlendshapeBasis
from emote.model.face.pose import head_pivot, relative_pose
from emote.model.face.regions import FACE_OVAL
from emote.model.face.tracks import FaceTracks, iter_video_frames, measure_frames
from emote.model.media.audio_io import load_audio_16k, pcm16
from emote.model.motion.interface import N_COEFFS, N_POSE

FPS = 25.0
SAMPLE_RATE = 16000
#: Below this share of frames with a face, a video is refused.
MIN_FACE_SHARE = 0.8
#: Above this share of frames with a second face, a video is refused.
MAX_SECOND_FACE_SHARE = 0.1
#: The floor of the mouth-loudness correlation (the catalogues of the team's data use 0.15-0.25).
MIN_SYNC_R = 0.15
SYNC_MAX_LAG = 5
#: Audio quieter than this (RMS, dBFS) over the whole video is silence.
SILENT_DBFS = -55.0
#: A face moving further than this (face widths) or growing more than this (log scale) from one frame
#: to the next is a cut or a jump in the edit.
CUT_SHIFT, CUT_SCALE = 0.25, 0.12
#: Gaps without a face up to this many frames are interpolated; longer ones end a clip.
MAX_GAP_FRAMES = 5
#: Clips shorter than this (seconds) are dropped.
MIN_CLIP_S = 0.5
#: The window of the moving median that takes a pan or zoom out of the head's translation and scale.
CAMERA_WINDOW_S = 3.0
#: Frames decoded and kept for telling who the person is.
PORTRAIT_FRAMES = 4


class UnusableVideo(EmoteError):
    """The video cannot teach motion; the message says why (one line)."""


@dataclass(frozen=True)
class Clip:
    """A stretch of one video with its motion and audio on one time grid.

    Attributes:
        pose: (T, 6) float32 head pose per frame at :data:`FPS` (see the motion interface).
        coeffs: (T, 52) float32 ARKit coefficients per frame.
        audio: (N,) int16 16 kHz mono; sample ``round(k * 16000 / FPS)`` is where frame k starts.
    """

    pose: np.ndarray
    coeffs: np.ndarray
    audio: np.ndarray

    def __len__(self) -> int:
        return int(self.pose.shape[0])


@dataclass(frozen=True)
class MeasuredVideo:
    """What one video gave: its clips, and frames with landmarks for telling who the person is."""

    clips: list[Clip]
    portraits: list[tuple[np.ndarray, np.ndarray]]  # (RGB frame, its (478, 3) landmarks)
    sync_r: float
    seconds: float


def _kept_frames(frames: Iterator[np.ndarray], keep: dict[int, np.ndarray], every: int) -> Iterator[np.ndarray]:
    """Pass frames through, keeping a copy of every ``every``-th one (at most :data:`PORTRAIT_FRAMES`,
    spread over the video by thinning as it grows)."""
    for i, frame in enumerate(frames):
        if i % every == 0:
            keep[i] = frame
            if len(keep) > PORTRAIT_FRAMES:  # keep every other one: still spread over the whole video
                for k in sorted(keep)[1::2]:
                    del keep[k]
                every *= 2
        yield frame


def _frame_rms(audio: np.ndarray, n_frames: int, fps: float) -> np.ndarray:
    edges = np.round(np.arange(n_frames + 1) * SAMPLE_RATE / fps).astype(int)
    x = np.concatenate([audio.astype(np.float64), np.zeros(max(0, edges[-1] - len(audio)))])
    sq = np.concatenate([[0.0], np.cumsum(x**2)])
    return np.sqrt(np.maximum(sq[edges[1:]] - sq[edges[:-1]], 0.0) / np.maximum(np.diff(edges), 1))


def mouth_audio_sync(mouth: np.ndarray, rms: np.ndarray, max_lag: int = SYNC_MAX_LAG) -> float:
    """The best Pearson r of mouth opening and audio loudness within ±``max_lag`` frames (NaN-safe)."""
    best = -1.0
    for lag in range(-max_lag, max_lag + 1):
        a = mouth[max(0, lag) : len(mouth) + min(0, lag)]
        b = rms[max(0, -lag) : len(rms) + min(0, -lag)]
        ok = np.isfinite(a) & np.isfinite(b)
        if ok.sum() > 10 and np.std(a[ok]) > 0 and np.std(b[ok]) > 0:
            best = max(best, float(np.corrcoef(a[ok], b[ok])[0, 1]))
    return best


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _fill_gaps(values: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Linear interpolation over frames without a face (along axis 0)."""
    out = values.copy()
    idx = np.flatnonzero(ok)
    flat = out.reshape(len(out), -1)
    for j in range(flat.shape[1]):
        flat[:, j] = np.interp(np.arange(len(out)), idx, flat[idx, j])
    return out


def _moving_median(x: np.ndarray, width: int) -> np.ndarray:
    half = width // 2
    padded = np.pad(x, (half, half), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)
    return np.median(windows, axis=1)


def _resample(values: np.ndarray, fps_in: float, n_out: int) -> np.ndarray:
    """Values on a ``fps_in`` grid, linearly interpolated onto ``n_out`` frames at :data:`FPS`."""
    t_in = np.arange(len(values)) / fps_in
    t_out = np.arange(n_out) / FPS
    flat = values.reshape(len(values), -1)
    out = np.stack([np.interp(t_out, t_in, flat[:, j]) for j in range(flat.shape[1])], axis=1)
    return out.reshape((n_out, *values.shape[1:])).astype(np.float32)


def segment_motion(tracks: FaceTracks, basis: BlendshapeBasis) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """Split a video's face tracks at cuts and long gaps; the motion of each piece.

    Returns:
        ``(first frame, pose (T, 6), coeffs (T, 52))`` per piece, on the video's own frame grid.
    """
    lm = tracks.landmarks
    ok = np.isfinite(lm[:, 0, 0])
    centre = np.full((len(lm), 2), np.nan)
    width = np.full(len(lm), np.nan)
    centre[ok] = lm[ok][:, FACE_OVAL, :2].mean(axis=1)
    width[ok] = np.ptp(lm[ok][:, FACE_OVAL, 0], axis=1)
    # Break where the face jumps (a cut) and where it is missing for long; bridge short gaps.
    breaks = np.zeros(len(lm), bool)
    prev = None
    for i in np.flatnonzero(ok):
        if prev is not None:
            shift = np.linalg.norm(centre[i] - centre[prev]) / width[prev]
            grow = abs(np.log(width[i] / width[prev]))
            if i - prev > MAX_GAP_FRAMES + 1 or shift > CUT_SHIFT * (i - prev) or grow > CUT_SCALE * (i - prev):
                breaks[i] = True
        prev = i
    pieces = []
    for start, end in _runs(ok | ~ok):  # one run: the whole video; split it at the breaks below
        cuts = [start, *[int(i) for i in np.flatnonzero(breaks[start:end]) + start], end]
        for a, b in zip(cuts, cuts[1:], strict=False):
            seen = np.flatnonzero(ok[a:b]) + a
            if len(seen) == 0:
                continue
            a, b = int(seen[0]), int(seen[-1]) + 1
            if (b - a) / tracks.fps < MIN_CLIP_S:
                continue
            pieces.append((a, *_piece_motion(tracks, basis, a, b)))
    return pieces


def _piece_motion(tracks: FaceTracks, basis: BlendshapeBasis, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
    ok = np.isfinite(tracks.landmarks[a:b, 0, 0])
    landmarks = _fill_gaps(tracks.landmarks[a:b].astype(np.float64), ok)
    coeffs = _fill_gaps(tracks.coeffs[a:b].astype(np.float64), ok)
    sims = [basis.align(frame) for frame in landmarks]
    angles = np.array([s.angles() for s in sims])
    ref = int(np.argmin(np.linalg.norm(angles - np.median(angles, axis=0), axis=1)))  # the most typical frame
    pivot = head_pivot(landmarks[ref].astype(np.float32))
    face_width = float(np.ptp(landmarks[ref][FACE_OVAL, 0]))
    pose = np.array([relative_pose(s, sims[ref], pivot=pivot, face_width=face_width) for s in sims], np.float64)
    # A pan or a zoom moves the whole face slowly: what stays after removing the slow drift is the head.
    width = max(3, int(round(CAMERA_WINDOW_S * tracks.fps)) | 1)
    for j in (3, 4):
        pose[:, j] -= _moving_median(pose[:, j], width)
    log_scale = np.log(np.maximum(pose[:, 5], 1e-3))
    pose[:, 5] = np.exp(log_scale - _moving_median(log_scale, width))
    return pose.astype(np.float32), np.clip(coeffs, 0.0, 1.0).astype(np.float32)


def measure_video(path: str | Path, basis: BlendshapeBasis | None = None) -> MeasuredVideo:
    """Measure one talking video into clips at :data:`FPS` (frames are decoded as they are measured).

    Raises:
        UnusableVideo: the video cannot teach motion (the message says why).
        InputError: the file cannot be read as a video.
    """
    name = Path(path).name
    try:
        audio = load_audio_16k(path)
    except AudioError as exc:
        raise UnusableVideo(f"no audio track ({exc})") from None
    level = 20 * np.log10(max(float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), 1e-9))
    if level < SILENT_DBFS:
        raise UnusableVideo(f"silent audio ({level:.0f} dBFS)")
    frames, fps = iter_video_frames(path)
    kept: dict[int, np.ndarray] = {}
    tracks = measure_frames(_kept_frames(frames, kept, 1), fps, max_faces=2)
    if not len(tracks):
        raise UnusableVideo(f"{name}: no video frames could be decoded")
    ok = np.isfinite(tracks.landmarks[:, 0, 0])
    assert tracks.faces is not None
    if ok.mean() < MIN_FACE_SHARE:
        raise UnusableVideo(f"a face in only {100 * ok.mean():.0f} % of frames (at least "
                            f"{100 * MIN_FACE_SHARE:.0f} % needed)")
    if (second := float((tracks.faces >= 2).mean())) > MAX_SECOND_FACE_SHARE:
        raise UnusableVideo(f"two or more faces in {100 * second:.0f} % of frames (one speaker is needed)")
    eye = np.linalg.norm(tracks.landmarks[:, 33, :2] - tracks.landmarks[:, 263, :2], axis=1)
    mouth = np.linalg.norm(tracks.landmarks[:, 13, :2] - tracks.landmarks[:, 14, :2], axis=1) / eye
    sync = mouth_audio_sync(mouth, _frame_rms(audio, len(tracks), fps))
    if sync < MIN_SYNC_R:
        raise UnusableVideo(f"the voice does not follow the mouth (mouth-loudness r {sync:.2f} < {MIN_SYNC_R}: "
                            "a dubbed or off-screen voice?)")
    clips = []
    for first, pose, coeffs in segment_motion(tracks, basis or BlendshapeBasis.load()):
        n_out = int(np.floor((len(pose) - 1) / fps * FPS)) + 1
        start = int(round(first / fps * SAMPLE_RATE))
        samples = audio[start : start + int(round(n_out * SAMPLE_RATE / FPS))]
        samples = np.concatenate([samples, np.zeros(int(round(n_out * SAMPLE_RATE / FPS)) - len(samples), np.float32)])
        clips.append(Clip(_resample(pose, fps, n_out), _resample(coeffs, fps, n_out), pcm16(samples)))
    if not clips:
        raise UnusableVideo(f"no stretch of at least {MIN_CLIP_S} s without a cut or a missing face")
    portraits = [(frame, tracks.landmarks[i]) for i, frame in sorted(kept.items()) if ok[i]]
    assert all(len(c.pose) == len(c.coeffs) and c.pose.shape[1] == N_POSE and c.coeffs.shape[1] == N_COEFFS
               for c in clips)
    return MeasuredVideo(clips=clips, portraits=portraits, sync_r=sync, seconds=len(tracks) / fps)
