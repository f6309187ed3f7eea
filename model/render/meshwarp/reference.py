"""Real mouth interiors from a reference clip: the person's own teeth, tongue and shadows.

A photo shows at most one mouth; the synthetic interior (:mod:`~.mouth_interior`) has to invent the
rest, and a real open mouth of the same person looks different in ways that matter (which teeth show at
which opening, the shadow under the upper lip, the tongue). Video-driven systems (MuseTalk,
LiveTalking) keep a short clip of the person for this. Here a few seconds of the same person talking
give a bank of real interiors: the frames whose mouths are open, chosen to cover the shapes the clip
shows (:func:`reference_mouths`, MediaPipe once per clip). Per portrait the crops are scaled to its
mouth and their colours matched to its lips (:func:`mouth_bank`); per frame the renderer draws the
interior whose inner-lip outline is closest to the frame's, warped into the frame's opening
(:meth:`MouthBank.choose`).

Shapes are compared in the canonical head frame of the blendshape basis (head pose removed), as the
inner-lip outline (20 points), so a reference filmed at another distance, angle or crop still matches.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from emote.model.errors import InputError
from emote.model.face.image_io import is_grayscale
from emote.model.face.pose import Similarity
from emote.model.face.regions import FACE_OVAL, INNER_LIPS, LEFT_EYE, OUTER_LIPS, RIGHT_EYE

if TYPE_CHECKING:
    from emote.model.face.tracks import FaceTracks

#: Seconds of a reference clip that are read (its first ones).
REFERENCE_SECONDS = 30.0
#: Most interiors kept (each costs a crop in the texture atlas, ~100 x 50 pixels at 512 x 512).
MAX_MOUTHS = 48
#: An opening counts when the inner lips enclose at least this share of the mouth width squared.
MIN_OPENING = 0.015
#: Fewest open mouths a reference must show to be of use.
MIN_MOUTHS = 3
#: Border kept around an inner-lip outline in a crop, in mouth widths (the warp reads a little outside).
CROP_MARGIN = 0.12
#: A new interior replaces the one shown only when it is this much closer (no flicker between two).
HYSTERESIS = 0.8
_MEASURE_SIDE = 640
#: CIELAB lightness over which a reference's highlights roll off below the portrait's eye whites.
_ROLL_OFF = 20.0
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _area(loop: np.ndarray) -> float:
    x, y = loop[:, 0], loop[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _mouth_width(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[INNER_LIPS[0], :2] - landmarks[INNER_LIPS[10], :2]))


@dataclass(frozen=True)
class ReferenceMouths:
    """Open mouths of one reference clip, independent of any portrait.

    Attributes:
        crops: RGB crops around each mouth (as filmed).
        inner: (K, 20, 2) inner-lip outline in each crop's pixels.
        outer: (K, 20, 2) outer-lip outline in each crop's pixels (for colour matching).
        shapes: (K, 40) the inner-lip outline in the canonical head frame (:func:`canonical_shape`).
        source: where they came from (for messages).
    """

    crops: tuple[np.ndarray, ...]
    inner: np.ndarray
    outer: np.ndarray
    shapes: np.ndarray
    source: str


def canonical_shape(landmarks: np.ndarray, similarity: Similarity) -> np.ndarray:
    """(40,) the inner-lip outline of (478, 3) pixel landmarks in the canonical head frame."""
    canon = similarity.apply_inverse(np.asarray(landmarks[INNER_LIPS], np.float64))
    return canon[:, :2].astype(np.float32).reshape(-1)


def choose_mouths(landmarks: np.ndarray, source: str, max_mouths: int = MAX_MOUTHS) -> tuple[np.ndarray, np.ndarray]:
    """Which frames of a measured clip to keep, and their canonical shapes: up to ``max_mouths`` open mouths,
    spread over the shapes the clip shows (the most open first, then always the one least like those kept).

    Args:
        landmarks: (T, 478, 3) landmarks in pixels (NaN where no face was found).
        source: the clip's name, for messages.

    Raises:
        InputError: no face, or fewer than :data:`MIN_MOUTHS` frames with an open mouth.
    """
    from emote.model.face.blendshape_basis import BlendshapeBasis

    basis = BlendshapeBasis.load()
    candidates, shapes = [], []
    for t, lm in enumerate(landmarks):
        if not np.isfinite(lm[0, 0]):
            continue
        width = _mouth_width(lm)
        if width < 8 or _area(lm[INNER_LIPS, :2]) < MIN_OPENING * width * width:
            continue
        candidates.append(t)
        shapes.append(canonical_shape(lm, basis.align(lm)))
    if not np.isfinite(landmarks[:, 0, 0]).any():
        raise InputError(f"{source}: no face in any of its {len(landmarks)} frames; a reference clip shows the "
                         "portrait's person talking, face to the camera")
    if len(candidates) < MIN_MOUTHS:
        raise InputError(f"{source}: only {len(candidates)} of {len(landmarks)} frames show an open mouth (at least "
                         f"{MIN_MOUTHS} needed); a reference clip needs the person talking, face to the camera, for a "
                         "few seconds")
    feats = np.stack(shapes)
    openness = np.array([_area(f.reshape(-1, 2)) for f in feats])
    chosen = [int(np.argmax(openness))]
    dist = np.linalg.norm(feats - feats[chosen[0]], axis=1)
    while len(chosen) < min(max_mouths, len(feats)) and dist.max() > 0:
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(feats - feats[chosen[-1]], axis=1))
    return np.asarray(candidates)[chosen], feats[chosen]


def crop_mouths(frames: dict[int, np.ndarray], landmarks: np.ndarray, chosen: np.ndarray, shapes: np.ndarray,
                source: str) -> ReferenceMouths:
    """The chosen frames' mouths cut out (``frames``: at least the chosen ones, by index, as measured)."""
    crops, inner, outer = [], [], []
    for t in chosen:
        lm, frame = landmarks[t], frames[int(t)]
        margin = (CROP_MARGIN + 0.1) * _mouth_width(lm)
        pts = lm[OUTER_LIPS, :2]
        x0, y0 = np.maximum(np.floor(pts.min(axis=0) - margin).astype(int), 0)
        x1, y1 = np.minimum(np.ceil(pts.max(axis=0) + margin).astype(int), [frame.shape[1], frame.shape[0]])
        crops.append(np.ascontiguousarray(frame[y0:y1, x0:x1]))
        inner.append(lm[INNER_LIPS, :2] - [x0, y0])
        outer.append(lm[OUTER_LIPS, :2] - [x0, y0])
    return ReferenceMouths(crops=tuple(crops), inner=np.asarray(inner, np.float32), outer=np.asarray(outer, np.float32),
                           shapes=np.asarray(shapes, np.float32), source=source)


def select_mouths(frames: list[np.ndarray], landmarks: np.ndarray, source: str,
                  max_mouths: int = MAX_MOUTHS) -> ReferenceMouths:
    """:func:`choose_mouths` and :func:`crop_mouths` of a clip held in memory (its RGB frames as measured)."""
    chosen, shapes = choose_mouths(landmarks, source, max_mouths)
    return crop_mouths({int(t): frames[int(t)] for t in chosen}, landmarks, chosen, shapes, source)


def measuring_size(frame: np.ndarray) -> np.ndarray:
    """A frame at the size clips are measured at (longest side at most 640 pixels)."""
    h, w = frame.shape[:2]
    scale = min(1.0, _MEASURE_SIDE / max(h, w))
    return frame if scale == 1.0 else cv2.resize(frame, (round(w * scale), round(h * scale)),
                                                 interpolation=cv2.INTER_AREA)


def measure_clip(path: str | os.PathLike[str], max_seconds: float = REFERENCE_SECONDS) -> tuple[FaceTracks, int]:
    """Track the face through a clip's first ``max_seconds`` at :func:`measuring_size`, one frame at a time;
    returns the tracks and how many frames were read (:func:`clip_frames` reads some of them again).

    Raises:
        InputError: the file cannot be read as a video, or holds no frames.
    """
    from emote.model.face.tracks import iter_video_frames, measure_frames

    decoded, fps = iter_video_frames(str(path))
    n = max(1, int(round(max_seconds * fps)))
    tracks = measure_frames((measuring_size(f) for f in itertools.islice(decoded, n)), fps)
    if not len(tracks.landmarks):
        raise InputError(f"{path}: no video frames could be decoded; give a clip of the person talking")
    return tracks, n


def clip_frames(path: str | os.PathLike[str], wanted: set[int], n: int) -> dict[int, np.ndarray]:
    """The frames ``wanted`` of a clip's first ``n``, as decoded (full size), by index."""
    from emote.model.face.tracks import iter_video_frames

    decoded, _ = iter_video_frames(str(path))
    return {t: f for t, f in enumerate(itertools.islice(decoded, n)) if t in wanted}


def reference_mouths(path: str | os.PathLike[str], max_seconds: float = REFERENCE_SECONDS) -> ReferenceMouths:
    """Measure a reference clip (a video of the portrait's person talking) and keep its open mouths.

    The clip is decoded twice (measured frame by frame, then only the chosen frames kept), so memory stays
    small however long it is.

    Raises:
        InputError: the file cannot be read as a video, or shows too few open mouths.
    """
    tracks, n = measure_clip(path, max_seconds)
    chosen, shapes = choose_mouths(tracks.landmarks, str(path))
    frames = {t: measuring_size(f) for t, f in clip_frames(path, set(chosen.tolist()), n).items()}
    return crop_mouths(frames, tracks.landmarks, chosen, shapes, str(path))


def _lip_stats(image: np.ndarray, inner: np.ndarray, outer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of the lips' CIELAB colour (the ring between the two outlines) in a picture."""
    mask = np.zeros(image.shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(outer).astype(np.int32)], (1,))
    cv2.fillPoly(mask, [np.round(inner).astype(np.int32)], (0,))
    lab = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    pixels = lab[mask > 0] if mask.sum() >= 8 else lab.reshape(-1, 3)
    return pixels.mean(axis=0), pixels.std(axis=0)


def _match_colours(crop: np.ndarray, source: tuple[np.ndarray, np.ndarray], target: tuple[np.ndarray, np.ndarray],
                   ceiling: float) -> np.ndarray:
    """A crop's colours moved from its lips' statistics to the portrait's: lightness by mean and (bounded) spread,
    the two colour axes by their means; lightness rolls off towards ``ceiling`` (the portrait's highlights,
    :func:`_highlight`), so teeth never outshine the face. A gain per RGB channel instead blew teeth out to white
    under a warmer light (gains up to 1.9 between two videos of the same person), and so did the shift alone
    (teeth L 88 in a reference whose lips are 15 darker than the portrait's)."""
    lab = np.asarray(cv2.cvtColor(crop.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB), np.float32)
    spread = float(np.clip(target[1][0] / max(float(source[1][0]), 1e-3), 0.7, 1.0))
    light = (lab[..., 0] - source[0][0]) * spread + target[0][0]
    knee = max(ceiling - _ROLL_OFF, float(target[0][0]))
    lab[..., 0] = np.where(light > knee, knee + (ceiling - knee) * np.tanh((light - knee) / max(ceiling - knee, 1.0)),
                           light)
    lab[..., 1:] = lab[..., 1:] + (target[0][1:] - source[0][1:])
    rgb = cv2.cvtColor(np.clip(lab, [0.0, -127.0, -127.0], [100.0, 127.0, 127.0]).astype(np.float32),
                       cv2.COLOR_LAB2RGB)
    return np.clip(rgb * 255.0, 0, 255)


def _highlight(image: np.ndarray, landmarks: np.ndarray, lips: float) -> float:
    """CIELAB lightness of the portrait's highlights: the brighter of its eye whites (98th percentile of the eye
    openings) and its face's sheen (99th percentile of the face); real teeth sit about there (measured on a
    photo with teeth: 73 against 73 and 73)."""
    light = cv2.cvtColor(image.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)[..., 0]
    levels = [lips + 20.0]
    for polygons, percentile in (((RIGHT_EYE, LEFT_EYE), 98), ((FACE_OVAL,), 99)):
        mask = np.zeros(image.shape[:2], np.uint8)
        for polygon in polygons:
            cv2.fillPoly(mask, [np.round(landmarks[polygon, :2]).astype(np.int32)], (1,))
        if mask.sum() >= 8:
            levels.append(float(np.percentile(light[mask > 0], percentile)))
    return min(max(levels), 100.0)


@dataclass(frozen=True, eq=False)
class MouthBank:
    """A reference's interiors prepared for one portrait: a texture strip and what each crop shows.

    Attributes:
        strip: (h, W, 4) uint8 RGBA, appended below the portrait's atlas.
        loops: (K, 20, 2) each interior's inner-lip outline in ``strip`` pixels.
        shapes: (K, 40) their canonical shapes (:func:`canonical_shape`), then, where the photo itself shows an
            open mouth, the photo's own (entry :attr:`own`, drawn from the photo: at the photo's expression the
            portrait is reproduced exactly).
        similarity: the portrait's canonical head frame → its pixels.
    """

    strip: np.ndarray
    loops: np.ndarray
    shapes: np.ndarray
    similarity: Similarity

    @property
    def own(self) -> int:
        """The entry of the photo's own open mouth, or -1 where its mouth is shut."""
        return len(self.loops) if len(self.shapes) > len(self.loops) else -1

    def choose(self, deformed: np.ndarray, previous: int = -1) -> int:
        """The interior whose outline is closest to a frame's (deformed landmarks, before head pose); the one
        shown before (``previous``) stays unless another is clearly closer (:data:`HYSTERESIS`)."""
        d = np.linalg.norm(self.shapes - canonical_shape(deformed, self.similarity), axis=1)
        best = int(np.argmin(d))
        if 0 <= previous < len(d) and d[best] > HYSTERESIS * d[previous]:
            return previous
        return best


def mouth_bank(mouths: ReferenceMouths, image: np.ndarray, landmarks: np.ndarray, width: int) -> MouthBank:
    """Scale a reference's interiors to a portrait's mouth, match their colours to its lips and pack them.

    Args:
        mouths: from :func:`reference_mouths`.
        image: (H, W, 3) uint8 RGB output-sized portrait.
        landmarks: (478, 3) its landmarks in output pixels.
        width: the atlas width.
    """
    from emote.model.face.blendshape_basis import BlendshapeBasis

    target_width = max(_mouth_width(landmarks), 8.0)
    target = _lip_stats(image, landmarks[INNER_LIPS, :2], landmarks[OUTER_LIPS, :2])
    ceiling = _highlight(image, landmarks, float(target[0][0]))
    grey = is_grayscale(image)
    placed, loops, kept = [], [], []
    x = y = shelf = 0
    for k, (crop, inner, outer) in enumerate(zip(mouths.crops, mouths.inner, mouths.outer, strict=True)):
        s = min(target_width / max(float(np.linalg.norm(inner[0] - inner[10])), 1.0), 2.0)
        size = (max(2, round(crop.shape[1] * s)), max(2, round(crop.shape[0] * s)))
        if size[0] > width:  # a crop wider than the atlas (a tiny portrait): left out
            continue
        kept.append(k)
        scaled = _match_colours(cv2.resize(crop, size, interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR),
                                _lip_stats(crop, inner, outer), target, ceiling)
        if grey:
            scaled = np.repeat((scaled @ _LUMA)[..., None], 3, axis=2)
        if x + size[0] > width:  # next shelf
            x, y, shelf = 0, y + shelf + 1, 0
        placed.append((x, y, np.clip(scaled, 0, 255).astype(np.uint8)))
        loops.append(inner * np.float32(size[0] / crop.shape[1]) + [x, y])
        x, shelf = x + size[0] + 1, max(shelf, size[1])
    strip = np.zeros((y + shelf + 1, width, 4), np.uint8)
    strip[..., 3] = 255
    for px, py, pixels in placed:
        strip[py : py + pixels.shape[0], px : px + pixels.shape[1], :3] = pixels
    similarity = BlendshapeBasis.load().align(landmarks)
    shapes = mouths.shapes[kept]
    if _area(landmarks[INNER_LIPS, :2]) >= MIN_OPENING * target_width**2:
        shapes = np.concatenate([shapes, canonical_shape(landmarks, similarity)[None]])
    return MouthBank(strip=strip, loops=np.asarray(loops, np.float32).reshape(-1, len(INNER_LIPS), 2),
                     shapes=shapes, similarity=similarity)


def save_mouths(mouths: ReferenceMouths, path: str | os.PathLike[str]) -> None:
    """Write a reference's open mouths to an ``.npz`` file (:func:`load_mouths` reads it back)."""
    sizes = np.array([crop.shape[:2] for crop in mouths.crops], np.int32)
    pixels = np.concatenate([crop.reshape(-1) for crop in mouths.crops]).astype(np.uint8)
    with open(path, "wb") as f:
        np.savez_compressed(f, sizes=sizes, pixels=pixels, inner=mouths.inner, outer=mouths.outer,
                            shapes=mouths.shapes, source=np.array(mouths.source))


def load_mouths(path: str | os.PathLike[str]) -> ReferenceMouths:
    """Read what :func:`save_mouths` wrote.

    Raises:
        InputError: the file is not such a file.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            sizes, pixels = z["sizes"], z["pixels"]
            ends = np.cumsum([h * w * 3 for h, w in sizes])
            crops = tuple(pixels[e - h * w * 3 : e].reshape(h, w, 3) for (h, w), e in zip(sizes, ends, strict=True))
            return ReferenceMouths(crops=crops, inner=z["inner"], outer=z["outer"], shapes=z["shapes"],
                                   source=str(z["source"]))
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not a saved set of reference mouths ({exc})") from None
