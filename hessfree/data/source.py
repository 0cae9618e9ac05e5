"""The interface between a dataset's storage and ``load_dataset``.

A ``Source`` knows the global sizes of a dataset from its metadata alone (file headers,
generator parameters) and reads arbitrary increasing ranges of rows on request, so a
rank materialises only the rows it owns.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import attrs
import numpy as np

from hessfree.errors import DataError

Rows = tuple[np.ndarray, np.ndarray]  # (X float (rows, features), y int64 (rows,))


@attrs.frozen
class DatasetInfo:
    """Global metadata of a dataset, known without reading its samples."""

    name: str
    n_features: int
    n_classes: int
    n_train: int
    n_test: int
    origin: str


class Source(abc.ABC):
    """Global metadata plus row access to a dataset's training and test sets.

    Subclasses set ``self._info`` when they open the data.
    """

    _info: DatasetInfo

    @property
    def info(self) -> DatasetInfo:
        """Sizes and provenance (validated when the source was opened)."""
        return self._info

    @abc.abstractmethod
    def read_train(self, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        """For each increasing range of training-set indices, its rows (features in ``dtype``)."""

    @abc.abstractmethod
    def read_test(self, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        """The same for the test set (empty selections when there is no test set)."""


def check_finite(name: str, field: str, X: np.ndarray, first_row: int = 0, chunk_rows: int = 4096) -> None:
    """Raise ``DataError`` at the first non-finite value of ``X`` (checked in row chunks)."""
    if not np.issubdtype(X.dtype, np.floating):
        return
    for lo in range(0, X.shape[0], chunk_rows):
        block = X[lo: lo + chunk_rows]
        bad = ~np.isfinite(block)
        if bad.any():
            where = np.argwhere(bad)[0]
            row = first_row + lo + int(where[0])
            raise DataError(
                f"{name}: {field}: expected finite values, found {block[tuple(where)].item()!r} at row {row}"
            )


def check_labels(name: str, field: str, y: np.ndarray, n_classes: int, first_row: int = 0) -> None:
    """Raise ``DataError`` at the first label outside ``[0, n_classes)``."""
    y = np.asarray(y).reshape(-1)
    if y.size == 0:
        return
    bad = (y < 0) | (y >= n_classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{name}: {field}: expected values in [0, {n_classes}), found {y[i].item()} at row {first_row + i}"
        )


class ArraySource(Source):
    """A dataset already in memory (the embedded digits, an ``.npz`` archive).

    The arrays must have been validated by the caller (shapes, finiteness, labels);
    ``read_*`` only slices and converts.
    """

    def __init__(self, name: str, X: np.ndarray, y: np.ndarray, n_classes: int,
                 X_test: np.ndarray | None = None, y_test: np.ndarray | None = None,
                 *, origin: str = "", label: str | None = None) -> None:
        self.label = label or name  # how error messages name the data (e.g. the file name)
        self._splits = {"train": (X, y), "test": (X_test, y_test)}
        self._info = DatasetInfo(
            name=name,
            n_features=int(X.shape[1]),
            n_classes=int(n_classes),
            n_train=int(X.shape[0]),
            n_test=0 if X_test is None else int(X_test.shape[0]),
            origin=origin,
        )

    def read_train(self, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        return self._read("train", selections, dtype)

    def read_test(self, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        return self._read("test", selections, dtype)

    def _read(self, split: str, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        X, y = self._splits[split]
        if X is None:
            empty = (np.empty((0, self._info.n_features), dtype=dtype), np.empty(0, dtype=np.int64))
            return [empty for _ in selections]
        if X.dtype.kind == "f" and X.size and np.dtype(dtype).itemsize < X.dtype.itemsize:
            # checked on the whole split, not the shard, so that every rank agrees
            limit = np.finfo(dtype).max
            if np.abs(X).max() > limit:
                raise DataError(
                    f"{self.label}: {'X' if split == 'train' else 'X_test'}: expected values representable "
                    f"in {np.dtype(dtype).name} (|x| <= {limit:.3g}), found {np.abs(X).max():.3g}"
                )
        return [
            (np.array(X[r.start:r.stop:r.step], dtype=dtype), np.array(y[r.start:r.stop:r.step], dtype=np.int64))
            for r in selections
        ]
