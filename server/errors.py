"""Errors of the live server, and the HTTP answer each becomes.

They grow the one error tree of :mod:`emote.model.errors` (whose docstring shows all of it): a
caller's mistake is an :class:`~emote.model.errors.InputError` (4xx, the message names the input and
what to send instead), a full server is a :class:`BusyError` that says when to try again.

    EmoteError
    ├── InputError
    │   ├── SignalingError          a WebRTC offer cannot be answered             400
    │   ├── BadRequestError         malformed JSON, a missing or mistyped field   400
    │   ├── PayloadTooLargeError    a body over its limit                         413
    │   └── NotFoundError           no such thing                                 404
    │       ├── UnknownSessionError
    │       └── UnknownPortraitError
    └── BusyError                   try again in ``retry_after_s`` seconds
        ├── TooManySessionsError    every session slot is taken                   503 + Retry-After
        ├── UploadsBusyError        too many uploads at once                      503 + Retry-After
        └── SayQueueFullError       too many texts waiting to be said             429 + Retry-After
"""

from __future__ import annotations

from emote.model.errors import EmoteError, InputError


class SignalingError(InputError):
    """A WebRTC offer cannot be answered: malformed SDP, not an offer, or nothing the avatar can send to."""


class BadRequestError(InputError):
    """The request is malformed: not JSON, a field missing or of the wrong type."""


class PayloadTooLargeError(InputError):
    """The request body is larger than allowed."""


class NotFoundError(InputError):
    """The request names something that does not exist (any more)."""


class UnknownSessionError(NotFoundError):
    """No live session has this id."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no live session has the id {session_id!r}; it ended or never existed")
        self.session_id = session_id


class UnknownPortraitError(NotFoundError):
    """No portrait has this id."""

    def __init__(self, portrait_id: str) -> None:
        super().__init__(f"no portrait has the id {portrait_id!r}; GET /portraits lists them")
        self.portrait_id = portrait_id


class BusyError(EmoteError):
    """The server cannot take this now; the client should retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooManySessionsError(BusyError):
    """Every session slot is taken."""

    def __init__(self, max_sessions: int, retry_after_s: int) -> None:
        super().__init__(f"the server is busy: all {max_sessions} session(s) are in use; try again in "
                         f"{retry_after_s} s", retry_after_s)


class UploadsBusyError(BusyError):
    """``max_concurrent_uploads`` uploads are already being handled."""

    def __init__(self, limit: int, retry_after_s: int) -> None:
        super().__init__(f"the server is busy with {limit} other portrait upload(s); try again in {retry_after_s} s",
                         retry_after_s)


class SayQueueFullError(BusyError):
    """The session already holds as many texts waiting to be said as it keeps."""

    def __init__(self, waiting: int, retry_after_s: int) -> None:
        super().__init__(f"the avatar already has {waiting} texts waiting to be said; try again in {retry_after_s} s "
                         "or interrupt it with POST /sessions/{id}/clear", retry_after_s)
