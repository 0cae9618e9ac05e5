"""Martens' diagonal preconditioner in the HF trainer: what it computes (against a loop over
samples), what it costs (one collective in the gradient phase), that the solver receives
it, and that every backend follows the same preconditioned trajectory."""

import attrs
import numpy as np
import pytest

from hessfree.comm import Phase, SerialComm, run_threads
from hessfree.errors import ConfigError
from hessfree.methods import Preconditioner
from hessfree.models import MLP
from hessfree.models.base import Model
from hessfree.train import HessianFreeTrainer, TrainConfig
from hessfree.train.hf import PRECONDITIONER_EXPONENT
from hessfree.train.run import build
from hessfree.train import make_run_config
from train_cases import case_config
from test_train import run_records


def trainer_on_digits(comm=None, **train):
    config = make_run_config(case_config("gn-cg", **{"preconditioner": "martens", **train}))
    comm = comm or SerialComm()
    data, model = build(config, comm)
    return HessianFreeTrainer(model, data, config.train, comm), data, model


def test_the_fisher_diagonal_is_the_mean_squared_per_sample_gradient():
    trainer, data, model = trainer_on_digits(weight_decay=1e-3)
    theta = model.init_params(1)
    f, g, fisher = trainer.gradient_and_fisher(theta)
    X, y = data.X_train, data.y_train
    per_sample = np.array([model.loss_grad(theta, X[i : i + 1], y[i : i + 1])[1] for i in range(len(X))])
    np.testing.assert_allclose(fisher, (per_sample**2).mean(axis=0), rtol=1e-10, atol=1e-14)
    f_plain, g_plain = trainer.gradient(theta)  # the same gradient and objective as without it
    assert f == pytest.approx(f_plain, rel=1e-14)
    np.testing.assert_allclose(g, g_plain, rtol=1e-13, atol=1e-16)


def test_the_inverse_preconditioner_is_martens_formula():
    trainer, _, model = trainer_on_digits(weight_decay=1e-3)
    theta = model.init_params(1)
    _, _, fisher = trainer.gradient_and_fisher(theta)
    _, _, inverse = trainer.gradient_phase(theta, shift=0.5)
    np.testing.assert_allclose(inverse, (fisher + 0.5 + 1e-3) ** -0.75, rtol=1e-14)
    assert PRECONDITIONER_EXPONENT == 0.75
    plain, _, _ = trainer_on_digits(preconditioner="none")
    assert plain.gradient_phase(theta, shift=0.5)[2] is None  # off: no preconditioner


def test_the_gradient_phase_stays_one_collective():
    records, _, model = run_records(case_config("gn-cg", preconditioner="martens"), SerialComm())
    n = model.n_params
    for k, r in enumerate(records, start=1):  # the counts are cumulative
        phase = r.comm_phases[Phase.GRADIENT]
        assert phase.collectives == k
        assert phase.bytes == k * (2 * n + 1) * 8  # [Σ∇ℓ, Σ∇ℓ⊙∇ℓ, Σℓ] in float64


def test_the_solver_receives_the_preconditioner():
    plain, data, model = trainer_on_digits()
    seen = []

    class Spy(type(plain.solver)):
        def solve(self, matvec, b, x0=None, **kw):
            seen.append(kw.get("precond"))
            return super().solve(matvec, b, x0, **kw)

    solver = Spy(**attrs.asdict(plain.solver, recurse=False))
    trainer = HessianFreeTrainer(model, data, plain.config, plain.comm, solver=solver)
    state = trainer.initial_state()
    expected = trainer.gradient_phase(state.theta, trainer.solve_damping(state))[2]
    trainer.step(state)
    assert len(seen) == 1 and seen[0] is not None
    np.testing.assert_array_equal(seen[0], expected)


@pytest.mark.parametrize("method", ["gn-cg", "bicgstab", "newton-mr"])
def test_threads_give_the_serial_preconditioned_losses(method):
    config = case_config(method, preconditioner="martens")
    serial = run_records(config, SerialComm())[0]
    per_rank = run_threads(lambda comm: run_records(config, comm)[0], 2)
    for records in per_rank:
        assert [r.loss for r in records] == pytest.approx([r.loss for r in serial], rel=1e-10)
    assert [r.loss for r in per_rank[0]] == [r.loss for r in per_rank[1]]


def test_a_preconditioned_run_learns():
    records, data, model = run_records(case_config("gn-cg", preconditioner="martens", iterations=10), SerialComm())
    start = model.loss(model.init_params(3), data.X_train, data.y_train) / data.n_train
    assert records[-1].loss < 0.4 * start


def test_a_model_without_squared_gradients_refuses_the_option():
    class Bare(MLP):
        loss_grad_squares = Model.loss_grad_squares

    model = Bare([3, 2, 2])
    with pytest.raises(ConfigError, match="preconditioner"):
        model.loss_grad_squares(model.init_params(0), np.zeros((1, 3)), np.zeros(1, dtype=np.int64))


def test_the_option_is_declared_once_and_parsed_strictly():
    assert TrainConfig(preconditioner="martens").preconditioner is Preconditioner.MARTENS
    with pytest.raises(ConfigError, match="preconditioner"):
        TrainConfig(preconditioner="jacobi")
