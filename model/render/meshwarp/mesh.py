"""Mesh topology for the warp renderer: the face mesh and the mesh around it.

MediaPipe's canonical face mesh (898 triangles over the first 468 of the 478
landmarks, with holes at the eyes and the mouth) ships inside the Face
Landmarker task file; we read its triangle list from there. Around the face
we add rings of vertices (hair, ears, neck) that follow the head with a
weight falling to zero on the body, so that head rotation bends the picture
smoothly into the still shoulders. The landmark loops it uses (inner lips, eye openings,
face oval, irises) are named in :mod:`emote.model.face.regions`.
"""

from __future__ import annotations

import functools
import zipfile
from dataclasses import dataclass

import numpy as np

from emote.model.face.regions import CHIN, FACE_OVAL, INNER_LIPS, LEFT_EYE, RIGHT_EYE


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _proto_fields(data: bytes) -> dict[int, list[bytes | int]]:
    """Top-level fields of a protobuf message: number -> values (bytes for length-delimited ones)."""
    fields: dict[int, list[bytes | int]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: bytes | int
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.setdefault(number, []).append(value)
    return fields


@functools.lru_cache(maxsize=1)
def skin_triangles() -> np.ndarray:
    """(852, 3) int32 triangles of MediaPipe's canonical face mesh, with holes.

    The canonical mesh (``GeometryPipelineMetadata.canonical_mesh.index_buffer``
    inside ``face_landmarker.task``; read with a few lines of protobuf wire
    decoding, because importing MediaPipe costs most of a second) fills the eye
    openings and the mouth; those triangles (all three corners on one
    opening's loop) are removed, so the renderer can show the eyes and the
    mouth interior through the holes.
    """
    from emote.model.face.landmarker import landmarker_task_path

    with zipfile.ZipFile(landmarker_task_path()) as task:
        meta = task.read("geometry_pipeline_metadata_landmarks.binarypb")
    canonical_mesh = _proto_fields(meta)[1][0]  # field 1: canonical_mesh (Mesh3d)
    if not isinstance(canonical_mesh, bytes):
        raise ValueError("face_landmarker.task: the geometry metadata holds no canonical mesh")
    mesh = _proto_fields(canonical_mesh)
    indices: list[int] = []
    for item in mesh[4]:  # field 4: index_buffer, uint32 varints, one by one or packed
        if isinstance(item, int):
            indices.append(item)
            continue
        pos = 0
        while pos < len(item):
            value, pos = _read_varint(item, pos)
            indices.append(value)
    tris = np.asarray(indices, np.int32).reshape(-1, 3)
    in_hole = np.zeros(len(tris), bool)
    for loop in (INNER_LIPS, RIGHT_EYE, LEFT_EYE):
        in_hole |= np.isin(tris, loop).all(axis=1)
    return tris[~in_hole]


def loop_fan(n_loop: int, centre: int, offset: int = 0) -> np.ndarray:
    """(n_loop, 3) triangles fanning a closed loop of vertices around a centre vertex.

    Args:
        n_loop: number of loop vertices, numbered ``offset .. offset + n_loop - 1``.
        centre: index of the centre vertex.
        offset: index of the loop's first vertex.
    """
    i = np.arange(n_loop)
    return np.stack([offset + i, offset + (i + 1) % n_loop, np.full(n_loop, centre)], axis=1).astype(np.int32)


def strip_quads(n_cols: int, offset_top: int, offset_bottom: int) -> np.ndarray:
    """(2 * (n_cols - 1), 3) triangles joining two rows of ``n_cols`` vertices."""
    tris = []
    for k in range(n_cols - 1):
        a, b = offset_top + k, offset_top + k + 1
        c, d = offset_bottom + k, offset_bottom + k + 1
        tris += [(a, b, d), (a, d, c)]
    return np.asarray(tris, np.int32)


@dataclass(frozen=True)
class SurroundMesh:
    """Rings of vertices around the face oval that carry the head motion outwards.

    Attributes:
        points: (R, 3) float32 source positions in pixels (z like the landmarks).
        head_weight: (R,) float32 how fully each vertex follows the head (0..1).
        triangles: (T, 3) int32 triangles over ``[478 landmarks, points]``: indices
            below 478 are landmarks (the face oval), the rest ``478 + ring point``.
    """

    points: np.ndarray
    head_weight: np.ndarray
    triangles: np.ndarray


#: (scale about the face centre, how much that ring follows the head)
SURROUND_RINGS = ((1.25, 1.0), (1.5, 0.7), (1.8, 0.0))


def build_surround(landmarks: np.ndarray, frame_wh: tuple[int, int]) -> SurroundMesh:
    """Rings around the face: hair and ears follow the head, the neck and body less, the edge not at all.

    Each ring is the face oval scaled about the face centre, so consecutive
    rings join with quad strips that share the oval's own edges with the face
    mesh (no cracks, no overlap). Ring points are kept inside the frame, and
    points near the frame edge follow the head less, so the frame border
    never moves.

    Args:
        landmarks: (478, 3) portrait landmarks in output pixels.
        frame_wh: output frame width and height.
    """
    w, h = frame_wh
    oval = landmarks[FACE_OVAL]
    centre = oval[:, :2].mean(axis=0)
    face_h = float(np.ptp(oval[:, 1]))
    chin_y = float(landmarks[CHIN, 1])
    margin = 0.08 * max(w, h)
    rings, weights = [], []
    for scale, base_weight in SURROUND_RINGS:
        ring = oval.copy()
        ring[:, :2] = centre + (oval[:, :2] - centre) * scale
        ring[:, 0] = np.clip(ring[:, 0], 0.0, w - 1.0)
        ring[:, 1] = np.clip(ring[:, 1], 0.0, h - 1.0)
        # Below the chin the ring lies on the neck, which turns much less than the head.
        below = np.clip((ring[:, 1] - (chin_y - 0.15 * face_h)) / (0.35 * face_h), 0.0, 1.0)
        edge = np.minimum.reduce([ring[:, 0], ring[:, 1], w - 1.0 - ring[:, 0], h - 1.0 - ring[:, 1]])
        rings.append(ring)
        neck = 1.0 - (0.85 if scale < 1.5 else 1.0) * below
        weights.append(base_weight * neck * np.clip(edge / margin, 0.0, 1.0))
    points = np.concatenate(rings).astype(np.float32)
    head_weight = np.concatenate(weights).astype(np.float32)
    n = len(FACE_OVAL)
    n_landmarks = len(landmarks)
    loops = [FACE_OVAL] + [n_landmarks + k * n + np.arange(n) for k in range(len(SURROUND_RINGS))]
    tris = []
    for inner, outer in zip(loops, loops[1:], strict=False):
        for i in range(n):
            j = (i + 1) % n
            tris += [(inner[i], inner[j], outer[j]), (inner[i], outer[j], outer[i])]
    return SurroundMesh(points=points, head_weight=head_weight, triangles=np.asarray(tris, np.int32))
