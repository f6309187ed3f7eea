"""Errors a user of Emote can cause, in one documented tree.

Every error here carries a message that names the offending input and says
what to do about it; the CLI prints ``str(error)`` and exits non-zero, the
server turns it into a 4xx response. Nothing else in the code base raises
bare ``ValueError`` for user input.

    EmoteError
    ├── InputError                 bad input from a user (exit code 2)
    │   ├── PortraitError          the portrait image cannot be used
    │   │   ├── NotAnImageError    the file is not a readable image
    │   │   ├── NoFaceError        no face was found in the image
    │   │   └── FaceTooSmallError  the face is too small to animate
    │   ├── AudioError             the audio cannot be used
    │   │   ├── EmptyAudioError    the file holds no samples
    │   │   └── CorruptAudioError  the file cannot be decoded
    │   ├── OptionError            a command-line option or config value is out of range
    │   └── (server)               SignalingError, BadRequestError, PayloadTooLargeError, NotFoundError
    ├── (server) BusyError         the live server is full: retry later
    └── DependencyError            an optional component (e.g. TTS engine) is not installed

The live server's errors (the branches marked ``(server)``, each with the HTTP status it becomes)
live in :mod:`emote.server.errors`, beside the code that raises them.
"""

from __future__ import annotations


class EmoteError(Exception):
    """Base of every error Emote raises on purpose."""


class InputError(EmoteError):
    """Bad input from the user; the message names the input and the remedy."""


class PortraitError(InputError):
    """The portrait image cannot be used."""


class NotAnImageError(PortraitError):
    """The portrait file is not a readable image."""


class NoFaceError(PortraitError):
    """No face was found in the portrait."""


class FaceTooSmallError(PortraitError):
    """The face in the portrait is too small to animate."""


class AudioError(InputError):
    """The audio input cannot be used."""


class EmptyAudioError(AudioError):
    """The audio input holds no samples."""


class CorruptAudioError(AudioError):
    """The audio input cannot be decoded (corrupt, truncated or unsupported)."""


class OptionError(InputError):
    """A command-line option or configuration value is invalid."""


class DependencyError(EmoteError):
    """An optional component that this call needs is not installed."""


class MultipleFacesWarning(UserWarning):
    """The portrait holds several faces; the largest was used unless one was chosen (``--face N``)."""
