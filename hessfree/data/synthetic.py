"""Teacher-network classification data of any size, generated block by block.

A fixed random "teacher" MLP with one tanh hidden layer labels Gaussian inputs:

    x ~ N(0, I_F),   y = argmax( W2ᵀ tanh(W1ᵀ x + b1) + b2 )

``W1`` has N(0, 1/F) entries so the hidden pre-activations are O(1) whatever ``F`` is.
The output layer is calibrated on ``CALIBRATION_ROWS`` inputs from the teacher's own
stream: each class logit is shifted and scaled to zero mean and unit variance over
them, so that no class dominates the argmax (uncalibrated, a random teacher with 1,973
classes leaves a third of them without a single sample).

The samples are numbered ``0..N-1`` and cut into blocks of ``BLOCK_ROWS``; block ``j`` is
drawn from its own stream ``SeedSequence([seed, FEATURE_STREAM, j])``. Any row can thus be
produced by generating only its block, a rank generates only the blocks its shard
touches (O(shard + block) memory), and the union of all ranks' rows is the same data
for any number of ranks. The first ``n_train`` samples form the training set, the last
``n_test`` the test set (the samples are i.i.d., so the order carries no information).

``timit-like`` is this generator at the scale of the paper's TIMIT experiment.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs
import numpy as np

from hessfree.data.sharding import restrict
from hessfree.data.source import DatasetInfo, Rows, Source
from hessfree.errors import ConfigError
from hessfree.validate import integer, real

#: rows per generated block; part of the data's definition (changing it changes the data)
BLOCK_ROWS = 1024
CALIBRATION_ROWS = 4096
TEACHER_STREAM = 0
FEATURE_STREAM = 1

TIMIT_FEATURES = 360
TIMIT_CLASSES = 1973
TIMIT_SAMPLES = 1_013_950
TIMIT_TEST_FRACTION = 0.3

SYNTHETIC_FEATURES = 64
SYNTHETIC_CLASSES = 10
SYNTHETIC_SAMPLES = 10_000
SYNTHETIC_TEST_FRACTION = 0.2
TEACHER_HIDDEN = 64


def _positive_int(instance, attribute, value) -> None:
    integer(attribute.name, value, 1)


def _seed(instance, attribute, value) -> None:
    integer("seed", value, 0)


def _fraction(instance, attribute, value) -> None:
    real(attribute.name, value, low=0, high=1, high_open=True)


@attrs.frozen
class TeacherConfig:
    """Everything that defines a generated dataset (same config → same data)."""

    n_features: int = attrs.field(default=SYNTHETIC_FEATURES, validator=_positive_int)
    n_classes: int = attrs.field(default=SYNTHETIC_CLASSES, validator=_positive_int)
    n_samples: int = attrs.field(default=SYNTHETIC_SAMPLES, validator=_positive_int)
    seed: int = attrs.field(default=0, validator=_seed)
    test_fraction: float = attrs.field(default=SYNTHETIC_TEST_FRACTION, validator=_fraction)
    hidden: int = attrs.field(default=TEACHER_HIDDEN, validator=_positive_int)

    @property
    def n_test(self) -> int:
        return int(round(self.test_fraction * self.n_samples))

    @property
    def n_train(self) -> int:
        return self.n_samples - self.n_test


def timit_like_config(seed: int = 0, **overrides) -> TeacherConfig:
    """The paper's TIMIT sizes: 360 features, 1,973 classes, 1,013,950 samples, 70/30 split."""
    sizes = dict(
        n_features=TIMIT_FEATURES,
        n_classes=TIMIT_CLASSES,
        n_samples=TIMIT_SAMPLES,
        test_fraction=TIMIT_TEST_FRACTION,
    )
    sizes.update({k: v for k, v in overrides.items() if v is not None})
    return TeacherConfig(seed=seed, **sizes)


@attrs.frozen
class Teacher:
    """The labelling network's parameters (float64)."""

    W1: np.ndarray
    b1: np.ndarray
    W2: np.ndarray
    b2: np.ndarray

    @classmethod
    def from_config(cls, cfg: TeacherConfig) -> "Teacher":
        rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, TEACHER_STREAM]))
        W1 = rng.standard_normal((cfg.n_features, cfg.hidden)) / math.sqrt(cfg.n_features)
        b1 = 0.5 * rng.standard_normal(cfg.hidden)
        W2 = rng.standard_normal((cfg.hidden, cfg.n_classes))
        # standardise each logit over a calibration sample: z_c = (h·w_c − μ_c) / σ_c
        logits = np.tanh(rng.standard_normal((CALIBRATION_ROWS, cfg.n_features)) @ W1 + b1) @ W2
        mu, sigma = logits.mean(axis=0), logits.std(axis=0)
        sigma = np.where(sigma > 0, sigma, 1.0)
        return cls(W1, b1, W2 / sigma, -mu / sigma)

    def labels(self, X: np.ndarray) -> np.ndarray:
        logits = np.tanh(X @ self.W1 + self.b1) @ self.W2 + self.b2
        return np.argmax(logits, axis=1).astype(np.int64)


def generate_block(cfg: TeacherConfig, teacher: Teacher, block: int) -> Rows:
    """Block ``block`` of the global sample order: features (float64) and teacher labels."""
    lo = block * BLOCK_ROWS
    rows = min(BLOCK_ROWS, cfg.n_samples - lo)
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, FEATURE_STREAM, block]))
    X = rng.standard_normal((rows, cfg.n_features))
    return X, teacher.labels(X)


def generate_rows(cfg: TeacherConfig, teacher: Teacher, rows: range, dtype=np.float64) -> Rows:
    """The samples with global indices ``rows`` (an increasing range), block by block."""
    n = len(rows)
    X = np.empty((n, cfg.n_features), dtype=dtype)
    y = np.empty(n, dtype=np.int64)
    if n == 0:
        return X, y
    if rows.step < 1 or rows.start < 0 or rows[-1] >= cfg.n_samples:
        raise ConfigError(f"rows: expected indices in [0, {cfg.n_samples}), found {rows}")
    done = 0
    for block in range(rows.start // BLOCK_ROWS, rows[-1] // BLOCK_ROWS + 1):
        lo = block * BLOCK_ROWS
        hit = restrict(rows, lo, lo + BLOCK_ROWS)
        if not hit:  # strided shards with a step larger than a block skip whole blocks
            continue
        Xb, yb = generate_block(cfg, teacher, block)
        take = slice(hit.start - lo, hit.stop - lo, hit.step)
        X[done: done + len(hit)] = Xb[take]
        y[done: done + len(hit)] = yb[take]
        done += len(hit)
    return X, y


class TeacherSource(Source):
    """A generated dataset; training rows are ``0..n_train-1``, test rows follow them."""

    def __init__(self, name: str, cfg: TeacherConfig) -> None:
        if cfg.n_train < 1:
            raise ConfigError(
                f"{name}: test_fraction {cfg.test_fraction} of {cfg.n_samples} samples leaves no training samples"
            )
        self.cfg = cfg
        self.teacher = Teacher.from_config(cfg)
        self._info = DatasetInfo(
            name=name,
            n_features=cfg.n_features,
            n_classes=cfg.n_classes,
            n_train=cfg.n_train,
            n_test=cfg.n_test,
            origin=f"generated (seed {cfg.seed})",
        )

    def read_train(self, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        return [generate_rows(self.cfg, self.teacher, rows, dtype) for rows in selections]

    def read_test(self, selections: Sequence[range], dtype: np.dtype) -> list[Rows]:
        offset = self.cfg.n_train
        return [
            generate_rows(self.cfg, self.teacher, range(offset + r.start, offset + r.stop, r.step), dtype)
            for r in selections
        ]
