"""Sharding and the curvature mini-batch schedule: pure functions of global sizes."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.data import ShardInfo, ShardMode, shard_indices, shard_range, strided_range
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
