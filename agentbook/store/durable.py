"""Files that survive a power loss (``durability="full"``): a file's bytes are on the disk
only after an fsync of the file, and a rename into place only after an fsync of its
folder - without the second, a store written and renamed can be gone after a power loss
although its bytes were synced.
"""

from __future__ import annotations

import os

__all__ = ["sync_path"]


def sync_path(path: str) -> None:
    """fsync the file or folder at *path* (a folder: the names in it, a rename)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
