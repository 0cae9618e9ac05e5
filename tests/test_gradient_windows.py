"""Gradient windows (``gradient_batch``): which samples each iteration uses, when the
training and test sets are evaluated, that a window as large as the data is the whole-set
trajectory bitwise, what the records say, the effective epochs and collectives the cost
model predicts, serial = threads = MPI, and a resumed run."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hessfree.comm import SerialComm, run_threads
from hessfree.cost import CostModel, Network, NodeSpec
from hessfree.cost.model import Evaluation
from hessfree.errors import ConfigError
from hessfree.experiments.replay import replay
from hessfree.methods import Method
from hessfree.train import HessianFreeTrainer, TrainConfig, fit, make_run_config
from hessfree.train.batches import contiguous_positions, curvature_window, ends_pass, local_positions
from hessfree.train.run import build

from _cost_counts_run import compare
from _runs import mpi_records, records_of, resumed_and_uninterrupted

#: digits: 1,347 training samples, so windows of 200 wrap (the 7th: 1,200-1,399)
WINDOWED = dict(hidden="12", iterations=9, seed=1, batch_size=200, gradient_batch=200, damping_min=0.01, quiet=True)
N = 1347


_run = records_of


def _values(records) -> list[float]:
    """Each record's objective: the training set's where evaluated, else the window's."""
    return [r.loss if r.evaluated else r.sample_loss for r in records]


@given(n=st.integers(1, 5000), k=st.integers(1, 300), data=st.data())
def test_the_data_is_evaluated_once_per_pass(n, k, data):
    size = data.draw(st.integers(1, n))  # windows are smaller than the data (else: whole)
    evaluations = sum(ends_pass(i, size, n) for i in range(k))
    assert evaluations == k * size // n  # one per pass the first k windows completed
    assert all(ends_pass(i, n, n) for i in range(k))


@given(n=st.integers(2, 400), size=st.integers(1, 399), ranks=st.integers(1, 4), k=st.integers(0, 50), data=st.data())
def test_a_windows_rows_on_a_shard_are_a_view_exactly_when_consecutive(n, size, ranks, k, data):
    size = min(size, n - 1)
    rank = data.draw(st.integers(0, ranks - 1))
    chunk = -(-n // ranks)
    window = curvature_window(k, size, n)
    for rows in (range(rank, n, ranks), range(min(rank * chunk, n), min((rank + 1) * chunk, n))):  # strided, contiguous
        positions = local_positions(rows, window)
        span = contiguous_positions(positions)
        if span is not None:
            np.testing.assert_array_equal(positions, np.arange(*span))
        else:
            assert positions.size == 0 or np.any(np.diff(positions) != 1)


def test_config_identity_and_validation():
    plain = TrainConfig()
    assert "gradient_batch" not in plain.identity()  # old identities stay valid
    assert TrainConfig(gradient_batch=0).identity() == plain.identity()
    assert TrainConfig(gradient_batch=6000).identity()["gradient_batch"] == 6000
    assert plain.window_size == Method.GN_CG.spec.gradient_batch == 0
    with pytest.raises(ConfigError, match="gradient_batch"):
        TrainConfig(gradient_batch=-1)
    with pytest.raises(ConfigError, match="gradient_batch: expected 0 with a gradient sample"):
        TrainConfig(gradient_batch=100, gradient_sample=100)


def test_iteration_ks_sample_is_window_k():
    run_config = make_run_config(WINDOWED)
    data, model = build(run_config, SerialComm())
    trainer = HessianFreeTrainer(model, data, run_config.train)
    for k in (0, 3, 6, 7):  # window 6 wraps past the end of the data: rows gathered, not a view
        sample = trainer.gradient_sample(k)
        expected = trainer.train.X[curvature_window(k, 200, N)]
        assert sample.count == 200 and sample.window and not sample.whole
        np.testing.assert_array_equal(sample.rows.X, expected)
        assert np.shares_memory(sample.rows.X, trainer.train.X) == (k != 6)


def test_a_window_as_large_as_the_data_is_the_whole_set_bitwise():
    whole = _run({**WINDOWED, "gradient_batch": 0})
    large = _run({**WINDOWED, "gradient_batch": N})
    assert [r.loss for r in large] == [r.loss for r in whole]
    assert [r.epochs for r in large] == [r.epochs for r in whole]
    assert not any(r.window or r.gradient_sample for r in large)


def test_records_of_a_windowed_run():
    records = _run(WINDOWED)
    evaluated = [ends_pass(k, 200, N) or k == 8 for k in range(9)]
    assert [r.evaluated for r in records] == evaluated == [False] * 6 + [True, False, True]
    for r in records:
        assert r.window and r.gradient_sample == 200 and not r.gradient_kept and not r.gradient_along
        assert math.isfinite(r.sample_loss)
        values = (r.loss, r.train_error, r.test_error)
        assert all(map(math.isfinite, values)) if r.evaluated else all(map(math.isnan, values))
    assert records[-1].train_error < 0.2
    # the evaluated values are the training set's at the step's θ
    run_config = make_run_config({**WINDOWED, "iterations": 7})
    data, model = build(run_config, SerialComm())
    result = fit(model, data, run_config.train, SerialComm(), warm_up=False)
    loss, wrong = model.evaluate(result.state.theta, data.X_train, data.train_targets)
    assert records[6].loss == pytest.approx(loss / N, rel=1e-12) and records[6].train_error == wrong / N


def test_predicted_epochs_counts_and_replay_follow_the_records():
    records = _run(WINDOWED)
    cost = CostModel(layers=(64, 12, 10), samples=N, test_samples=450, node=NodeSpec(flops=1e9),
                     network=Network(latency=1e-6, inverse_bandwidth=1e-9))
    previous = 0.0
    for r in records:
        evaluation = Evaluation.of(r.as_dict())
        assert evaluation is (Evaluation.WHOLE if r.evaluated else Evaluation.NONE)
        p = cost.predict("gn-cg", 200, 1, curvature_products=r.curvature_products, line_search_evals=r.line_search_evals,
                         gradient_sample=r.gradient_sample, evaluation=evaluation)
        assert r.epochs - previous == pytest.approx(p.epochs_per_iteration)
        previous = r.epochs
    # replay charges the windows and the evaluations: a pass costs more than a window
    times = np.diff([0.0] + replay([r.as_dict() for r in records], Method.GN_CG, 200, cost, 4))
    assert all(times[k] > times[k - 1] for k in (6, 8)) and times[7] < times[6]


@pytest.mark.parametrize("size", [1, 2])
def test_metered_collectives_equal_the_cost_models(size):
    """Windows of 20 samples: some iterations evaluate (a pass completed, or the run's
    last), the others do not."""
    for pairs in run_threads(lambda comm: compare(comm, "gn-cg", iterations=6, gradient_batch=20), size):
        kinds = [p["other"]["allreduce_scalars"] for p, _ in pairs]
        assert set(kinds) == {0, 2} and kinds[-1] == 2  # test error and the training set's objective, or nothing
        for predicted, metered in pairs:
            assert predicted == metered


def test_model_parallel_collectives_equal_the_cost_models():
    """The exchanges of passes over a window (and over a gradient sample) are counted on
    its rows, not the whole set's."""
    from mpi.mp_counts import compare as compare_mp

    for pairs in run_threads(lambda comm: compare_mp(comm, "gn-cg", iterations=6, gradient_batch=20), 2):
        evaluated = [p["other"]["allgather"] > 0 for p, _ in pairs]
        assert any(evaluated) and not all(evaluated) and evaluated[-1]
        for predicted, metered in pairs:
            assert predicted == metered
    for pairs in run_threads(lambda comm: compare_mp(comm, "gn-cg", iterations=6, gradient_sample=30, sample_growth=1.3), 2):
        for predicted, metered in pairs:
            assert predicted == metered


def test_thread_ranks_give_the_serial_trajectory():
    serial = _run(WINDOWED)
    for parallel in ("data", "model"):
        for records in run_threads(lambda comm: _run({**WINDOWED, "parallel": parallel}, comm), 2):
            assert [r.evaluated for r in records] == [r.evaluated for r in serial]
            assert _values(records) == pytest.approx(_values(serial), rel=1e-9), parallel
            assert [r.epochs for r in records] == pytest.approx([r.epochs for r in serial], rel=1e-12)


def test_a_windowed_run_resumes_with_the_records_of_the_uninterrupted_one(tmp_path):
    """Window k is a function of k alone: the records are bitwise those of the run that
    was not interrupted, but for the evaluation the first run made after its last
    iteration (its values there; one pass more in the effective epochs, and its
    collectives in the cumulative counts, from then on)."""
    flags = ["--hidden", "12", "--batch-size", "200", "--gradient-batch", "200", "--damping-min", "0.01"]
    cumulative = frozenset({"comm_calls", "comm_bytes", "comm_phases"})  # the extra evaluation's collectives
    expected, got = resumed_and_uninterrupted(tmp_path, flags, 9, 3, drop=cumulative)
    assert len(got) == len(expected) == 9
    assert got[2]["evaluated"] and not expected[2]["evaluated"]  # the first run's last iteration
    extra = [g.pop("epochs") - e.pop("epochs") for g, e in zip(got, expected)]
    assert extra == pytest.approx([0.0] * 2 + [1.0] * 7, abs=1e-9)  # that pass, charged
    for key in ("evaluated", "loss", "train_error", "test_error"):
        got[2].pop(key), expected[2].pop(key)
    assert got == expected


@pytest.mark.mpi
def test_mpi_data_and_model_parallel_give_the_serial_trajectory(tmp_path):
    serial = _run(WINDOWED)
    want = _values(serial)
    for result in mpi_records(tmp_path, WINDOWED):
        for parallel, records in result.items():
            assert [r["evaluated"] for r in records] == [r.evaluated for r in serial], parallel
            got = [r["loss"] if r["evaluated"] else r["sample_loss"] for r in records]
            assert got == pytest.approx(want, rel=1e-9), parallel
