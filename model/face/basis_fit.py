"""Fit the ARKit → MediaPipe-landmark blendshape basis from real talking videos.

The training behind ``model/weights/blendshape_basis.npz`` (see MODEL_CARD.md there). It
measures every frame with :mod:`~emote.model.face.tracks` (MediaPipe's Face Landmarker, the
same measurement as evaluation; cached under /tmp, never in the repository), removes head
pose per frame by a 3-D similarity Procrustes fit of rigid landmarks to a canonical frontal
template (generalised Procrustes analysis), and fits a ridge regression
``delta_shape ≈ B · delta_coeffs`` on per-video deltas (each video's own means are
subtracted, which removes identity) with pose nuisance terms and a locality prior. The
ridge strength is chosen by leave-one-person-out cross-validation; held-out R² per face
region and per key coefficient is printed and stored in the weights file.

Usage:
    python -m emote.model.face.basis_fit --videos VIDEO_DIR --out model/weights/blendshape_basis.npz

``VIDEO_DIR`` is any folder of talking-head videos (the shipped basis was fitted on the team's
research videos, which are not part of the repository; see ``model/weights/MODEL_CARD.md``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

from emote.model.face.blendshape_basis import N_LANDMARKS, align_sequence, normalise_shape
from emote.model.face.tracks import face_tracks
from emote.model.motion.interface import ARKIT_NAMES, COEFF_INDEX, N_COEFFS

#: Landmarks that do not move with expression (checked on the data: expression explains
#: < 0.008 eye-corner-distance RMS of their motion): forehead (10, 151, 108, 337), temples
#: (54, 284, 21, 251, 162, 389), face contour at ear level (127, 356), lateral orbital
#: rims (139, 368, 143, 372, 34, 264), nose bridge and dorsum (168, 6, 197, 195) and the
#: bridge's sides (193, 417, 122, 351, 245, 465). Eye corners (33, 263, 133, 362), the
#: glabella (9, 8) and the nose tip (4, 5, 1) move with blinks, squints, brows or the lip.
RIGID_IDX = np.array(
    [10, 151, 108, 337, 54, 284, 21, 251, 162, 389, 127, 356, 139, 368, 143, 372, 34, 264,
     168, 6, 197, 195, 193, 417, 122, 351, 245, 465]
)  # fmt: skip
MAX_YAW_DEG, MAX_PITCH_DEG, MAX_RIGID_EXCESS, MIN_FRAMES, N_NUISANCE = 25.0, 30.0, 0.015, 25, 6
#: Coefficients (or symmetric pairs, moved together) reported one by one.
KEY_COEFFS = (
    "jawOpen", "mouthClose", "mouthFunnel", "mouthPucker", "mouthSmileLeft+mouthSmileRight",
    "mouthStretchLeft+mouthStretchRight", "mouthLowerDownLeft+mouthLowerDownRight",
    "mouthUpperUpLeft+mouthUpperUpRight", "mouthRollLower", "mouthRollUpper", "mouthShrugLower",
    "mouthPressLeft+mouthPressRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeBlinkLeft+eyeBlinkRight",
    "eyeSquintLeft+eyeSquintRight", "eyeWideLeft+eyeWideRight", "eyeLookDownLeft+eyeLookDownRight",
    "browInnerUp", "browDownLeft+browDownRight", "browOuterUpLeft+browOuterUpRight",
)  # fmt: skip
#: Canonical-y band (nose bridge 0, nose tip 0.48, mouth corners 0.85, chin 1.4) of the
#: landmarks each coefficient family may move; first matching name prefix wins.
SUPPORT_ZONES = {
    "brow": (-9.0, 0.4), "eye": (-9.0, 0.4), "cheekSquint": (-0.1, 0.9), "noseSneer": (-0.3, 0.95), "": (0.0, 9.0)
}  # fmt: skip
LATERAL_MARGIN, CACHE_VERSION = 0.1, "v2"
LAMBDAS, LAMBDA_TOLERANCE = np.logspace(-6, -1, 11), 0.005
#: Coefficients whose per-video deltas have a smaller SD than this are not determined by the
#: data (MediaPipe hardly ever reports cheekPuff, cheekSquint, noseSneer, jawForward, ...): zero basis.
MIN_COEFF_SD = 0.015


def measure_video(path: str | Path) -> dict[str, np.ndarray]:
    """Face tracks of every frame of a video (:func:`~emote.model.face.tracks.face_tracks`), as arrays.

    Returns:
        ``landmarks`` (T, 478, 3) float32 pixels (x*W, y*H, z*W; NaN where no face),
        ``coeffs`` (T, 52) float32 ARKit weights (0 where no face), ``matrix`` (T, 4, 4) float32
        facial transformation matrices (identity where no face), ``ok`` (T,) bool, ``fps`` () float.
    """
    tracks = face_tracks(path)
    ok = np.isfinite(tracks.landmarks[:, 0, 0])
    assert tracks.transforms is not None
    matrix = np.where(ok[:, None, None], tracks.transforms, np.eye(4, dtype=np.float32))
    return {"landmarks": tracks.landmarks, "coeffs": np.where(ok[:, None], tracks.coeffs, 0.0).astype(np.float32),
            "matrix": matrix.astype(np.float32), "ok": ok, "fps": np.float64(tracks.fps)}


def measure_cached(path: Path, cache_dir: Path) -> dict[str, np.ndarray]:
    """:func:`measure_video` with an on-disk cache keyed by file name, size and mtime."""
    st = path.stat()
    key = hashlib.sha1(f"{CACHE_VERSION}:{path.name}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
    cache = cache_dir / f"{path.stem}.{key}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    t0, data = time.perf_counter(), measure_video(path)
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **data)
    print(f"  measured {path.name}: {len(data['ok'])} frames, {time.perf_counter() - t0:.1f} s")
    return data


def person_key(name: str) -> str:
    """Cross-validation group: clips of one person (``styletalk_Obama_clip2`` → ``styletalk_Obama``)."""
    return re.sub(r"_clip_?\d+(_short)?$", "", name)


def region_indices(mean_shape: np.ndarray) -> dict[str, np.ndarray]:
    """Landmark sets for reporting: mouth (lips), eyes (lids), brows, jaw (chin and lower contour).

    Args:
        mean_shape: (478, 3) canonical mean shape (y down), used to cut the jaw line.
    """
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def idx(*sets: frozenset) -> np.ndarray:
        return np.array(sorted({i for s in sets for edge in s for i in edge}))

    mouth = idx(fmc.FACEMESH_LIPS)
    oval = idx(fmc.FACEMESH_FACE_OVAL)
    below_lips = np.flatnonzero(mean_shape[:, 1] > mean_shape[mouth, 1].max())
    jaw = np.union1d(oval[mean_shape[oval, 1] > mean_shape[61, 1]], below_lips)
    return {
        "mouth": mouth,
        "eyes": idx(fmc.FACEMESH_LEFT_EYE, fmc.FACEMESH_RIGHT_EYE),
        "brows": idx(fmc.FACEMESH_LEFT_EYEBROW, fmc.FACEMESH_RIGHT_EYEBROW),
        "jaw": jaw,
        "all": np.arange(N_LANDMARKS),
    }


def mediapipe_frontal(landmarks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Rough frontal shape of one frame from MediaPipe's facial transformation matrix.

    The matrix's rotation lives in a y-up, z-towards-viewer camera frame; conjugating
    with diag(1, -1, -1) turns it into our y-down, z-away pixel frame.
    landmarks: (478, 3) pixels; matrix: (4, 4) -> (478, 3) in the canonical frame.
    """
    d = np.diag([1.0, -1.0, -1.0])
    u, _, vt = np.linalg.svd(d @ matrix[:3, :3].astype(np.float64) @ d)
    rot = u @ vt
    return normalise_shape((landmarks - landmarks[RIGID_IDX].mean(0)) @ rot)


def build_template(videos: list[dict], n_iter: int = 4) -> np.ndarray:
    """Canonical frontal mean shape by generalised Procrustes analysis (videos weighted equally).

    Starts from frames frontalised with MediaPipe's own head pose, then alternates aligning
    every frame to the template and re-averaging (one mean per video, then across videos).
    Returns the (478, 3) template in the canonical frame.
    """
    pairs = [zip(v["landmarks"], v["matrix"], strict=True) for v in videos]
    starts = [np.mean([mediapipe_frontal(lm, m) for lm, m in p], axis=0) for p in pairs]
    template = normalise_shape(np.mean(starts, 0))
    for _ in range(n_iter):
        means = [align_sequence(v["landmarks"], template, RIGID_IDX)[0].mean(0) for v in videos]
        template = normalise_shape(np.mean(means, 0))
    return template


def load_videos(video_dir: Path, cache_dir: Path) -> list[dict]:
    """Measure (or read from cache) every video; keep tracked frames only."""
    paths = sorted(p for p in video_dir.iterdir() if p.suffix.lower() in {".mp4", ".mpg", ".mov", ".avi", ".mkv"})
    videos = []
    for p in paths:
        d = measure_cached(p, cache_dir)
        ok = d["ok"] & np.isfinite(d["landmarks"]).all((1, 2))
        videos.append({"name": p.stem, "n_total": len(ok), "landmarks": d["landmarks"][ok].astype(np.float64),
                       "coeffs": d["coeffs"][ok].astype(np.float64), "matrix": d["matrix"][ok]})  # fmt: skip
    return videos


def pose_terms(pose: np.ndarray) -> np.ndarray:
    """Nuisance regressors (T, 6) from (T, >=3) yaw/pitch/roll in degrees: the angles in
    radians, yaw², pitch² and yaw·pitch. They absorb pose-dependent landmark artefacts
    (perspective, contour sliding) so that they do not leak into the expression basis."""
    a = np.radians(pose[:, :3])
    return np.column_stack([a, a[:, 0] ** 2, a[:, 1] ** 2, a[:, 0] * a[:, 1]])


def frame_deltas(videos: list[dict], template: np.ndarray) -> tuple[list[dict], dict[str, int]]:
    """Canonicalise, drop extreme-pose and badly-aligned frames, subtract each video's means.

    Returns:
        per-video dicts with ``X`` (n, 52 + 6) coefficient deltas followed by pose
        nuisance terms and ``Y`` (n, 1434) canonical shape deltas, and counts of
        dropped frames by reason.
    """
    out, dropped = [], {"no_face": 0, "pose": 0, "misaligned": 0, "short_video": 0}
    for v in videos:
        dropped["no_face"] += v["n_total"] - len(v["landmarks"])
        canon, pose = align_sequence(v["landmarks"], template, RIGID_IDX)
        pose_ok = (np.abs(pose[:, 0]) <= MAX_YAW_DEG) & (np.abs(pose[:, 1]) <= MAX_PITCH_DEG)
        # the rigid residual has a per-person floor (identity ≠ template): judge frames against it
        keep = pose_ok & (pose[:, 3] <= np.median(pose[:, 3]) + MAX_RIGID_EXCESS)
        dropped["pose"] += int((~pose_ok).sum())
        dropped["misaligned"] += int((pose_ok & ~keep).sum())
        if keep.sum() < MIN_FRAMES:
            dropped["short_video"] += int(keep.sum())
            continue
        y = canon[keep].reshape(int(keep.sum()), -1)
        x = np.column_stack([v["coeffs"][keep], pose_terms(pose[keep])])
        out.append({"name": v["name"], "group": person_key(v["name"]), "X": x - x.mean(0), "Y": y - y.mean(0)})
    return out, dropped


def group_stats(deltas: list[dict]) -> dict[str, dict]:
    """Sufficient statistics per cross-validation group: n, XᵀX (52,52), XᵀY (52,1434), Σy² (1434,)."""
    stats: dict[str, dict] = {}
    for d in deltas:
        s = stats.setdefault(d["group"], {"n": 0, "xx": 0.0, "xy": 0.0, "yy": 0.0})
        s["n"] += len(d["X"])
        s["xx"] = s["xx"] + d["X"].T @ d["X"]
        s["xy"] = s["xy"] + d["X"].T @ d["Y"]
        s["yy"] = s["yy"] + (d["Y"] ** 2).sum(0)
    return stats


def support_mask(mean_shape: np.ndarray) -> np.ndarray:
    """Which landmarks each regressor may move: (52 + 6, 1434) bool over output columns.

    A locality prior. Vertically: brow and eye coefficients act above the nose tip, mouth,
    jaw and cheek-puff ones below the eyes, cheekSquint and noseSneer in between (see
    SUPPORT_ZONES). Sideways: a ...Left/...Right coefficient acts on the subject's left
    (canonical x > 0) / right half only, plus LATERAL_MARGIN across the midline (jawLeft,
    mouthLeft etc. shift the whole jaw or mouth and are exempt). Pose terms act everywhere.
    Without it, MediaPipe's coupled errors make a blink move the chin, and the strong
    left/right correlation of blinks and smiles in speech lets eyeBlinkRight close both eyes.
    """
    x, y = mean_shape[:, 0], mean_shape[:, 1]
    mask = np.ones((N_COEFFS + N_NUISANCE, N_LANDMARKS), bool)
    for k, name in enumerate(ARKIT_NAMES):
        lo, hi = next(z for p, z in SUPPORT_ZONES.items() if name.startswith(p))
        mask[k] = (y > lo) & (y < hi)
        if name.endswith(("Left", "Right")) and name not in ("jawLeft", "jawRight", "mouthLeft", "mouthRight"):
            mask[k] &= (x if name.endswith("Left") else -x) > -LATERAL_MARGIN
    return np.repeat(mask, 3, axis=1)


def ridge(n: int, xx: np.ndarray, xy: np.ndarray, lam: float, active: np.ndarray) -> np.ndarray:
    """Ridge solution of ``min (1/n)||Y - X B||² + lam ||B||²`` from sufficient statistics,
    with ``B[r, c] = 0`` wherever ``active[r, c]`` is False.

    Args:
        n: number of frames; xx: (p, p) XᵀX; xy: (p, m) XᵀY; lam: ridge strength;
        active: (p, m) bool support. Columns sharing a support pattern are solved together.

    Returns:
        (p, m) coefficients.
    """
    b = np.zeros_like(xy)
    patterns, inverse = np.unique(active.T, axis=0, return_inverse=True)
    for j, pattern in enumerate(patterns):
        rows, out = np.flatnonzero(pattern), np.flatnonzero(inverse.ravel() == j)
        a = xx[np.ix_(rows, rows)] / n + lam * np.eye(len(rows))
        b[np.ix_(rows, out)] = np.linalg.solve(a, xy[np.ix_(rows, out)] / n)
    return b


def cross_validate(stats: dict[str, dict], lam: float, cols: np.ndarray, mask: np.ndarray) -> dict:
    """Leave-one-group-out held-out squared errors with coefficient columns ``cols``
    (plus the pose nuisance terms, always) and support ``mask`` (58, 1434).

    Returns:
        ``sse`` (1434,) summed over groups for the basis alone (nuisance rows of the
        fit zeroed: what the renderer applies), ``sse_pose`` for basis + pose terms,
        ``sst`` (1434,), and ``per_group`` {group: (sse (1434,), sst (1434,))}.
    """
    tot = {k: sum(s[k] for s in stats.values()) for k in ("n", "xx", "xy", "yy")}
    cols = np.concatenate([cols, N_COEFFS + np.arange(N_NUISANCE)])
    is_expr = (cols < N_COEFFS)[:, None]
    sse, sse_pose, per_group = 0.0, 0.0, {}
    ix = np.ix_(cols, cols)
    for g, s in stats.items():
        b_all = ridge(tot["n"] - s["n"], (tot["xx"] - s["xx"])[ix], (tot["xy"] - s["xy"])[cols], lam, mask[cols])
        errs = []
        for b in (b_all * is_expr, b_all):
            errs.append(s["yy"] - 2 * (b * s["xy"][cols]).sum(0) + ((s["xx"][ix] @ b) * b).sum(0))
        per_group[g] = (errs[0], s["yy"])
        sse, sse_pose = sse + errs[0], sse_pose + errs[1]
    return {"sse": sse, "sse_pose": sse_pose, "sst": tot["yy"], "per_group": per_group}


def r2(sse: np.ndarray, sst: np.ndarray, landmarks: np.ndarray) -> float:
    """Explained variance of the motion of a landmark set from per-column SSE/SST (1434,)."""
    cols = (np.asarray(landmarks)[:, None] * 3 + np.arange(3)).ravel()
    return float(1.0 - sse[cols].sum() / sst[cols].sum())


def coeff_region(name: str) -> str:
    """Region whose motion a coefficient mainly drives."""
    return {"jaw": "jaw", "eye": "eyes", "bro": "brows"}.get(name[:3], "mouth")


def validate(stats: dict[str, dict], regions: dict[str, np.ndarray], mask: np.ndarray) -> tuple[float, dict]:
    """Choose the ridge strength by leave-one-group-out R² and print the held-out report.

    Returns:
        the chosen lambda and a JSON-able report: R² per region (basis alone and with
        the pose terms), per key coefficient (alone / unique) and mouth R² per group.
    """
    cols = np.arange(N_COEFFS)
    scores = {lam: cross_validate(stats, lam, cols, mask) for lam in LAMBDAS}
    curve = {lam: r2(cv["sse"], cv["sst"], regions["all"]) for lam, cv in scores.items()}
    print("held-out R² by lambda: " + ", ".join(f"{k:.0e} {v:.4f}" for k, v in curve.items()))
    # the strongest regularisation within LAMBDA_TOLERANCE of the best (a one-standard-error style rule)
    lam = max(k for k, v in curve.items() if v >= max(curve.values()) - LAMBDA_TOLERANCE)
    cv = scores[lam]
    rep: dict = {"heldout_r2_region": {k: r2(cv["sse"], cv["sst"], i) for k, i in regions.items()}}
    rep["heldout_r2_region_with_pose_terms"] = {k: r2(cv["sse_pose"], cv["sst"], i) for k, i in regions.items()}
    print(f"chosen lambda {lam:.1e}\n| region | held-out R², basis | with pose terms |\n|---|---|---|")
    for k in regions:
        print(f"| {k} | {rep['heldout_r2_region'][k]:.3f} | {rep['heldout_r2_region_with_pose_terms'][k]:.3f} |")
    rep["heldout_r2_coeff"] = {}
    print("| coefficient(s) | region | held-out R², alone | unique (R² lost without it) |\n|---|---|---|---|")
    for key in KEY_COEFFS:
        ks, reg = [COEFF_INDEX[n] for n in key.split("+")], coeff_region(key)
        without = cross_validate(stats, lam, np.setdiff1d(cols, ks), mask)
        alone = cross_validate(stats, lam, np.array(ks), mask)
        c = {"region": reg, "alone": r2(alone["sse"], alone["sst"], regions[reg])}
        c["unique"] = rep["heldout_r2_region"][reg] - r2(without["sse"], without["sst"], regions[reg])
        rep["heldout_r2_coeff"][key] = c
        print(f"| {key} | {reg} | {c['alone']:.3f} | {c['unique']:.3f} |")
    per_group = {g: r2(e, t, regions["mouth"]) for g, (e, t) in sorted(cv["per_group"].items())}
    rep["heldout_r2_mouth_per_group"] = per_group
    print("held-out mouth R² per person/group: " + ", ".join(f"{g} {v:.2f}" for g, v in per_group.items()))
    return float(lam), rep


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: measure, fit, validate, write the weights file."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--videos", type=Path, required=True, help="folder of talking-head videos")
    ap.add_argument("--out", type=Path, required=True, help="output .npz")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/emote_blendshape_cache"), help="measurement cache")
    ap.add_argument("--no-local", dest="local", action="store_false", help="drop the locality prior")
    ap.add_argument("--report", type=Path, help="also write the validation report as JSON here")
    args = ap.parse_args(argv)

    videos = load_videos(args.videos, args.cache)
    template = build_template(videos)
    regions = region_indices(template)
    deltas, dropped = frame_deltas(videos, template)
    stats = group_stats(deltas)
    n_frames = sum(len(d["X"]) for d in deltas)
    print(f"{n_frames} frames from {len(deltas)} videos ({len(stats)} people/groups); dropped {dropped}")

    mask = support_mask(template) if args.local else np.ones((N_COEFFS + N_NUISANCE, 3 * N_LANDMARKS), bool)
    tot = {k: sum(s[k] for s in stats.values()) for k in ("n", "xx", "xy")}
    supported = np.sqrt(np.diag(tot["xx"])[:N_COEFFS] / n_frames) >= MIN_COEFF_SD
    mask[:N_COEFFS][~supported] = False
    print("unsupported (zero basis): " + ", ".join(n for n, ok in zip(ARKIT_NAMES, supported, strict=True) if not ok))
    lam, report = validate(stats, regions, mask)
    basis = ridge(tot["n"], tot["xx"], tot["xy"], lam, mask)[:N_COEFFS].reshape(N_COEFFS, N_LANDMARKS, 3)
    basis[COEFF_INDEX["tongueOut"]] = 0.0
    basis16 = basis.astype(np.float16)
    err = np.abs(basis16.astype(np.float64) - basis).max() / np.abs(basis).max()
    print(f"float16 storage: max error {err:.1e} of the largest basis entry")
    rms = np.sqrt(sum(s["yy"] for s in stats.values()).reshape(N_LANDMARKS, 3).sum(1) / n_frames)
    print("motion RMS: " + ", ".join(f"{k} {rms[i].mean():.4f}" for k, i in {"rigid": RIGID_IDX, **regions}.items()))

    limits = {"max_yaw_deg": MAX_YAW_DEG, "max_pitch_deg": MAX_PITCH_DEG, "max_rigid_excess": MAX_RIGID_EXCESS}
    meta = {"trained_by": "emote.model.face.basis_fit", "videos": [d["name"] for d in deltas],
            "n_frames": n_frames, "n_videos": len(deltas), "n_groups": len(stats), "dropped_frames": dropped,
            "ridge_lambda": lam, "min_coeff_sd": MIN_COEFF_SD, "locality_prior": bool(args.local),
            "limits": limits, **report}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {f"region_{k}": v.astype(np.int16) for k, v in regions.items() if k != "all"}
    arrays.update(mean_shape=template.astype(np.float32), basis=basis16, names=np.array(ARKIT_NAMES))
    p99 = np.percentile(np.concatenate([v["coeffs"] for v in videos]), 99, axis=0)
    arrays.update(supported=supported, coeff_p99=p99.astype(np.float32))
    np.savez_compressed(args.out, rigid_idx=RIGID_IDX.astype(np.int16), meta_json=np.array(json.dumps(meta)), **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KiB)")
    if args.report:
        args.report.write_text(json.dumps(meta, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
