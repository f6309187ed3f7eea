"""Renderers by name, and the one way a portrait file becomes a prepared portrait.

Only the mesh warp exists today; a learned renderer joins this table behind the same
:class:`~emote.model.render.interface.Renderer` interface, and the contract tests run
against every entry.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from emote.model.errors import OptionError
from emote.model.face.framing import frame_portrait
from emote.model.face.portrait import analyze_portrait
from emote.model.render.interface import PreparedPortrait, Renderer
from emote.model.render.meshwarp.reference import ReferenceMouths, reference_mouths
from emote.model.render.meshwarp.renderer import MeshWarpRenderer

#: Name → factory. The first entry is the default.
RENDERERS: dict[str, Callable[..., Renderer[Any]]] = {
    "meshwarp": MeshWarpRenderer,
}
DEFAULT_RENDERER = next(iter(RENDERERS))


def make_renderer(name: str = DEFAULT_RENDERER, *, reference: ReferenceMouths | None = None) -> Renderer[Any]:
    """A new renderer by name; ``reference``: real mouth interiors of the portrait's person
    (:func:`load_reference`), drawn instead of painted ones.

    Raises:
        OptionError: no renderer is registered under ``name``.
    """
    if name not in RENDERERS:
        raise OptionError(f"renderer {name!r}: unknown; choose one of {', '.join(RENDERERS)}")
    return RENDERERS[name]() if reference is None else RENDERERS[name](reference=reference)


def load_reference(clip: str | os.PathLike[str]) -> ReferenceMouths:
    """The open mouths of a reference clip (a few seconds of the portrait's person talking, face to camera).

    Raises:
        InputError: the clip cannot be read, or shows too few open mouths (the message says what to give).
    """
    return reference_mouths(clip)


def prepare_portrait(
    portrait: str | os.PathLike[str], *, size: int = 512, full_frame: bool = False, face_index: int | None = None,
    renderer: Renderer[Any] | None = None,
) -> PreparedPortrait:  # fmt: skip
    """Analyse a portrait file (or load its cached analysis), frame it and prepare it for rendering.

    Args:
        portrait: image file (photo or painting) with a clearly visible face.
        size: side of the square output around the face.
        full_frame: output the whole picture instead of a square around the face.
        face_index: which face when the picture has several (0 = largest).
        renderer: the renderer to prepare for (default: a new default renderer).

    Raises:
        PortraitError: the picture cannot be used (the message says why and what to do).
        OptionError: ``size`` is out of range.
    """
    analysis = analyze_portrait(portrait, face_index=face_index)
    framed = frame_portrait(analysis.image, analysis.matte, analysis.landmarks, analysis.coeffs,
                            size=size, full_frame=full_frame)
    return (renderer or make_renderer()).prepare(framed)
