"""The embedded default dataset: UCI optical recognition of handwritten digits.

1,797 images of 8x8 pixels with integer intensities 0..16, 10 classes (the copy
scikit-learn ships as ``digits.csv.gz``; UCI ML repository, CC BY 4.0). Each CSV row is
64 pixel values followed by the label. Pixels are scaled to [0, 1]; the train/test split
is a fixed, seeded, stratified permutation, so every run and every rank sees the same one.
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np

from hessfree.data.dataset import Dataset
from hessfree.errors import DataError

N_SAMPLES = 1797
N_FEATURES = 64
N_CLASSES = 10
PIXEL_MAX = 16.0
#: seed of the fixed split; changing it changes every published digits number
SPLIT_SEED = 20170101
TEST_FRACTION = 0.25


def _read_raw() -> np.ndarray:
    with resources.files("hessfree.data").joinpath("digits.csv.gz").open("rb") as raw:
        with gzip.open(raw, "rt") as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.float64)
    if table.shape != (N_SAMPLES, N_FEATURES + 1):
        raise DataError(
            f"embedded digits.csv.gz: expected shape {(N_SAMPLES, N_FEATURES + 1)}, found {table.shape}"
        )
    return table


def stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test), each class split in the same proportion, order shuffled."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n_test = int(round(test_fraction * idx.size))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_digits(dtype=np.float64) -> Dataset:
    """The embedded digits with the fixed split: 1,348 training and 449 test images."""
    table = _read_raw()
    X = table[:, :N_FEATURES] / PIXEL_MAX
    y = table[:, N_FEATURES].astype(np.int64)
    train, test = stratified_split(y, TEST_FRACTION, SPLIT_SEED)
    return Dataset(
        name="digits",
        X_train=np.ascontiguousarray(X[train], dtype=dtype),
        y_train=y[train],
        n_classes=N_CLASSES,
        X_test=np.ascontiguousarray(X[test], dtype=dtype),
        y_test=y[test],
    )
