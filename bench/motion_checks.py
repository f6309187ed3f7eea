"""``python -m bench.motion_checks``: what a motion generator does over time, measured on its own motion.

Three checks of issue 10's streaming promises, on the benchmark speech (:mod:`bench.speech`):

- **seams**: the generator makes motion in blocks; the frame-to-frame change of velocity (acceleration)
  across a block boundary must be no larger than inside a block. Mean |acceleration| of the head angles
  and of the 45 moving coefficients is compared at boundary frames and inside blocks.
- **drift**: ten minutes of speech with pauses; the head pose and expression statistics of the first and
  the last minute must agree within the spread between real speakers (the per-person means of the
  dataset's training people, when ``--dataset`` is given).
- **silence**: a minute of silence gives a closed mouth and a face that still lives (blinks, small head
  motion), neither frozen nor drifting away, nor drowsy: how often and how long the lids stay half shut
  or more, and how far the gaze falls, against the training people's own silent stretches.

Writes a markdown section (between ``motion-checks`` markers) when ``--write`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from emote.model.motion.interface import COEFF_INDEX, MotionChunk

START, END = "<!-- motion-checks:start -->", "<!-- motion-checks:end -->"
FPS = 25.0
_JAW, _BLINK = COEFF_INDEX["jawOpen"], (COEFF_INDEX["eyeBlinkLeft"], COEFF_INDEX["eyeBlinkRight"])
_DOWN = (COEFF_INDEX["eyeLookDownLeft"], COEFF_INDEX["eyeLookDownRight"])
#: Lids at or past this closure count as (half) shut; a blink passes it for ~0.1-0.2 s.
HALF_SHUT = 0.5
#: A stretch of a real video counts as silent from this many frames of audio 30 dB under its loud frames.
SILENT_RUN = 13


def eyes(coeffs: np.ndarray) -> dict[str, float]:
    """Lids and gaze of (T, 52) coefficients: share of frames half shut or more, the longest such run in
    seconds, and the mean of eyeLookDown (gaze falling)."""
    shut = coeffs[:, list(_BLINK)].mean(axis=1) >= HALF_SHUT
    longest, run = 0, 0
    for s in shut:
        run = run + 1 if s else 0
        longest = max(longest, run)
    return {"shut_share": float(shut.mean()) if len(shut) else float("nan"), "longest_shut_s": longest / FPS,
            "gaze_down": float(coeffs[:, list(_DOWN)].mean()) if len(coeffs) else float("nan")}


def real_silences(dataset: Path | None) -> dict[str, float]:
    """:func:`eyes` and the head's speed (°/s) over the training people's silent stretches (NaN without data)."""
    keys = ("shut_share", "longest_shut_s", "gaze_down", "head_speed_deg_s", "seconds")
    if dataset is None or not (dataset / "split.json").exists():
        return dict.fromkeys(keys, float("nan"))
    from emote.model.motion.diffusion.dataset import dataset_clips

    runs = []
    for _person, clip in dataset_clips(dataset, "train"):
        n = len(clip.coeffs)
        per = len(clip.audio) // max(n, 1)
        audio = clip.audio[: n * per].astype(np.float64).reshape(n, per)
        level = 10 * np.log10((audio**2).mean(axis=1) + 1e-18)
        quiet = level < np.percentile(level, 95) - 30
        silent = np.convolve(quiet, np.ones(SILENT_RUN), "same") >= SILENT_RUN
        edges = np.flatnonzero(np.diff(np.r_[0, silent.astype(np.int8), 0]))
        runs += [(clip.coeffs[a:b], clip.pose[a:b, :3]) for a, b in zip(edges[::2], edges[1::2], strict=True)]
    if not runs:
        return dict.fromkeys(keys, float("nan"))
    stats = [eyes(c) for c, _ in runs]
    frames = np.array([len(c) for c, _ in runs], np.float64)
    steps = np.concatenate([np.abs(np.diff(p, axis=0)).mean(axis=1) for _, p in runs])
    return {"shut_share": float(np.average([s["shut_share"] for s in stats], weights=frames)),
            "longest_shut_s": max(s["longest_shut_s"] for s in stats),
            "gaze_down": float(np.average([s["gaze_down"] for s in stats], weights=frames)),
            "head_speed_deg_s": float(steps.mean() * FPS), "seconds": float(frames.sum() / FPS)}


def motion_for(name: str, audio16k: np.ndarray, seed: int = 0) -> MotionChunk:
    from emote.model.motion.registry import make_generator
    from emote.streaming.animator import MotionStream

    stream = MotionStream(make_generator(name), np.zeros(52, np.float32), fps=FPS, seed=seed, merge_frames=25)
    chunks = []
    for i in range(0, len(audio16k), 16000):
        chunks += stream.push(audio16k[i : i + 16000])
    return MotionChunk.concat(chunks + stream.finish())


def seams(motion: MotionChunk, block: int) -> dict[str, float]:
    """Mean |second difference| of head angles and coefficients at block boundaries and inside blocks."""
    out = {}
    for label, values in (("head", motion.pose[:, :3]), ("face", motion.coeffs)):
        acc = np.abs(np.diff(values, n=2, axis=0)).mean(axis=1)  # acc[i]: around frame i + 1
        frame = np.arange(1, len(acc) + 1)
        boundary = frame % block == 0  # the first frame of a block, against the two before it
        out[f"{label}_boundary"] = float(acc[boundary].mean())
        out[f"{label}_inside"] = float(acc[~boundary].mean())
    return out


def blinks_per_minute(motion: MotionChunk) -> float:
    closure = motion.coeffs[:, list(_BLINK)].mean(axis=1)
    rest = float(np.median(closure))
    shut = closure > rest + 0.25
    onsets = np.flatnonzero(shut[1:] & ~shut[:-1])
    return 60.0 * len(onsets) / (len(motion) / FPS)


def statistics(motion: MotionChunk) -> dict[str, float]:
    """Head-angle means and spreads, jaw mean and spread, blinks per minute."""
    out: dict[str, float] = {}
    for k, axis in enumerate(("yaw", "pitch", "roll")):
        out[f"{axis}_mean"] = float(motion.pose[:, k].mean())
        out[f"{axis}_std"] = float(motion.pose[:, k].std())
    out["jaw_mean"] = float(motion.coeffs[:, _JAW].mean())
    out["jaw_std"] = float(motion.coeffs[:, _JAW].std())
    out["blinks_per_min"] = blinks_per_minute(motion)
    return out


def real_speaker_spread(dataset: Path | None) -> dict[str, float]:
    """Standard deviation across training people of their mean yaw/pitch/roll and jawOpen, and their mean yaw
    standard deviation (NaN without data)."""
    names = ("yaw_mean", "pitch_mean", "roll_mean", "jaw_mean")
    if dataset is None or not (dataset / "split.json").exists():
        return dict.fromkeys((*names, "yaw_std"), float("nan"))
    from emote.model.motion.diffusion.dataset import dataset_clips

    per_person: dict[str, list[np.ndarray]] = {}
    for person, clip in dataset_clips(dataset, "train"):
        per_person.setdefault(person, []).append(np.c_[clip.pose[:, :3], clip.coeffs[:, _JAW]])
    means = np.array([np.concatenate(v).mean(axis=0) for v in per_person.values()])
    yaw_std = float(np.mean([np.concatenate(v)[:, 0].std() for v in per_person.values()]))
    return {**dict(zip(names, means.std(axis=0).tolist(), strict=True)), "yaw_std": yaw_std}


def run(name: str, dataset: Path | None, minutes: float = 10.0) -> dict[str, Any]:
    from bench.speech import speech_samples
    from emote.model.motion.registry import make_generator

    block = make_generator(name).window_frames
    speech, rate = speech_samples(60.0)
    from scipy.signal import resample_poly

    g = np.gcd(rate, 16000)
    minute = resample_poly(speech, 16000 // g, rate // g).astype(np.float32)
    motion = motion_for(name, minute)
    long = motion_for(name, np.tile(minute, int(np.ceil(minutes))))
    n = int(60 * FPS)
    quiet = motion_for(name, np.zeros(16000 * 60, np.float32))
    return {
        "generator": name, "block": block, "seams": seams(motion, block),
        "first_minute": statistics(MotionChunk(0, FPS, long.pose[:n], long.coeffs[:n])),
        "last_minute": statistics(MotionChunk(0, FPS, long.pose[-n:], long.coeffs[-n:])),
        "minutes": minutes, "real_spread": real_speaker_spread(dataset), "real_silences": real_silences(dataset),
        "speech_eyes": eyes(motion.coeffs),
        "silence": {**statistics(quiet), **eyes(quiet.coeffs), "jaw_max": float(quiet.coeffs[:, _JAW].max()),
                    "head_speed_deg_s": float(np.abs(np.diff(quiet.pose[:, :3], axis=0)).mean() * FPS),
                    "last_10s_yaw_std": float(quiet.pose[-250:, 0].std())},
    }


def section(results: list[dict[str, Any]]) -> str:
    lines = [START, "## Motion over time (generated by `python -m bench.motion_checks`)", "",
             "Seams: mean |frame-to-frame change of velocity| at block boundaries vs inside blocks (head in degrees "
             "per frame², face in coefficient units); the boundary must be no larger.", "",
             "| generator | block (frames) | head: boundary | head: inside | face: boundary | face: inside |",
             "|---|---|---|---|---|---|"]
    for r in results:
        s = r["seams"]
        lines.append(f"| {r['generator']} | {r['block']} | {s['head_boundary']:.4f} | {s['head_inside']:.4f} | "
                     f"{s['face_boundary']:.5f} | {s['face_inside']:.5f} |")
    minutes = results[0]["minutes"] if results else 0
    lines += ["", f"Drift: the first and the last minute of {minutes:g} minutes of speech (the benchmark minute, "
              "repeated); the last row is the spread between the training people's own means (and their mean yaw "
              "std): drift stays within it.", "",
              "| generator | minute | yaw mean ° | pitch mean ° | roll mean ° | yaw std ° | jawOpen mean | "
              "blinks/min |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for label in ("first_minute", "last_minute"):
            m = r[label]
            lines.append(f"| {r['generator']} | {label.split('_')[0]} | {m['yaw_mean']:.2f} | {m['pitch_mean']:.2f} | "
                         f"{m['roll_mean']:.2f} | {m['yaw_std']:.2f} | {m['jaw_mean']:.3f} | "
                         f"{m['blinks_per_min']:.1f} |")
    spread = results[0]["real_spread"] if results else {}
    if spread:
        lines.append(f"| real speakers (spread of means) | – | {spread['yaw_mean']:.2f} | {spread['pitch_mean']:.2f} "
                     f"| {spread['roll_mean']:.2f} | {spread['yaw_std']:.2f} | {spread['jaw_mean']:.3f} | – |")
    lines += ["", f"Silence: a minute of digital silence (portrait rest all zeros). Lids: share of frames at least "
              f"{HALF_SHUT:g} shut and the longest such stretch; gaze down: mean eyeLookDown (the speech minute's "
              "in brackets). The last row: the training people's own silent stretches (at least "
              f"{SILENT_RUN / FPS:.1f} s of audio 30 dB under their loud frames), whose coefficients include their "
              "own rest (the generators' start from zeros), so its gaze is an upper bound for a change.", "",
              "| generator | jawOpen max | blinks/min | yaw std ° | head speed °/s | yaw std of the last 10 s ° | "
              "lids shut | longest shut s | gaze down |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        q, e = r["silence"], r["speech_eyes"]
        lines.append(f"| {r['generator']} | {q['jaw_max']:.3f} | {q['blinks_per_min']:.1f} | {q['yaw_std']:.2f} | "
                     f"{q['head_speed_deg_s']:.2f} | {q['last_10s_yaw_std']:.2f} | {q['shut_share']:.3f} "
                     f"({e['shut_share']:.3f}) | {q['longest_shut_s']:.2f} ({e['longest_shut_s']:.2f}) | "
                     f"{q['gaze_down']:.3f} ({e['gaze_down']:.3f}) |")
    real = results[0]["real_silences"] if results else {}
    if real and np.isfinite(real.get("seconds", np.nan)):
        lines.append(f"| real silences ({real['seconds']:.0f} s) | – | – | – | {real['head_speed_deg_s']:.2f} | – | "
                     f"{real['shut_share']:.3f} | "
                     f"{real['longest_shut_s']:.2f} | {real['gaze_down']:.3f} |")
    return "\n".join(lines + ["", END]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.motion_checks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--motion", default="diffusion,baseline", help="comma-separated generators")
    parser.add_argument("--dataset", default=".cache/dataset", help="dataset folder for the real speakers' spread")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--write", default=None, help="markdown file to record the section in")
    parser.add_argument("--json", default=None, help="write the numbers as JSON here too")
    args = parser.parse_args(argv)
    results = [run(name, Path(args.dataset), args.minutes) for name in args.motion.split(",") if name]
    text = section(results)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.write:
        path = Path(args.write)
        old = path.read_text() if path.exists() else "# Benchmarks\n"
        if START in old and END in old:
            head, rest = old.split(START, 1)
            new = head + text + rest.split(END, 1)[1].lstrip("\n")
        else:
            new = old.rstrip("\n") + "\n\n" + text
        path.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
