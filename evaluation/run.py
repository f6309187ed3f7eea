"""`emote eval`: render from real talking videos and measure real and generated alike.

A real talking video is ground truth: its first frame is the portrait, its
audio the driver, its frames what a real face did. For each video this runs
every chosen motion generator through the offline renderer (full frame, the
video's own frame rate), then measures the real video and each generated
one the same way, from pixels: MediaPipe landmarks per frame give mouth
opening, lid gap and head pose; silero-vad gives the voice-free stretches;
dlib's face embedding gives identity; BRISQUE gives image quality. The
pseudo-generator ``reencode`` (the real frames through our H.264 encoder)
is the calibration: the ceiling of every metric. Per video it writes
``metrics.json``, a side-by-side MP4 and a contact sheet; over all videos a
markdown summary with the mean and the worst of each metric. A video that
cannot be used (no audio, no face, unreadable) is reported and skipped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from emote.evaluation import metrics as em
from emote.evaluation.media import contact_sheet, write_side_by_side
from emote.model.errors import EmoteError, OptionError
from emote.model.face.tracks import FaceTracks, measure_frames, read_video_frames
from emote.model.media.audio_io import load_audio_16k
from emote.model.media.video_out import Mp4Writer
from emote.model.motion.registry import check_generator_name
from emote.streaming.offline import render_file

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m4v"}
CALIBRATION = "reencode"
#: Longest side of frames when measuring (landmarking a 1280 px frame costs more and gains nothing).
MEASURE_SIDE = 640
MEASURE_THREADS = 2
#: Below this peak correlation of audio and mouth changes, the audio→mouth lag is not reported.
LAG_MIN_R = 0.2
#: Frames per video scored for identity (~120 ms each) and BRISQUE (~60 ms each).
SAMPLED_FRAMES = 10
ProgressFn = Callable[[str], None]


@dataclass
class VideoReport:
    """Everything measured on one real video (``error`` set when it could not be used)."""

    video: str
    error: str | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)


def find_videos(inputs: list[str]) -> list[Path]:
    """Video files named directly or found (non-recursively) in named folders, sorted."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.exists():
            found.append(path)
        else:
            raise OptionError(f"{item}: no such file or folder; give talking videos or folders of them")
    return found


def _reencode(frames: list[np.ndarray], fps: float, out: Path) -> list[np.ndarray]:
    """The real frames through our encoder and back: what encoding alone does to every metric."""
    h, w = frames[0].shape[:2]
    ew, eh = w - w % 2, h - h % 2
    with Mp4Writer(out, ew, eh, fps) as writer:
        for f in frames:
            writer.write_video(np.ascontiguousarray(f[:eh, :ew]))
    decoded, _ = read_video_frames(out)
    return decoded


def _video_metrics(
    frames: list[np.ndarray], tracks: FaceTracks, envelope: np.ndarray, speech: np.ndarray, fps: float,
    matte: np.ndarray, reference: np.ndarray, embedder: Any,
) -> dict[str, float]:  # fmt: skip
    """The metrics one video earns on its own (no comparison with another).

    ``frames`` are the measured frames (``tracks`` was computed on them); ``matte`` and the
    ``reference`` identity embedding belong to the portrait.
    """
    from emote.evaluation.image_quality import video_brisque
    from emote.model.face.identity import frames_near_pose, identity_drift

    n = len(tracks)
    angles = em.head_pose_curves(tracks.landmarks)
    spread, speed = em.pose_spread_speed(angles, fps)  # (3,) each: yaw, pitch, roll
    drift = identity_drift(frames, tracks, reference, k=SAMPLED_FRAMES, embedder=embedder)
    near = frames_near_pose(angles, SAMPLED_FRAMES, skip=int(round(fps)), spacing=int(round(fps / 2)))
    at_pose = identity_drift(frames, tracks, reference, embedder=embedder, indices=near)
    # The lag is only meaningful where audio and mouth changes correlate at all (a mouth that
    # does not move ties every lag at r = 0, and the tie would read as a perfect lag of 0).
    lag_r = em.audio_mouth_correlations(envelope[:n], tracks.mouth_opening)
    moving = np.nanstd(tracks.mouth_opening) >= em.MOUTH_MOTION_FLOOR  # the rule lip_sync applies
    trusted = moving and np.nanmax(lag_r) >= LAG_MIN_R
    lag = float(em.audio_mouth_lag(envelope[:n], tracks.mouth_opening)) if trusted else np.nan
    out = {
        "audio_mouth_lag_frames": lag,
        "silence_mouth_opening": float(em.silence_opening(tracks.mouth_opening, speech[:n], int(round(0.2 * fps)))),
        "blinks_per_min": float(em.blinks_per_minute(tracks.eye_opening, fps)),
        "expression_change": em.expression_change(tracks.coeffs, fps),
        "background_change": float(em.background_stability(frames, matte)),
        "brisque": float(video_brisque(frames, tracks, k=SAMPLED_FRAMES).mean),
        "face_found_share": float(np.isfinite(tracks.landmarks[:, 0, 0]).mean()),
        "identity_mean": drift.mean,
        "identity_worst": drift.worst,
        "identity_drift": drift.late - drift.early,
        "identity_at_pose": at_pose.mean,
    }
    for axis, k in (("yaw", 0), ("pitch", 1), ("roll", 2)):
        out[f"{axis}_spread_deg"] = float(spread[k])
        out[f"{axis}_speed_deg_s"] = float(speed[k])
    return out


def generator_label(motion: str) -> str:
    """The row name of a generator: its name, or ``NAME-FOLDER`` for ``NAME=path/to/FOLDER``."""
    base, _, folder = motion.partition("=")
    return f"{base}-{Path(folder).name}" if folder else base


def evaluate_video(
    video: Path, out_dir: Path, generators: list[str], *, portrait: Path | None = None, seed: int = 0,
    progress: ProgressFn | None = None,
) -> VideoReport:  # fmt: skip
    """Render ``video``'s audio from its first frame with each generator, and measure everything.

    Raises:
        EmoteError: the video cannot be used (the caller records it and goes on).
    """
    from emote.model.face.identity import FaceEmbedder
    from emote.model.face.portrait import analyze_portrait
    from emote.model.media.voice_activity import voice_activity

    say = progress or (lambda _msg: None)
    report = VideoReport(video=str(video))
    folder = out_dir / video.stem
    folder.mkdir(parents=True, exist_ok=True)
    real, fps = read_video_frames(video)
    audio = load_audio_16k(video)
    if portrait is None:
        portrait = folder / "portrait.png"
        cv2.imwrite(str(portrait), cv2.cvtColor(real[0], cv2.COLOR_RGB2BGR))
    analysis = analyze_portrait(portrait)
    n = len(real)
    envelope = em.audio_envelope(audio, n, fps)
    speech = voice_activity(audio, n, fps).frames
    embedder = FaceEmbedder()
    reference = embedder.embed(analysis.image, analysis.landmarks)

    # Every video is kept only at the measuring size (at most MEASURE_SIDE), resized once as it
    # is decoded: a minute of 1080p at full size would be gigabytes per video set.
    h, w = real[0].shape[:2]
    scale = min(1.0, MEASURE_SIDE / max(h, w))
    size = (max(2, int(round(w * scale))), max(2, int(round(h * scale))))

    def shrink(frames: list[np.ndarray]) -> list[np.ndarray]:
        return [f if (f.shape[1], f.shape[0]) == size else cv2.resize(f, size, interpolation=cv2.INTER_AREA)
                for f in frames[:n]]

    reencoded = _reencode(real, fps, folder / f"{CALIBRATION}.mp4")
    report.files[CALIBRATION] = str(folder / f"{CALIBRATION}.mp4")
    measured: dict[str, list[np.ndarray]] = {"real": shrink(real), CALIBRATION: shrink(reencoded)}
    del real, reencoded
    speeds: dict[str, float] = {}
    for motion in generators:
        name = generator_label(motion)
        out = folder / f"{name}.mp4"
        say(f"{video.name}: rendering with {name}")
        stats = render_file(portrait, video, out, fps=fps, full_frame=True, seed=seed, motion=motion)
        speeds[name] = 1000.0 * stats.render_s / max(stats.frames, 1)
        measured[name] = shrink(read_video_frames(out)[0])
        report.files[name] = str(out)
    say(f"{video.name}: measuring")
    # MediaPipe releases the GIL while it tracks: two threads use both cores. (The metrics stay on
    # one thread: libsvm under BRISQUE corrupted memory when called from two threads at once.)
    with ThreadPoolExecutor(max_workers=MEASURE_THREADS) as pool:
        futures = {name: pool.submit(measure_frames, frames, fps) for name, frames in measured.items()}
        tracks = {name: f.result() for name, f in futures.items()}
    n = min(len(t) for t in tracks.values())
    matte = cv2.resize(analysis.matte, size, interpolation=cv2.INTER_LINEAR)
    results = {
        name: _video_metrics(frames[:n], FaceTracks(tracks[name].landmarks[:n], tracks[name].coeffs[:n], fps),
                             envelope, speech, fps, matte, reference, embedder)
        for name, frames in measured.items()
    }
    for name in measured:
        m = results[name]
        if name != "real":
            m["lip_sync_r"] = float(em.lip_sync(tracks["real"].mouth_opening[:n], tracks[name].mouth_opening[:n]))
        if name in speeds:
            m["render_ms_per_frame"] = speeds[name]
        report.metrics[name] = m
    labels = list(measured)
    write_side_by_side(folder / "side_by_side.mp4", [measured[k] for k in labels], labels, fps, video)
    contact_sheet(folder / "contact_sheet.png", [measured[k] for k in labels], labels,
                  {k: tracks[k].mouth_opening[:n] for k in labels})
    report.files["side_by_side"] = str(folder / "side_by_side.mp4")
    report.files["contact_sheet"] = str(folder / "contact_sheet.png")
    (folder / "metrics.json").write_text(json.dumps(report.__dict__, indent=2, default=float))
    return report


#: Summary columns: metric key, header, how to pick the worst video ("max" or "min").
COLUMNS: list[tuple[str, str, str]] = [
    ("lip_sync_r", "lip-sync r", "min"),
    ("audio_mouth_lag_frames", "|audio→mouth lag| (fr)", "max"),
    ("silence_mouth_opening", "mouth open in silence", "max"),
    ("blinks_per_min", "blinks/min", "min"),
    ("yaw_spread_deg", "yaw spread °", "min"),
    ("pitch_spread_deg", "pitch spread °", "min"),
    ("roll_spread_deg", "roll spread °", "min"),
    ("yaw_speed_deg_s", "yaw speed °/s", "min"),
    ("expression_change", "expression change", "min"),
    ("identity_mean", "identity dist", "max"),
    ("identity_at_pose", "identity dist, head as in portrait", "max"),
    ("identity_worst", "identity worst", "max"),
    ("identity_drift", "identity drift", "max"),
    ("background_change", "background change", "max"),
    ("brisque", "BRISQUE", "max"),
    ("render_ms_per_frame", "ms/frame", "max"),
]


def summary_markdown(reports: list[VideoReport]) -> str:
    """Markdown table: per generator (and real, and calibration) the mean and worst of each metric."""
    ok = [r for r in reports if r.error is None]
    names: list[str] = []
    for r in ok:
        names += [k for k in r.metrics if k not in names]
    lines = [f"Videos evaluated: {len(ok)} of {len(reports)}.", ""]
    header = "| video set | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines += [header, "|" + "---|" * (len(COLUMNS) + 1)]
    for name in names:
        cells = []
        for key, _, worst in COLUMNS:
            values = [r.metrics[name][key] for r in ok if name in r.metrics and key in r.metrics[name]]
            values = [v for v in values if v is not None and math.isfinite(v)]
            if key == "audio_mouth_lag_frames":  # early and late are both off: summarise the size
                values = [abs(v) for v in values]
            if not values:
                cells.append("–")
                continue
            pick = max(values) if worst == "max" else min(values)
            cells.append(f"{np.mean(values):.3g} ({pick:.3g})")
        label = f"{name} (calibration)" if name == CALIBRATION else name
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Each cell: mean over videos (worst video in brackets)."]
    failed = [r for r in reports if r.error is not None]
    if failed:
        lines += ["", "Skipped:"] + [f"- `{Path(r.video).name}`: {r.error}" for r in failed]
    return "\n".join(lines) + "\n"


def run_eval(
    inputs: list[str], out_dir: str | Path, generators: list[str], *, portrait: str | None = None, seed: int = 0,
    progress: ProgressFn | None = None,
) -> tuple[list[VideoReport], str]:  # fmt: skip
    """Evaluate every video; returns the per-video reports and the summary markdown (also written)."""
    for name in generators:
        check_generator_name(name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports = []
    for video in find_videos(inputs):
        try:
            reports.append(evaluate_video(video, out, generators, portrait=Path(portrait) if portrait else None,
                                          seed=seed, progress=progress))
        except EmoteError as exc:
            reports.append(VideoReport(video=str(video), error=str(exc)))
            if progress:
                progress(f"{video.name}: skipped: {exc}")
        except Exception as exc:  # one broken video must not lose the others' results
            reports.append(VideoReport(video=str(video), error=f"{type(exc).__name__}: {exc}"))
            if progress:
                progress(f"{video.name}: failed: {type(exc).__name__}: {exc}")
    summary = summary_markdown(reports)
    (out / "summary.md").write_text(summary)
    (out / "reports.json").write_text(json.dumps([r.__dict__ for r in reports], indent=2, default=float))
    return reports, summary
