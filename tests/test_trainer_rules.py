"""Trainer-level rules that would each catch a real mistake in the HF step.

1. On a model whose per-sample loss is exactly quadratic, the quadratic model of the step
   is exact, so ρ = 1 on every accepted gn-cg and hess-cg step and λ shrinks by the
   decrease factor each time (a damped ρ, a wrong batch normalisation or a stale
   curvature all break this).
2. Hybrid really receives its state: right after a negative-curvature event it differs
   from hess-cg (Gauss-Newton solve), and not before.
3. The walk-back over the iterates picks the candidate Martens' rule says it should.
4. A candidate with gᵀp ≥ 0 is never taken.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hessfree.comm import SerialComm
from hessfree.train.layout import DataParallel
from hessfree.data import load_dataset
from hessfree.data.dataset import Dataset
from hessfree.models import MLP
from hessfree.solvers import Candidate, CandidateKind, SolveResult, StopReason
from hessfree.train import HessianFreeTrainer, TrainConfig, fit
from stub_rows import Rows


# ------------------------------------------------------------------ an exactly quadratic model


class QuadraticModel:
    """ℓᵢ(θ) = ½(θ − cᵢ)ᵀA(θ − cᵢ) with cᵢ the i-th row of X: Hessian = Gauss-Newton = A
    for every sample, so the curvature of any batch is exactly A."""

    def __init__(self, A: np.ndarray):
        self.A = A
        self.n_params = A.shape[0]
        self.dtype = np.dtype(np.float64)
        self.layers = (self.n_params,)

    def init_params(self, seed) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal(self.n_params) * 3.0

    def batch(self, X, y=None):
        return Rows(np.asarray(X), np.asarray(y))

    def _rows(self, X):
        return X.X if isinstance(X, Rows) else np.asarray(X)

    def loss_grad(self, theta, X, y=None):
        R = theta - self._rows(X)  # rows θ − cᵢ
        AR = R @ self.A
        return 0.5 * float(np.sum(AR * R)), AR.sum(axis=0)

    def evaluate(self, theta, X, y=None):
        return self.loss_grad(theta, X)[0], 0

    def forward(self, theta, X, y=None, *, recycle=None):
        n, A = self._rows(X).shape[0], self.A

        class Cache:
            def gv(self, v):
                return n * (A @ v)

            hv = gv

        return Cache()


@pytest.fixture(scope="module")
def quadratic():
    rng = np.random.default_rng(4)
    d = 12
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    A = (Q * np.logspace(-2, 1, d)) @ Q.T
    A = (A + A.T) / 2
    X = rng.standard_normal((400, d))
    data = Dataset("quadratic", X, np.zeros(400, dtype=np.int64), 1)
    return QuadraticModel(A), data


@pytest.mark.parametrize("method", ["gn-cg", "hess-cg"])
def test_rho_is_one_and_damping_shrinks_on_an_exactly_quadratic_loss(quadratic, method):
    model, data = quadratic
    config = TrainConfig(method=method, iterations=8, batch_size=100, damping=10.0, cg_max_iter=5)
    trainer = HessianFreeTrainer(model, data, config, SerialComm())
    records = [r for _, r in trainer.run(trainer.initial_state(), config.iterations)]
    accepted = [r for r in records if r.accepted]
    assert len(accepted) == len(records) == 8
    for before, after in zip(records, records[1:]):
        assert before.rho == pytest.approx(1.0, abs=1e-10)
        assert after.damping == pytest.approx(before.damping * config.damping_decrease, rel=1e-14)
    assert records[-1].loss < records[0].loss


def test_hybrid_receives_its_state_after_negative_curvature():
    """On digits the first exact-Hessian solve meets negative curvature (tested below); the
    Hybrid's second solve must then use Gauss-Newton and part from hess-cg's trajectory."""
    data = load_dataset("digits")
    runs = {}
    for method in ("hess-cg", "hybrid"):
        model = MLP([64, 20, 10])
        runs[method] = fit(model, data, TrainConfig(method=method, iterations=3, seed=3), warm_up=False).history
    hess, hybrid = runs["hess-cg"], runs["hybrid"]
    assert hess[0].negative_curvature and hybrid[0].negative_curvature
    assert hybrid[0].loss == hess[0].loss and hybrid[0].curvature == hess[0].curvature == "exact"
    assert hybrid[1].curvature == "gauss_newton" and hess[1].curvature == "exact"
    assert hybrid[1].loss != hess[1].loss
    assert not hybrid[1].negative_curvature and hybrid[2].curvature == "exact"  # and back


# ------------------------------------------------------------------ the direction choice
def _result(candidates) -> SolveResult:
    x = np.zeros(3)
    return SolveResult(
        x=x, reason=StopReason.MAX_ITER, iterations=20, matvecs=20, q=0.0, q_history=(0.0,), residual_norms=(1.0,),
        rhs_norm=1.0, true_residual_norm=None, iterates=(), negative_curvature=None, candidates=candidates, solver="test",
    )


def _candidate(iteration: int, value: float, slope: float = -1.0, kind=CandidateKind.ITERATE) -> Candidate:
    # the direction's first entry names the objective value the stub will report
    return Candidate(np.array([value, float(iteration), 0.0]), 1.0, slope, iteration, kind)


class _Trainer(HessianFreeTrainer):
    """The real choice rule, with an objective read off the direction (θ = 0)."""

    def __init__(self, backtracking=True):
        self.config = TrainConfig(method="gn-cg", backtracking=backtracking)
        self.comm = SerialComm()
        self.layout = DataParallel(self.comm, None)
        self.evaluated = []

    def objective(self, theta):
        self.evaluated.append(int(theta[1]))
        return theta[0], 0.0


def _choose(candidates, backtracking=True, g=None):
    trainer = _Trainer(backtracking)
    g = np.array([0.0, 0.0, 1.0]) if g is None else g
    choice = trainer.choose_direction(_result(candidates), g, np.zeros(3), op=lambda v: 2.0 * v)
    return choice, trainer.evaluated


def test_walk_back_stops_at_the_first_increase():
    # f along the walk from the last iterate back: 3.0 (it 11), 2.0 (9), 2.5 (7), 1.0 (5)
    values = {5: 1.0, 7: 2.5, 9: 2.0, 11: 3.0}
    choice, evaluated = _choose([_candidate(i, f) for i, f in values.items()])
    assert choice.direction.p[1] == 9 and choice.direction.objective == 2.0
    assert evaluated == [11, 9, 7] and choice.evaluations == 3  # 5 is never evaluated


def test_walk_back_goes_past_a_non_finite_value():
    values = {5: 1.0, 7: 2.5, 9: 2.0, 11: math.nan}
    choice, evaluated = _choose([_candidate(i, f) for i, f in values.items()])
    assert choice.direction.p[1] == 9 and evaluated == [11, 9, 7]


def test_without_backtracking_the_last_iterate_is_taken():
    choice, evaluated = _choose([_candidate(i, f) for i, f in {5: 1.0, 11: 3.0}.items()], backtracking=False)
    assert choice.direction.p[1] == 11 and evaluated == [11]


def test_a_candidate_that_is_not_downhill_is_never_taken():
    # the lowest objective belongs to uphill (gᵀp ≥ 0) candidates: they must be skipped
    candidates = [
        _candidate(11, -100.0, slope=0.0),
        _candidate(9, -50.0, slope=+2.0),
        _candidate(7, 2.0),
        _candidate(5, 1.0),
        _candidate(3, -70.0, slope=1.0, kind=CandidateKind.SEARCH_P),
    ]
    choice, evaluated = _choose(candidates)
    assert choice.direction.p[1] == 5 and 11 not in evaluated and 9 not in evaluated and 3 not in evaluated


def test_when_nothing_is_downhill_the_step_is_minus_g():
    g = np.array([0.0, 0.0, 1.0])
    candidates = [_candidate(11, -100.0, slope=0.5), _candidate(4, -9.0, slope=0.1, kind=CandidateKind.SEARCH_S)]
    choice, evaluated = _choose(candidates, g=g)
    assert evaluated == [] and choice.direction.kind == "gradient"
    np.testing.assert_array_equal(choice.direction.p, -g)
    assert choice.direction.slope < 0
