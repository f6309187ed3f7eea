"""`emote eval --renderer`: the renderer judged alone, by re-enacting real talking videos.

No motion model takes part. For each real video, the motion of every frame is measured the way the
motion model's training data is (MediaPipe's landmarks and 52 coefficients; the head's pose relative
to the first frame), the renderer draws it from the video's first frame as the portrait, and each
rendered frame is compared with the real frame it re-enacts (:mod:`~emote.evaluation.image_similarity`):
PSNR and SSIM over the face, the mouth and the eyes after aligning for the tracker's jitter, and the
landmark error of the rendered face (MediaPipe on both) in eye-corner distances, all of it over the
face and separately the lips and the eyes. What stays is what the renderer cannot draw: an open
mouth's teeth, a shut lid's skin, the cheek behind a turned head.

Per video: ``metrics.json`` (means, and every scored frame's numbers), a side-by-side MP4 (real |
rendered | difference) and a contact sheet of the frames whose mouth scores worst; over all videos a
markdown summary (mean and worst). Videos are cut to :data:`MAX_SECONDS`, and at their first cut (the
shot after it is not motion from the first frame).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emote.evaluation.image_similarity import REGIONS, compare_frames, shift_image
from emote.evaluation.media import side_by_side_frame, write_side_by_side
from emote.model.errors import EmoteError, InputError, OptionError
from emote.model.face.regions import FACE_OVAL, INNER_LIPS, LEFT_EYE, OUTER_LIPS, RIGHT_EYE
from emote.model.face.tracks import FaceTracks, iter_video_frames, measure_frames

#: Seconds of each video re-enacted (the first ones).
MAX_SECONDS = 20.0
#: Longest side of the frames compared (as `emote eval` measures).
MEASURE_SIDE = 640
#: Frames shown on the contact sheet of a video's worst mouths.
WORST_FRAMES = 6
#: Videos named under the summary as the worst mouths.
WORST_VIDEOS = 5
LIPS = np.unique(np.concatenate([OUTER_LIPS, INNER_LIPS]))
EYES = np.concatenate([RIGHT_EYE, LEFT_EYE])
ProgressFn = Callable[[str], None]

#: Summary columns: metric key, header, how to pick the worst video ("max" or "min").
COLUMNS: list[tuple[str, str, str]] = [
    ("face_psnr", "face PSNR dB", "min"),
    ("face_ssim", "face SSIM", "min"),
    ("mouth_psnr", "mouth PSNR dB", "min"),
    ("mouth_ssim", "mouth SSIM", "min"),
    ("eyes_psnr", "eyes PSNR dB", "min"),
    ("eyes_ssim", "eyes SSIM", "min"),
    ("landmark_error", "landmark error", "max"),
    ("lips_landmark_error", "lips landmark error", "max"),
    ("eyes_landmark_error", "eyes landmark error", "max"),
    ("identity_real", "identity dist, real", "max"),
    ("identity_rendered", "identity dist, rendered", "max"),
    ("identity_to_real", "identity dist, rendered to real", "max"),
    ("render_ms_per_frame", "ms/frame", "max"),
]
#: Frames per video whose identity is measured (dlib, ~120 ms each), spread evenly over the scored ones.
IDENTITY_FRAMES = 10


@dataclass
class ReenactReport:
    """What was measured on one video (``error`` set when it could not be used)."""

    video: str
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    per_frame: dict[str, list[float]] = field(default_factory=dict)  # every scored frame's metrics
    half: dict[str, Any] = field(default_factory=dict)  # with reference mouths: both renders on the first half


def reenactment_motion(tracks: FaceTracks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pose (T, 6), coeffs (T, 52), seen (T,) bool): each frame's motion relative to frame 0, as the
    motion model's dataset measures it (frames without a face hold the last seen motion).

    Raises:
        InputError: no face in the first frame (it is the portrait).
    """
    from emote.model.face.blendshape_basis import BlendshapeBasis
    from emote.model.face.pose import head_pivot, relative_pose

    seen = np.isfinite(tracks.landmarks[:, 0, 0])
    if not len(seen) or not seen[0]:
        raise InputError("no face in the first frame, which is the portrait of a re-enactment")
    last = np.maximum.accumulate(np.where(seen, np.arange(len(seen)), 0))
    landmarks, coeffs = tracks.landmarks[last].astype(np.float64), tracks.coeffs[last]
    basis = BlendshapeBasis.load()
    sims = [basis.align(frame) for frame in landmarks]
    pivot = head_pivot(landmarks[0].astype(np.float32))
    width = float(np.ptp(landmarks[0][FACE_OVAL, 0]))
    pose = np.array([relative_pose(s, sims[0], pivot=pivot, face_width=width) for s in sims], np.float32)
    return pose, np.clip(coeffs, 0.0, 1.0).astype(np.float32), seen


def _has_audio(path: Path) -> bool:
    import av

    with av.open(str(path)) as container:
        return bool(container.streams.audio)


def first_shot(tracks: FaceTracks) -> int:
    """Frames before the first cut or long loss of the face (as :func:`~emote.model.motion.diffusion.clips.
    segment_motion` splits a training video), or all of them."""
    from emote.model.face.blendshape_basis import BlendshapeBasis
    from emote.model.motion.diffusion.clips import segment_motion

    pieces = segment_motion(tracks, BlendshapeBasis.load())
    if pieces and pieces[0][0] == 0:
        return len(pieces[0][1])
    return len(tracks)


def _landmark_errors(real: np.ndarray, rendered: np.ndarray, shifts: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame mean landmark distance (2-D, after the image alignment) in eye-corner distances."""
    eye = np.linalg.norm(real[:, 33, :2] - real[:, 263, :2], axis=1)
    moved = rendered[:, :, :2] + shifts[:, None, :]
    dist = np.linalg.norm(moved - real[:, :, :2], axis=2) / eye[:, None]
    return {"landmark_error": dist.mean(axis=1), "lips_landmark_error": dist[:, LIPS].mean(axis=1),
            "eyes_landmark_error": dist[:, EYES].mean(axis=1)}


_Scored = tuple[list[np.ndarray], np.ndarray, dict[str, np.ndarray], np.ndarray, float, np.ndarray]


def _render_scored(session: Any, pose: np.ndarray, coeffs: np.ndarray, real: list[np.ndarray], tracks: FaceTracks,
                   seen: np.ndarray, size: tuple[int, int], upto: int) -> _Scored:
    """Render frames ``0 .. upto - 1`` and score them: (rendered, used frames, per-frame metrics of those,
    shifts (upto, 2), seconds spent rendering, the rendered frames' landmarks (upto, 478, 3))."""
    import time

    rendered, spent = [], 0.0
    for p, c in zip(pose[:upto], coeffs[:upto], strict=True):
        t0 = time.perf_counter()
        frame = session.render(p, c)
        spent += time.perf_counter() - t0
        rendered.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
    again = measure_frames(rendered, tracks.fps)
    used = np.flatnonzero(seen[:upto] & np.isfinite(again.landmarks[:, 0, 0]))
    used = used[used > 0]  # frame 0 is the portrait itself
    if not len(used):
        raise InputError("no frame after the first with a face in both the real and the rendered video")
    scores: dict[str, list[float]] = {}
    shifts = np.zeros((upto, 2))
    for i in used:
        values, shifts[i] = compare_frames(real[i], rendered[i], tracks.landmarks[i])
        for key, value in values.items():
            scores.setdefault(key, []).append(value)
    per_frame = {k: np.array(v) for k, v in scores.items()}
    per_frame |= _landmark_errors(tracks.landmarks[used], again.landmarks[used], shifts[used])
    return rendered, used, per_frame, shifts, spent, again.landmarks


def _identities(real: list[np.ndarray], rendered: list[np.ndarray], tracks: FaceTracks, again: np.ndarray,
                used: np.ndarray) -> dict[str, float]:
    """Identity distances on :data:`IDENTITY_FRAMES` scored frames: the real and the rendered frame each to
    the portrait (frame 0), and the rendered frame to the real one it re-enacts.

    The same motion drives both, so ``identity_rendered`` against ``identity_real`` says how much of a
    generated video's identity distance the renderer adds and how much any real motion brings with it.
    """
    from emote.model.face.identity import FaceEmbedder, evenly_spaced, identity_distance

    embedder = FaceEmbedder()
    portrait = embedder.embed(real[0], tracks.landmarks[0])
    out: dict[str, list[float]] = {"identity_real": [], "identity_rendered": [], "identity_to_real": []}
    for i in used[evenly_spaced(len(used), IDENTITY_FRAMES)]:
        a, b = embedder.embed(real[i], tracks.landmarks[i]), embedder.embed(rendered[i], again[i])
        out["identity_real"].append(identity_distance(a, portrait))
        out["identity_rendered"].append(identity_distance(b, portrait))
        out["identity_to_real"].append(identity_distance(b, a))
    return {k: float(np.mean(v)) for k, v in out.items()}


def reenact_video(video: Path, out_dir: Path, *, reference: bool = False, progress: ProgressFn | None = None
                  ) -> ReenactReport:
    """Re-enact one real video from its first frame and measure every frame (see the module docstring).

    With ``reference``, also re-enact its first half with real mouth interiors taken from its second half
    (:mod:`~emote.model.render.meshwarp.reference`) and score both renders on the same frames of that half
    (:attr:`ReenactReport.half`: their mean metrics, or the reason there is no reference).

    Raises:
        EmoteError: the video cannot be used (the caller records it and goes on).
    """
    from emote.model.render.meshwarp.reference import select_mouths
    from emote.model.render.registry import make_renderer, prepare_portrait

    say = progress or (lambda _msg: None)
    folder = out_dir / video.stem
    folder.mkdir(parents=True, exist_ok=True)
    decoded, fps = iter_video_frames(video)
    first = next(decoded, None)
    if first is None:
        raise InputError(f"{video}: no video frames could be decoded")
    h, w = first.shape[:2]
    scale = min(1.0, MEASURE_SIDE / max(h, w))
    size = (max(2, int(round(w * scale))), max(2, int(round(h * scale))))
    portrait = folder / "portrait.png"
    cv2.imwrite(str(portrait), cv2.cvtColor(first, cv2.COLOR_RGB2BGR))
    real = []  # kept only at the measuring size, decoded one at a time
    for frame in itertools.chain([first], itertools.islice(decoded, int(round(MAX_SECONDS * fps)) - 1)):
        real.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if (w, h) != size else frame)
    if len(real) < 2:
        raise InputError(f"{video}: a single frame; re-enactment needs a talking video")
    say(f"{video.name}: measuring the real motion ({len(real)} frames)")
    tracks = measure_frames(real, fps)
    shot = first_shot(tracks)
    if shot < len(real):  # a cut: what comes after it is another shot, not motion from the first frame
        real, tracks = real[:shot], FaceTracks(tracks.landmarks[:shot], tracks.coeffs[:shot], fps)
    pose, coeffs, seen = reenactment_motion(tracks)
    renderer = make_renderer()
    session = renderer.session(prepare_portrait(portrait, full_frame=True, renderer=renderer))
    say(f"{video.name}: rendering and comparing")
    try:
        rendered, used, per_frame, shifts, spent, again = _render_scored(session, pose, coeffs, real, tracks, seen,
                                                                         size, len(real))
    except InputError as exc:
        raise InputError(f"{video.name}: {exc}") from None
    report = ReenactReport(video=str(video))
    report.metrics = {k: float(np.nanmean(v)) for k, v in per_frame.items()}
    report.metrics |= {"render_ms_per_frame": 1000.0 * spent / len(rendered), "frames": float(len(used))}
    report.metrics |= _identities(real, rendered, tracks, again, used)
    report.per_frame = {"frame": used.tolist()} | {k: np.round(v, 4).tolist() for k, v in per_frame.items()}
    columns, titles = [real, rendered], ["real", "rendered"]
    if reference:
        half = len(real) // 2
        say(f"{video.name}: the first half again, with the mouths of the second half")
        try:
            mouths = select_mouths(real[half:], tracks.landmarks[half:], "its second half")
            with_ref = make_renderer(reference=mouths)
            ref_session = with_ref.session(prepare_portrait(portrait, full_frame=True, renderer=with_ref))
            ref_rendered, ref_used, ref_frame, _, _, _ = _render_scored(ref_session, pose, coeffs, real, tracks, seen,
                                                                     size, half)
        except InputError as exc:  # the video is still scored without a reference
            report.half = {"error": str(exc)}
        else:
            both = np.intersect1d(used, ref_used)  # the frames both renders are scored on
            at = {k: np.searchsorted(u, both) for k, u in (("painted", used), ("reference", ref_used))}
            report.half = {
                "painted": {k: float(np.nanmean(v[at["painted"]])) for k, v in per_frame.items()},
                "reference": {k: float(np.nanmean(v[at["reference"]])) for k, v in ref_frame.items()},
                "frames": float(len(both)), "mouths": float(len(mouths.crops))}
            columns.append(ref_rendered + rendered[half:])
            titles.append("reference mouths (1st half)")
    diff = [np.clip(np.abs(r.astype(np.int16) - shift_image(g, *shifts[i]).astype(np.int16)) * 3, 0, 255)
            .astype(np.uint8) for i, (r, g) in enumerate(zip(real, rendered, strict=True))]
    write_side_by_side(folder / "side_by_side.mp4", columns + [diff], titles + ["|difference| x3"], fps,
                       video if _has_audio(video) else None)
    worst = used[np.argsort(per_frame["mouth_ssim"])[:WORST_FRAMES]]
    rows = [side_by_side_frame([real[i], rendered[i], diff[i]],
                               [f"real #{i}", f"mouth SSIM {per_frame['mouth_ssim'][k]:.2f}", "x3"], 200)
            for i, k in ((i, int(np.flatnonzero(used == i)[0])) for i in sorted(worst))]
    if not cv2.imwrite(str(folder / "worst_mouths.png"), cv2.cvtColor(np.concatenate(rows), cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {folder / 'worst_mouths.png'}")
    report.files = {"side_by_side": str(folder / "side_by_side.mp4"), "worst_mouths": str(folder / "worst_mouths.png")}
    (folder / "metrics.json").write_text(json.dumps(report.__dict__, indent=2, default=float))
    return report


def summary_markdown(reports: list[ReenactReport]) -> str:
    """Mean and worst video of each metric, and the videos that could not be used."""
    ok = [r for r in reports if r.error is None]
    lines = [f"Videos re-enacted: {len(ok)} of {len(reports)} (first {MAX_SECONDS:.0f} s of each, frame 0 as "
             f"the portrait, measured at most {MEASURE_SIDE} px).", ""]
    if ok:
        lines += ["| " + " | ".join(header for _, header, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        cells = []
        for key, _, worst in COLUMNS:
            values = np.array([r.metrics.get(key, np.nan) for r in ok], np.float64)
            pick = np.nanmin(values) if worst == "min" else np.nanmax(values)
            cells.append(f"{np.nanmean(values):.3g} ({pick:.3g})")
        mouths = sorted(ok, key=lambda r: r.metrics.get("mouth_ssim", np.inf))[:WORST_VIDEOS]
        lines += ["| " + " | ".join(cells) + " |", "", "Each cell: mean over videos (worst video in brackets); "
                  "landmark errors in eye-corner distances; ms/frame: the renderer drawing each video's full picture "
                  "(its cost target is `make bench`'s, at 512x512).",
                  "", "Worst mouths: " + ", ".join(f"`{Path(r.video).name}` (SSIM {r.metrics['mouth_ssim']:.3f})"
                                                   for r in mouths) + "."]
    halves = [r for r in ok if "reference" in r.half]
    if halves:
        keys = [c for c in COLUMNS if c[0] != "render_ms_per_frame" and not c[0].startswith("identity")]
        lines += ["", f"With real mouth interiors ({len(halves)} videos): each video's first half re-enacted again "
                  "with the open mouths of its second half as the reference clip (`emote render --reference`), both "
                  "renders scored on the same frames of the first half; mean over videos (worst video in brackets).",
                  "",
                  "| mouths | " + " | ".join(header for _, header, _ in keys) + " |", "|---|" + "---|" * len(keys)]
        for name, title in (("painted", "painted (today's default)"), ("reference", "from the reference clip")):
            cells = []
            for key, _, worst in keys:
                values = np.array([r.half[name].get(key, np.nan) for r in halves], np.float64)
                pick = np.nanmin(values) if worst == "min" else np.nanmax(values)
                cells.append(f"{np.nanmean(values):.3g} ({pick:.3g})")
            lines.append(f"| {title} | " + " | ".join(cells) + " |")
        gain = [np.nanmean([r.half["reference"][key] - r.half["painted"][key] for r in halves]) for key, _, _ in keys]
        lines.append("| difference | " + " | ".join(f"{g:+.3g}" for g in gain) + " |")
        missing = [f"- `{Path(r.video).name}`: no reference ({r.half['error']})" for r in ok if "error" in r.half]
        lines += ["", *missing] if missing else []
    skipped = [r for r in reports if r.error is not None]
    if skipped:
        lines += ["", "Skipped:"] + [f"- `{Path(r.video).name}`: {r.error}" for r in skipped]
    return "\n".join(lines) + "\n"


def run_reenactment(inputs: list[str], out: str | Path, *, reference: bool = False,
                    progress: ProgressFn | None = None) -> tuple[list[ReenactReport], str]:
    """Re-enact every video of ``inputs`` (files or folders); write ``summary.md`` into ``out``
    (``reference``: as :func:`reenact_video`)."""
    from emote.evaluation.run import find_videos

    videos = find_videos(inputs)
    if not videos:
        raise OptionError(f"{', '.join(inputs)}: no videos found to re-enact")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    reports = []
    for video in videos:
        try:
            reports.append(reenact_video(video, out_dir, reference=reference, progress=progress))
        except EmoteError as exc:
            reports.append(ReenactReport(video=str(video), error=str(exc)))
            if progress:
                progress(f"{video.name}: skipped: {exc}")
    summary = summary_markdown(reports)
    (out_dir / "summary.md").write_text(summary)
    return reports, summary


__all__ = ["COLUMNS", "REGIONS", "ReenactReport", "reenact_video", "reenactment_motion", "run_reenactment",
           "summary_markdown"]
