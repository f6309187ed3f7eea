"""Shared test setup: every test run uses its own portrait-analysis cache."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Keep the user's ~/.cache out of the tests, and the tests independent of it."""
    old = os.environ.get("EMOTE_CACHE_DIR")
    os.environ["EMOTE_CACHE_DIR"] = str(tmp_path_factory.mktemp("emote-cache"))
    yield
    if old is None:
        os.environ.pop("EMOTE_CACHE_DIR", None)
    else:
        os.environ["EMOTE_CACHE_DIR"] = old
