"""Users' own data as a plain ``.npz`` archive, read without pickle.

Keys: ``X`` (samples × features, real numbers), ``y`` (samples, integer labels), and
optionally ``X_test``/``y_test`` (together) and ``n_classes`` (a scalar integer; by default
one more than the largest label). Arrays are validated whole before any rank keeps its
shard, so every rank reaches the same verdict. An ``.npz`` member cannot be read
partially, so each rank briefly holds the whole archive; use IDX files or a generator for
data too large for that.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from hessfree.data.source import ArraySource, check_finite, check_labels
from hessfree.errors import DataError

KNOWN_KEYS = ("X", "y", "X_test", "y_test", "n_classes")


def _load_archive(path: Path) -> dict[str, np.ndarray]:
    try:
        # our own handle: np.load leaks the one it opens when the zip directory is corrupt
        with open(path, "rb") as fh:
            archive = np.load(fh, allow_pickle=False)
            if not isinstance(archive, np.lib.npyio.NpzFile):
                raise DataError(f"{path.name}: format: expected an .npz archive, found a single .npy array")
            keys = set(archive.files)
            unknown = sorted(keys - set(KNOWN_KEYS))
            if unknown:
                raise DataError(f"{path.name}: keys: expected some of {list(KNOWN_KEYS)}, found extra {unknown}")
            return {k: archive[k] for k in KNOWN_KEYS if k in keys}
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except ValueError as exc:  # object arrays (pickle refused), bad headers
        raise DataError(f"{path.name}: format: expected a pickle-free .npz archive ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
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
    if given is None and "n_classes" in arrays:
        stored = arrays["n_classes"]
        if stored.shape != () or stored.dtype.kind not in "iu":
            raise DataError(f"{name}: n_classes: expected a scalar integer, found {stored.dtype} {stored.shape}")
        given = int(stored)
    if given is None:
        labels = [arrays[k] for k in ("y", "y_test") if k in arrays and arrays[k].size]
        given = max(int(y.max()) for y in labels) + 1 if labels else 1
    if given < 1:
        raise DataError(f"{name}: n_classes: expected an integer >= 1, found {given}")
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
