"""Krylov solvers on dense test systems: SPD convergence, SciPy agreement iteration by
iteration, indefinite systems, breakdowns, non-finite values, Hybrid's policy, configs."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hessfree.errors import ConfigError, InputError
from hessfree.methods import Method, next_curvature
from hessfree.solvers import (
    CG,
    BiCGStab,
    CandidateKind,
    Curvature,
    KrylovSolver,
    SolveResult,
    StopReason,
    martens_progress_stop,
    storage_schedule,
)

#: the solvers under test, by name (test-only: the method table chooses solvers)
SOLVERS = {"cg": CG, "bicgstab": BiCGStab}


def make_solver(name: str, **options) -> KrylovSolver:
    return SOLVERS[name](**options)

DTYPES = [np.float32, np.float64]


# ----------------------------------------------------------------------------- helpers
def spectrum_matrix(eigenvalues, dtype=np.float64, seed=0) -> np.ndarray:
    """Q·diag(λ)·Qᵀ with a random orthogonal Q (symmetric by construction)."""
    n = len(eigenvalues)
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    A = (Q * np.asarray(eigenvalues, dtype=np.float64)) @ Q.T
    return ((A + A.T) / 2).astype(dtype)


def spd(n, kappa, dtype=np.float64, seed=0):
    A = spectrum_matrix(np.logspace(0, math.log10(kappa), n), dtype, seed)
    b = np.random.default_rng(seed + 1).standard_normal(n).astype(dtype)
    return A, b


class Counting:
    """A matvec that counts its calls and can poison one of them."""

    def __init__(self, A, poison_at=None, value=np.nan):
        self.A, self.calls, self.poison_at, self.value = A, 0, poison_at, value

    def __call__(self, v):
        self.calls += 1
        out = self.A @ v
        if self.calls == self.poison_at:
            out[len(out) // 2] = self.value
        return out


def true_relative_residual(A, b, x) -> float:
    A64, b64 = A.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(b64 - A64 @ x.astype(np.float64)) / np.linalg.norm(b64))


def exact(**kw):
    """Solvers that run exactly k iterations (no residual or progress stop)."""
    return [CG(rtol=0.0, progress_tol=0.0, **kw), BiCGStab(rtol=0.0, progress_tol=0.0, **kw)]


# ----------------------------------------------------------------------------- SPD systems
@settings(max_examples=24)
@given(
    n=st.integers(2, 200),
    log_kappa=st.floats(0.0, 6.0),
    dtype=st.sampled_from(DTYPES),
    which=st.sampled_from(["cg", "bicgstab"]),
    seed=st.integers(0, 2**16),
)
def test_spd_solution_matches_numpy(n, log_kappa, dtype, which, seed):
    kappa = 10.0**log_kappa
    eps = float(np.finfo(dtype).eps)
    if which == "bicgstab" and dtype is np.float32:
        kappa = min(kappa, 1e4)  # eps·κ ≳ 1e-3: Bi-CG-STAB in float32 is not expected to converge
    A, b = spd(n, kappa, dtype, seed)
    rtol = 1e-8 if dtype is np.float64 else 1e-4
    solver = make_solver(which, rtol=rtol, progress_tol=0.0, max_iter=10 * n + 50)
    calls = Counting(A)
    result = solver.solve(calls, b)
    x_star = np.linalg.solve(A.astype(np.float64), b.astype(np.float64))

    assert result.x.dtype == dtype and np.isfinite(result.x).all()
    assert result.matvecs == calls.calls
    # the reported true residual is the real one (recomputed in the working precision)
    residual = true_relative_residual(A, b, result.x)
    assert result.true_residual_norm / result.rhs_norm == pytest.approx(residual, rel=0.05, abs=10 * eps * kappa)
    if result.reason is StopReason.CONVERGED:
        assert result.true_residual_norm <= rtol * result.rhs_norm
    if kappa <= 1e3 and eps * kappa <= 1e-2 * rtol:  # well inside what the dtype can resolve
        assert result.reason is StopReason.CONVERGED
    else:
        # past the dtype's attainable accuracy: an honest stop, no accuracy promise for
        # MAX_ITER / breakdown (CG that exhausts a tiny float32 space can even diverge, until
        # a product overflows: NON_FINITE, with the last finite iterate returned)
        assert result.reason in (StopReason.CONVERGED, StopReason.STAGNATED, StopReason.MAX_ITER, StopReason.BREAKDOWN_RHO,
                                 StopReason.NON_FINITE)
    if result.reason in (StopReason.CONVERGED, StopReason.STAGNATED):
        # forward error: κ times the attainable relative residual (rtol, or the dtype's floor)
        error = np.linalg.norm(result.x - x_star) / np.linalg.norm(x_star)
        assert error <= 5 * kappa * (rtol + eps * kappa)


@settings(max_examples=20)
@given(n=st.integers(2, 120), log_kappa=st.floats(0.0, 5.0), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 999))
@example(n=2, log_kappa=5.0, dtype=np.float32, seed=1)  # failed the old, float64-minded slack
def test_cg_model_value_decreases_monotonically(n, log_kappa, dtype, seed):
    kappa = 10.0**log_kappa
    A, b = spd(n, kappa, dtype, seed)
    result = CG(rtol=1e-6 if dtype is np.float64 else 1e-3, progress_tol=0.0, max_iter=3 * n + 10).solve(lambda v: A @ v, b)
    q = np.array(result.q_history)
    # monotone in exact arithmetic; in floating point, once the residual is down to the
    # attainable accuracy (~eps·κ relative: reached before rtol in float32 at κ ≳ 1e4) the
    # iterates wander by rounding, and q with them by up to ~eps·κ relative
    # (float32, n = 2, κ = 1e5: +6e-5 relative after CG had converged in two steps)
    slack = max(1e-5 if dtype is np.float32 else 1e-12, 10 * float(np.finfo(dtype).eps) * kappa)
    assert q[0] == 0.0 and q[-1] < 0.0
    assert (np.diff(q) <= slack * np.abs(q[1:])).all()
    assert result.q == pytest.approx(q[-1])
    # q(x) = ½xᵀAx − bᵀx of the returned x, recomputed
    x = result.x.astype(np.float64)
    assert result.q == pytest.approx(0.5 * x @ A.astype(np.float64) @ x - b.astype(np.float64) @ x, rel=1e-3)


@pytest.mark.parametrize("solver", [CG(), BiCGStab(), CG(true_residual=False), BiCGStab(true_residual=False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_warm_start_from_the_solution_stops_at_once(solver, dtype):
    A, b = spd(40, 100.0, dtype, seed=3)
    x_star = np.linalg.solve(A.astype(np.float64), b.astype(np.float64)).astype(dtype)
    calls = Counting(A)
    result = solver.solve(calls, b, x0=x_star)
    assert result.reason is StopReason.CONVERGED
    assert result.iterations == 0
    assert result.matvecs == calls.calls == 1  # r_0 = b − A·x_0, which is also the true residual
    np.testing.assert_array_equal(result.x, x_star)


@pytest.mark.parametrize("solver", exact(max_iter=12) + [CG(), BiCGStab()], ids=lambda s: repr(s))
@pytest.mark.parametrize("dtype", DTYPES)
def test_identity_preconditioner_gives_bitwise_the_same_iterates(solver, dtype):
    A, b = spd(30, 1e3, dtype, seed=5)
    plain = solver.solve(lambda v: A @ v, b)
    ones = solver.solve(lambda v: A @ v, b, precond=np.ones(30, dtype=dtype))
    assert plain.reason is ones.reason and plain.iterations == ones.iterations
    assert plain.q_history == ones.q_history
    assert len(plain.iterates) == len(ones.iterates) > 1
    for a, c in zip(plain.iterates, ones.iterates):
        assert a.iteration == c.iteration
        np.testing.assert_array_equal(a.x, c.x)


# ----------------------------------------------------------------------------- SciPy oracle
def scipy_iterates(method, A, b, k, x0=None, M=None) -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    method(A, b, x0=x0, rtol=0.0, atol=0.0, maxiter=k, M=M, callback=lambda x: seen.append(np.array(x)))
    return seen


@pytest.mark.parametrize("k", [1, 3, 10])
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("preconditioned", [False, True])
@pytest.mark.parametrize("name", ["cg", "bicgstab"])
def test_iterates_match_scipy(k, warm, preconditioned, name):
    A, b = spd(25, 1e4, np.float64, seed=7)
    rng = np.random.default_rng(11)
    x0 = rng.standard_normal(25) if warm else None
    d = rng.uniform(0.5, 2.0, 25)  # inverse diagonal of a positive preconditioner
    M = spla.LinearOperator((25, 25), matvec=lambda v: d * v.ravel()) if preconditioned else None
    method = spla.cg if name == "cg" else spla.bicgstab
    reference = scipy_iterates(method, A, b, k, x0=x0, M=M)
    assert len(reference) == k
    ours = make_solver(name, rtol=0.0, progress_tol=0.0, max_iter=k).solve(
        lambda v: A @ v, b, x0=x0, precond=d if preconditioned else None
    )
    assert ours.reason is StopReason.MAX_ITER and ours.iterations == k
    np.testing.assert_allclose(ours.x, reference[-1], rtol=1e-9, atol=1e-12 * np.linalg.norm(reference[-1]))
    # every stored iterate is SciPy's iterate at the same step
    for it in ours.iterates:
        if it.iteration > 0:
            np.testing.assert_allclose(it.x, reference[it.iteration - 1], rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- indefinite
def indefinite(n, n_negative, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    eigenvalues = np.concatenate([-rng.uniform(0.1, 3.0, n_negative), rng.uniform(0.1, 3.0, n - n_negative)])
    A = spectrum_matrix(eigenvalues, dtype, seed)
    return A, rng.standard_normal(n).astype(dtype)


@settings(max_examples=25)
@given(n=st.integers(2, 80), data=st.data(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 999))
def test_cg_stops_on_negative_curvature_with_a_real_direction(n, data, dtype, seed):
    A, b = indefinite(n, data.draw(st.integers(1, n - 1)) if n > 1 else 1, seed, dtype)
    result = CG(rtol=0.0, progress_tol=0.0, max_iter=4 * n).solve(lambda v: A @ v, b)
    assert result.reason is StopReason.NEGATIVE_CURVATURE
    nc = result.negative_curvature
    d = nc.direction.astype(np.float64)
    curvature = d @ A.astype(np.float64) @ d
    assert curvature < 0 and nc.curvature < 0
    assert nc.curvature == pytest.approx(curvature, rel=1e-3 if dtype is np.float32 else 1e-8)
    assert nc.rayleigh == pytest.approx(curvature / (d @ d), rel=1e-3)
    assert nc.rayleigh >= np.linalg.eigvalsh(A.astype(np.float64))[0] * (1 + 1e-4)  # Rayleigh bound
    assert b.astype(np.float64) @ d >= 0  # oriented downhill: gᵀd = −bᵀd ≤ 0
    assert nc.kind is CandidateKind.CG_DIRECTION and nc.iteration == result.iterations + 1
    assert np.isfinite(result.x).all()


@settings(max_examples=25)
@given(n=st.integers(2, 80), data=st.data(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 999))
def test_bicgstab_candidates_are_descent_directions(n, data, dtype, seed):
    A, b = indefinite(n, data.draw(st.integers(1, n - 1)) if n > 1 else 1, seed, dtype)
    result = BiCGStab(max_iter=30).solve(lambda v: A @ v, b)
    assert np.isfinite(result.x).all()
    assert result.candidates
    g = -b.astype(np.float64)
    A64 = A.astype(np.float64)
    tol = 1e-3 if dtype is np.float32 else 1e-7
    for c in result.candidates:
        d = c.direction.astype(np.float64)
        assert c.slope <= 0.0 and g @ d <= tol * np.linalg.norm(g) * np.linalg.norm(d)
        assert c.slope == pytest.approx(g @ d, rel=tol, abs=tol * np.linalg.norm(g) * np.linalg.norm(d))
        scale = tol * np.linalg.norm(A64, 2) * (d @ d)
        assert c.curvature == pytest.approx(d @ A64 @ d, rel=tol, abs=scale)
        if c.kind in (CandidateKind.SEARCH_P, CandidateKind.SEARCH_S):
            assert c.curvature < 0
    if result.negative_curvature is not None:
        assert result.negative_curvature.curvature < 0
        assert any(c.kind is not CandidateKind.ITERATE for c in result.candidates)


def test_bicgstab_keeps_going_through_negative_curvature():
    A, b = indefinite(40, 10, seed=1)
    result = BiCGStab(max_iter=200, rtol=1e-10).solve(lambda v: A @ v, b)
    assert result.negative_curvature is not None
    assert result.reason is StopReason.CONVERGED  # indefinite but nonsingular: it solves it
    np.testing.assert_allclose(result.x, np.linalg.solve(A, b), rtol=1e-6, atol=1e-8)
    kinds = {c.kind for c in result.candidates}
    assert CandidateKind.ITERATE in kinds and kinds & {CandidateKind.SEARCH_P, CandidateKind.SEARCH_S}
    assert len([c for c in result.candidates if c.kind is not CandidateKind.ITERATE]) <= 2


# ----------------------------------------------------------------------------- breakdowns
@pytest.mark.parametrize("solver", [CG(), BiCGStab(), CG(true_residual=False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rhs(solver, dtype):
    calls = Counting(np.eye(5, dtype=dtype))
    result = solver.solve(calls, np.zeros(5, dtype=dtype), x0=np.ones(5, dtype=dtype))
    assert result.reason is StopReason.ZERO_RHS
    assert result.matvecs == calls.calls == 0 and result.iterations == 0
    np.testing.assert_array_equal(result.x, np.zeros(5))
    assert result.x.dtype == dtype


def test_exact_solve_in_fewer_steps_than_n():
    # three distinct eigenvalues: the Krylov space has dimension 3, so CG is exact at step 3
    A = spectrum_matrix(np.repeat([1.0, 4.0, 9.0], 20), seed=2)
    b = np.random.default_rng(0).standard_normal(60)
    cg = CG(rtol=1e-10, progress_tol=0.0).solve(lambda v: A @ v, b)
    assert cg.reason is StopReason.CONVERGED and cg.iterations == 3
    assert cg.true_residual_norm <= 1e-10 * cg.rhs_norm
    bicg = BiCGStab(rtol=1e-10).solve(lambda v: A @ v, b)
    assert bicg.reason is StopReason.CONVERGED and bicg.iterations <= 3
    # A = 2I: Bi-CG-STAB is exact after the first half step (one matvec) and stops there
    calls = Counting(2.0 * np.eye(8))
    half = BiCGStab(true_residual=False).solve(calls, np.arange(1.0, 9.0))
    assert half.reason is StopReason.CONVERGED and half.iterations == 1 and half.matvecs == calls.calls == 1
    np.testing.assert_allclose(half.x, np.arange(1.0, 9.0) / 2)


def test_bicgstab_rho_breakdown():
    # r̂ᵀAp̂ = bᵀAb = 1 − 1 = 0 at the first step: α is undefined
    A = np.diag([1.0, -1.0])
    result = BiCGStab().solve(lambda v: A @ v, np.array([1.0, 1.0]))
    assert result.reason is StopReason.BREAKDOWN_RHO
    assert result.iterations == 0 and np.isfinite(result.x).all()
    assert result.negative_curvature is None  # p̂ᵀAp̂ = 0 is not negative


def test_bicgstab_omega_breakdown_keeps_the_half_step():
    # chosen so that α = 3 and s = (14, −10, −8) exactly, with sᵀAs = 0: t ⟂ s, ω = 0
    A = np.diag([-2.0, 2.0, 3.0])
    b = np.array([2.0, 2.0, 1.0])
    calls = Counting(A)
    result = BiCGStab(true_residual=False).solve(calls, b)
    assert result.reason is StopReason.BREAKDOWN_OMEGA
    assert result.iterations == 1 and result.matvecs == calls.calls == 2
    np.testing.assert_array_equal(result.x, 3.0 * b)  # x_0 + α·p̂ with p̂ = b
    assert result.residual_norms[-1] == pytest.approx(np.linalg.norm([14.0, -10.0, -8.0]))


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("poison_at", [1, 2, 5])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_matvec_returns_the_last_good_iterate(value, poison_at, dtype):
    A, b = spd(20, 100.0, dtype, seed=4)
    for solver, per_iteration in ((CG(true_residual=False), 1), (BiCGStab(true_residual=False), 2)):
        calls = Counting(A, poison_at=poison_at, value=value)
        result = solver.solve(calls, b)
        assert result.reason is StopReason.NON_FINITE
        assert result.matvecs == calls.calls == poison_at
        assert np.isfinite(result.x).all()
        good = (poison_at - 1) // per_iteration
        assert result.iterations == good
        if good == 0:
            np.testing.assert_array_equal(result.x, np.zeros(20))
        else:  # bitwise the iterate of a clean run stopped at the same step
            clean = attrs.evolve(solver, max_iter=good).solve(lambda v: A @ v, b)
            np.testing.assert_array_equal(result.x, clean.x)
        assert all(math.isfinite(q) for q in result.q_history)


def test_non_finite_at_the_warm_start_falls_back_to_zero():
    A, b = spd(6, 10.0)
    result = CG().solve(Counting(A, poison_at=1), b, x0=np.ones(6))
    assert result.reason is StopReason.NON_FINITE and result.iterations == 0
    np.testing.assert_array_equal(result.x, np.zeros(6))
    assert result.true_residual_norm == pytest.approx(np.linalg.norm(b))


@pytest.mark.parametrize("magnitude", [1e-30, 1e30])
@pytest.mark.parametrize("solver", [CG(rtol=1e-4), BiCGStab(rtol=1e-4)])
def test_extreme_float32_right_hand_sides(magnitude, solver):
    # bᵀb = 1e-60 underflows (1e60 overflows) in float32: the solvers rescale b exactly
    A, b = spd(30, 10.0, np.float32, seed=9)
    result = solver.solve(lambda v: A @ v, b * np.float32(magnitude))
    assert result.reason is StopReason.CONVERGED
    assert result.x.dtype == np.float32 and np.isfinite(result.x).all()
    unit = solver.solve(lambda v: A @ v, b)
    np.testing.assert_allclose(result.x.astype(np.float64), unit.x.astype(np.float64) * magnitude, rtol=1e-5)
    assert result.rhs_norm == pytest.approx(np.linalg.norm(b.astype(np.float64)) * magnitude, rel=1e-5)
    assert result.q == pytest.approx(unit.q * magnitude**2, rel=1e-4)


def test_power_of_two_rescaling_is_exact():
    A, b = spd(15, 50.0, seed=8)
    for solver in exact(max_iter=7):
        one = solver.solve(lambda v: A @ v, b)
        big = solver.solve(lambda v: A @ v, b * 2.0**40)
        np.testing.assert_array_equal(big.x, one.x * 2.0**40)


# ----------------------------------------------------------------------------- bookkeeping
def test_matvec_counts_are_exact():
    A, b = spd(20, 1e3, seed=6)
    x0 = np.ones(20)
    for solver, per_iteration in ((CG(rtol=0.0, progress_tol=0.0, max_iter=7), 1), (BiCGStab(rtol=0.0, max_iter=7), 2)):
        calls = Counting(A)
        result = solver.solve(calls, b, x0=x0)
        # one for r_0, per_iteration per step, one for the true residual at exit
        assert result.matvecs == calls.calls == 1 + 7 * per_iteration + 1
        calls = Counting(A)
        quiet = attrs.evolve(solver, true_residual=False).solve(calls, b)
        assert quiet.matvecs == calls.calls == 7 * per_iteration and quiet.true_residual_norm is None


def test_stored_iterates_follow_the_backtracking_schedule():
    A, b = spd(100, 1e5, seed=1)
    result = CG(rtol=0.0, progress_tol=0.0, max_iter=60).solve(lambda v: A @ v, b)
    assert [it.iteration for it in result.iterates] == [5, 7, 9, 11, 15, 19, 25, 32, 41, 54, 60]
    assert result.iterates[-1].x is result.x
    for it in result.iterates:
        assert it.q == result.q_history[it.iteration]
    assert sorted(storage_schedule(250)) == [5, 7, 9, 11, 15, 19, 25, 32, 41, 54, 69, 90, 117, 152, 197]
    assert sorted(storage_schedule(30, first=2, growth=2.0)) == [2, 4, 8, 16]


def test_martens_progress_stop():
    assert not martens_progress_stop([0.0] + [-1.0] * 10, 5e-4)  # i = 10 = k: too early
    assert martens_progress_stop([0.0] + [-1.0] * 11, 5e-4)  # no progress over the window
    assert not martens_progress_stop([0.0] + [-1.0] * 11, 0.0)  # switched off
    steady = [0.0] + [-float(i) for i in range(1, 30)]  # q keeps falling by 1 per step
    assert not martens_progress_stop(steady, 5e-4)
    assert not martens_progress_stop([0.0] + [1.0] * 20, 5e-4)  # q ≥ 0: never
    A, b = spd(200, 1e6, seed=2)
    result = CG(rtol=0.0, progress_tol=1e-2, max_iter=250).solve(lambda v: A @ v, b)
    assert result.reason is StopReason.PROGRESS
    assert martens_progress_stop(result.q_history, 1e-2) and not martens_progress_stop(result.q_history[:-1], 1e-2)


def test_results_and_configs_are_frozen_and_read_only():
    A, b = spd(5, 10.0)
    result = CG().solve(lambda v: A @ v, b)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.x = None
    with pytest.raises(ValueError):
        result.x[0] = 1.0
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        CG().max_iter = 3
    assert isinstance(result, SolveResult)


def test_solvers_keep_no_state_between_calls():
    A, b = spd(12, 100.0, seed=3)
    solver = BiCGStab(max_iter=9)
    first = solver.solve(lambda v: A @ v, b)
    solver.solve(lambda v: -A @ v, b + 1.0)
    again = solver.solve(lambda v: A @ v, b)
    np.testing.assert_array_equal(first.x, again.x)
    assert first.q_history == again.q_history


def test_injected_dot_is_used_for_every_inner_product():
    A, b = spd(10, 10.0, seed=4)
    seen = []

    def dot(u, v):
        seen.append(1)
        return np.dot(u, v)

    plain = CG(max_iter=5, rtol=0.0, progress_tol=0.0).solve(lambda v: A @ v, b)
    injected = CG(max_iter=5, rtol=0.0, progress_tol=0.0).solve(lambda v: A @ v, b, dot=dot)
    np.testing.assert_array_equal(plain.x, injected.x)
    assert len(seen) > 5 * 3


@pytest.mark.parametrize(
    "options",
    [
        {"max_iter": 0},
        {"max_iter": -3},
        {"max_iter": 2.5},
        {"max_iter": True},
        {"rtol": math.nan},
        {"rtol": math.inf},
        {"rtol": -1e-3},
        {"rtol": 1.0},
        {"progress_tol": math.nan},
        {"progress_tol": -1.0},
        {"store_first": 0},
        {"store_growth": 1.0},
        {"store_growth": math.inf},
        {"true_residual": "yes"},
        {"rtol": "tiny"},
    ],
)
@pytest.mark.parametrize("name", list(SOLVERS))
def test_invalid_configs_are_rejected(options, name):
    with pytest.raises(ConfigError):
        make_solver(name, **options)


def test_integer_options_accept_numpy_integers():
    assert CG(max_iter=np.int64(7)).max_iter == 7
    assert all(issubclass(cls, KrylovSolver) for cls in SOLVERS.values())


@pytest.mark.parametrize(
    "call",
    [
        lambda A, b: CG().solve("not callable", b),
        lambda A, b: CG().solve(lambda v: A @ v, b[:, None]),
        lambda A, b: CG().solve(lambda v: A @ v, b.astype(np.int64)),
        lambda A, b: CG().solve(lambda v: A @ v, np.where(np.arange(4) == 1, np.nan, b)),
        lambda A, b: CG().solve(lambda v: A @ v, b, x0=np.ones(3)),
        lambda A, b: CG().solve(lambda v: A @ v, b, precond=-np.ones(4)),
        lambda A, b: CG().solve(lambda v: (A @ v)[:3], b),
    ],
)
def test_bad_input_raises_input_error(call):
    A, b = spd(4, 10.0)
    with pytest.raises(InputError):
        call(A, b)


# ------------------------------------------------------------------ Hybrid's policy
def test_hybrid_policy_uses_gauss_newton_for_one_solve_after_negative_curvature():
    """Hybrid is CG plus a curvature policy decided before the solve (the method table)."""
    hybrid, hess = Method.HYBRID, Method.HESS_CG
    assert next_curvature(hybrid, None, False) is Curvature.EXACT  # first solve
    assert next_curvature(hybrid, Curvature.EXACT, False) is Curvature.EXACT
    assert next_curvature(hybrid, Curvature.EXACT, True) is Curvature.GAUSS_NEWTON
    # a Gauss-Newton solve that (numerically) met negative curvature does not chain
    assert next_curvature(hybrid, Curvature.GAUSS_NEWTON, True) is Curvature.EXACT
    assert next_curvature(hybrid, Curvature.GAUSS_NEWTON, False) is Curvature.EXACT
    assert next_curvature(hess, Curvature.EXACT, True) is Curvature.EXACT  # no policy
    assert next_curvature(Method.GN_CG, None, False) is Curvature.GAUSS_NEWTON
    assert hybrid.spec.solver is CG


def test_an_operator_reusing_its_output_buffer_is_safe():
    A, b = indefinite(12, 3, seed=5)
    buffer = np.empty(12)

    def into_buffer(v):
        np.matmul(A, v, out=buffer)
        return buffer

    for solver in exact(max_iter=8):
        np.testing.assert_array_equal(solver.solve(into_buffer, b).x, solver.solve(lambda v: A @ v, b).x)
