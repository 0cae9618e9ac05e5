"""Users' own data as a plain ``.npz`` archive, read without pickle.

Keys: ``X`` (samples × features, real numbers), ``y`` (samples, integer labels), and
optionally ``X_test``/``y_test`` (together) and ``n_classes`` (a scalar integer; by default
one more than the largest label). Arrays are validated whole before any rank keeps its
shard, so every rank reaches the same verdict. An ``.npz`` member cannot be read
partially, so each rank briefly holds the whole archive; use IDX files or a generator for
data too large for that.

Sizes are checked before anything is allocated: each member's ``.npy`` header (shape and
dtype) must describe exactly the bytes the member holds, a compressed member cannot claim
more than deflate can expand to, and the arrays must fit in this machine's memory; a
class count (the largest label + 1, or ``n_classes``) whose output layer alone could not
fit is refused naming the label. Each refusal names the file and key.
"""

from __future__ import annotations

import errno
import os
import zipfile
import zlib
from pathlib import Path

import attrs
import numpy as np

from hessfree.atomic import NotRegularFile, open_regular
from hessfree.data.source import ArraySource, check_finite, check_labels
from hessfree.errors import DataError
from hessfree.limits import exceeds_memory, memory_text, size_text

KNOWN_KEYS = ("X", "y", "X_test", "y_test", "n_classes")
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
#: deflate cannot expand data by more than ~1032:1
MAX_DEFLATE_RATIO = 1100
DEFLATE_SLACK = 1 << 16
#: bytes the smallest output layer needs per class (one bias and one weight, float64)
BYTES_PER_CLASS = 16


@attrs.frozen
class NpyMember:
    """What an ``.npz`` member's ``.npy`` header declares, checked against its size."""

    key: str
    shape: tuple[int, ...]
    dtype: np.dtype
    nbytes: int  # shape × itemsize (Python ints: never overflows)


def inspect_members(zf: zipfile.ZipFile, where: str, archive_bytes: int) -> dict[str, NpyMember]:
    """Every member's declared shape and dtype, checked against the bytes it holds, read
    from the headers only (nothing is allocated). DataError naming ``where: key``."""
    out = {}
    for info in zf.infolist():
        key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        label = f"{where}: {key}"
        if info.compress_type == zipfile.ZIP_STORED:
            if info.file_size != info.compress_size or info.compress_size > archive_bytes:
                raise DataError(f"{label}: size: the zip directory declares {info.file_size} bytes, "
                                f"more than the {archive_bytes}-byte archive holds")
        elif info.file_size > MAX_DEFLATE_RATIO * info.compress_size + DEFLATE_SLACK or info.compress_size > archive_bytes:
            raise DataError(f"{label}: size: the zip directory declares {info.file_size} bytes, more than "
                            f"{info.compress_size} compressed bytes can hold")
        with zf.open(info) as fh:
            try:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            except ValueError as exc:
                raise DataError(f"{label}: format: expected an .npy array header ({exc})") from None
            header_bytes = fh.tell()
        if dtype.hasobject:
            raise DataError(f"{label}: format: expected a pickle-free array, found an object array (pickled data)")
        items = 1
        for d in shape:
            items *= int(d)
        nbytes = items * dtype.itemsize
        if header_bytes + nbytes != info.file_size:
            raise DataError(
                f"{label}: size: header declares shape {tuple(shape)} {dtype} ({size_text(nbytes)}), "
                f"but the member holds {max(0, info.file_size - header_bytes)} bytes of data"
            )
        out[key] = NpyMember(key, tuple(int(d) for d in shape), dtype, nbytes)
    return out


def _load_archive(path: Path, allowed: tuple[str, ...] | None = KNOWN_KEYS) -> dict[str, np.ndarray]:
    """The arrays of a pickle-free ``.npz`` whose sizes were checked against memory before
    loading; ``allowed`` keys only (None: any key)."""
    try:
        # our own handle: np.load leaks the one it opens when the zip directory is corrupt;
        # a device or FIFO is refused without reading (or blocking on) it
        try:
            fh = open_regular(path)
        except NotRegularFile as exc:
            if exc.errno == errno.EISDIR:
                raise IsADirectoryError(str(path)) from None
            raise DataError(f"{path}: format: expected a regular .npz file, found a device, FIFO or socket") from None
        with fh:
            start = fh.read(4)
            if start == b"\x93NUM":
                raise DataError(f"{path.name}: format: expected an .npz archive, found a single .npy array")
            if start not in ZIP_MAGICS:
                raise DataError(f"{path.name}: format: expected an .npz archive (a zip of .npy arrays), "
                                f"found {'an empty file' if not start else 'other data'}")
            archive_bytes = os.fstat(fh.fileno()).st_size
            fh.seek(0)
            with zipfile.ZipFile(fh) as zf:
                members = inspect_members(zf, path.name, archive_bytes)
            unknown = sorted(set(members) - set(KNOWN_KEYS)) if allowed is not None else []
            if unknown:
                raise DataError(f"{path.name}: keys: expected some of {list(KNOWN_KEYS)}, found extra {unknown}")
            total = sum(m.nbytes for m in members.values())
            if exceeds_memory(total):
                biggest = max(members.values(), key=lambda m: m.nbytes)
                raise DataError(
                    f"{path.name}: {biggest.key}: size: the arrays need {size_text(total)} ({biggest.key}: shape "
                    f"{biggest.shape} {biggest.dtype}), more than fits in memory ({memory_text()})"
                )
            fh.seek(0)
            archive = np.load(fh, allow_pickle=False)
            keys = set(archive.files)
            return {k: archive[k] for k in (allowed if allowed is not None else archive.files) if k in keys}
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except ValueError as exc:  # object arrays (pickle refused), bad headers
        raise DataError(f"{path.name}: format: expected a pickle-free .npz archive ({exc})") from None
    except IsADirectoryError:
        raise DataError(f"npz: path: expected a .npz file, found the directory {path}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError, zlib.error) as exc:
        raise DataError(f"{path.name}: format: expected a readable .npz archive ({exc})") from None


def _features(name: str, key: str, X: np.ndarray) -> np.ndarray:
    if X.ndim != 2:
        raise DataError(f"{name}: {key}: expected a 2-D (samples, features) array, found shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{name}: {key}: expected real numbers, found dtype {X.dtype}")
    if X.shape[1] == 0:
        raise DataError(f"{name}: {key}: expected at least 1 feature, found shape {X.shape}")
    check_finite(name, key, X)
    return X


def _labels(name: str, key: str, y: np.ndarray, n_rows: int, x_key: str) -> np.ndarray:
    if y.ndim != 1:
        raise DataError(f"{name}: {key}: expected a 1-D (samples,) array, found shape {y.shape}")
    if y.dtype.kind not in "biu":
        raise DataError(f"{name}: {key}: expected integer labels, found dtype {y.dtype}")
    if y.shape[0] != n_rows:
        raise DataError(f"{name}: {key}: expected {n_rows} labels (as many as rows of {x_key}), found {y.shape[0]}")
    return y


def _n_classes(name: str, arrays: dict[str, np.ndarray], given: int | None) -> int:
    origin = "n_classes" if given is not None else None
    if given is None and "n_classes" in arrays:
        stored = arrays["n_classes"]
        if stored.shape != () or stored.dtype.kind not in "iu":
            raise DataError(f"{name}: n_classes: expected a scalar integer, found {stored.dtype} {stored.shape}")
        given, origin = int(stored), "n_classes"
    if given is None:
        labels = [(k, arrays[k]) for k in ("y", "y_test") if k in arrays and arrays[k].size]
        given = max(int(y.max()) for _, y in labels) + 1 if labels else 1
        if labels:
            key, y = max(labels, key=lambda item: int(item[1].max()))
            row = int(np.argmax(y))
            origin = f"{key}: label {int(y[row])} at row {row}"
    if given < 1:
        raise DataError(f"{name}: n_classes: expected an integer >= 1, found {given}")
    if exceeds_memory(given * BYTES_PER_CLASS):
        need = f"an output layer of {given} classes needs at least {size_text(given * BYTES_PER_CLASS)}"
        if origin == "n_classes" or origin is None:
            raise DataError(f"{name}: n_classes: {given} is too many: {need} ({memory_text()})")
        raise DataError(f"{name}: {origin} implies {given} classes: {need} ({memory_text()})")
    return given


def open_npz(path: str | os.PathLike, n_classes: int | None = None) -> ArraySource:
    """Validate the archive at ``path`` whole and return it as a source."""
    path = Path(path)
    name = path.name
    arrays = _load_archive(path)
    for key in ("X", "y"):
        if key not in arrays:
            raise DataError(f"{name}: keys: expected '{key}', found {sorted(arrays)}")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{name}: keys: expected X_test and y_test together, found {sorted(arrays)}")
    X = _features(name, "X", arrays["X"])
    y = _labels(name, "y", arrays["y"], X.shape[0], "X")
    X_test = y_test = None
    if "X_test" in arrays:
        X_test = _features(name, "X_test", arrays["X_test"])
        y_test = _labels(name, "y_test", arrays["y_test"], X_test.shape[0], "X_test")
        if X_test.shape[1] != X.shape[1]:
            raise DataError(f"{name}: X_test: expected {X.shape[1]} features (as X), found {X_test.shape[1]}")
    classes = _n_classes(name, arrays, n_classes)
    check_labels(name, "y", y, classes)
    if y_test is not None:
        check_labels(name, "y_test", y_test, classes)
    return ArraySource("npz", X, y, classes, X_test, y_test, origin=str(path), label=name)
