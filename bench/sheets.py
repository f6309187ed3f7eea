"""``python -m bench.sheets``: contact sheets of motion generators on cases no real video covers.

``emote eval`` compares generated videos with real ones; this renders the cases the brief asks to look
at before a motion model is called better: a photo, a painting, singing and non-English speech (the
portraits and clips of ``../shared/data``). For each case it renders every ``--motion`` generator at
256x256, writes ``<case>.png`` (ten frames per generator, and under them the audio level and each
generator's measured mouth opening) and prints, per generator, how the mouth follows the sound: the
peak correlation of the frame-to-frame changes of audio level and mouth opening, and at which lag
(real talking videos: r 0.3..0.7 at 0..2 frames).

Usage: ``python -m bench.sheets --motion baseline,diffusion [--out out/sheets] [--data DIR]``.
Exits cleanly when the shared data is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from emote.model.motion.registry import DEFAULT_GENERATOR

ROOT = Path(__file__).resolve().parents[1]

#: (case, portrait, audio) under the shared data folder.
CASES = [
    ("photo_english", "portraits/sadtalker_people_0_photo.png", "audio/ljspeech_LJ001-0001.wav"),
    ("painting_german", "portraits/liveportrait_s8_painting_raphael.jpg", "audio/sadtalker_deyu_german.wav"),
    ("photo_singing", "portraits/hallo_6_photo.jpg", "audio/singing_sadtalker_imagine.wav"),
    ("painting_chinese", "portraits/dreamtalk_chpa5_painting.png", "audio/sadtalker_chinese_news.wav"),
]
FPS = 25.0
SIZE = 256


def sheet_for_case(name: str, portrait: Path, audio: Path, motions: list[str], out: Path) -> list[str]:
    """Render ``portrait`` speaking ``audio`` with each generator; write ``out/<name>.png``; return report lines."""
    from emote.evaluation import metrics as em
    from emote.evaluation.media import contact_sheet
    from emote.evaluation.run import generator_label
    from emote.model.face.tracks import measure_frames, read_video_frames
    from emote.model.media.audio_io import load_audio_16k
    from emote.streaming.offline import render_file

    videos, labels, curves, lines = [], [], {}, []
    samples = load_audio_16k(audio)
    for motion in motions:
        label = generator_label(motion)
        mp4 = out / f"{name}-{label}.mp4"
        render_file(portrait, audio, mp4, fps=FPS, size=SIZE, motion=motion)
        frames, _ = read_video_frames(mp4)
        mouth = measure_frames(frames, FPS).mouth_opening
        envelope = em.audio_envelope(samples, len(frames), FPS)
        if "audio level" not in curves:
            curves["audio level"] = (envelope - envelope.min()) / max(float(np.ptp(envelope)), 1e-9)
        r = em.audio_mouth_correlations(envelope, mouth)
        lag = em.audio_mouth_lag(envelope, mouth)
        videos.append(frames)
        labels.append(label)
        curves[label] = mouth
        lines.append(f"{name:18s} {label:12s} audio->mouth r {np.nanmax(r):.2f} at lag {lag:+d} fr, "
                     f"mouth opening mean {np.nanmean(mouth):.3f} sd {np.nanstd(mouth):.3f}")
    # The audio level (0..1) is drawn at the height of the widest mouth, so the mouths share one scale.
    top = max(float(np.nanmax(c)) for k, c in curves.items() if k != "audio level")
    curves["audio level"] = curves["audio level"] * top
    contact_sheet(out / f"{name}.png", videos, labels, curves, n_columns=10, tile=SIZE // 2)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sheets")
    parser.add_argument("--motion", default=",".join(dict.fromkeys([DEFAULT_GENERATOR, "baseline", "diffusion"])),
                        help="comma-separated generators (NAME or NAME=FOLDER)")
    parser.add_argument("--out", default=str(ROOT / "out" / "sheets"))
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    cases = [(n, data / p, data / a) for n, p, a in CASES]
    missing = [str(p) for _, *paths in cases for p in paths if not p.exists()]
    if missing:
        print(f"bench.sheets: {missing[0]} not found; nothing to render (the shared data folder holds the cases)")
        return 0
    from emote.model.motion.registry import check_generator_name

    motions = [m for m in args.motion.split(",") if m]
    for motion in motions:
        check_generator_name(motion)
    out.mkdir(parents=True, exist_ok=True)
    for name, portrait, audio in cases:
        for line in sheet_for_case(name, portrait, audio, motions, out):
            print(line)
        print(f"  -> {out / (name + '.png')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
