"""The renderer interface: one framed portrait plus motion frames become video frames.

Rendering has two costs of very different kinds, and the interface keeps them apart:

- **preparing a portrait** (textures, meshes, background fill, the expression deformer: tens of
  milliseconds) depends only on the portrait and the output size. :meth:`Renderer.prepare` does it
  once and returns an immutable :class:`PreparedPortrait` (its arrays are read-only), which any
  number of sessions, on any threads, may share: the live server keeps the last few;
- **drawing frames** needs buffers that change every frame. :meth:`Renderer.session` gives one
  caller a :class:`FrameRenderer` with buffers of its own; it is cheap to create and is used from one
  thread at a time.

A frame whose motion is the portrait's own (pose 0, its rest coefficients) shows the portrait as it
is. Renderers only ever see motion (:mod:`~emote.model.motion.interface`), never audio.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

import numpy as np

from emote.model.face.framing import FramedPortrait

PreparedT = TypeVar("PreparedT", bound="PreparedPortrait")


class PreparedPortrait(Protocol):
    """What a renderer keeps of one portrait at one size: immutable, shareable between sessions.

    Attributes:
        framed: the framed portrait it was prepared from (pixels, matte, landmarks, rest coefficients).
    """

    @property
    def framed(self) -> FramedPortrait: ...

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        ...


class FrameRenderer(Protocol):
    """Draws the frames of one prepared portrait for one caller (not thread-safe; cheap to create)."""

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames :meth:`render` returns."""
        ...

    def render(self, pose: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
        """One frame.

        Args:
            pose: (6,) yaw, pitch, roll (degrees), x, y (face widths), scale; see the motion interface.
            coeffs: (52,) ARKit coefficients (absolute, as measured on a face).

        Returns:
            (H, W, 3) uint8 RGB frame. The array may be reused by the next call: copy it to keep it.
        """
        ...


class Renderer(Protocol[PreparedT]):
    """A way of turning motion into pixels (``meshwarp`` today; a learned renderer can join later).

    Attributes:
        name: the name it is registered under.
    """

    name: str

    def prepare(self, portrait: FramedPortrait) -> PreparedT:
        """Everything per portrait, once: the result is immutable and may be shared."""
        ...

    def session(self, prepared: PreparedT) -> FrameRenderer:
        """A frame renderer for one caller of a prepared portrait."""
        ...
