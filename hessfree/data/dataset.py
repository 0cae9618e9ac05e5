"""The in-memory form in which every dataset reaches the trainer."""

from __future__ import annotations

import attrs
import numpy as np

from hessfree.errors import DataError


def _check_pair(name: str, X: np.ndarray, y: np.ndarray) -> None:
    if X.ndim != 2:
        raise DataError(f"{name}: features must be 2-D (samples, features), found shape {X.shape}")
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be 1-D (samples,), found shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise DataError(
            f"{name}: {X.shape[0]} feature rows but {y.shape[0]} labels; expected equal counts"
        )


@attrs.frozen
class Dataset:
    """Validated training (and optional test) arrays.

    ``X_*`` are floating-point ``(samples, features)`` arrays, ``y_*`` integer class labels
    in ``[0, n_classes)``. The arrays are read-only so no consumer can alter shared data.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    n_classes: int
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None

    def __attrs_post_init__(self) -> None:
        _check_pair(f"{self.name} train", self.X_train, self.y_train)
        if (self.X_test is None) != (self.y_test is None):
            raise DataError(f"{self.name}: test features and test labels must be given together")
        if self.X_test is not None:
            _check_pair(f"{self.name} test", self.X_test, self.y_test)
            if self.X_test.shape[1] != self.X_train.shape[1]:
                raise DataError(
                    f"{self.name}: test set has {self.X_test.shape[1]} features, "
                    f"train set {self.X_train.shape[1]}; expected equal"
                )
        for arr in (self.X_train, self.y_train, self.X_test, self.y_test):
            if arr is not None:
                arr.flags.writeable = False

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.X_train.shape[0])

    @property
    def n_test(self) -> int:
        return 0 if self.X_test is None else int(self.X_test.shape[0])

    @property
    def has_test(self) -> bool:
        return self.X_test is not None

    def astype(self, dtype) -> "Dataset":
        """The same data with features in ``dtype`` (labels unchanged)."""
        dtype = np.dtype(dtype)
        return attrs.evolve(
            self,
            X_train=np.ascontiguousarray(self.X_train, dtype=dtype),
            X_test=None if self.X_test is None else np.ascontiguousarray(self.X_test, dtype=dtype),
        )
