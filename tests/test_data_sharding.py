"""Sharding and the curvature mini-batch schedule: pure functions of global sizes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.data import CurvatureSchedule, ShardInfo, ShardMode, shard_indices, shard_range, strided_range
from hessfree.data.sharding import balanced_count, check_shardable, restrict
from hessfree.errors import ConfigError, DataError

sizes = st.integers(min_value=1, max_value=17)
counts = st.integers(min_value=0, max_value=500)
modes = st.sampled_from(list(ShardMode))


@settings(deadline=None)
@given(n=counts, size=sizes, mode=modes)
def test_shards_are_disjoint_covering_and_balanced(n, size, mode):
    shards = [list(shard_indices(n, r, size, mode)) for r in range(size)]
    flat = [i for s in shards for i in s]
    assert sorted(flat) == list(range(n))  # covering and disjoint
    lengths = [len(s) for s in shards]
    assert max(lengths) - min(lengths) <= 1
    assert lengths == [balanced_count(n, r, size) for r in range(size)]
    for s in shards:
        assert s == sorted(s)
    if mode is ShardMode.CONTIGUOUS:
        assert flat == list(range(n))  # rank order is global order
        for s in shards:
            assert s == list(range(s[0], s[0] + len(s))) if s else True


def test_shard_range_examples():
    assert [shard_range(10, r, 3) for r in range(3)] == [range(0, 4), range(4, 7), range(7, 10)]
    assert [strided_range(10, r, 3) for r in range(3)] == [range(0, 10, 3), range(1, 10, 3), range(2, 10, 3)]


@pytest.mark.parametrize("bad", [dict(n=-1, rank=0, size=1), dict(n=5, rank=3, size=3),
                                 dict(n=5, rank=0, size=0), dict(n=5.0, rank=0, size=1)])
def test_shard_range_rejects_bad_arguments(bad):
    with pytest.raises(ConfigError):
        shard_range(**bad)


def test_fewer_samples_than_ranks_fails_on_every_rank():
    for rank in range(4):
        with pytest.raises(DataError, match="at least one per rank"):
            ShardInfo.for_rank(3, 10, rank, 4)
    check_shardable(4, 4)
    # a small evaluation set may leave ranks empty-handed: its sums are reduced
    info = ShardInfo.for_rank(8, 2, 3, 4)
    assert len(info.test_rows) == 0 and len(info.train_rows) == 2


@settings(deadline=None)
@given(rows=st.builds(range, st.integers(0, 50), st.integers(0, 120), st.integers(1, 9)),
       lo=st.integers(-5, 130), width=st.integers(0, 60))
def test_restrict_matches_a_filter(rows, lo, width):
    assert list(restrict(rows, lo, lo + width)) == [i for i in rows if lo <= i < lo + width]


@st.composite
def schedules(draw):
    size = draw(st.integers(1, 7))
    n = draw(st.integers(size, 300))
    b = draw(st.integers(1, n))
    return CurvatureSchedule(n, b, size, draw(modes))


@settings(deadline=None)
@given(sched=schedules(), k=st.integers(0, 10**12))
def test_schedule_batch_sizes_sum_to_b_and_are_owned(sched, k):
    parts = [sched.global_indices(k, r) for r in range(sched.size)]
    sizes_ = [p.size for p in parts]
    assert sum(sizes_) == sched.batch_size
    assert max(sizes_) - min(sizes_) <= 1
    for r, part in enumerate(parts):
        owned = set(shard_indices(sched.n_global, r, sched.size, sched.mode))
        assert set(part.tolist()) <= owned  # a rank computes only on its own samples
        assert len(set(part.tolist())) == part.size  # no sample twice in one batch
    batch = sched.global_batch(k)
    assert np.array_equal(batch, np.concatenate(parts))
    # pure function: a fresh, equal schedule (another rank's copy) gives the same batch
    twin = CurvatureSchedule(sched.n_global, sched.batch_size, sched.size, sched.mode)
    assert np.array_equal(twin.global_batch(k), batch)


@settings(deadline=None)
@given(sched=schedules())
def test_schedule_cycles_through_every_owned_sample(sched):
    for r in range(sched.size):
        n_r, b_r = sched.shard_size(r), sched.local_batch_size(r)
        if b_r == 0:
            continue
        rounds = -(-n_r // b_r)
        seen = np.concatenate([sched.local_indices(k, r) for k in range(rounds)])
        assert set(seen.tolist()) == set(range(n_r))
        # consecutive windows continue where the previous one stopped (Martens' in-order cycling)
        assert np.array_equal(sched.local_indices(1, r), (sched.local_indices(0, r) + b_r) % n_r)


def test_schedule_example_contiguous():
    sched = CurvatureSchedule(n_global=10, batch_size=4, size=2)
    # shards [0..4] and [5..9]; each rank computes 2 samples per batch, wrapping in its shard
    assert sched.global_batch(0).tolist() == [0, 1, 5, 6]
    assert sched.global_batch(2).tolist() == [4, 0, 9, 5]


@pytest.mark.parametrize("args", [(10, 11, 1), (10, 0, 1), (3, 2, 4), (10, 2, 0)])
def test_schedule_rejects_impossible_layouts(args):
    with pytest.raises((ConfigError, DataError)):
        CurvatureSchedule(*args)


def test_schedule_rejects_negative_iteration():
    with pytest.raises(ConfigError):
        CurvatureSchedule(10, 2).local_indices(-1, 0)
