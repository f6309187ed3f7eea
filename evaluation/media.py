"""Pictures for human eyes: side-by-side videos and contact sheets of real vs generated.

Numbers miss things (a smeared tooth, a wobbling ear), so every evaluated
video also gets a side-by-side MP4 (the real video next to each generated
one, same height, labelled, with the real audio) and a contact sheet PNG
(evenly spaced frames, one row per video, mouth-opening curves underneath).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from emote.model.media.audio_io import open_audio
from emote.model.media.video_out import Mp4Writer

LABEL_H = 22


def _fit(frame: np.ndarray, height: int) -> np.ndarray:
    h, w = frame.shape[:2]
    width = max(2, int(round(w * height / h / 2)) * 2)
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA if h > height else cv2.INTER_LINEAR)


def _label(tile: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((LABEL_H, tile.shape[1], 3), 24, np.uint8)
    cv2.putText(bar, text, (6, LABEL_H - 7), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (240, 240, 240), 1, cv2.LINE_AA)
    return np.concatenate([bar, tile])


def side_by_side_frame(frames: list[np.ndarray], labels: list[str], height: int) -> np.ndarray:
    """One labelled row of frames, each scaled to ``height`` pixels (even sizes for H.264)."""
    tiles = [_label(_fit(f, height), text) for f, text in zip(frames, labels, strict=True)]
    return np.ascontiguousarray(np.concatenate(tiles, axis=1))


def write_side_by_side(
    out: str | Path, videos: list[list[np.ndarray]], labels: list[str], fps: float, audio: str | Path | None,
    height: int = 256,
) -> None:  # fmt: skip
    """Write ``videos`` (lists of RGB frames, same length) side by side, with ``audio``'s sound (None: silent).

    Args:
        out: MP4 file to write (atomically).
        videos: one list of (H, W, 3) uint8 frames per video; the shortest sets the length.
        labels: a caption per video.
        fps: frame rate.
        audio: file whose audio track is muxed in.
        height: height of each tile in pixels.
    """
    n = min(len(v) for v in videos)
    first = side_by_side_frame([v[0] for v in videos], labels, height)
    source = open_audio(audio) if audio is not None else None
    with Mp4Writer(out, first.shape[1], first.shape[0], fps, audio_rate=source.mux_rate if source else None,
                   audio_layout=source.mux_layout if source else "mono") as writer:
        for piece in source.chunks() if source else []:
            if piece.start_sample / 16000 > n / fps:
                break
            writer.write_audio(piece.for_mux)
        for i in range(n):
            writer.write_video(side_by_side_frame([v[i] for v in videos], labels, height))


def _curve_strip(curves: dict[str, np.ndarray], width: int, height: int = 90) -> np.ndarray:
    strip = np.full((height, width, 3), 250, np.uint8)
    colours = [(30, 30, 30), (200, 60, 40), (40, 110, 200), (40, 160, 80)]
    finite = np.concatenate([c[np.isfinite(c)] for c in curves.values()] or [np.zeros(1)])
    top = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    for k, (name, curve) in enumerate(curves.items()):
        if len(curve) < 2:
            continue
        xs = np.linspace(4, width - 4, len(curve))
        ys = height - 6 - np.nan_to_num(curve / top) * (height - 24)
        pts = np.stack([xs, ys], 1).astype(np.int32)
        cv2.polylines(strip, [pts], False, colours[k % len(colours)], 1, cv2.LINE_AA)
        cv2.putText(strip, name, (6 + 110 * k, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.42, colours[k % len(colours)], 1)
    return strip


def contact_sheet(
    out: str | Path, videos: list[list[np.ndarray]], labels: list[str], curves: dict[str, np.ndarray],
    n_columns: int = 8, tile: int = 160,
) -> None:  # fmt: skip
    """Save a PNG: ``n_columns`` evenly spaced frames per video (a row each) and the curves below.

    Args:
        out: PNG path.
        videos: lists of RGB frames.
        labels: a caption per row.
        curves: named per-frame curves (e.g. mouth opening of each video) drawn underneath.
        n_columns: frames per row.
        tile: height of each frame tile.
    """
    n = min(len(v) for v in videos)
    idx = np.linspace(0, n - 1, n_columns).round().astype(int)
    rows = [side_by_side_frame([v[i] for i in idx], [f"{label} #{i}" for i in idx], tile)
            for v, label in zip(videos, labels, strict=True)]
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows]
    sheet = np.concatenate(rows + [_curve_strip(curves, width)])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {out}")
