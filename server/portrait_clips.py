"""Portraits uploaded as a short clip of the person talking: one frame becomes the portrait, and the clip's
open mouths become its reference (:mod:`emote.model.render.meshwarp.reference`), so that every session
on it shows the person's real teeth, tongue and shadows instead of painted ones.

``POST /portraits`` takes a video in the same ``image`` field as a photo (:class:`~server.portraits.
PortraitStore` sniffs which it is). The clip is read in the face analysis worker (:func:`prepare_clip`,
MediaPipe once over its first :data:`~emote.model.render.meshwarp.reference.REFERENCE_SECONDS` seconds):
the portrait is the frame that shows the face most plainly (mouth shut, eyes open, facing the camera),
kept as a PNG, and the mouths beside it as ``<id>.mouths.npz``. The clip itself is not kept.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from emote.model.errors import InputError, PortraitError

#: Suffix of the temporary file a clip is written to before it is read (the container is sniffed anyway).
CLIP_SUFFIX = ".video"
#: Suffix of the sidecar holding a portrait's reference mouths.
MOUTHS_SUFFIX = ".mouths.npz"
#: Longest side of the portrait frame kept from a clip.
PORTRAIT_SIDE = 1280


def is_video(data: bytes) -> bool:
    """Whether uploaded bytes are a video (a video stream in a format that is not a still image)."""
    import av

    try:
        with av.open(io.BytesIO(data)) as container:
            streams = container.streams.video
            still = {"png", "mjpeg", "bmp", "gif", "webp", "tiff"}  # images ffmpeg also reads
            return bool(streams) and streams[0].codec_context.name not in still
    except (av.error.FFmpegError, OSError, ValueError):
        return False


def portrait_frame(landmarks: np.ndarray, coeffs: np.ndarray) -> int:
    """The frame that shows a face most plainly: mouth shut, eyes open, facing the camera (the lowest sum of
    jawOpen, the mean eyeBlink and the yaw in 45-degree units); -1 when no frame shows a face."""
    from emote.model.face.blendshape_basis import BlendshapeBasis
    from emote.model.motion.interface import COEFF_INDEX

    basis = BlendshapeBasis.load()
    best, best_score = -1, np.inf
    blink = [COEFF_INDEX["eyeBlinkLeft"], COEFF_INDEX["eyeBlinkRight"]]
    for t, (lm, c) in enumerate(zip(landmarks, coeffs, strict=True)):
        if not np.isfinite(lm[0, 0]):
            continue
        yaw = abs(float(basis.align(lm).angles()[0]))
        score = float(c[COEFF_INDEX["jawOpen"]]) + float(np.mean(c[blink])) + yaw / 45.0
        if score < best_score:
            best, best_score = t, score
    return best


def prepare_clip(video: Path) -> tuple[Path, Path]:
    """Runs in the face analysis worker: write a clip's portrait frame (``video`` with the suffix ``.png``) and
    its reference mouths (suffix :data:`MOUTHS_SUFFIX`); returns both paths.

    Raises:
        PortraitError: the clip cannot be read, shows no face, or too few open mouths (the message says what
            to upload instead).
    """
    import cv2

    from emote.model.render.meshwarp.reference import (
        choose_mouths,
        clip_frames,
        crop_mouths,
        measure_clip,
        measuring_size,
        save_mouths,
    )

    try:
        tracks, n = measure_clip(video)
        best = portrait_frame(tracks.landmarks, tracks.coeffs)
        if best < 0:
            raise InputError(f"{video}: no face in any of its {len(tracks.landmarks)} frames; upload a clip of the "
                             "person talking, face to the camera, or a photo")
        chosen, shapes = choose_mouths(tracks.landmarks, str(video))
        kept = clip_frames(video, set(chosen.tolist()) | {best}, n)
    except InputError as exc:
        raise PortraitError(str(exc)) from None
    portrait = kept[best]
    scale = min(1.0, PORTRAIT_SIDE / max(portrait.shape[:2]))
    if scale < 1.0:
        portrait = cv2.resize(portrait, (round(portrait.shape[1] * scale), round(portrait.shape[0] * scale)),
                              interpolation=cv2.INTER_AREA)
    png, mouths = video.with_suffix(".png"), video.with_suffix(MOUTHS_SUFFIX)
    if not cv2.imwrite(str(png), cv2.cvtColor(portrait, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {png}")
    save_mouths(crop_mouths({t: measuring_size(f) for t, f in kept.items()}, tracks.landmarks, chosen, shapes,
                            video.name), mouths)
    return png, mouths
