"""Atomic files: write beside the target, flush, fsync, rename over it, fsync the directory.

A reader never sees a half-written file: either the old one or the complete new one
(``os.replace`` is atomic on POSIX). An interrupted write leaves at most a hidden
``.NAME.PID.XXXXXXXX.tmp`` file, removed on the way out of any failure this process
survives; :func:`remove_stale_temporaries` removes those of processes that died (a kill,
a power cut), which a run does for its own files when it starts. Checkpoints, model
files, downloads and calibrations all write this way.

Every ``OSError`` raised while writing names the target file (``exc.filename``), so a
full disk reads ``runs/state-00000003-….npz: No space left on device``.

Also here: :func:`read_regular` (read a file whole with a size cap, refusing devices,
FIFOs and directories: a manifest symlinked to ``/dev/zero`` is refused, not read
forever) and :func:`check_writable` (an output path is checked before any work starts).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.tmp$")


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


def named(exc: OSError, path: str | os.PathLike) -> OSError:
    """``exc`` with ``filename`` set to ``path`` when it names no file (write, fsync)."""
    if getattr(exc, "filename", None) is None:
        exc.filename = str(path)
    return exc


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """``with atomic_file(path) as fh: fh.write(...)``: ``path`` appears complete on success,
    untouched if the block raises. OSErrors name ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise named(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            # the temporary's name means nothing to the user: name the target
            if exc.filename in (None, tmp):
                exc.filename = str(path)
        raise
    fsync_directory(path.parent)


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as fh:
        fh.write(data)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # pragma: no cover
        return True
    return True


def remove_stale_temporaries(directory: str | os.PathLike, name: re.Pattern | str) -> list[Path]:
    """Remove the temporaries of interrupted atomic writes in ``directory`` whose target
    name matches ``name`` (a regex, or an exact file name) and whose writing process is
    gone. Returns what was removed; errors are ignored (it is housekeeping)."""
    directory = Path(directory)
    pattern = re.compile(re.escape(name) + "$") if isinstance(name, str) else name
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TMP.match(entry.name)
        if not m or not pattern.match(m.group("name")) or _alive(int(m.group("pid"))):
            continue
        with contextlib.suppress(OSError):
            if entry.is_file() and not entry.is_symlink():
                entry.unlink()
                removed.append(entry)
    return removed


class NotRegularFile(OSError):
    """A path that should be a regular file is a device, FIFO, socket or directory."""


class TooLarge(OSError):
    """A file is larger than the caller's cap."""


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``open(path, "rb")`` for a regular file only: a device, FIFO or directory is refused
    (:class:`NotRegularFile`) without blocking or reading. OSErrors name ``path``."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except IsADirectoryError:
        raise NotRegularFile(errno.EISDIR, "is a directory, not a regular file", str(path)) from None
    except OSError as exc:
        raise named(exc, path) from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):  # Linux opens a directory read-only without complaint
            raise NotRegularFile(errno.EISDIR, "is a directory, not a regular file", str(path))
        if not stat.S_ISREG(mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file (a device, FIFO or socket)", str(path))
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file at ``path`` (symlinks followed), at most ``limit``.

    Raises FileNotFoundError, :class:`NotRegularFile` (``/dev/zero``, a FIFO, a
    directory: refused without reading or blocking), :class:`TooLarge`, or the OSError
    of the read; every one names ``path``.
    """
    path = Path(path)
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > limit:
            raise TooLarge(errno.EFBIG, f"{size} bytes, more than the {limit} this file may have", str(path))
        chunks, left = [], limit + 1  # in blocks: read(limit) would allocate the whole limit at once
        try:
            while left > 0:
                block = fh.read(min(left, 1 << 20))
                if not block:
                    break
                chunks.append(block)
                left -= len(block)
        except OSError as exc:
            raise named(exc, path) from None
        data = b"".join(chunks)  # a file that grew past the limit under us is caught below
    if len(data) > limit:
        raise TooLarge(errno.EFBIG, f"more than the {limit} bytes this file may have", str(path))
    return data


def read_regular_or(path: str | os.PathLike, limit: int, fail: Callable[[str], Exception], *,
                    too_large: str | None = None) -> bytes:
    """:func:`read_regular`, each failure raised as the caller's typed error ``fail(reason)``.

    ``reason`` says what is wrong with the file ("not found", "is a directory", ...);
    ``too_large`` replaces the default reason for a file over ``limit``.
    """
    try:
        return read_regular(path, limit)
    except FileNotFoundError:
        raise fail("not found") from None
    except NotRegularFile as exc:
        kind = "a directory" if exc.errno == errno.EISDIR else "not a regular file (a device, FIFO or socket)"
        raise fail(f"is {kind}") from None
    except TooLarge:
        raise fail(too_large or f"is larger than the {limit} bytes it may have") from None
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror or exc})") from None


def _nearest_existing(path: Path) -> Path:
    current = path
    while not os.path.lexists(current) and current != current.parent:
        current = current.parent
    return current


def _probe_directory(directory: Path, target: Path, what: str) -> None:
    """Create and remove a temporary in ``directory``: the only test that also holds for
    root, read-only file systems and ACLs."""
    if not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"not a directory (cannot hold {what})", str(directory))
    try:
        fd, probe = tempfile.mkstemp(prefix=f".hessfree-probe.{os.getpid()}.", suffix=".tmp", dir=directory)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {what} ({exc.strerror or exc})", str(target)) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


def check_writable(path: str | os.PathLike, what: str, *, directory: bool = False) -> None:
    """Raise the OSError that writing ``what`` at ``path`` would meet, before any work:
    a file where a directory is needed (or the reverse), a directory that cannot be
    created or written (read-only file system, permissions), a file that cannot be
    opened for writing. Creates nothing (a probe file is created and removed). A full
    disk cannot be foreseen; writes name their file when it happens."""
    path = Path(path)
    if directory:
        if os.path.lexists(path):
            if not path.is_dir():
                raise NotADirectoryError(errno.ENOTDIR, f"exists and is not a directory (needed for {what})", str(path))
            _probe_directory(path, path, what)
            return
        _probe_directory(_nearest_existing(path.parent), path, what)
        return
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"is a directory (expected a file for {what})", str(path))
    if os.path.lexists(path):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NONBLOCK", 0))
        except OSError as exc:
            raise OSError(exc.errno, f"cannot write {what} ({exc.strerror or exc})", str(path)) from None
        os.close(fd)
        return
    _probe_directory(_nearest_existing(path.parent), path, what)
