"""One error tree: every error the server defines derives from EmoteError and lives in server/errors.py."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

from emote.model.errors import EmoteError, InputError
from emote.server import errors

SERVER = Path(__file__).resolve().parents[2] / "server"


def test_every_server_error_is_in_the_one_tree() -> None:
    defined = [obj for _, obj in inspect.getmembers(errors, inspect.isclass) if obj.__module__ == errors.__name__]
    assert len(defined) >= 9
    for cls in defined:
        assert issubclass(cls, EmoteError), cls
        assert cls.__name__ in errors.__doc__, f"{cls.__name__} is missing from the tree in the module docstring"
    # Client mistakes are input errors (HTTP 4xx); a full server says when to come back.
    assert issubclass(errors.UnknownSessionError, InputError) and issubclass(errors.SignalingError, InputError)
    busy = errors.TooManySessionsError(2, 7)
    assert isinstance(busy, errors.BusyError) and busy.retry_after_s == 7 and "7 s" in str(busy)
    assert "'abc'" in str(errors.UnknownPortraitError("abc"))


def test_no_exception_classes_outside_errors_py() -> None:
    for path in sorted(SERVER.glob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not any(b.endswith(("Error", "Exception")) for b in bases), \
                    f"{path.name} defines {node.name}: server errors go in server/errors.py"
