"""Synthetic teacher data and timit-like: deterministic, independent of the rank count."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.data import ShardMode, TeacherConfig, dataset_info, load_dataset
from hessfree.data.synthetic import BLOCK_ROWS, Teacher, generate_rows
from hessfree.errors import ConfigError

SMALL = dict(n_features=7, n_classes=4, samples=3 * BLOCK_ROWS + 77, hidden=8)


def gather(name, size, mode, **kw):
    """The union of all ranks' shards, put back in global order."""
    parts = [load_dataset(name, rank=r, size=size, shard=mode, **kw) for r in range(size)]
    n, f = parts[0].n_train_global, parts[0].n_features
    X, y = np.full((n, f), np.nan), np.full(n, -1)
    Xt, yt = np.full((parts[0].n_test_global, f), np.nan), np.full(parts[0].n_test_global, -1)
    for p in parts:
        rows, trows = list(p.shard.train_rows), list(p.shard.test_rows)
        X[rows], y[rows], Xt[trows], yt[trows] = p.X_train, p.y_train, p.X_test, p.y_test
    return X, y, Xt, yt


@pytest.mark.parametrize("mode", list(ShardMode))
@pytest.mark.parametrize("size", [2, 3, 7])
def test_union_of_shards_is_the_same_data_for_any_rank_count(mode, size):
    whole = load_dataset("synthetic", seed=3, **SMALL)
    X, y, Xt, yt = gather("synthetic", size, mode, seed=3, **SMALL)
    assert np.array_equal(X, whole.X_train) and np.array_equal(y, whole.y_train)
    assert np.array_equal(Xt, whole.X_test) and np.array_equal(yt, whole.y_test)


def test_deterministic_per_seed_and_different_across_seeds():
    a = load_dataset("synthetic", seed=11, **SMALL)
    b = load_dataset("synthetic", seed=11, **SMALL)
    c = load_dataset("synthetic", seed=12, **SMALL)
    assert np.array_equal(a.X_train, b.X_train) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.X_train, c.X_train)


def test_sizes_split_and_class_balance():
    data = load_dataset("synthetic", seed=0, n_features=5, n_classes=6, samples=5000, test_fraction=0.3)
    assert (data.n_train, data.n_test, data.n_features, data.n_classes) == (3500, 1500, 5, 6)
    counts = np.bincount(data.y_train, minlength=6)
    # the calibrated teacher uses every class, none overwhelmingly
    assert counts.min() > 0.3 * 3500 / 6 and counts.max() < 3 * 3500 / 6


def test_labels_come_from_the_teacher():
    cfg = TeacherConfig(n_features=6, n_classes=3, n_samples=300, seed=5, hidden=4)
    X, y = generate_rows(cfg, Teacher.from_config(cfg), range(0, 300, 7))
    t = Teacher.from_config(cfg)
    logits = np.tanh(X @ t.W1 + t.b1) @ t.W2 + t.b2
    assert np.array_equal(y, logits.argmax(axis=1))
    assert len(set(y.tolist())) > 1  # not a constant labelling


@settings(deadline=None, max_examples=25)
@given(start=st.integers(0, 2 * BLOCK_ROWS), length=st.integers(0, 3 * BLOCK_ROWS), step=st.integers(1, 1500))
def test_any_row_range_matches_the_full_generation(start, length, step):
    cfg = TeacherConfig(n_features=3, n_classes=3, n_samples=3 * BLOCK_ROWS + 5, seed=1, hidden=4)
    teacher = Teacher.from_config(cfg)
    rows = range(start, min(start + length, cfg.n_samples), step)
    X_all, y_all = generate_rows(cfg, teacher, range(cfg.n_samples))
    X, y = generate_rows(cfg, teacher, rows, dtype=np.float32)
    assert X.dtype == np.float32 and np.array_equal(X, X_all[list(rows)].astype(np.float32))
    assert np.array_equal(y, y_all[list(rows)])


def test_timit_like_has_the_papers_sizes_without_generating_them():
    info = dataset_info("timit-like")
    assert (info.n_features, info.n_classes) == (360, 1973)
    assert info.n_train + info.n_test == 1_013_950
    assert (info.n_train, info.n_test) == (709_765, 304_185)  # 70/30


def test_timit_like_rank_generates_only_its_shard():
    part = load_dataset("timit-like", rank=999, size=1000, dtype=np.float32)
    assert part.X_train.shape == (709, 360) and part.X_test.shape == (304, 360)
    assert part.n_train_global == 709_765 and part.n_test_global == 304_185
    assert part.shard.train_rows == range(709_056, 709_765)
    assert part.y_train.max() < 1973


def test_timit_like_small_override_matches_synthetic_with_same_sizes():
    t = load_dataset("timit-like", samples=500, seed=2)
    s = load_dataset("synthetic", samples=500, seed=2, n_features=360, n_classes=1973, test_fraction=0.3)
    assert np.array_equal(t.X_train, s.X_train) and np.array_equal(t.y_train, s.y_train)


@pytest.mark.parametrize("kw", [
    dict(samples=0), dict(n_features=-1), dict(seed=-1), dict(seed=1.5), dict(test_fraction=float("nan")),
    dict(test_fraction=1.0), dict(hidden=0), dict(colour="red"), dict(samples=True),
])
def test_bad_generator_options_are_config_errors(kw):
    with pytest.raises(ConfigError):
        load_dataset("synthetic", **kw)


def test_generator_options_are_refused_for_stored_data():
    with pytest.raises(ConfigError, match="options"):
        load_dataset("digits", hidden=3)
