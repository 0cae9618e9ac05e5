"""MNIST and Fashion-MNIST: the four standard IDX files in a directory, plain or ``.gz``.

Both datasets share one layout: ``train-images-idx3-ubyte`` (60,000×28×28 ubyte),
``train-labels-idx1-ubyte`` (60,000 ubyte labels in 0..9) and the ``t10k-`` pair for the
10,000 test images. Pixels are scaled from 0..255 to [0, 1].

Opening a directory reads and cross-checks the four headers only; rows are read later,
per rank, by ``read_train``/``read_test``. Every rank scans the whole labels file (one
byte per sample, in bounded chunks) so an out-of-range label fails on all ranks alike.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hessfree.data.idx import UBYTE, IdxHeader, read_idx_header, read_idx_rows
from hessfree.data.source import DatasetInfo, Rows, Source, check_labels
from hessfree.errors import DataError

N_CLASSES = 10
PIXEL_MAX = 255.0
#: the four files, by role: (images, labels) of the training and the test set
FILE_STEMS = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IMAGES_NDIM = 3
LABELS_NDIM = 1


def find_idx_file(data_dir: Path, stem: str, dataset: str) -> Path:
    """``data_dir/stem`` or else ``data_dir/stem.gz`` (the plain file wins if both exist)."""
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"{dataset}: {stem}: file not found: expected {data_dir / stem} or {data_dir / stem}.gz; "
        f"run `hessfree data fetch {dataset} --data-dir {data_dir}` when online, or copy the four "
        f"files ({', '.join(f'{s}.gz' for s in FILE_STEMS.values())}) into {data_dir}"
    )


def _check_pair(images: IdxHeader, labels: IdxHeader) -> None:
    if images.n_rows != labels.n_rows:
        raise DataError(
            f"{labels.path.name}: count: expected {images.n_rows} labels (as many as images in "
            f"{images.path.name}), found {labels.n_rows}"
        )
    if images.row_items == 0:
        raise DataError(f"{images.path.name}: image size: expected at least 1 pixel, found {images.row_shape}")


class IdxPairSource(Source):
    """A training (and test) set stored as IDX image/label file pairs."""

    def __init__(self, dataset: str, data_dir: str | os.PathLike, n_classes: int = N_CLASSES) -> None:
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise DataError(
                f"{dataset}: data directory: expected an existing directory, found {data_dir}; "
                f"run `hessfree data fetch {dataset} --data-dir {data_dir}` when online"
            )
        self.dataset, self.n_classes = dataset, n_classes
        self.paths = {role: find_idx_file(data_dir, stem, dataset) for role, stem in FILE_STEMS.items()}
        h = {
            role: read_idx_header(path, type_code=UBYTE, ndim=LABELS_NDIM if "labels" in role else IMAGES_NDIM)
            for role, path in self.paths.items()
        }
        _check_pair(h["train_images"], h["train_labels"])
        _check_pair(h["test_images"], h["test_labels"])
        if h["test_images"].row_shape != h["train_images"].row_shape:
            raise DataError(
                f"{h['test_images'].path.name}: image size: expected {h['train_images'].row_shape} "
                f"(as in {h['train_images'].path.name}), found {h['test_images'].row_shape}"
            )
        self.headers = h
        self._info = DatasetInfo(
            name=dataset,
            n_features=h["train_images"].row_items,
            n_classes=n_classes,
            n_train=h["train_images"].n_rows,
            n_test=h["test_images"].n_rows,
            origin=str(data_dir),
        )

    def read_train(self, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        return self._read("train", selections, dtype)

    def read_test(self, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        return self._read("test", selections, dtype)

    def _read(self, split: str, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        labels_path = self.paths[f"{split}_labels"]

        def check_chunk(block: np.ndarray, first_row: int) -> None:
            check_labels(labels_path.name, "label", block, self.n_classes, first_row)

        # labels first: the small file, scanned whole on every rank (see module docstring)
        _, labels = read_idx_rows(
            labels_path, selections, type_code=UBYTE, ndim=LABELS_NDIM, inspect=check_chunk
        )
        _, images = read_idx_rows(self.paths[f"{split}_images"], selections, type_code=UBYTE, ndim=IMAGES_NDIM)
        out = []
        for X, y in zip(images, labels):
            X = X.reshape(X.shape[0], self._info.n_features).astype(dtype)
            X /= PIXEL_MAX
            out.append((X, y.astype(np.int64)))
        return out
