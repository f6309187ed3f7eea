"""Motion generators by name: what ``--motion NAME`` on every command chooses from.

One table, used by ``emote render``, ``emote serve``, ``emote eval``, the benchmarks and the
contract tests that every registered generator must pass. Entries name their class by import path,
so listing the names (``emote --help``, option checks) imports none of them: the baseline brings
numba, a learned model brings torch. A generator is built fresh for each caller.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from emote.model.errors import OptionError
from emote.model.motion.interface import MotionGenerator

#: Name → "module:class". The first entry is the default.
GENERATORS: dict[str, str] = {
    "baseline": "emote.model.motion.baseline.generator:BaselineGenerator",
    "still": "emote.model.motion.still:StillGenerator",
    "diffusion": "emote.model.motion.diffusion.generator:DiffusionGenerator",
}
DEFAULT_GENERATOR = next(iter(GENERATORS))
#: Generators with trained weights: ``NAME=FOLDER`` runs them with other weights (``emote train``'s output).
LEARNED = frozenset({"diffusion"})


#: What a user must know before using a generator's shipped weights (printed by `emote render` and `emote serve`).
NOTICES: dict[str, str] = {
    "diffusion": "the learned motion model's shipped weights are for research and non-commercial use only "
                 "(model/weights/motion_diffusion/MODEL_CARD.md says why); for anything else use --motion baseline "
                 "or weights you trained on footage you may use (--motion diffusion=FOLDER)",
}


def usage_notice(name: str) -> str | None:
    """The notice of ``name``'s shipped weights, or None (no notice, or the user's own weights: NAME=FOLDER)."""
    base, _, folder = name.partition("=")
    return None if folder else NOTICES.get(base)


def generator_names() -> list[str]:
    """The registered names, the default first."""
    return list(GENERATORS)


def check_generator_name(name: str) -> str:
    """``name`` if it is registered (or ``NAME=FOLDER`` of a learned one whose folder exists), else an
    :class:`OptionError` that says what to choose."""
    base, _, folder = name.partition("=")
    if base not in GENERATORS:
        raise OptionError(f"--motion {name!r}: unknown motion generator; choose one of {', '.join(GENERATORS)}")
    if folder:
        if base not in LEARNED:
            raise OptionError(f"--motion {name!r}: {base} has no weights to choose; only {', '.join(sorted(LEARNED))} "
                              "takes NAME=FOLDER")
        if not (Path(folder) / "config.json").is_file():
            raise OptionError(f"--motion {name!r}: {folder} holds no trained model (config.json); give the "
                              "student/ or teacher/ folder that `emote train` wrote")
    return name


def make_generator(name: str = DEFAULT_GENERATOR) -> MotionGenerator[Any]:
    """A new generator by name.

    Args:
        name: a registered name, or ``NAME=FOLDER`` for a learned generator with other weights.

    Raises:
        OptionError: no generator is registered under ``name`` (or its folder holds no model).
        DependencyError: a learned generator whose weights are not installed.
    """
    base, _, folder = check_generator_name(name).partition("=")
    module, _, cls = GENERATORS[base].partition(":")
    factory = getattr(importlib.import_module(module), cls)
    generator: MotionGenerator[Any] = factory(folder) if folder else factory()
    return generator
