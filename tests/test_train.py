"""The trainer: every method learns, all backends agree, counts match the algorithm, NaN safety."""

import json
import math

import numpy as np
import pytest

from hessfree.comm import SerialComm, run_threads
from hessfree.data import ShardMode, load_dataset
from hessfree.models import MLP
from hessfree.train import HessianFreeTrainer, TrainConfig
from hessfree.train.batches import curvature_window, epoch_permutation, local_positions
from hessfree.train.damping import reduction_ratio, update_damping
from hessfree.train.linesearch import armijo
from hessfree.train import fit, make_run_config
from hessfree.train.run import build
from train_cases import METHODS, case_config

from mpi.launch import run_mpi


def run_records(config: dict, comm) -> tuple[list, object, object]:
    """(records, data, model) of a run through ``fit``."""
    run_config = make_run_config(config)
    data, model = build(run_config, comm)
    return list(fit(model, data, run_config.train, comm).history), data, model


@pytest.fixture(scope="module")
def serial_runs():
    return {m: run_records(case_config(m), SerialComm())[0] for m in METHODS}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_reduces_the_loss_well_below_the_start(method):
    records, data, model = run_records(case_config(method, iterations=10, epochs=4), SerialComm())
    start = model.loss(model.init_params(3), data.X_train, data.y_train) / data.n_train
    assert records[-1].loss < 0.4 * start
    assert records[-1].train_error < 0.2


@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_threads_give_the_serial_losses(serial_runs, method, ranks):
    per_rank = run_threads(lambda comm: run_records(case_config(method), comm)[0], ranks)
    expected = [r.loss for r in serial_runs[method]]
    for records in per_rank:
        assert [r.loss for r in records] == pytest.approx(expected, rel=1e-10)
        assert [r.iteration for r in records] == [r.iteration for r in serial_runs[method]]
    # every rank reports bitwise the same numbers (decisions come from reduced values)
    assert all([r.loss for r in records] == [r.loss for r in per_rank[0]] for records in per_rank)


def test_mpi_gives_the_serial_losses(serial_runs, tmp_path):
    run = run_mpi(2, "train_methods.py", str(tmp_path), limit=240)
    assert run.returncode == 0, run.output[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for method in METHODS:
        expected = [r.loss for r in serial_runs[method]]
        for result in ranks:
            assert [r["loss"] for r in result[method]] == pytest.approx(expected, rel=1e-10), method
        assert [r["loss"] for r in ranks[0][method]] == [r["loss"] for r in ranks[1][method]]


@pytest.mark.parametrize("method", ["gn-cg", "hess-cg", "bicgstab", "hybrid"])
def test_collectives_per_iteration_match_the_algorithm(serial_runs, method):
    previous = {"gradient": 0, "curvature": 0, "line_search": 0}
    for k, r in enumerate(serial_runs[method]):
        phases = {p: r.comm_phases[p].collectives for p in previous}
        delta = {p: phases[p] - previous[p] for p in previous}
        previous = phases
        assert delta["gradient"] == 1  # one reduction of [gradient sum, loss sum]
        assert delta["curvature"] == r.curvature_products  # one allreduce per product
        assert delta["line_search"] == r.line_search_evals  # one scalar reduction per trial
        warm = 0 if k == 0 else 1  # the initial residual b − A·x0 of a warm start costs one product
        per_step = 2 if method == "bicgstab" else 1
        assert r.curvature_products - warm in (per_step * r.cg_iterations, per_step * r.cg_iterations - 1)
        assert r.line_search_evals >= 1


def test_sgd_reduces_once_per_update(serial_runs):
    records = serial_runs["sgd"]
    data = load_dataset("digits")
    updates = data.n_train // 50
    gradient_calls = [r.comm_phases["gradient"].collectives for r in records]
    assert gradient_calls == [updates * (e + 1) for e in range(len(records))]
    assert [r.iteration for r in records] == [updates * (e + 1) for e in range(len(records))]


class PoisonedModel:
    """Wraps a model so that every objective evaluation away from θ₀ is NaN (on one rank)."""

    def __init__(self, model, theta0):
        self._model, self._theta0 = model, theta0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def evaluate(self, theta, X, y=None):
        loss, wrong = self._model.evaluate(theta, X, y)
        return (math.nan if not np.array_equal(theta, self._theta0) else loss), wrong

    def evaluate_grad(self, theta, X, y=None, **kw):  # the evaluation with the gradient taken along
        loss, wrong, grad, squares = self._model.evaluate_grad(theta, X, y, **kw)
        return (math.nan if not np.array_equal(theta, self._theta0) else loss), wrong, grad, squares


def test_nan_on_one_rank_rejects_the_step_on_all_ranks_alike():
    config = TrainConfig(method="gn-cg", iterations=1, batch_size=200, cg_max_iter=10, max_rejected=5)

    def work(comm):
        data = load_dataset("digits", rank=comm.rank, size=comm.size, shard=ShardMode.STRIDED)
        model = MLP([64, 16, 10])
        theta0 = model.init_params(0)
        used = PoisonedModel(model, theta0) if comm.rank == 1 else model
        trainer = HessianFreeTrainer(used, data, config, comm)
        state = trainer.initial_state(theta0)
        new, record = trainer.step(state)
        return theta0, new, record

    results = run_threads(work, 2)
    for theta0, new, record in results:
        assert not record.accepted and record.step_size == 0.0
        assert np.array_equal(new.theta, theta0)  # restored exactly, not by subtraction
        assert new.damping == pytest.approx(1.5 * config.damping)
        assert new.rejected == 1
    evals = [r[2].line_search_evals for r in results]
    assert evals[0] == evals[1] >= config.max_line_search  # every backtracking and Armijo trial, on both ranks


def test_batches_do_not_depend_on_the_number_of_ranks():
    n, b = 103, 17
    for k in range(8):
        window = curvature_window(k, b, n)
        for size in (1, 2, 3, 5):
            parts = [local_positions(range(r, n, size), window) for r in range(size)]
            owned = np.sort(np.concatenate([r + size * p for r, p in zip(range(size), parts)]))
            assert np.array_equal(owned, np.sort(window))
            wraps = (k * b) % n + b > n  # past the end the next lap starts again at rank 0
            assert max(map(len, parts)) - min(map(len, parts)) <= (2 if wraps else 1)  # strided: balanced
    assert np.array_equal(epoch_permutation(1, 2, 50), epoch_permutation(1, 2, 50))
    assert not np.array_equal(epoch_permutation(1, 2, 50), epoch_permutation(1, 3, 50))


def test_damping_rule_and_reduction_ratio():
    cfg = TrainConfig()
    assert update_damping(1.0, 0.1, cfg) == pytest.approx(1.5)
    assert update_damping(1.0, 0.9, cfg) == pytest.approx(2 / 3)
    assert update_damping(1.0, 0.5, cfg) == 1.0
    assert update_damping(1.0, math.nan, cfg) == pytest.approx(1.5)
    assert update_damping(cfg.damping_max, -math.inf, cfg) == cfg.damping_max
    assert reduction_ratio(0.5, 1.0, -1.0) == pytest.approx(0.5)
    assert reduction_ratio(1.5, 1.0, -1.0) == -math.inf
    assert reduction_ratio(math.nan, 1.0, -1.0) == -math.inf


def test_armijo_line_search():
    f = lambda a: ((1 - a) ** 2, a)  # minimum at α = 1 of f along p, f(0) = 1, slope −2
    result = armijo(f, 1.0, -2.0, c=1e-2, shrink=0.8, max_trials=60)
    assert result.alpha == 1.0 and result.trials == 1
    steep = armijo(lambda a: ((1 - 10 * a) ** 2, a), 1.0, -20.0, c=0.5, shrink=0.5, max_trials=60)
    assert 0 < steep.alpha < 0.2 and steep.value <= 1.0 - 0.5 * steep.alpha * 20
    never = armijo(lambda a: (math.nan, None), 1.0, -1.0, c=1e-2, shrink=0.8, max_trials=5)
    assert never.alpha == 0.0 and never.trials == 5 and not never.accepted


def test_a_failing_mpi_job_ends_every_rank_within_seconds(tmp_path):
    run = run_mpi(2, "train_cli.py", "train", "--comm", "mpi", "--dataset", "mnist", "--data-dir", str(tmp_path / "none"),
                  "--comm-timeout", "120", limit=60)
    assert run.returncode == 1
    # every rank meets the error: the ranks agree, rank 0 reports it once, nobody aborts
    errors = [line for line in run.output.splitlines() if line.strip().startswith("error:")]
    assert len(errors) == 1 and "data directory" in errors[0] and "MPI_ABORT" not in run.output
    assert run.seconds < 30  # ended at once, not left to the 120 s collective deadline


def test_mpi_cli_run_writes_metrics_from_rank_0_only(tmp_path):
    metrics = tmp_path / "m.jsonl"
    run = run_mpi(2, "train_cli.py", "train", "--comm", "mpi", "--iterations", "2", "--hidden", "16", "--batch-size", "200",
                  "--metrics", str(metrics), limit=120)
    assert run.returncode == 0, run.output[-2000:]
    lines = [json.loads(l) for l in metrics.read_text().splitlines()]
    assert [l["kind"] for l in lines] == ["config", "iteration", "iteration", "result"]
    assert lines[0]["environment"]["ranks"] == 2 and lines[0]["environment"]["backend"] == "MPIComm"
    assert run.output.count("done: 2 iterations") == 1  # only rank 0 prints


def test_negative_curvature_at_the_first_cg_step_falls_back_to_minus_g():
    """Paper's HF-CG rule: negative curvature at the very first CG step → −g, even from a warm start."""
    from hessfree.solvers import CG, Curvature, StopReason

    data = load_dataset("digits")
    model = MLP([64, 8, 10])
    trainer = HessianFreeTrainer(model, data, TrainConfig(method="hess-cg", batch_size=300))
    theta = model.init_params(0)
    _, g = trainer.gradient(theta)
    x0 = -0.1 * g  # a warm start that is itself a descent direction: still not a CG step
    result = CG().solve(lambda v: -v, -g, x0)  # A = −I: the first direction has negative curvature
    assert result.reason is StopReason.NEGATIVE_CURVATURE and result.iterations == 0
    op = trainer.curvature_operator(theta, 0, 1.0, Curvature.EXACT)
    d = trainer.choose_direction(result, g, theta, op).direction
    assert d.kind == "gradient" and np.array_equal(d.p, -g) and d.slope < 0
