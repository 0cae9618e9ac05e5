"""Negative-curvature steps: lengths and choice on closed-form quadratics with known negative
eigenvalues, the curvilinear search on a function with a strict saddle, the damping floor,
the records, the paper's open choices (warm start source, init scale), and serial =
threads = MPI for the new options.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from hessfree.comm import SerialComm, run_threads
from hessfree.data.dataset import Dataset
from hessfree.solvers import CG
from hessfree.train import HessianFreeTrainer, TrainConfig, fit, make_run_config
from hessfree.train import negative
from hessfree.train.hf import make_solver
from hessfree.train.linesearch import sufficient_decrease
from hessfree.train.run import build
from mpi.launch import run_mpi
from _runs import fitted
from nc_cases import NC_CASES, RTOL, nc_config
from stub_rows import Rows


# ------------------------------------------------------------------ models with known curvature


class FunctionModel:
    """ℓᵢ(θ) = φ(θ − cᵢ) for a smooth φ with its gradient and Hessian, every sample alike up
    to the shift cᵢ (the rows of X): the objective is the mean, its Hessian the mean of
    φ''. Gauss-Newton products are not defined (exact-Hessian methods only)."""

    def __init__(self, phi, grad, hess, n_params: int, theta0):
        self.phi, self.grad, self.hess = phi, grad, hess
        self.n_params = n_params
        self.dtype = np.dtype(np.float64)
        self.layers = (n_params,)
        self.theta0 = np.asarray(theta0, dtype=np.float64)

    def init_params(self, seed) -> np.ndarray:
        return self.theta0.copy()

    def batch(self, X, y=None):
        return Rows(np.asarray(X), np.asarray(y))

    def _rows(self, X):
        return X.X if isinstance(X, Rows) else np.asarray(X)

    def loss_grad(self, theta, X, y=None):
        R = theta - self._rows(X)
        return float(sum(self.phi(r) for r in R)), np.sum([self.grad(r) for r in R], axis=0)

    def evaluate(self, theta, X, y=None):
        return self.loss_grad(theta, X)[0], 0

    def forward(self, theta, X, y=None, *, recycle=None):
        H = np.sum([self.hess(r) for r in theta - self._rows(X)], axis=0)

        class Cache:
            def hv(self, v):
                return H @ v

            gv = hv

        return Cache()


def quadratic(eigenvalues, theta0, n=20, seed=0):
    """½(θ − c)ᵀA(θ − c) with A = diag(eigenvalues) and zero-mean shifts: f = ½θᵀAθ + const."""
    A = np.diag(np.asarray(eigenvalues, dtype=float))
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, len(eigenvalues))) * 0.0  # every sample at c = 0: f(θ) = ½θᵀAθ exactly
    model = FunctionModel(lambda r: 0.5 * r @ A @ r, lambda r: A @ r, lambda r: A, len(eigenvalues), theta0)
    return model, Dataset("quadratic", X, np.zeros(n, dtype=np.int64), 1), A


def strict_saddle(theta0, n=10):
    """φ(x, y) = ½x² − ½y² + ¼y⁴: a strict saddle at 0 (Hessian diag(1, −1)), minima −¼ at (0, ±1)."""
    phi = lambda r: 0.5 * r[0] ** 2 - 0.5 * r[1] ** 2 + 0.25 * r[1] ** 4
    grad = lambda r: np.array([r[0], -r[1] + r[1] ** 3])
    hess = lambda r: np.diag([1.0, -1.0 + 3.0 * r[1] ** 2])
    X = np.zeros((n, 2))
    return FunctionModel(phi, grad, hess, 2, theta0), Dataset("saddle", X, np.zeros(n, dtype=np.int64), 1), phi


def train(model, data, **config):
    """(records, states) of an HF run on the whole data as the curvature batch."""
    config = TrainConfig(**{"batch_size": data.X_train.shape[0], **config})
    trainer = HessianFreeTrainer(model, data, config, SerialComm())
    steps = list(trainer.run(trainer.initial_state(), config.iterations))
    return [r for _, r in steps], [s for s, _ in steps]


# ------------------------------------------------------------------ the rules' arithmetic
def test_cubic_length_is_the_cubic_models_minimiser():
    assert negative.cubic_length(-0.5, 0.0, 1.0) == pytest.approx(1.0)  # 2κ|R| for gᵀu = 0
    assert negative.cubic_length(-0.5, 0.0, 3.0) == pytest.approx(3.0)
    rng = np.random.default_rng(1)
    for _ in range(50):
        R, g, k = -rng.uniform(1e-3, 5), -rng.uniform(0, 5), rng.uniform(1e-2, 1e2)
        t = negative.cubic_length(R, g, k)
        assert t > 0
        assert g + t * R + t * t / (2 * k) == pytest.approx(0.0, abs=1e-9 * (1 + abs(g) + t * abs(R)))  # m'(t*) = 0
        assert R + t / k > 0  # a minimum: m''(t*) > 0
    with pytest.raises(ValueError):
        negative.cubic_length(0.1, 0.0, 1.0)


def test_choice_and_scale_rules():
    assert negative.prefer_negative_curvature(None, -1e-9)
    assert negative.prefer_negative_curvature(-1.0, -2.0) and not negative.prefer_negative_curvature(-2.0, -1.0)
    assert negative.cubic_change(-1.0, -2.0, 1.0, 1.0) == pytest.approx(-1.0 - 1.0 + 1.0 / 6.0)
    assert negative.curvilinear_change(0.5, -1.0, -2.0) == pytest.approx(0.25 * (-1.0 - 1.0))
    # secant: κ̂ = ‖s‖³/(6ε), geometric mean with κ; f below the model doubles κ
    assert negative.secant_scale(1.0, 2.0, 8.0 / 6.0 / 4.0) == pytest.approx(2.0)
    assert negative.secant_scale(1.0, 1.0, -1e-3) == 2.0
    assert negative.secant_scale(3.0, math.nan, 1.0) == 3.0
    assert negative.secant_scale(1.0, 1e6, 1e-300) == pytest.approx(math.sqrt(negative.SCALE_MAX))  # κ̂ clipped, then the mean
    # the indefinite damping floor
    assert negative.damping_floor(0.1, -2.0, 1e8) == pytest.approx(3.0)
    assert negative.damping_floor(5.0, -2.0, 1e8) == 5.0
    assert negative.damping_floor(0.1, math.nan, 1e8) == 0.1 and negative.damping_floor(0.1, 0.5, 1e8) == 0.1
    assert negative.damping_floor(0.1, -2.0, 1.0) == 1.0


def test_forward_and_backward_tracking():
    # f(α) = −α² + α⁴/400: the condition with the model −α² (c = 0.5) holds up to α ≈ 14
    f = lambda a: (-(a**2) + a**4 / 400.0, a)
    up = sufficient_decrease(f, 0.0, lambda a: -(a**2), c=0.5, shrink=0.5, max_trials=20, grow=2.0, max_forward=10)
    assert up.alpha == 8.0 and up.trials == 5  # 1, 2, 4, 8 pass; 16 fails the condition
    assert up.value == f(8.0)[0] and up.extra == 8.0
    # f increasing at α = 1: backtrack
    g = lambda a: (-a + 2 * a**2, a)
    down = sufficient_decrease(g, 0.0, lambda a: -a, c=0.1, shrink=0.5, max_trials=20, grow=2.0, max_forward=10)
    assert down.alpha == 0.25 and down.trials == 3
    # forward tracking stops when f stops decreasing, even if the condition still holds
    h = lambda a: (-1.0 if a <= 2 else -0.9, a)
    flat = sufficient_decrease(h, 0.0, lambda a: -0.01 * a, c=0.1, shrink=0.5, max_trials=5, grow=2.0, max_forward=10)
    assert flat.alpha == 1.0 and flat.trials == 2  # f(2) = f(1): no decrease, keep α = 1
    never = sufficient_decrease(lambda a: (math.nan, None), 0.0, lambda a: -a, c=0.1, shrink=0.5, max_trials=4)
    assert not never.accepted and never.trials == 4


# ------------------------------------------------------------------ closed-form quadratics
def test_negative_curvature_step_on_a_quadratic_with_a_known_negative_eigenvalue():
    """f = ½θᵀAθ, A = diag(4, 1, −1), from θ₀ nearly at the saddle, damping λ = 2: CG solves
    the positive-definite B = A + 2I through (3 steps), its Ritz values are A's, and the
    step is the Ritz vector of −1 (the eigenvector e₃), turned downhill, with the cubic
    model's length; it wins over the Newton-type candidate."""
    theta0 = np.array([1e-3, 1e-3, 1e-3])
    model, data, A = quadratic([4.0, 1.0, -1.0], theta0)
    (r,), (state,) = train(model, data, method="hess-cg", negative_curvature="scaled", iterations=1, damping=2.0)
    assert r.direction == "negative_curvature" and r.choice == "nc_predicted" and r.accepted
    assert r.ritz_min == pytest.approx(-1.0, abs=1e-9) and r.ritz_max == pytest.approx(4.0, abs=1e-9)
    assert r.step_rayleigh == pytest.approx(-1.0, abs=1e-9) and r.min_rayleigh == pytest.approx(-1.0, abs=1e-9)
    assert r.candidate == "ritz_vector"
    # the step: α·t*·u with u = ±e₃ downhill (gᵀu < 0) and t* the cubic model's length for κ = 1
    step = state.theta - theta0
    u = step / np.linalg.norm(step)
    assert abs(u[2]) == pytest.approx(1.0, abs=1e-9)
    g = A @ theta0
    assert g @ u < 0
    t = negative.cubic_length(-1.0, float(g @ u), 1.0)
    assert np.linalg.norm(step) == pytest.approx(r.step_size * t, rel=1e-9)
    assert r.step_curvature == pytest.approx(-(t**2), rel=1e-9)  # t²·R
    assert r.step_size > 1  # forward tracking: f = ½θᵀAθ is unbounded below along e₃
    assert r.loss < 0.5 * theta0 @ A @ theta0
    assert r.damping == 2.0 and state.damping == 2.0  # λ is not moved by a negative-curvature step
    assert r.stop_reason == "converged" and r.cg_iterations == 3
    assert state.nc_scale == pytest.approx(r.step_size)  # κ ← κ·α


def test_the_newton_step_wins_when_the_negative_curvature_is_weak():
    theta0 = np.array([1.0, 1.0, 1e-3])
    model, data, A = quadratic([4.0, 1.0, -1e-3], theta0)
    (r,), _ = train(model, data, method="hess-cg", negative_curvature="scaled", iterations=1, damping=0.1)
    assert r.ritz_min < 0  # negative curvature was met ...
    assert r.direction == "iterate" and r.choice == "newton_predicted" and r.step_curvature > 0  # ... and not taken
    off, _ = train(model, data, method="hess-cg", iterations=1, damping=0.1)
    assert r.loss == off[0].loss  # the same step as without the rule


def test_off_is_the_paper_rule_and_never_scales():
    theta0 = np.array([1e-3, 1e-3, 1e-3])
    model, data, _ = quadratic([4.0, 1.0, -1.0], theta0)
    (r,), _ = train(model, data, method="bicgstab", iterations=1, damping=0.1, cg_max_iter=5)
    assert r.direction in ("iterate", "negative_curvature") and r.choice in ("walk_back", "no_descent_iterate")
    assert math.isnan(r.nc_scale) or r.nc_scale == 1.0


# ------------------------------------------------------------------ a strict saddle
def test_curvilinear_search_leaves_a_strict_saddle():
    """φ = ½x² − ½y² + ¼y⁴ from (1, 10⁻³): the gradient barely points away from the saddle's
    stable manifold, so a Newton step (x → 0) lands next to the saddle; the curvilinear
    path θ + α²s + αd also moves along the negative-curvature direction e₂."""
    model, data, phi = strict_saddle([1.0, 1e-3])
    records, _ = train(model, data, method="hess-cg", negative_curvature="curvilinear", iterations=6, damping=0.5)
    first = records[0]
    assert first.direction == "curvilinear" and first.accepted and first.choice == "curvilinear"
    assert first.step_rayleigh == pytest.approx(-1.0 + 3e-6 - 0.0, abs=1e-3)
    f0 = phi(np.array([1.0, 1e-3]))
    assert first.loss < f0  # and the Moré–Sorensen condition holds (checked in the search)
    assert records[-1].loss < -0.2  # near the minimum −¼
    off, _ = train(model, data, method="hess-cg", iterations=6, damping=0.5)
    assert off[-1].loss > -0.01  # Newton-type steps alone stay near the saddle value 0
    scaled, _ = train(model, data, method="hess-cg", negative_curvature="scaled", iterations=6, damping=0.5)
    assert scaled[-1].loss < -0.2 and any(r.direction == "negative_curvature" for r in scaled)


def test_curvilinear_condition_by_hand():
    """One curvilinear search at (1, 0) with s = (−1, 0), d = (0, 2) (R = −1, gᵀd = 0, κ = 1:
    t* = 2): α = 1 fails, α = 0.8 passes f ≤ f₀ + c·α²·(gᵀs + ½dᵀHd)."""
    phi = lambda t: 0.5 * t[0] ** 2 - 0.5 * t[1] ** 2 + 0.25 * t[1] ** 4
    theta, s, d = np.array([1.0, 0.0]), np.array([-1.0, 0.0]), np.array([0.0, 2.0])
    assert negative.cubic_length(-1.0, 0.0, 1.0) == 2.0
    f0 = phi(theta)
    ls = sufficient_decrease(lambda a: (phi(theta + a * a * s + a * d), None), f0,
                             lambda a: negative.curvilinear_change(a, -1.0, -4.0), c=0.01, shrink=0.8, max_trials=60)
    assert ls.alpha == pytest.approx(0.8) and ls.trials == 2
    assert ls.value <= f0 + 0.01 * 0.64 * (-1.0 - 2.0)


# ------------------------------------------------------------------ damping, records, options
def test_indefinite_damping_shifts_past_the_curvature_of_the_previous_solve():
    """φ = ½x² − ½y² + ¼y⁴ at (1, 0.3): the Hessian diag(1, −0.73) is indefinite. With λ = 2
    the first solve is positive definite and its Ritz values are the Hessian's; the next
    solve's λ is then ≥ 1.5·0.73, whatever the Levenberg–Marquardt λ says."""
    model, data, _ = strict_saddle([1.0, 0.3])
    records, _ = train(model, data, method="hess-cg", negative_curvature="scaled", damping_rule="indefinite",
                       iterations=4, damping=2.0, damping_min=1e-8)
    assert records[0].solve_damping == 2.0  # nothing seen yet
    assert records[0].ritz_min == pytest.approx(-1.0 + 3 * 0.09, abs=1e-9)
    for before, after in zip(records, records[1:]):
        floor = min(v for v in (before.min_rayleigh, before.ritz_min) if not math.isnan(v))
        expected = max(after.damping, 1.5 * -floor) if floor < 0 else after.damping
        assert after.solve_damping == pytest.approx(expected)
    lm, _ = train(model, data, method="hess-cg", negative_curvature="scaled", iterations=4, damping=2.0)
    assert all(r.solve_damping == r.damping for r in lm)


def test_make_solver_keeps_ritz_vectors_only_when_used():
    assert make_solver(TrainConfig(method="hess-cg")) == CG(max_iter=250, rtol=1e-8, progress_tol=5e-4, true_residual=False)
    solver = make_solver(TrainConfig(method="hess-cg", negative_curvature="scaled"))
    assert solver.keep_lowest and solver.ritz_vectors > 0
    assert make_solver(TrainConfig(method="gn-cg", damping_rule="indefinite")).ritz_vectors > 0
    assert TrainConfig(method="newton-mr").nc_rule.value == "scaled" and TrainConfig(method="bicgstab").nc_rule.value == "off"


def test_records_name_the_step_and_its_curvature(tmp_path):
    path = tmp_path / "m.jsonl"
    config = make_run_config(dict(method="bicgstab", hidden="12", iterations=3, seed=1, batch_size=300, cg_max_iter=10,
                                  metrics=str(path), quiet=True))
    from hessfree.train.run import run

    run(config)
    lines = [json.loads(l) for l in path.read_text().splitlines() if '"iteration"' in l and '"kind": "iteration"' in l]
    assert len(lines) == 3
    for r in lines:
        for key in ("direction", "candidate", "flipped", "choice", "step_curvature", "step_rayleigh", "min_rayleigh",
                    "ritz_min", "ritz_max", "solve_damping", "nc_scale"):
            assert key in r
        assert r["direction"] in ("iterate", "negative_curvature", "curvilinear", "gradient")
        assert r["ritz_min"] is None  # Bi-CG-STAB: no Lanczos tridiagonal
        assert r["solve_damping"] == r["damping"]


def test_digits_with_small_weights_takes_negative_curvature_steps_with_no_extra_collectives():
    """A deep narrow tanh net started near its saddle: bicgstab with the rule and newton-mr
    take negative-curvature steps; every collective is still one product or one trial."""
    for method, extra in (("bicgstab", {"negative_curvature": "scaled"}), ("newton-mr", {}), ("hess-cg", {"negative_curvature": "curvilinear"})):
        records, _, _ = _run(nc_config(method, **extra))
        kinds = {r.direction for r in records}
        assert kinds & {"negative_curvature", "curvilinear"}, (method, kinds)
        nc = [r for r in records if r.direction in ("negative_curvature", "curvilinear")]
        assert all(r.step_curvature < 0 for r in nc)
        previous = {"curvature": 0, "line_search": 0}
        for r in records:
            phases = {p: r.comm_phases[p].collectives for p in previous}
            assert phases["curvature"] - previous["curvature"] == r.curvature_products
            assert phases["line_search"] - previous["line_search"] == r.line_search_evals
            previous = phases


_run = fitted


def test_warm_start_source_and_init_scale():
    # with CG-backtracking, so that the direction taken can differ from the last iterate
    data_config = dict(method="gn-cg", hidden="12", iterations=2, seed=2, batch_size=300, cg_max_iter=10, quiet=True,
                       backtracking=True)
    base, _, _ = _run(data_config)
    same, _, _ = _run({**data_config, "warm_start_source": "iterate"})
    assert [r.loss for r in base] == [r.loss for r in same]
    zero, _, _ = _run({**data_config, "warm_start_source": "zero"})
    assert all(r.curvature_products == r.cg_iterations for r in zero)  # no warm-start product
    direction, _, _ = _run({**data_config, "warm_start_source": "direction"})
    assert direction[0].loss == base[0].loss and direction[1].loss != base[1].loss
    run_config = make_run_config({**data_config, "init_scale": 0.1})
    data, model = build(run_config, SerialComm())
    trainer = HessianFreeTrainer(model, data, run_config.train)
    np.testing.assert_array_equal(trainer.initial_state().theta, 0.1 * model.init_params(2))
    plain = HessianFreeTrainer(model, data, make_run_config(data_config).train).initial_state().theta
    np.testing.assert_array_equal(plain, model.init_params(2))


# ------------------------------------------------------------------ serial = threads = MPI
@pytest.fixture(scope="module")
def serial_nc():
    return {name: _run(config)[0] for name, config in NC_CASES.items()}


@pytest.mark.parametrize("name", list(NC_CASES))
def test_threads_give_the_serial_trajectory(serial_nc, name):
    per_rank = run_threads(lambda comm: _run(NC_CASES[name], comm)[0], 2)
    expected = serial_nc[name]
    for records in per_rank:
        assert [r.loss for r in records] == pytest.approx([r.loss for r in expected], rel=RTOL)
        assert [r.direction for r in records] == [r.direction for r in expected]
    assert [r.loss for r in per_rank[0]] == [r.loss for r in per_rank[1]]  # bitwise across ranks


def test_mpi_gives_the_serial_trajectory(serial_nc, tmp_path):
    run = run_mpi(2, "train_nc.py", str(tmp_path), limit=300)
    assert run.returncode == 0, run.output[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for name, expected in serial_nc.items():
        for result in ranks:
            assert [r["loss"] for r in result[name]] == pytest.approx([r.loss for r in expected], rel=RTOL), name
            assert [r["direction"] for r in result[name]] == [r.direction for r in expected], name
        assert [r["loss"] for r in ranks[0][name]] == [r["loss"] for r in ranks[1][name]]


def test_resume_continues_a_negative_curvature_run_bitwise(tmp_path):
    """κ, the curvature floor and the warm start live in the checkpoint: a resumed run is
    the uninterrupted one."""
    from hessfree.train import Callback, Checkpointing

    class StopAt(Callback):
        def on_iteration(self, record, state):
            return state.iteration == 3

    config = make_run_config(nc_config("hess-cg", negative_curvature="scaled", damping_rule="indefinite",
                                       warm_start_source="direction", iterations=6))
    data, model = build(config, SerialComm())
    whole = fit(model, data, config.train, warm_up=False)
    saves = Checkpointing(directory=tmp_path)
    first = fit(model, data, config.train, warm_up=False, callbacks=[StopAt()], checkpoints=saves)
    assert first.state.iteration == 3 and first.state.nc_scale != 1.0
    rest = fit(model, data, config.train, warm_up=False, checkpoints=saves, resume=True)
    assert [r.loss for r in first.history + rest.history] == [r.loss for r in whole.history]
    assert [r.direction for r in first.history + rest.history] == [r.direction for r in whole.history]
    np.testing.assert_array_equal(rest.state.theta, whole.state.theta)
    assert rest.state.nc_scale == whole.state.nc_scale


def test_the_nc_experiment_compares_every_hf_method_and_counts_the_steps():
    from hessfree.experiments.builtin import BUILTIN
    from hessfree.experiments.report import steps_table
    from hessfree.experiments.runner import step_counts
    from hessfree.methods import Method

    experiment = BUILTIN["nc"]
    methods = {plan.method for plan in experiment.methods}
    assert methods == {m for m in Method if m.is_hessian_free}
    rules = {(plan.method, plan.fixed.get("negative_curvature")) for plan in experiment.methods}
    assert (Method.BICGSTAB, "scaled") in rules and (Method.BICGSTAB, "curvilinear") in rules
    quick = experiment.quick_form()
    assert quick.overrides["iterations"] < experiment.base["iterations"] and len(quick.seeds) == 2
    records = [dict(direction="iterate", min_rayleigh=0.1, ritz_min=-0.2), dict(direction="negative_curvature", min_rayleigh=-1.0),
               dict(direction="curvilinear", min_rayleigh=None, ritz_min=None), dict(direction="iterate", flipped=True, min_rayleigh=0.3)]
    counts = step_counts(records)
    assert counts == dict(iterations=4, kinds={"iterate": 2, "negative_curvature": 1, "curvilinear": 1},
                          negative_curvature=2, indefinite=2, flipped=1)
    table = steps_table(dict(runs=[dict(phase="report", method="m", steps=counts)]))
    assert "| m | 4 [4–4] | 2 [2–2] | 2 [2–2] | 1 [1–1] |" in table
