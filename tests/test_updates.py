"""The fused first-order updates (``hessfree.train.updates``) are bitwise the numpy
expressions they replace, for every rule, dtype and weight-decay setting, and the
finiteness count is numpy's."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.methods import Update
from hessfree.train import updates

RULES = [(Update.SGD, 0.0), (Update.MOMENTUM, 0.9), (Update.MOMENTUM, 0.5), (Update.ADAM, 0.0), (Update.ADAMW, 0.0)]


def state(seed: int, n: int, dtype, scale: float):
    rng = np.random.default_rng(seed)
    theta, m, grad_sum = (rng.standard_normal(n) * scale for _ in range(3))
    v = np.abs(rng.standard_normal(n)) * scale**2
    return [a.astype(dtype) for a in (theta, m, v, grad_sum)]


def both(rule, mu, arrays, count, wd, lr, t, betas=(0.9, 0.999), eps=1e-8):
    """(fused, reference) states after one update from the same arrays."""
    coupled = 0.0 if rule is Update.ADAMW else wd
    adam = rule in (Update.ADAM, Update.ADAMW)
    kw = dict(lr=lr, momentum=mu, decoupled_decay=wd - coupled, beta1=betas[0], beta2=betas[1], eps=eps, t=t)
    out = []
    for fused in (True, False):
        theta, m, v, grad_sum = (a.copy() for a in arrays)
        if fused:
            g = np.empty_like(theta)
            assert updates.mean_gradient_into(grad_sum, count, theta, coupled, g) == np.count_nonzero(~np.isfinite(g))
            updates.step(rule, theta, m, v if adam else None, g, **kw)
        else:
            g = updates.mean_gradient(grad_sum, count, theta, coupled)
            updates.reference_step(rule, theta, m, v if adam else None, g, **kw)
        out.append((g, theta, m, v))
    return out


@settings(deadline=None, max_examples=60)
@given(
    rule=st.sampled_from(RULES),
    dtype=st.sampled_from([np.float32, np.float64]),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    count=st.integers(1, 4096),
    wd=st.sampled_from([0.0, 1e-4, 0.3]),
    lr=st.floats(1e-5, 1.0),
    t=st.integers(1, 10_000),
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_the_fused_update_is_bitwise_numpys(rule, dtype, seed, n, count, wd, lr, t, scale):
    fused, reference = both(rule[0], rule[1], state(seed, n, dtype, scale), count, wd, lr, t)
    for got, want in zip(fused, reference):
        assert got.dtype == want.dtype == dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_nonfinite_count_is_numpys(dtype):
    theta, _, _, grad_sum = state(0, 50, dtype, 1.0)
    grad_sum[[3, 7]] = [np.nan, np.inf]
    theta[11] = -np.inf  # infinite only through the weight-decay term
    for wd, bad in ((0.0, 2), (0.01, 3)):
        g = np.empty_like(theta)
        assert updates.mean_gradient_into(grad_sum, 8, theta, wd, g) == np.count_nonzero(~np.isfinite(g)) == bad
        np.testing.assert_array_equal(g, updates.mean_gradient(grad_sum, 8, theta, wd))
    big = np.full(4, np.finfo(dtype).max, dtype=dtype)  # finite, but g overflows with the decay
    assert updates.mean_gradient_into(big, 1, big, 2.0, np.empty_like(big)) == 4
    assert updates.mean_gradient_into(big, 1, big, 0.0, np.empty_like(big)) == 0


def test_the_mean_gradient_may_overwrite_the_sum():
    """In place (the trainer's use: g over the reduce buffer) gives the same bits."""
    for wd in (0.0, 0.3):
        theta, _, _, grad_sum = state(2, 64, np.float32, 1.0)
        want = updates.mean_gradient(grad_sum, 7, theta, wd)
        assert updates.mean_gradient_into(grad_sum, 7, theta, wd, out=grad_sum) == 0
        np.testing.assert_array_equal(grad_sum, want)


def test_arrays_the_kernels_do_not_take_go_to_numpy():
    """Strided vectors (not contiguous) take numpy's path, with the same results."""
    arrays = state(1, 40, np.float64, 1.0)
    for rule, mu in RULES:
        strided = [np.repeat(a, 2)[::2] for a in arrays]
        assert not strided[0].flags.c_contiguous
        theta, m, v, grad_sum = strided
        g = np.repeat(np.empty_like(theta), 2)[::2]
        assert updates.mean_gradient_into(grad_sum, 4, theta, 0.0, g) == 0
        updates.step(rule, theta, m, v, g, lr=0.1, momentum=mu)
        want = both(rule, mu, arrays, 4, 0.0, 0.1, 1)[1]
        for got, ref in zip((g, theta), want):
            np.testing.assert_array_equal(got, ref)


def test_model_parallel_ranks_skip_alike_when_one_shard_is_not_finite():
    """The skip is decided from the reduced count: a non-finite element on one rank's shard
    makes every rank skip; a data-parallel rank's count is already everyone's."""
    from hessfree.comm import SerialComm, run_threads
    from hessfree.models import MLP, ShardedMLP
    from hessfree.train.layout import layout_of

    def decide(comm):
        layout = layout_of(ShardedMLP((6, 4, 3), comm=comm), comm)
        grad_sum = np.ones(5)
        if comm.rank == 1:
            grad_sum[2] = np.nan
        bad = updates.mean_gradient_into(grad_sum, 2, grad_sum, 0.0, out=grad_sum)
        return layout.none_nonfinite(bad), layout.none_nonfinite(0)

    assert run_threads(decide, 2) == [(False, True), (False, True)]
    serial = layout_of(MLP([6, 4, 3]), SerialComm())
    assert serial.none_nonfinite(0) and not serial.none_nonfinite(1)


def test_adam_without_a_second_moment_is_refused_naming_it():
    from hessfree.errors import InputError

    x = np.ones(3)
    with pytest.raises(InputError, match="second_moment"):
        updates.step(Update.ADAM, x, x.copy(), None, x, lr=0.1)
