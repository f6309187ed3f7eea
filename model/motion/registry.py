"""Motion generators by name: what ``--motion NAME`` on every command chooses from.

One table, used by ``emote render``, ``emote serve``, ``emote eval``, the benchmarks and the
contract tests that every registered generator must pass. Entries name their class by import path,
so listing the names (``emote --help``, option checks) imports none of them: the baseline brings
numba, a learned model brings torch. A generator is built fresh for each caller.
"""

from __future__ import annotations

import importlib
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


def generator_names() -> list[str]:
    """The registered names, the default first."""
    return list(GENERATORS)


def check_generator_name(name: str) -> str:
    """``name`` if it is registered, else an :class:`OptionError` that lists the choices."""
    if name not in GENERATORS:
        raise OptionError(f"--motion {name!r}: unknown motion generator; choose one of {', '.join(GENERATORS)}")
    return name


def make_generator(name: str = DEFAULT_GENERATOR) -> MotionGenerator[Any]:
    """A new generator by name.

    Raises:
        OptionError: no generator is registered under ``name``.
    """
    module, _, cls = GENERATORS[check_generator_name(name)].partition(":")
    generator: MotionGenerator[Any] = getattr(importlib.import_module(module), cls)()
    return generator
