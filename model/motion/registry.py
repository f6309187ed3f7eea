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
#: The learned model is the default since 2026-12-07 (BENCHMARKS.md: it beats the baseline on lip sync, head
#: motion, blinks and expression on people it never saw; its identity distance is what the renderer gives
#: the people's own real motion).
GENERATORS: dict[str, str] = {
    "diffusion": "emote.model.motion.diffusion.generator:DiffusionGenerator",
    "baseline": "emote.model.motion.baseline.generator:BaselineGenerator",
    "still": "emote.model.motion.still:StillGenerator",
}
DEFAULT_GENERATOR = next(iter(GENERATORS))
#: Generators with trained weights: ``NAME=FOLDER`` runs them with other weights (``emote train``'s output).
LEARNED = frozenset({"diffusion"})


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
