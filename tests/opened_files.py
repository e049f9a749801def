"""Which SQLite files a piece of code opens (apsw connections made, by file name)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import apsw


@contextmanager
def sqlite_opens() -> Iterator[list[str]]:
    """The file names of the apsw connections made inside the block, in order."""
    opened: list[str] = []
    real = apsw.Connection

    class Watched(real):  # type: ignore[misc, valid-type]
        def __init__(self, filename, *args, **kwargs):
            opened.append(filename)
            super().__init__(filename, *args, **kwargs)

    apsw.Connection = Watched  # type: ignore[misc]
    try:
        yield opened
    finally:
        apsw.Connection = real  # type: ignore[misc]
