"""The one place silero-vad is loaded: the voice-activity model both speech detectors use.

silero-vad (the ``silero-vad`` package, MIT) ships a small TorchScript model inside the wheel, so
nothing is downloaded. Two parts of Emote run it: offline evaluation finds the voice-free stretches
of a recording (:mod:`~emote.model.media.voice_activity`), and the live server gates microphone
audio (:mod:`~emote.streaming.speech_gate`). Both get their model here. Importing ``silero_vad``
sets torch's thread count to 1 for the whole process as a side effect; the loader undoes that, so
whoever else runs torch in the process keeps its threads.
"""

from __future__ import annotations

import warnings
from types import ModuleType
from typing import Any

from emote.model.errors import DependencyError

SAMPLE_RATE = 16000
INSTALL_HINT = "run `make install` (it installs torch==2.13.0 and silero-vad==6.2.3)"


def silero_module() -> ModuleType:
    """The ``silero_vad`` module, imported without changing torch's thread count.

    Raises:
        DependencyError: torch or silero-vad is not installed (both are core dependencies).
    """
    try:
        import torch

        threads = torch.get_num_threads()
        import silero_vad
    except ImportError as exc:  # pragma: no cover - both are core dependencies
        raise DependencyError(f"voice-activity detection needs silero-vad and torch; {INSTALL_HINT}") from exc
    torch.set_num_threads(threads)
    return silero_vad


def load_silero_model() -> Any:
    """A fresh silero-vad model (TorchScript; it carries recurrent state, so one per stream).

    Raises:
        DependencyError: torch or silero-vad is not installed.
    """
    silero = silero_module()
    with warnings.catch_warnings():
        # torch 2.13 deprecates TorchScript loading; the bundled model is TorchScript, and still loads.
        warnings.filterwarnings("ignore", r"`torch\.jit\.load` is deprecated", DeprecationWarning)
        return silero.load_silero_vad(onnx=False)
