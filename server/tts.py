"""Offline text-to-speech: turns typed text into the speech that drives the avatar.

When a user gives text instead of a recording, this module speaks it with
espeak-ng, loaded through ctypes from the ``espeakng-loader`` wheel (library
and voice data ship inside it, so nothing needs a system install or network).
The result is plain float32 mono samples at espeak's native rate (22050 Hz);
:mod:`model.media.audio_io` and the renderer take it from there. Optionally the word
and phoneme timings espeak reports are returned too. espeak-ng is GPL-3.0, so
it stays an optional extra: without it the rest of Emote works and this module
raises :class:`~model.errors.DependencyError` with the install command.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emote.model.errors import DependencyError, OptionError

MIN_WPM, MAX_WPM = 80, 450  # espeakRATE_MINIMUM / espeakRATE_MAXIMUM in speak_lib.h
_INSTALL_HINT = "install the tts extra: pip install 'emote[tts]'"

# Values from espeak-ng's speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000  # return an error instead of exit() when the data is missing
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_PARAM_RATE = 1
_EE_OK = 0
_EVENT_NAMES = {1: "word", 2: "sentence", 3: "mark", 5: "end", 7: "phoneme"}
_BUFFER_MS = 200  # how much audio espeak collects per callback; fewer, larger calls


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Voice(ctypes.Structure):
    """``espeak_VOICE``, used only to select a voice by language."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


class _Event(ctypes.Structure):
    """``espeak_EVENT``."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class SpeechEvent:
    """A timing mark espeak reports while speaking.

    Attributes:
        kind: ``"word"``, ``"sentence"``, ``"phoneme"``, ``"mark"`` or ``"end"``.
        time_ms: where in the audio it happens, in milliseconds.
        text_offset: character offset in the input text (0-based).
        length: length in characters of the word (0 for other kinds).
        phoneme: espeak's phoneme mnemonic for phoneme events, else ``""``.
    """

    kind: str
    time_ms: int
    text_offset: int
    length: int = 0
    phoneme: str = ""


@dataclass(frozen=True)
class Speech:
    """Synthesized speech with its timing marks."""

    samples: np.ndarray
    sample_rate: int
    events: list[SpeechEvent] = field(default_factory=list)


class _Engine:
    """The loaded library; espeak-ng keeps global state, so there is exactly one."""

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as exc:
            raise DependencyError(f"text-to-speech needs espeak-ng; {_INSTALL_HINT}") from exc
        lib_path = Path(espeakng_loader.get_library_path())
        data_path = Path(espeakng_loader.get_data_path())
        try:
            lib = ctypes.CDLL(str(lib_path))
        except OSError as exc:
            raise DependencyError(f"cannot load espeak-ng from {lib_path} ({exc}); {_INSTALL_HINT}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
        lib.espeak_SetVoiceByProperties.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        # espeak looks for "<path>/espeak-ng-data"; older builds do not accept the folder itself.
        root = data_path.parent if data_path.name == "espeak-ng-data" else data_path
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS, str(root).encode(), _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT
        )
        if rate <= 0:
            raise DependencyError(f"espeak-ng failed to start with its data at {data_path}; {_INSTALL_HINT}")
        self.lib = lib
        self.sample_rate = rate
        self._buffers: list[np.ndarray] = []
        self._events: list[SpeechEvent] = []
        self._callback_error: BaseException | None = None
        # ctypes would free the trampoline with the last Python reference; keep it on the engine.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)

    def _on_audio(self, wav: ctypes.Array, n_samples: int, events: ctypes.Array) -> int:
        """espeak's synth callback: 0 to go on, 1 to abort. Must never raise into C."""
        try:
            if n_samples > 0 and wav:
                self._buffers.append(np.ctypeslib.as_array(wav, shape=(n_samples,)).copy())
            i = 0
            while events[i].type != 0:  # the list ends with espeakEVENT_LIST_TERMINATED
                event = events[i]
                kind = _EVENT_NAMES.get(event.type)
                if kind is not None:
                    phoneme = event.id.string.decode("utf-8", "replace") if kind == "phoneme" else ""
                    length = event.length if kind == "word" else 0
                    self._events.append(
                        SpeechEvent(
                            kind, event.audio_position, max(0, event.text_position - 1), length, phoneme
                        )
                    )
                i += 1
        except BaseException as exc:  # noqa: BLE001 - even Ctrl-C must not unwind through C; re-raised later
            self._callback_error = exc
            return 1
        return 0

    def _select_voice(self, voice: str) -> None:
        if self.lib.espeak_SetVoiceByName(voice.encode()) == _EE_OK:
            return
        # Voice files are named by region only where one exists ("en-us"); a plain
        # language tag such as "en-gb" is found through the voices' language lists.
        spec = _Voice(languages=voice.lower().encode())
        if self.lib.espeak_SetVoiceByProperties(ctypes.byref(spec)) != _EE_OK:
            raise OptionError(
                f"unknown espeak-ng voice {voice!r}; "
                "use a language code such as 'en-us', 'en-gb', 'de' or 'fr'"
            )

    def speak(self, text: str, voice: str, words_per_minute: int) -> Speech:
        self._buffers, self._events, self._callback_error = [], [], None
        self._select_voice(voice)
        self.lib.espeak_SetParameter(_PARAM_RATE, int(words_per_minute), 0)
        data = text.encode("utf-8")
        status = self.lib.espeak_Synth(
            data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
        )
        error = self._callback_error
        if error is not None:
            if not isinstance(error, Exception):
                raise error  # KeyboardInterrupt and friends, as the user meant them
            raise RuntimeError("espeak-ng synth callback failed") from error
        if status != _EE_OK:
            raise RuntimeError(f"espeak-ng could not synthesize the text (error {status})")
        pcm = np.concatenate(self._buffers) if self._buffers else np.zeros(0, np.int16)
        samples = pcm.astype(np.float32) / 32768.0
        return Speech(samples, self.sample_rate, self._events)


_LOCK = threading.Lock()
_ENGINE: _Engine | None = None


def espeak_available() -> bool:
    """Whether the ``tts`` extra (espeakng-loader) is installed."""
    try:
        import espeakng_loader  # noqa: F401
    except ImportError:
        return False
    return True


def synthesize_with_events(text: str, *, voice: str = "en-us", words_per_minute: int = 160) -> Speech:
    """Speak ``text`` and also return espeak's word, sentence and phoneme timings.

    Args:
        text: what to say (UTF-8 text, not SSML).
        voice: an espeak-ng voice or language name, e.g. ``"en-us"``.
        words_per_minute: speaking rate, 80 to 450.

    Returns:
        :class:`Speech` with float32 mono samples in [-1, 1], the sample rate
        (22050) and the timing events in order.

    Raises:
        OptionError: empty text, unknown voice or rate out of range.
        DependencyError: espeak-ng (the ``tts`` extra) is not installed.
    """
    text = text.replace("\x00", " ")
    if not text.strip():
        raise OptionError("the text to speak is empty; give at least one word")
    if not MIN_WPM <= words_per_minute <= MAX_WPM:
        raise OptionError(f"words_per_minute={words_per_minute} is out of range; use {MIN_WPM} to {MAX_WPM}")
    global _ENGINE
    # espeak-ng is one global, non-reentrant state machine: one caller at a time.
    with _LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE.speak(text, voice, words_per_minute)


def synthesize(text: str, *, voice: str = "en-us", words_per_minute: int = 160) -> tuple[np.ndarray, int]:
    """Speak ``text`` offline with espeak-ng.

    Args:
        text: what to say (UTF-8 text, not SSML).
        voice: an espeak-ng voice or language name, e.g. ``"en-us"``.
        words_per_minute: speaking rate, 80 to 450.

    Returns:
        ``(samples, sample_rate)``: float32 mono samples in [-1, 1] and their rate in Hz.
        espeak-ng carries pitch-flutter state from call to call, so saying the
        same text twice in one process can differ by a few milliseconds; the
        first call in a fresh process is reproducible.

    Raises:
        OptionError: empty text, unknown voice or rate out of range.
        DependencyError: espeak-ng (the ``tts`` extra) is not installed.
    """
    speech = synthesize_with_events(text, voice=voice, words_per_minute=words_per_minute)
    return speech.samples, speech.sample_rate
