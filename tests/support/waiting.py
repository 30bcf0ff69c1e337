"""Waiting for something a test caused in another thread or process, instead of sleeping."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    condition: Callable[[], bool], timeout: float = 20, what: str = "condition met"
) -> None:
    """Return once `condition()` holds; AssertionError if it does not within `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.01)
