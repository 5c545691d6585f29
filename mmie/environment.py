"""Environment variables set for a block of code and restored after it (a foundation: no mmie imports)."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator


def _set(values: dict[str, str | None]) -> None:
    for key, value in values.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@contextlib.contextmanager
def temporary(**values: str | None) -> Iterator[None]:
    """Set (or, with ``None``, remove) environment variables for the block, then restore each to what it
    was (also removed again when it was unset), whether the block ends or raises."""
    old = {key: os.environ.get(key) for key in values}
    try:
        _set(values)
        yield
    finally:
        _set(old)
