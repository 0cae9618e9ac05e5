"""The geometric gradient sample (``gradient_sample``/``sample_growth``): which samples
each iteration uses, that the gradient over a grown sample is the one over its rows, that
a sample as large as the data is the whole-set trajectory bitwise, what the records say,
the effective epochs the cost model predicts, and serial = threads."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hessfree.comm import SerialComm, run_threads
from hessfree.cost import CostModel, Network, NodeSpec
from hessfree.errors import ConfigError
from hessfree.experiments.replay import replay
from hessfree.methods import Method
from hessfree.train import HessianFreeTrainer, TrainConfig, make_run_config
from hessfree.train.batches import local_positions, local_prefix, sample_size
from hessfree.train.hf import KeptGradient, Sample
from hessfree.train.run import build

from _runs import mpi_records, records_of, resumed_and_uninterrupted

SAMPLED = dict(hidden="12", iterations=8, seed=1, batch_size=200, gradient_sample=300, sample_growth=1.3, quiet=True)


_run = records_of


@given(first=st.integers(0, 5000), growth=st.floats(1.0, 3.0), n=st.integers(1, 4000), k=st.integers(0, 10_000))
def test_sample_sizes_grow_geometrically_up_to_the_whole_set(first, growth, n, k):
    size = sample_size(k, first, growth, n)
    assert 1 <= size <= n
    assert sample_size(k + 1, first, growth, n) >= size  # nested: never shrinks
    if first == 0 or first >= n:
        assert size == n
    elif size < n:
        assert size == int(first * growth**k)


@given(n=st.integers(1, 500), size=st.integers(0, 600), ranks=st.integers(1, 5), data=st.data())
def test_a_samples_rows_are_a_prefix_of_every_shard(n, size, ranks, data):
    rank = data.draw(st.integers(0, ranks - 1))
    chunk = -(-n // ranks)
    for rows in (range(rank, n, ranks), range(min(rank * chunk, n), min((rank + 1) * chunk, n))):  # strided, contiguous
        at = local_positions(rows, np.arange(min(size, n)))
        np.testing.assert_array_equal(at, np.arange(local_prefix(rows, size)))


def test_a_sample_is_all_of_the_data_at_the_latest_when_its_schedule_reaches_n():
    sizes = [sample_size(k, 5000, 1.1, 60_000) for k in range(30)]
    assert sizes[:3] == [5000, 5500, 6050] and sizes[27:] == [60_000] * 3
    assert sample_size(10**9, 5000, 1.1, 60_000) == 60_000  # no overflow
    assert sample_size(10**9, 5000, 1.0, 60_000) == 5000  # r = 1: a fixed sample


def test_config_identity_and_validation():
    plain = TrainConfig()
    assert "gradient_sample" not in plain.identity() and "sample_growth" not in plain.identity()  # old identities stay
    assert TrainConfig(gradient_sample=0).identity() == plain.identity()
    on = TrainConfig(gradient_sample=5000).identity()
    assert on["gradient_sample"] == 5000 and on["sample_growth"] == 1.1
    assert plain.sample_start == Method.GN_CG.spec.gradient_sample
    with pytest.raises(ConfigError, match="gradient_sample"):
        TrainConfig(gradient_sample=-1)
    with pytest.raises(ConfigError, match="sample_growth"):
        TrainConfig(gradient_sample=10, sample_growth=0.9)


def test_a_grown_samples_gradient_is_the_kept_sums_plus_its_new_rows():
    run_config = make_run_config(SAMPLED)
    data, model = build(run_config, SerialComm())
    trainer = HessianFreeTrainer(model, data, run_config.train)
    theta = model.init_params(1)
    small, large = trainer.train.rows(0, 300), trainer.train.rows(0, 390)
    trainer.kept_gradient = KeptGradient(theta, (*model.loss_grad(theta, small), None), 300)
    trainer.sample = Sample(large, 390, whole=False)
    loss, grad, _ = trainer.local_gradient(theta)
    direct_loss, direct_grad = model.loss_grad(theta, large)
    assert loss == pytest.approx(direct_loss, rel=1e-12)
    np.testing.assert_allclose(grad, direct_grad, rtol=1e-10, atol=1e-14)
    # another θ: the kept sums do not serve it
    trainer.kept_gradient = KeptGradient(theta.copy(), (*model.loss_grad(theta, small), None), 300)
    assert trainer.local_gradient(theta)[0] == direct_loss


def test_a_sample_as_large_as_the_data_is_the_whole_set_bitwise():
    whole = _run({**SAMPLED, "gradient_sample": 0})
    large = _run({**SAMPLED, "gradient_sample": 10**6})
    assert [r.loss for r in large] == [r.loss for r in whole]
    assert [r.epochs for r in large] == [r.epochs for r in whole]
    assert all(r.gradient_sample == 0 for r in large)


def test_records_of_a_sampled_run():
    records = _run(SAMPLED)
    sizes = [sample_size(k, 300, 1.3, 1347) for k in range(8)]
    n_train = make_run_config(SAMPLED)
    assert [r.gradient_sample for r in records] == [s if s < 1347 else 0 for s in sizes], n_train
    for r in records:
        if r.gradient_sample:  # the objective and error of the training set were not evaluated
            assert math.isnan(r.loss) and math.isnan(r.train_error) and math.isfinite(r.sample_loss)
        else:
            assert math.isfinite(r.loss) and math.isnan(r.sample_loss)
    assert records[-1].gradient_sample == 0 and records[-1].train_error < 0.2
    assert any(r.gradient_kept for r in records if r.gradient_sample)  # nested samples keep the gradient
    whole = _run({**SAMPLED, "gradient_sample": 0})
    assert records[-1].epochs < whole[-1].epochs  # fewer passes for the same iterations


def test_predicted_epochs_and_replay_follow_the_records():
    records = _run(SAMPLED)
    n = 1347
    cost = CostModel(layers=(64, 12, 10), samples=n, node=NodeSpec(flops=1e9), network=Network(latency=0.0, inverse_bandwidth=0.0))
    previous, last = 0.0, None
    for r in records:
        p = cost.predict("gn-cg", 200, 1, curvature_products=r.curvature_products, line_search_evals=r.line_search_evals,
                         gradient_kept=r.gradient_kept, gradient_along=r.gradient_along, gradient_sample=r.gradient_sample,
                         kept_sample=0 if last is None else last.gradient_sample)
        assert r.epochs - previous == pytest.approx(p.epochs_per_iteration)
        previous, last = r.epochs, r
    # replay charges the sample: cheaper than the same records on the whole set
    dicts = [r.as_dict() for r in records]
    sampled = replay(dicts, Method.GN_CG, 200, cost, 4)
    whole = replay([{**d, "gradient_sample": 0} for d in dicts], Method.GN_CG, 200, cost, 4)
    assert sampled[-1] < whole[-1]


def test_thread_ranks_give_the_serial_trajectory():
    serial = _run(SAMPLED)
    per_rank = run_threads(lambda comm: _run(SAMPLED, comm), 2)
    for records in per_rank:
        assert [r.gradient_sample for r in records] == [r.gradient_sample for r in serial]
        got = [r.sample_loss if r.gradient_sample else r.loss for r in records]
        want = [r.sample_loss if r.gradient_sample else r.loss for r in serial]
        assert got == pytest.approx(want, rel=1e-9)
        assert [r.epochs for r in records] == pytest.approx([r.epochs for r in serial], rel=1e-12)


def test_a_sampled_run_resumes_with_the_records_of_the_uninterrupted_one(tmp_path):
    """Sample k is a function of k, and a resumed kept gradient is recomputed uncharged:
    records and parameters are bitwise those of the run that was not interrupted."""
    flags = ["--hidden", "12", "--batch-size", "200", "--gradient-sample", "300", "--sample-growth", "1.3"]
    expected, got = resumed_and_uninterrupted(tmp_path, flags, 8, 3)
    assert [r["gradient_sample"] for r in got] == [r["gradient_sample"] for r in expected]
    assert any(r["gradient_sample"] for r in got[3:])  # resumed while still sampling
    assert got == expected


@pytest.mark.mpi
def test_mpi_data_and_model_parallel_give_the_serial_trajectory(tmp_path):
    serial = _run(SAMPLED)
    want = [r.sample_loss if r.gradient_sample else r.loss for r in serial]
    for result in mpi_records(tmp_path, SAMPLED):
        for parallel, records in result.items():
            assert [r["gradient_sample"] for r in records] == [r.gradient_sample for r in serial], parallel
            got = [r["sample_loss"] if r["gradient_sample"] else r["loss"] for r in records]
            assert got == pytest.approx(want, rel=1e-9), parallel
