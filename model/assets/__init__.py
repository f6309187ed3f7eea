"""Assets bundled with Emote (see ASSETS.md beside this file for sources and licences)."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent


def default_portrait_path() -> Path:
    """The bundled default portrait: Grace Hopper, 1984, US Navy photograph, public domain."""
    return ASSETS_DIR / "default_portrait.jpg"
