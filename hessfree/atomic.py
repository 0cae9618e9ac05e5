"""Atomic files: write beside the target, flush, fsync, rename over it, fsync the directory.

A reader never sees a half-written file: either the old one or the complete new one
(``os.replace`` is atomic on POSIX). An interrupted write leaves at most a hidden
``.NAME.*.tmp`` file, removed on the way out of any failure this process survives.
Checkpoints, downloads and calibrations all write this way.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


def fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort where directories have no fd)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_file(path) as fh: fh.write(...)``: ``path`` appears complete on success,
    untouched if the block raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as fh:
        fh.write(data)
