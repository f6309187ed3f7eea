"""Linear ARKit blendshape basis on MediaPipe's 478 face landmarks.

The renderer warps a single portrait with a triangle mesh on MediaPipe's 478
face landmarks, but motion arrives as ARKit's 52 blendshape coefficients. This
module holds the model that connects the two: a linear basis ``B`` (52, 478, 3)
learned from real talking videos by :mod:`~emote.model.face.basis_fit` that
says how every landmark moves, in a canonical head frame, when one coefficient
changes by 1. :class:`BlendshapeBasis` loads the shipped weights
(``model/weights/blendshape_basis.npz``, see ``MODEL_CARD.md`` there);
:meth:`BlendshapeBasis.to_canonical` removes head pose from a landmark set with
a 3-D similarity Procrustes fit on rigid landmarks; :class:`PortraitDeformer`
precomputes that alignment once per portrait so that deforming it for a video
frame is one matrix-vector product.

Coordinate conventions
    Pixel space: ``(x, y, z)`` with x to the right and y down in pixels and z
    MediaPipe's depth multiplied by the image width (so it has x's scale),
    growing away from the camera.
    Canonical space: origin at the nose bridge (landmark 168), x towards the
    subject's left outer eye corner (landmark 263, on the right of a
    non-mirrored frontal photo), y down, z away from the camera; unit = the
    distance between the outer eye corners (33 and 263) of the mean shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emote.model.face.pose import Similarity, fit_similarity
from emote.model.motion.interface import ARKIT_NAMES, N_COEFFS

N_LANDMARKS = 478
NOSE_BRIDGE, EYE_OUTER_RIGHT, EYE_OUTER_LEFT = 168, 33, 263  # subject's right/left eye
DEFAULT_PATH = Path(__file__).resolve().parents[1] / "weights" / "blendshape_basis.npz"


def normalise_shape(shape: np.ndarray) -> np.ndarray:
    """Put a roughly frontal shape into the canonical frame.

    Origin at the nose bridge (168), x along the outer eye corners (33 → 263), y down
    (image y orthogonalised against x), z = x × y (away from the camera), unit = the
    distance between the outer eye corners. shape: (478, 3) -> (478, 3).
    """
    eye = shape[EYE_OUTER_LEFT] - shape[EYE_OUTER_RIGHT]
    x = eye / np.linalg.norm(eye)
    y = np.array([0.0, 1.0, 0.0]) - x[1] * x
    y /= np.linalg.norm(y)
    q = np.stack([x, y, np.cross(x, y)])
    return (shape - shape[NOSE_BRIDGE]) @ q.T / np.linalg.norm(eye)


def align_sequence(landmarks: np.ndarray, template: np.ndarray, rigid_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove head pose from every frame of a landmark sequence.

    Args:
        landmarks: (T, 478, 3) pixel-space landmarks.
        template: (478, 3) canonical shape whose rigid landmarks every frame is fitted to.
        rigid_idx: (K,) indices of the rigid landmarks.

    Returns:
        canonical (T, 478, 3) float64 shapes, and pose (T, 4): yaw, pitch, roll in
        degrees (:mod:`emote.model.face.pose`'s convention) and the RMS distance of the
        aligned rigid landmarks from the template's, in canonical units.
    """
    out = np.empty(landmarks.shape, np.float64)
    pose = np.empty((len(landmarks), 4))
    for t, lm in enumerate(np.asarray(landmarks, np.float64)):
        sim = fit_similarity(template[rigid_idx], lm[rigid_idx])
        out[t] = sim.apply_inverse(lm)
        rms = np.sqrt(((out[t, rigid_idx] - template[rigid_idx]) ** 2).sum(1).mean())
        pose[t] = (*sim.angles(), rms)
    return out, pose


@dataclass(frozen=True)
class BlendshapeBasis:
    """The learned linear model ``shape ≈ mean_shape + basis · delta_coeffs``.

    Attributes:
        mean_shape: (478, 3) float32 canonical mean face (canonical units).
        basis: (52, 478, 3) float32 landmark displacement per unit of each
            coefficient, in ``ARKIT_NAMES`` order (tongueOut is all zeros).
        rigid_idx: (K,) int landmark indices used for the head-pose fit.
        names: the 52 coefficient names.
        regions: ``{name: (M,) int landmark indices}`` for mouth, eyes, brows, jaw.
        supported: (52,) bool; False where the training data never exercised the
            coefficient (tongueOut, cheekPuff, cheekSquint*, noseSneer*, ...): zero basis.
        coeff_p99: (52,) float32 99th percentile of each coefficient in the training
            video frames; the linear model is trustworthy up to about there.
        meta: training provenance and held-out validation numbers (from the file).
    """

    mean_shape: np.ndarray
    basis: np.ndarray
    rigid_idx: np.ndarray
    names: tuple[str, ...] = ARKIT_NAMES
    regions: dict[str, np.ndarray] = field(default_factory=dict)
    supported: np.ndarray = field(default_factory=lambda: np.ones(N_COEFFS, bool))
    coeff_p99: np.ndarray = field(default_factory=lambda: np.ones(N_COEFFS, np.float32))
    meta: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path | None = None) -> BlendshapeBasis:
        """Load a basis file; ``None`` loads the one shipped with the package.

        Args:
            path: an ``.npz`` written by :mod:`~emote.model.face.basis_fit`.
        """
        with np.load(DEFAULT_PATH if path is None else Path(path), allow_pickle=False) as z:
            names = tuple(str(n) for n in z["names"])
            if names != ARKIT_NAMES:
                raise ValueError(f"{path}: coefficient names differ from emote.model.motion.interface.ARKIT_NAMES")
            regions = {k[len("region_") :]: z[k].astype(np.int64) for k in z.files if k.startswith("region_")}
            basis = z["basis"].astype(np.float32)
            return cls(
                mean_shape=z["mean_shape"].astype(np.float32),
                basis=basis.reshape(N_COEFFS, N_LANDMARKS, 3),
                rigid_idx=z["rigid_idx"].astype(np.int64),
                names=names,
                regions=regions,
                supported=z["supported"].astype(bool),
                coeff_p99=z["coeff_p99"].astype(np.float32),
                meta=json.loads(str(z["meta_json"])),
            )

    def align(self, landmarks_px: np.ndarray) -> Similarity:
        """Head pose of a face: the similarity mapping canonical space to its pixels.

        Args:
            landmarks_px: (478, 3) landmarks in pixel space (see module docstring).
        """
        pts = _as_points(landmarks_px)
        return fit_similarity(self.mean_shape[self.rigid_idx], pts[self.rigid_idx])

    def to_canonical(self, landmarks_px: np.ndarray) -> tuple[np.ndarray, Similarity]:
        """Remove head pose: express a face in the canonical head frame.

        Args:
            landmarks_px: (478, 3) landmarks in pixel space.

        Returns:
            ``(canonical, similarity)``: canonical (478, 3) float32 landmarks, and
            the similarity that maps canonical coordinates back to pixels.
        """
        sim = self.align(landmarks_px)
        canonical = sim.apply_inverse(np.asarray(landmarks_px, np.float64)).astype(np.float32)
        return canonical, sim

    def displacement(self, delta_coeffs: np.ndarray) -> np.ndarray:
        """Canonical landmark displacement for a coefficient change. (52,) -> (478, 3)."""
        delta = np.asarray(delta_coeffs, np.float32).reshape(N_COEFFS)
        return np.tensordot(delta, self.basis, axes=1)

    def deform(self, landmarks_px: np.ndarray, delta_coeffs: np.ndarray) -> np.ndarray:
        """Move a face's landmarks by a coefficient change, in its own head frame.

        The face is aligned to the canonical frame (similarity Procrustes on the rigid
        landmarks), the basis displacement is rotated and scaled into its pixel frame
        and added. For many frames of one portrait, build :meth:`portrait` once instead.

        Args:
            landmarks_px: (478, 3) the face's landmarks in pixel space.
            delta_coeffs: (52,) coefficient change in ``ARKIT_NAMES`` order.

        Returns:
            (478, 3) deformed landmarks in pixel space (float64 for float64 input,
            else float32); a zero change returns the input values exactly.
        """
        pts = _as_points(landmarks_px)
        sim = self.align(pts)
        return pts + (sim.scale * self.displacement(delta_coeffs) @ sim.rotation.T).astype(pts.dtype)

    def portrait(self, landmarks_px: np.ndarray) -> PortraitDeformer:
        """A :class:`PortraitDeformer` for one portrait (aligns it once)."""
        return PortraitDeformer(self, landmarks_px)


def _as_points(landmarks_px: np.ndarray) -> np.ndarray:
    """Validate a (478, 3) landmark array; float64 stays float64, anything else becomes float32."""
    pts = np.asarray(landmarks_px)
    pts = pts.astype(np.float64 if pts.dtype == np.float64 else np.float32, copy=False)
    if pts.shape != (N_LANDMARKS, 3) or not np.isfinite(pts).all():
        raise ValueError(f"landmarks must be a finite ({N_LANDMARKS}, 3) array, got shape {pts.shape}")
    return pts


class PortraitDeformer:
    """Deforms one portrait's landmarks; alignment is precomputed at construction.

    ``deformer(delta)`` returns ``landmarks + delta @ basis_px`` where
    ``basis_px`` (52, 1434) is the basis rotated and scaled into this face's
    pixel frame: one matrix-vector product per call (a few microseconds).

    Args:
        basis: the loaded :class:`BlendshapeBasis`.
        landmarks_px: (478, 3) the portrait's landmarks in pixel space.
    """

    def __init__(self, basis: BlendshapeBasis, landmarks_px: np.ndarray) -> None:
        self.landmarks = _as_points(landmarks_px).copy()
        self.similarity = basis.align(self.landmarks)
        lin = (self.similarity.scale * self.similarity.rotation).astype(np.float32)
        self._base = self.landmarks.reshape(-1)
        self.basis_px = np.ascontiguousarray((basis.basis @ lin.T).reshape(N_COEFFS, N_LANDMARKS * 3))

    def __call__(self, delta_coeffs: np.ndarray) -> np.ndarray:
        """Deformed landmarks in pixels (dtype as in :meth:`BlendshapeBasis.deform`).

        Args:
            delta_coeffs: (52,) coefficient change, or (T, 52) for T frames at once.

        Returns:
            (478, 3), or (T, 478, 3) for a batch.
        """
        delta = np.asarray(delta_coeffs, np.float32)
        # einsum, not @: a product this small must not wake BLAS's thread pool, whose spinning
        # threads stalled every frame while the encoder thread held the other core.
        offsets = np.einsum("...i,ij->...j", delta, self.basis_px)
        return (self._base + offsets).reshape(delta.shape[:-1] + (N_LANDMARKS, 3))
