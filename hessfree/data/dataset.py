"""The in-memory form in which every dataset reaches the trainer."""

from __future__ import annotations

import attrs
import numpy as np

from hessfree.data.sharding import EvalSplit, ShardInfo
from hessfree.data.source import check_finite, check_labels
from hessfree.errors import ConfigError, DataError
from hessfree.validate import integer


def _check_pair(name: str, X: np.ndarray, y: np.ndarray) -> None:
    if X.ndim != 2:
        raise DataError(f"{name}: features must be 2-D (samples, features), found shape {X.shape}")
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be 1-D (samples,), found shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise DataError(
            f"{name}: {X.shape[0]} feature rows but {y.shape[0]} labels; expected equal counts"
        )
    if X.dtype.kind != "f":
        raise DataError(f"{name}: features: expected a floating-point dtype, found {X.dtype}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{name}: labels: expected an integer dtype, found {y.dtype}")


def _check_values(name: str, X: np.ndarray, y: np.ndarray, n_classes: int) -> None:
    """What no numba kernel can be trusted with: NaN/inf features, labels out of range."""
    check_finite(name, "features", X)
    check_labels(name, "labels", y, n_classes)


@attrs.frozen
class InputScaling:
    """How the loader turned the stored values into features: ``x = stored / divide_by``.

    ``stored`` says what the stored values are (e.g. IDX pixel values 0..255), so a model
    file can tell a user what to feed it: inputs already scaled like the training features,
    or stored values that need ``scale`` first.
    """

    divide_by: float = 1.0
    stored: str = "features as stored (no scaling)"

    def scale(self, X: np.ndarray) -> np.ndarray:
        """Stored values → features, as the loader does (a new float array)."""
        X = np.asarray(X, dtype=np.float64)
        return X / self.divide_by if self.divide_by != 1.0 else X.copy()

    def as_dict(self) -> dict:
        return dict(divide_by=self.divide_by, stored=self.stored)


@attrs.frozen
class Dataset:
    """Validated training (and optional test) arrays.

    ``X_*`` are finite floating-point ``(samples, features)`` arrays, ``y_*`` integer class
    labels in ``[0, n_classes)`` (both checked here). The arrays are read-only so no
    consumer can alter shared data.

    Under data parallelism a ``Dataset`` holds one rank's shard; ``shard`` then says where
    it sits, and ``n_train_global``/``n_test_global`` are the divisors of reduced sums.
    Without ``shard`` the arrays are the whole dataset.

    ``fingerprint`` identifies the dataset's content (``load_dataset`` sets it: the same on
    every rank, for any rank count and wherever the files are; empty for hand-made
    datasets); ``scaling`` says how the stored values were turned into features.
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    n_classes: int
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    shard: ShardInfo | None = attrs.field(default=None, kw_only=True)
    origin: str = attrs.field(default="", kw_only=True)
    fingerprint: str = attrs.field(default="", kw_only=True)
    scaling: InputScaling = attrs.field(factory=InputScaling, kw_only=True)
    #: train to reproduce the inputs (an autoencoder): the targets are X, not the labels
    reconstruct: bool = attrs.field(default=False, kw_only=True)

    def __attrs_post_init__(self) -> None:
        try:
            integer("n_classes", self.n_classes, 1)
        except ConfigError as exc:
            raise DataError(f"{self.name}: {exc}") from None
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
        _check_values(f"{self.name} train", self.X_train, self.y_train, self.n_classes)
        if self.X_test is not None:
            _check_values(f"{self.name} test", self.X_test, self.y_test, self.n_classes)
        if self.shard is not None and (
            len(self.shard.train_rows) != self.n_train or len(self.shard.test_rows) != self.n_test
        ):
            raise DataError(
                f"{self.name}: shard: expected {len(self.shard.train_rows)} training and "
                f"{len(self.shard.test_rows)} test rows, found {self.n_train} and {self.n_test}"
            )
        for arr in (self.X_train, self.y_train, self.X_test, self.y_test):
            if arr is not None:
                arr.flags.writeable = False

    @property
    def train_targets(self) -> np.ndarray:
        """What the model is trained to output: the labels, or the inputs when reconstructing."""
        return self.X_train if self.reconstruct else self.y_train

    @property
    def test_targets(self) -> np.ndarray | None:
        return self.X_test if self.reconstruct else self.y_test

    @property
    def n_outputs(self) -> int:
        """Output width a model needs: the classes, or the features when reconstructing."""
        return self.n_features if self.reconstruct else self.n_classes

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

    @property
    def n_train_global(self) -> int:
        """Training samples over all ranks (divide reduced sums by this)."""
        return self.n_train if self.shard is None else self.shard.n_train_global

    @property
    def n_test_global(self) -> int:
        """Evaluation samples over all ranks."""
        return self.n_test if self.shard is None else self.shard.n_test_global

    @property
    def evaluation(self) -> EvalSplit:
        """Whether ``X_test``/``y_test`` hold the test set, a validation split, or nothing."""
        if self.shard is not None:
            return self.shard.evaluation
        return EvalSplit.TEST if self.has_test else EvalSplit.NONE

    def astype(self, dtype) -> "Dataset":
        """The same data with features in ``dtype`` (labels unchanged)."""
        dtype = np.dtype(dtype)
        return attrs.evolve(
            self,
            X_train=np.ascontiguousarray(self.X_train, dtype=dtype),
            X_test=None if self.X_test is None else np.ascontiguousarray(self.X_test, dtype=dtype),
        )
