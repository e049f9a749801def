"""Which SQLite files a piece of code opens (apsw connections made, by file name)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import apsw


@contextmanager
def sqlite_opens() -> Iterator[list[str]]:
    """The file names of the apsw connections made inside the block, in order.

    It replaces ``apsw.Connection`` on the module, so it sees code that calls
    ``apsw.Connection(...)`` (all of agentbook does); a ``from apsw import Connection``
    taken before the block would escape it."""
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
