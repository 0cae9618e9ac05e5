"""load_dataset: names, digits, .npz archives, validation split, check_fits, real MNIST."""

import os
from pathlib import Path

import numpy as np
import pytest

from hessfree.data import (
    Dataset,
    DatasetName,
    EvalSplit,
    check_fits,
    dataset_info,
    load_dataset,
    load_digits,
)
from hessfree.errors import ConfigError, DataError

MNIST_DIR = Path(os.environ.get("HESSFREE_MNIST_DIR", Path(__file__).resolve().parents[2] / "shared/data/mnist"))


def test_names_parse_from_cli_strings():
    assert DatasetName.parse("fashion-mnist") is DatasetName.FASHION_MNIST
    assert DatasetName.parse(DatasetName.NPZ) is DatasetName.NPZ
    with pytest.raises(ConfigError, match="expected one of"):
        load_dataset("cifar")


def test_digits_whole_and_sharded():
    whole = load_dataset("digits")
    ref = load_digits()
    assert np.array_equal(whole.X_train, ref.X_train) and np.array_equal(whole.y_test, ref.y_test)
    assert whole.n_train_global == whole.n_train and whole.evaluation is EvalSplit.TEST
    parts = [load_dataset("digits", rank=r, size=4, dtype=np.float32) for r in range(4)]
    assert sum(p.n_train for p in parts) == whole.n_train
    assert np.array_equal(np.concatenate([p.X_train for p in parts]), whole.X_train.astype(np.float32))
    assert all(p.n_test_global == whole.n_test for p in parts)


def test_arrays_are_read_only():
    data = load_dataset("digits", rank=1, size=2)
    with pytest.raises(ValueError):
        data.X_train[0, 0] = 1.0


@pytest.mark.parametrize("kw", [
    dict(dtype=np.int32), dict(dtype="float16"), dict(validation=1.0), dict(validation=float("nan")),
    dict(validation=-0.1), dict(rank=2, size=2), dict(size=0), dict(shard="diagonal"),
    dict(n_features=0),
])
def test_bad_arguments_are_config_errors(kw):
    with pytest.raises(ConfigError):
        load_dataset("digits", **kw)


def test_more_ranks_than_samples_is_a_data_error_on_every_rank():
    for rank in (0, 5):
        with pytest.raises(DataError, match="at least one per rank"):
            load_dataset("synthetic", samples=10, test_fraction=0.5, rank=rank, size=6)


def test_expected_sizes_are_checked_for_stored_data():
    with pytest.raises(DataError, match="features: expected 784, found 64"):
        load_dataset("digits", n_features=784)
    assert load_dataset("digits", n_features=64, n_classes=10).n_features == 64
    small = load_dataset("digits", samples=100)
    assert small.n_train == 100 and small.n_train_global == 100


def test_check_fits():
    data = load_dataset("digits")
    check_fits(data, 64, 10)
    check_fits(data, 64, 12)  # spare outputs are harmless
    with pytest.raises(DataError, match="digits.*features: expected 784 .*found 64"):
        check_fits(data, 784, 10)
    with pytest.raises(DataError, match="classes: expected at most 9"):
        check_fits(data, 64, 9)


def test_dataset_rejects_what_kernels_cannot_take():
    X = np.zeros((3, 2))
    with pytest.raises(DataError, match="finite"):
        Dataset("d", np.array([[0.0, np.nan], [0, 0], [0, 0]]), np.zeros(3, np.int64), 2)
    with pytest.raises(DataError, match=r"\[0, 2\).*found 2 at row 1"):
        Dataset("d", X, np.array([0, 2, 1]), 2)
    with pytest.raises(DataError, match="found -1"):
        Dataset("d", X, np.array([0, -1, 1]), 2)
    with pytest.raises(DataError, match="floating-point"):
        Dataset("d", X.astype(np.int64), np.zeros(3, np.int64), 2)
    with pytest.raises(DataError, match="integer dtype"):
        Dataset("d", X, np.zeros(3), 2)
    with pytest.raises(DataError, match="n_classes"):
        Dataset("d", X, np.zeros(3, np.int64), 0)


# ------------------------------------------------------------------------------------ npz


def save(tmp_path, **arrays):
    path = tmp_path / "own.npz"
    np.savez(path, **arrays)
    return path


def test_npz_round_trip_and_sharding(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20, 3)), rng.integers(0, 4, 20)
    Xt, yt = rng.standard_normal((6, 3)).astype(np.float32), rng.integers(0, 4, 6).astype(np.uint8)
    path = save(tmp_path, X=X, y=y, X_test=Xt, y_test=yt)
    data = load_dataset("npz", path=path)
    assert np.array_equal(data.X_train, X) and np.array_equal(data.y_train, y)
    assert np.array_equal(data.X_test, Xt.astype(np.float64)) and data.y_test.dtype == np.int64
    assert data.n_classes == max(y.max(), yt.max()) + 1
    part = load_dataset("npz", data_dir=path, rank=1, size=3, shard="strided", validation=0.25)
    assert np.array_equal(part.X_train, X[1:15:3]) and np.array_equal(part.X_test, X[16::3])
    assert load_dataset("npz", path=save(tmp_path, X=X, y=y, n_classes=np.int64(9))).n_classes == 9
    no_test = load_dataset("npz", path=save(tmp_path, X=X.astype(np.int16), y=y))
    assert no_test.X_test is None and no_test.evaluation is EvalSplit.NONE


BAD_NPZ = {
    "missing y": (dict(X=np.zeros((3, 2))), "keys: expected 'y'"),
    "test without labels": (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), X_test=np.zeros((1, 2))), "together"),
    "extra key": (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), w=np.zeros(1)), "extra ['w']"),
    "1-D X": (dict(X=np.zeros(3), y=np.zeros(3, int)), "X: expected a 2-D"),
    "no features": (dict(X=np.zeros((3, 0)), y=np.zeros(3, int)), "at least 1 feature"),
    "complex X": (dict(X=np.zeros((3, 2), complex), y=np.zeros(3, int)), "real numbers"),
    "string X": (dict(X=np.array([["a", "b"]] * 3), y=np.zeros(3, int)), "real numbers"),
    "nan": (dict(X=np.array([[0.0, 1], [np.nan, 2], [3, 4]]), y=np.zeros(3, int)), "X: expected finite values, found nan at row 1"),
    "inf in test": (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), X_test=np.array([[np.inf, 0]]), y_test=np.zeros(1, int)), "X_test: expected finite"),
    "float labels": (dict(X=np.zeros((3, 2)), y=np.zeros(3)), "integer labels"),
    "2-D labels": (dict(X=np.zeros((3, 2)), y=np.zeros((3, 1), int)), "y: expected a 1-D"),
    "count mismatch": (dict(X=np.zeros((3, 2)), y=np.zeros(4, int)), "expected 3 labels"),
    "negative label": (dict(X=np.zeros((3, 2)), y=np.array([0, -1, 0])), "found -1 at row 1"),
    "label beyond n_classes": (dict(X=np.zeros((3, 2)), y=np.array([0, 5, 0]), n_classes=np.int64(3)), "[0, 3), found 5"),
    "bad n_classes": (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), n_classes=np.array([3, 4])), "n_classes: expected a scalar"),
    "feature mismatch": (dict(X=np.zeros((3, 2)), y=np.zeros(3, int), X_test=np.zeros((1, 3)), y_test=np.zeros(1, int)), "X_test: expected 2 features"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_malformed_npz(tmp_path, case):
    arrays, fragment = BAD_NPZ[case]
    with pytest.raises(DataError) as info:
        load_dataset("npz", path=save(tmp_path, **arrays))
    assert fragment in str(info.value) and "own.npz" in str(info.value)


def test_npz_refuses_pickles_and_junk(tmp_path):
    path = tmp_path / "own.npz"
    np.savez(path, X=np.array([[object()]] * 2, dtype=object), y=np.zeros(2, int))
    with pytest.raises(DataError, match="pickle-free"):
        load_dataset("npz", path=path)
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="own.npz"):
        load_dataset("npz", path=path)
    np.save(tmp_path / "one.npy", np.zeros((2, 2)))
    with pytest.raises(DataError, match="single .npy array"):
        load_dataset("npz", path=tmp_path / "one.npy")
    (tmp_path / "text.npz").write_text("X,y\n1,2\n")
    with pytest.raises(DataError, match="text.npz"):
        load_dataset("npz", path=tmp_path / "text.npz")
    with pytest.raises(DataError, match="not found"):
        load_dataset("npz", path=tmp_path / "absent.npz")
    with pytest.raises(ConfigError):
        load_dataset("npz")


def test_npz_values_too_large_for_float32_fail_on_every_rank(tmp_path):
    X = np.zeros((4, 2))
    X[3, 1] = 1e300  # only rank 1 of 2 would hold it; rank 0 must fail too
    path = save(tmp_path, X=X, y=np.zeros(4, int))
    for rank in (0, 1):
        with pytest.raises(DataError, match="representable in float32"):
            load_dataset("npz", path=path, rank=rank, size=2, dtype=np.float32)
    assert load_dataset("npz", path=path, rank=0, size=2).n_train == 2


# ------------------------------------------------------------------------------- real MNIST


@pytest.mark.skipif(not (MNIST_DIR / "train-labels-idx1-ubyte.gz").exists(), reason="real MNIST not present")
def test_real_mnist_metadata_and_a_shard():
    info = dataset_info("mnist", data_dir=MNIST_DIR)
    assert (info.n_features, info.n_classes, info.n_train, info.n_test) == (784, 10, 60000, 10000)
    part = load_dataset("mnist", data_dir=MNIST_DIR, rank=5, size=6, dtype=np.float32)
    assert part.X_train.shape == (10000, 784) and part.X_test.shape == (1666, 784)
    assert part.X_train.max() == 1.0 and part.X_train.min() == 0.0
    assert np.bincount(part.y_train, minlength=10).min() > 800
    check_fits(part, 784, 10)
