"""``emote dataset``: real talking videos become a training set of motion and audio, split by person.

Each video is measured once (:mod:`~emote.model.motion.diffusion.clips`) and cached under the
dataset folder by the SHA-256 of its bytes, so a second run over the same videos (or more videos)
only measures what is new; a video that was refused is remembered with its reason. Videos are read
one at a time and only one video's frames are in memory at once, however many there are.

People: a validation set means people the model never saw, so the split is by person, never by
clip. Which clips show the same person is decided by their faces (dlib's identity embedding, the
one evaluation uses: clips whose mean embeddings are closer than :data:`SAME_PERSON` are one
person, by complete linkage), so the same speaker in two folders under two file names is still one
person; a
``people`` mapping (file name → person) overrides it. A person's side is drawn from a hash of
their name (about :data:`VALIDATION_SHARE` of people are validation) and written to
``split.json``; later runs keep every side already written (a person keeps the side any of their
clips had), so adding videos never moves a person across.

Layout of the dataset folder::

    clips/<sha16>.npz   pose (T, 6), coeffs (T, 52), audio (N,) int16 per clip of one video
    index.json          per video: source, status (ok / skipped + reason), person, clips, seconds
    split.json          person -> "train" | "validation", and the videos of each person
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from emote.model.errors import DependencyError, InputError, OptionError
from emote.model.motion.diffusion.clips import FPS, Clip, UnusableVideo, measure_video

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m4v"}
#: Identity-embedding distance under which two videos show the same person. On the team's videos the
#: same person's clips were 0.12-0.44 apart and different people's 0.47 and more (dlib's model).
SAME_PERSON = 0.45
VALIDATION_SHARE = 0.25
INDEX_VERSION = 1

ProgressFn = Callable[[str], None]


@dataclass
class VideoRecord:
    """What the dataset knows of one video (``index.json``)."""

    source: str
    sha: str
    status: str  # "ok" or "skipped"
    reason: str = ""
    seconds: float = 0.0
    clips: int = 0
    frames: int = 0
    sync_r: float = float("nan")
    person: str = ""
    embedding: list[float] = field(default_factory=list)


def find_videos(inputs: list[str | Path]) -> list[Path]:
    """Video files named directly or found (non-recursively) in named folders, sorted.

    Raises:
        OptionError: an input does not exist.
    """
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise OptionError(f"{item}: no such file or folder; give talking videos or folders of them")
    return found


def content_hash(path: Path) -> str:
    """The first 16 hex digits of the file's SHA-256: how the dataset and its split name a video."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _save_clips(path: Path, clips: list[Clip]) -> None:
    """All clips of one video in one file, written under a temporary name and renamed."""
    arrays: dict[str, np.ndarray] = {"fps": np.array(FPS)}
    for k, clip in enumerate(clips):
        arrays |= {f"pose_{k}": clip.pose, f"coeffs_{k}": clip.coeffs, f"audio_{k}": clip.audio}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    os.replace(tmp, path)


def load_clips(path: Path) -> list[Clip]:
    """The clips of one video, as :func:`build_dataset` saved them."""
    with np.load(path) as z:
        n = sum(1 for k in z.files if k.startswith("pose_"))
        return [Clip(z[f"pose_{k}"], z[f"coeffs_{k}"], z[f"audio_{k}"]) for k in range(n)]


def _embedding(portraits: list[tuple[np.ndarray, np.ndarray]], embedder: Any) -> list[float]:
    if embedder is None or not portraits:
        return []
    vectors = [embedder.embed(frame, landmarks) for frame, landmarks in portraits]
    return [float(v) for v in np.mean(vectors, axis=0)]


def _face_embedder() -> Any:
    try:
        from emote.model.face.identity import FaceEmbedder

        return FaceEmbedder()
    except DependencyError:
        return None


def _people(records: list[VideoRecord], named: dict[str, str]) -> dict[str, str]:
    """Video sha -> person: the ``named`` mapping (by file name) first, then groups of alike faces
    (complete linkage under :data:`SAME_PERSON`), else the file name without a clip number."""
    ok = [r for r in records if r.status == "ok"]
    person: dict[str, str] = {}
    for r in ok:
        if Path(r.source).name in named:
            person[r.sha] = named[Path(r.source).name]
    faces = [r for r in ok if r.embedding and r.sha not in person]
    vectors = np.array([r.embedding for r in faces]).reshape(len(faces), -1)
    distance = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    # Complete linkage: two groups join only when every pair of their videos looks alike (chaining
    # through single similar pairs joined eight different people on this project's data).
    groups = [[i] for i in range(len(faces))]
    while len(groups) > 1:
        best, pair = SAME_PERSON, None
        for a in range(len(groups)):
            for b in range(a + 1, len(groups)):
                d = float(distance[np.ix_(groups[a], groups[b])].max())
                if d < best:
                    best, pair = d, (a, b)
        if pair is None:
            break
        groups[pair[0]] += groups.pop(pair[1])
    members: dict[int, list[VideoRecord]] = {}
    for k, g in enumerate(groups):
        members[k] = [faces[i] for i in g]
    for rs in members.values():
        label = min(Path(r.source).stem for r in rs)  # named after its first video
        for r in rs:
            person[r.sha] = label
    for r in ok:
        person.setdefault(r.sha, Path(r.source).stem.rsplit("_clip", 1)[0])
    return person


def _side(person: str) -> str:
    u = int(hashlib.sha256(person.encode()).hexdigest()[:8], 16) / 2**32
    return "validation" if u < VALIDATION_SHARE else "train"


def make_split(records: list[VideoRecord], previous: dict[str, Any] | None) -> dict[str, Any]:
    """The train/validation split by person, keeping every side an earlier split gave.

    Raises:
        InputError: one person's videos were on both sides of the earlier split.
    """
    before: dict[str, str] = {}  # video sha -> side, from the earlier split
    for entry in (previous or {}).get("people", {}).values():
        for sha in entry["videos"]:
            before[sha] = entry["side"]
    people: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.status == "ok":
            people.setdefault(r.person, {"side": "", "videos": []})["videos"].append(r.sha)
    for person, entry in people.items():
        sides = {before[s] for s in entry["videos"] if s in before}
        if len(sides) > 1:
            raise InputError(f"person {person!r} has videos on both sides of the existing split.json (now grouped "
                             "as one person); delete split.json to split again, or name people with --people")
        entry["side"] = sides.pop() if sides else _side(person)
    # People of videos not given this time keep their entries (without the videos regrouped above).
    seen = {sha for entry in people.values() for sha in entry["videos"]}
    for person, entry in (previous or {}).get("people", {}).items():
        rest = [sha for sha in entry["videos"] if sha not in seen]
        if not rest:
            continue
        kept = people.setdefault(person, {"side": entry["side"], "videos": []})
        if kept["side"] != entry["side"]:
            raise InputError(f"person {person!r} is on both sides of the existing split.json; delete split.json "
                             "to split again, or name people with --people")
        kept["videos"] += rest
    return {"version": INDEX_VERSION, "validation_share": VALIDATION_SHARE, "people": dict(sorted(people.items()))}


def build_dataset(
    inputs: list[str | Path], out_dir: str | Path, *, people: dict[str, str] | None = None,
    progress: ProgressFn | None = None,
) -> list[VideoRecord]:  # fmt: skip
    """Measure every video (cached), group clips by person and write the split.

    Args:
        inputs: talking videos, or folders of them.
        out_dir: the dataset folder (created; an existing one is added to).
        people: file name -> person, for videos whose person the faces should not decide.
        progress: called with one line per video.

    Returns:
        A record per video (``index.json``), refused ones with their reason.
    """
    say = progress or (lambda _msg: None)
    videos = find_videos(inputs)
    if not videos:
        raise OptionError(f"{', '.join(map(str, inputs))}: no videos found ({', '.join(sorted(VIDEO_SUFFIXES))})")
    out = Path(out_dir)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    index_path, split_path = out / "index.json", out / "split.json"
    known = {r["sha"]: VideoRecord(**r) for r in json.loads(index_path.read_text())} if index_path.exists() else {}
    embedder = _face_embedder()
    if embedder is None:
        say("dlib's face models are not installed (the eval extra): people are told apart by file name")
    records: list[VideoRecord] = []
    for i, path in enumerate(videos, 1):
        sha = content_hash(path)
        record = known.get(sha)
        clip_file = out / "clips" / f"{sha}.npz"
        if record is None or (record.status == "ok" and not clip_file.exists()):
            try:
                measured = measure_video(path)
            except (UnusableVideo, InputError) as exc:
                record = VideoRecord(str(path), sha, "skipped", reason=str(exc))
            else:
                _save_clips(clip_file, measured.clips)
                frames = sum(len(c) for c in measured.clips)
                record = VideoRecord(str(path), sha, "ok", seconds=measured.seconds, clips=len(measured.clips),
                                     frames=frames, sync_r=measured.sync_r,
                                     embedding=_embedding(measured.portraits, embedder))
            cached = ""
        else:
            record.source = str(path)
            cached = " (cached)"
        records.append(record)
        if record.status == "ok":
            say(f"[{i}/{len(videos)}] {path.name}: {record.clips} clip(s), {record.frames / FPS:.1f} s of motion, "
                f"mouth-loudness r {record.sync_r:.2f}{cached}")
        else:
            say(f"[{i}/{len(videos)}] {path.name}: skipped: {record.reason}{cached}")
        _write_json(index_path, [asdict(r) for r in {**known, **{r.sha: r for r in records}}.values()])
    person = _people(records, people or {})
    for r in records:
        r.person = person.get(r.sha, "")
    previous = json.loads(split_path.read_text()) if split_path.exists() else None
    split = make_split(records, previous)
    _write_json(index_path, [asdict(r) for r in {**known, **{r.sha: r for r in records}}.values()])
    _write_json(split_path, split)
    return records


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def dataset_clips(out_dir: str | Path, side: str) -> list[tuple[str, Clip]]:
    """(person, clip) for every clip on one side of the split ("train" or "validation").

    Raises:
        InputError: the folder holds no dataset.
    """
    out = Path(out_dir)
    try:
        split = json.loads((out / "split.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"{out}: no dataset here (split.json is missing); build one with `emote dataset`") from None
    found = []
    for person, entry in split["people"].items():
        if entry["side"] != side:
            continue
        for sha in entry["videos"]:
            path = out / "clips" / f"{sha}.npz"
            if path.exists():
                found += [(person, clip) for clip in load_clips(path)]
    return found
