"""The model-parallel MLP against the serial one: every pass to 1e-12 in float64, on the
serial backend and on 2 and 3 thread ranks; the unit split; the collectives per pass."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.comm import SerialComm, run_threads
from hessfree.errors import ConfigError, InputError
from hessfree.models import MLP
from hessfree.models.sharded import ShardedMLP
from hessfree.models.split import UnitSplit
from mpi.mp_counts import on_ranks

ACTIVATIONS = ["tanh", "sigmoid", "relu", "softplus", "linear"]
LOSSES = ["softmax_cross_entropy", "logistic_cross_entropy", "squared_error"]


def targets(loss: str, rng, n: int, d: int):
    if loss == "softmax_cross_entropy":
        return rng.integers(0, d, n)
    if loss == "logistic_cross_entropy":
        return rng.uniform(0, 1, (n, d))
    return rng.standard_normal((n, d))


def close(got, want, what: str) -> None:
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    err = float(np.max(np.abs(np.asarray(got) - np.asarray(want)), initial=0.0))
    assert err <= 1e-12 * scale, f"{what}: max error {err:.3g} (scale {scale:.3g})"


def every_pass(model, theta, v, X, y) -> dict:
    """Each pass of a model, on whole or shard vectors (``gather``: a shard → the whole)."""
    gather = getattr(model, "gather_vector", lambda x: x)
    loss, grad = model.loss_grad(theta, X, y)
    _, _, squares = model.loss_grad_squares(theta, X, y)
    cache = model.forward(theta, X, y)
    gv, hv = cache.gv(v), cache.hv(v)
    again = cache.gv(v)
    return dict(loss=loss, grad=gather(grad), squares=gather(squares), gv=gather(gv), hv=gather(hv), again=gather(again),
                evaluate=np.array(model.evaluate(theta, X, y)), cache_loss=cache.loss_sum, predict=model.predict(theta, X))


def compare(layers, activation, loss, chunk, size, seed=0):
    rng = np.random.default_rng(seed)
    n = 17
    X = rng.standard_normal((n, layers[0]))
    y = targets(loss, rng, n, layers[-1])
    serial = MLP(layers, activation=activation, loss=loss, chunk_size=chunk)
    theta = serial.init_params(seed) + 0.1 * rng.standard_normal(serial.n_params)
    v = rng.standard_normal(serial.n_params)
    want = every_pass(serial, theta, v, X, y)

    def rank(comm):
        model = ShardedMLP(layers, activation=activation, loss=loss, chunk_size=chunk, comm=comm)
        return every_pass(model, model.shard_vector(theta), model.shard_vector(v), X, y)

    for got in on_ranks(rank, size):
        for key in ("loss", "grad", "squares", "gv", "hv", "evaluate", "cache_loss"):
            close(got[key], want[key], key)
        assert np.array_equal(got["predict"], want["predict"])
        assert np.array_equal(got["again"], got["gv"])  # repeated products: bitwise equal


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_pass_matches_the_serial_model(activation, size):
    for loss in LOSSES:
        compare([6, 7, 5, 4], activation, loss, chunk=6, size=size)


@settings(max_examples=15)
@given(
    hidden=st.lists(st.integers(3, 9), min_size=0, max_size=3),
    outputs=st.integers(3, 6),
    activation=st.sampled_from(ACTIVATIONS),
    loss=st.sampled_from(LOSSES),
    chunk=st.integers(1, 20),
    size=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_random_nets_match_the_serial_model(hidden, outputs, activation, loss, chunk, size, seed):
    compare([5, *hidden, outputs], activation, loss, chunk, size, seed)


def test_one_rank_is_bitwise_the_serial_model():
    layers, rng = [6, 8, 5], np.random.default_rng(1)
    X, y = rng.standard_normal((9, 6)), rng.integers(0, 5, 9)
    serial = MLP(layers)
    theta, v = serial.init_params(2), rng.standard_normal(serial.n_params)
    model = ShardedMLP(layers, comm=SerialComm())
    assert np.array_equal(model.init_params(2), theta)
    got, want = every_pass(model, theta, v, X, y), every_pass(serial, theta, v, X, y)
    for key, value in want.items():
        assert np.array_equal(got[key], value), key


def test_float32_matches_float64_to_single_precision():
    layers, rng = [6, 8, 5], np.random.default_rng(4)
    X, y = rng.standard_normal((12, 6)), rng.integers(0, 5, 12)
    want = MLP(layers).loss_grad(MLP(layers).init_params(0), X, y)[1]

    def rank(comm):
        model = ShardedMLP(layers, dtype="float32", comm=comm)
        grad = model.gather_vector(model.loss_grad(model.init_params(0), X, y)[1])
        return grad

    for grad in on_ranks(rank, 2):
        assert grad.dtype == np.float32
        np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the split
def test_units_follow_array_split_and_shards_are_slices_of_theta():
    layers = (5, 7, 4, 3)
    split = UnitSplit(layers, 3)
    for l, d in enumerate(layers[1:], start=1):
        blocks = np.array_split(np.arange(d), 3)
        assert [list(range(d))[split.units(l, r)] for r in range(3)] == [b.tolist() for b in blocks]
    full = MLP(list(layers))
    theta = np.arange(full.n_params, dtype=float)
    order = split.gather_order()
    assert sorted(order.tolist()) == list(range(full.n_params))  # every entry in exactly one shard
    for r in range(3):
        shard = theta[split.shard_index(r)]
        assert shard.size == split.shard_size(r)
        for (W, b), (Ws, bs), l in zip(full.unflatten(theta), split.shard_views(shard, r), range(1, 4)):
            assert np.array_equal(Ws, W[:, split.units(l, r)]) and np.array_equal(bs, b[split.units(l, r)])


def test_gather_and_shard_vectors_round_trip():
    layers = [6, 5, 4]

    def rank(comm):
        model = ShardedMLP(layers, comm=comm)
        whole = np.arange(model.n_params_total, dtype=float)
        shard = model.shard_vector(whole)
        return model.gather_vector(shard), shard.size, model.n_params

    results = on_ranks(rank, 3)
    for whole, size, n in results:
        assert np.array_equal(whole, np.arange(whole.size))
        assert size == n
    assert sum(n for _, _, n in results) == MLP(layers).n_params


def test_more_ranks_than_units_is_a_config_error_naming_the_layer():
    with pytest.raises(ConfigError, match=r"layer 2 of \[6, 5, 2\] has only 2 units; use at most 2 ranks"):
        UnitSplit((6, 5, 2), 3)
    with pytest.raises(ConfigError, match="layer 2"):
        run_threads(lambda comm: ShardedMLP([6, 5, 2], comm=comm), 3)
    with pytest.raises(ConfigError):
        UnitSplit((6, 5, 2), 0)
    with pytest.raises(InputError, match="Communicator"):
        ShardedMLP([6, 5, 2])


def test_wrong_shard_length_is_an_input_error():
    model = ShardedMLP([6, 5, 4], comm=SerialComm())
    with pytest.raises(InputError, match="theta"):
        model.loss_grad(np.zeros(3), np.zeros((2, 6)), np.zeros(2, dtype=int))


# ------------------------------------------------------------------ collectives per pass
def test_each_pass_issues_its_documented_collectives():
    """Per chunk: forward L allgathers; gradient L allgathers + L−1 reduce-scatters;
    a product the same; the exact Hessian's δ_l once per cache L−1 reduce-scatters."""
    layers, n, chunk = [6, 7, 5, 4], 11, 4  # L = 3, three chunks
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((n, 6)), rng.integers(0, 4, n)

    def rank(comm):
        model = ShardedMLP(layers, chunk_size=chunk, comm=comm)
        theta = model.init_params(0)
        counted = {}

        def delta(name, fn):
            before = comm.counts().other
            fn()
            after = comm.counts().other - before
            counted[name] = (after.allgather, after.reduce_scatter, after.allreduce, after.allreduce_scalars, after.bytes)

        delta("evaluate", lambda: model.evaluate(theta, X, y))
        delta("gradient", lambda: model.loss_grad(theta, X, y))
        cache = []
        delta("forward", lambda: cache.append(model.forward(theta, X, y)))
        delta("gv", lambda: cache[0].gv(theta))
        delta("hv", lambda: cache[0].hv(theta))  # δ_l first, then the product
        delta("hv again", lambda: cache[0].hv(theta))
        return counted

    s = 8
    gathered, scattered = n * (7 + 5 + 4) * s, n * (7 + 5) * s
    for counted in on_ranks(rank, 3):
        assert counted["evaluate"] == (9, 0, 0, 0, gathered)
        assert counted["forward"] == (9, 0, 0, 0, gathered)
        assert counted["gradient"] == (9, 6, 0, 0, gathered + scattered)
        assert counted["gv"] == (9, 6, 0, 0, gathered + scattered)
        assert counted["hv"] == (9, 12, 0, 0, gathered + 2 * scattered)
        assert counted["hv again"] == (9, 6, 0, 0, gathered + scattered)


def test_warm_up_is_local():
    """fit runs warm_up on rank 0 alone first: it must not issue a collective."""
    def rank(comm):
        model = ShardedMLP([6, 5, 4], comm=comm)
        if comm.rank == 0:
            model.warm_up()
        return comm.counts().total.collectives

    assert on_ranks(rank, 2) == [0, 0]


def test_recycled_cache_reuses_buffers_and_refuses_products():
    layers, rng = [6, 7, 4], np.random.default_rng(3)
    X, y = rng.standard_normal((8, 6)), rng.integers(0, 4, 8)

    def rank(comm):
        model = ShardedMLP(layers, comm=comm)
        theta = model.init_params(0)
        first = model.forward(theta, X, y)
        hv = first.hv(theta)
        second = model.forward(theta, X, y, recycle=first)
        with pytest.raises(InputError):
            first.gv(theta)
        return np.array_equal(second.hv(theta), hv)

    assert all(on_ranks(rank, 2))


# ------------------------------------------------------------------ the block collectives' checks
@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda c: c.allgather(np.ones(3), np.empty(3), [2]), "block has 3 elements (counts say 2)"),
        (lambda c: c.allgather(np.ones(3), np.empty(4), [3]), "whole array 4 (counts sum to 3)"),
        (lambda c: c.allgather(np.ones(3), np.empty(3), [3, 0]), "1 non-negative element counts"),
        (lambda c: c.allgather(np.ones(3), np.empty(3, dtype=np.float32), [3]), "dtype"),
        (lambda c: c.reduce_scatter(np.ones(3), np.empty(3)[::-1], [3]), "C-contiguous"),
        (lambda c: c.reduce_scatter(np.ones(3), np.empty(2), ["x"]), "counts"),
    ],
)
def test_block_collectives_refuse_bad_arguments_before_counting(call, fragment):
    comm = SerialComm()
    with pytest.raises(InputError, match=re.escape(fragment)):
        call(comm)
    assert comm.counts().total.collectives == 0


def test_ranks_disagreeing_on_the_counts_fail_on_every_rank():
    from hessfree.errors import CommError

    def rank(comm):
        counts = [2, 2] if comm.rank == 0 else [3, 2]  # each consistent with its own block
        comm.allgather(np.ones(2), np.empty(sum(counts)), counts)

    with pytest.raises(CommError, match="different collectives"):
        run_threads(rank, 2, timeout=10)
