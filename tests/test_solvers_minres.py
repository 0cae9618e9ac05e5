"""MINRES with non-positive-curvature detection, on dense test systems: agreement with SciPy
iteration by iteration and with numpy's solutions, the NPC certificate, the descent
properties of the iterates, singular systems, stop reasons, rescaling, dtypes, dot layouts."""

from __future__ import annotations

import itertools
import math

import attrs
import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.errors import ConfigError, InputError
from hessfree.solvers.base import CandidateKind, KrylovSolver, SolveResult, StopReason, martens_progress_stop
from hessfree.solvers.minres import MINRES, NPC_KIND, MinresResult, tridiagonal_extremes

DTYPES = [np.float32, np.float64]
EPS = {np.float32: float(np.finfo(np.float32).eps), np.float64: float(np.finfo(np.float64).eps)}


# ----------------------------------------------------------------------------- helpers
def orthogonal(n, seed) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))[0]


def spectrum_matrix(eigenvalues, dtype=np.float64, seed=0) -> np.ndarray:
    """Q·diag(λ)·Qᵀ with a random orthogonal Q (symmetric by construction)."""
    Q = orthogonal(len(eigenvalues), seed)
    A = (Q * np.asarray(eigenvalues, dtype=np.float64)) @ Q.T
    return ((A + A.T) / 2).astype(dtype)


def spd(n, kappa, dtype=np.float64, seed=0):
    A = spectrum_matrix(np.logspace(0, math.log10(kappa), n), dtype, seed)
    return A, np.random.default_rng(seed + 1).standard_normal(n).astype(dtype)


def indefinite(n, n_negative, seed, dtype=np.float64, low=0.1):
    rng = np.random.default_rng(seed)
    eigenvalues = np.concatenate([-rng.uniform(low, 3.0, n_negative), rng.uniform(low, 3.0, n - n_negative)])
    return spectrum_matrix(eigenvalues, dtype, seed), rng.standard_normal(n).astype(dtype)


def singular(n, n_zero, n_negative, seed):
    """A symmetric A with an n_zero-dimensional null space, and an orthonormal basis N of it."""
    rng = np.random.default_rng(seed)
    eigenvalues = np.concatenate(
        [np.zeros(n_zero), -rng.uniform(0.2, 3.0, n_negative), rng.uniform(0.2, 3.0, n - n_zero - n_negative)]
    )
    Q = orthogonal(n, seed)
    A = (Q * eigenvalues) @ Q.T
    return (A + A.T) / 2, Q[:, :n_zero]


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


def f64(v) -> np.ndarray:
    return np.asarray(v, dtype=np.float64)


def true_relative_residual(A, b, x) -> float:
    return float(np.linalg.norm(f64(b) - f64(A) @ f64(x)) / np.linalg.norm(f64(b)))


def every_iterate(**kw) -> MINRES:
    """A MINRES that keeps every iterate (the schedule ⌈1.01ʲ⌉ covers 1, 2, 3, …)."""
    return MINRES(store_first=1, store_growth=1.01, **kw)


def scipy_iterates(A, b, k, x0=None, M=None) -> list[np.ndarray]:
    seen: list[np.ndarray] = []
    spla.minres(A, b, x0=x0, rtol=0.0, maxiter=k, M=M, callback=lambda x: seen.append(np.array(x)))
    return seen


# ----------------------------------------------------------------------------- SciPy oracle
@pytest.mark.parametrize("k", [1, 2, 3, 8])
@pytest.mark.parametrize("warm", [False, True])
@pytest.mark.parametrize("preconditioned", [False, True])
@pytest.mark.parametrize("kind", ["spd", "indefinite"])
def test_iterates_match_scipy(k, warm, preconditioned, kind):
    n = 25
    if kind == "spd":
        A, b = spd(n, 1e3, seed=7)
        solver = every_iterate(rtol=0.0, max_iter=k)  # NPC detection on: cannot trigger on SPD A
    else:
        A = spectrum_matrix(np.concatenate([-np.logspace(0, 2, 8), np.logspace(0, 2, n - 8)]), seed=7)
        b = np.random.default_rng(8).standard_normal(n)
        solver = every_iterate(rtol=0.0, max_iter=k, detect_npc=False)
    rng = np.random.default_rng(11)
    x0 = rng.standard_normal(n) if warm else None
    d = rng.uniform(0.5, 2.0, n)  # inverse diagonal of a positive preconditioner
    M = spla.LinearOperator((n, n), matvec=lambda v: d * v.ravel()) if preconditioned else None
    reference = scipy_iterates(A, b, k, x0=x0, M=M)
    assert len(reference) == k
    ours = solver.solve(lambda v: A @ v, b, x0=x0, precond=d if preconditioned else None)
    assert ours.reason is StopReason.MAX_ITER and ours.iterations == k
    assert [it.iteration for it in ours.iterates] == list(range(1, k + 1))
    for it in ours.iterates:  # every iterate is SciPy's iterate at the same step
        ref = reference[it.iteration - 1]
        np.testing.assert_allclose(it.x, ref, rtol=1e-9, atol=1e-11 * np.linalg.norm(ref))
    assert len(ours.lanczos_alpha) == k and len(ours.lanczos_beta) == k - 1


@settings(max_examples=20, deadline=None)
@given(n=st.integers(3, 40), k=st.integers(1, 6), negative=st.booleans(), seed=st.integers(0, 999))
def test_iterates_match_scipy_on_random_systems(n, k, negative, seed):
    # few steps: before the Lanczos vectors lose orthogonality, when two correct
    # implementations can drift apart by much more than rounding
    A, b = indefinite(n, n // 3 if negative else 0, seed)
    k = min(k, n)
    reference = scipy_iterates(A, b, k)
    if len(reference) < k:
        return  # SciPy stopped on its own tests (an exact solve)
    ours = every_iterate(rtol=0.0, max_iter=k, detect_npc=False).solve(lambda v: A @ v, b)
    for it in ours.iterates:
        ref = reference[it.iteration - 1]
        np.testing.assert_allclose(it.x, ref, rtol=1e-8, atol=1e-10 * np.linalg.norm(ref))


# ----------------------------------------------------------------------------- numpy oracle
@settings(max_examples=24, deadline=None)
@given(
    n=st.integers(2, 120),
    log_kappa=st.floats(0.0, 5.0),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_spd_solution_matches_numpy(n, log_kappa, dtype, seed):
    kappa = 10.0**log_kappa
    if dtype is np.float32:
        kappa = min(kappa, 1e3)  # MINRES' attainable accuracy degrades like eps·κ²
    eps = EPS[dtype]
    A, b = spd(n, kappa, dtype, seed)
    rtol = 1e-8 if dtype is np.float64 else 1e-4
    calls = Counting(A)
    result = MINRES(rtol=rtol, max_iter=10 * n + 50).solve(calls, b)
    x_star = np.linalg.solve(f64(A), f64(b))

    assert isinstance(result, MinresResult) and result.solver == "minres"
    assert result.x.dtype == dtype and np.isfinite(result.x).all()
    assert result.matvecs == calls.calls
    assert result.negative_curvature is None  # positive definite: ρ > 0 always
    residual = true_relative_residual(A, b, result.x)
    assert result.true_residual_norm / result.rhs_norm == pytest.approx(residual, rel=0.05, abs=10 * eps * kappa)
    if result.reason is StopReason.CONVERGED:
        assert result.true_residual_norm <= rtol * result.rhs_norm
        error = np.linalg.norm(result.x - x_star) / np.linalg.norm(x_star)
        assert error <= 5 * kappa * (rtol + eps * kappa)
    if kappa <= 1e3 and eps * kappa <= 1e-2 * rtol:  # well inside what the dtype can resolve
        assert result.reason is StopReason.CONVERGED
    else:
        assert result.reason in (StopReason.CONVERGED, StopReason.STAGNATED, StopReason.MAX_ITER)
    # Ritz values of T_k interlace A's spectrum [1, κ]
    assert 1.0 - 1e-3 <= result.ritz_min <= result.ritz_max <= kappa * (1 + 1e-3)


@settings(max_examples=24, deadline=None)
@given(n=st.integers(2, 100), data=st.data(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_indefinite_solution_matches_numpy(n, data, dtype, seed):
    A, b = indefinite(n, data.draw(st.integers(0, n)), seed, dtype)
    rtol = 1e-9 if dtype is np.float64 else 1e-4
    result = MINRES(rtol=rtol, max_iter=10 * n + 50, detect_npc=False).solve(lambda v: A @ v, b)
    assert result.reason is StopReason.CONVERGED  # |λ| ∈ [0.1, 3]: κ ≤ 30
    assert result.true_residual_norm <= rtol * result.rhs_norm
    x_star = np.linalg.solve(f64(A), f64(b))
    np.testing.assert_allclose(result.x, x_star, rtol=0, atol=300 * rtol * np.linalg.norm(x_star))
    assert result.negative_curvature is None  # detection off


def test_exact_solve_in_fewer_steps_than_n():
    # three distinct eigenvalues (one negative): the Krylov space has dimension 3
    A = spectrum_matrix(np.repeat([-1.0, 4.0, 9.0], 20), seed=2)
    b = np.random.default_rng(0).standard_normal(60)
    result = MINRES(rtol=1e-10, detect_npc=False).solve(lambda v: A @ v, b)
    assert result.reason is StopReason.CONVERGED and result.iterations == 3
    np.testing.assert_allclose(result.x, np.linalg.solve(A, b), rtol=1e-8)
    np.testing.assert_allclose(result.ritz_values(), [-1.0, 4.0, 9.0], rtol=1e-8)


def test_lanczos_breakdown_is_an_exact_solve():
    # b = e_1 and A = 2I: β_2 = 0 exactly, the Krylov space is invariant after one step
    b = np.zeros(6)
    b[0] = 1.0
    calls = Counting(2.0 * np.eye(6))
    result = MINRES().solve(calls, b)
    assert result.reason is StopReason.CONVERGED and result.iterations == 1
    assert result.matvecs == calls.calls == 2  # the step and the confirming true residual
    np.testing.assert_array_equal(result.x, b / 2)
    assert result.lanczos_alpha == (2.0,) and result.lanczos_beta == ()
    assert result.ritz_min == result.ritz_max == pytest.approx(2.0)
    quiet = MINRES(true_residual=False).solve(lambda v: 2.0 * v, b)
    assert quiet.reason is StopReason.CONVERGED and quiet.matvecs == 1


# ----------------------------------------------------------------------------- monotonicity and descent
@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 100),
    log_kappa=st.floats(0.0, 4.0),
    negative_fraction=st.sampled_from([0.0, 0.3]),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_residual_norms_do_not_increase(n, log_kappa, negative_fraction, dtype, seed):
    rng = np.random.default_rng(seed)
    signs = np.where(rng.random(n) < negative_fraction, -1.0, 1.0)
    A = spectrum_matrix(signs * np.logspace(0, log_kappa, n), dtype, seed)
    b = rng.standard_normal(n).astype(dtype)
    # no true-residual replacement (which may raise the reported residual to the truth)
    result = MINRES(rtol=0.0, max_iter=3 * n, detect_npc=False, true_residual=False).solve(lambda v: A @ v, b)
    norms = np.array(result.residual_norms)
    assert np.isfinite(norms).all() and norms[0] == pytest.approx(np.linalg.norm(f64(b)), rel=1e-6)
    # up to the rounding of a norm computed in the working precision (plateaus: s_k ≈ 1),
    # and far below the attainable accuracy (eps²·‖b‖), where the recursive residual is noise
    eps = EPS[dtype]
    assert (np.diff(norms) <= 10 * eps * (norms[:-1] + eps * norms[0])).all()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 90), data=st.data(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_iterates_are_descent_directions_before_npc(n, data, dtype, seed):
    # Proved in the module docstring (CR form, x_0 = 0): while ρ_0..ρ_{k−1} > 0,
    # gᵀx_k = −Σ e_j‖r_j‖² < gᵀx_{k−1} < 0 and x_kᵀAx_k > 0, for ANY symmetric A.
    A, b = indefinite(n, data.draw(st.integers(0, n)), seed, dtype, low=0.01)
    result = every_iterate(rtol=0.0, max_iter=3 * n + 5).solve(lambda v: A @ v, b)
    A64, g = f64(A), -f64(b)
    # near convergence the exact increments fall below the rounding of x (and of q)
    tol = math.sqrt(EPS[dtype])
    slopes = []
    for it in result.iterates:
        if it.iteration == 0:
            continue
        x = f64(it.x)
        slope, curvature = g @ x, x @ A64 @ x
        assert slope < 0 and curvature > 0
        slopes.append(slope)
    assert all(s2 <= s1 + tol * abs(s1) for s1, s2 in itertools.pairwise(slopes))  # −gᵀx_k grows
    q = np.array(result.q_history)  # observed (proved for SPD): q decreases before NPC
    assert (np.diff(q) <= tol * np.abs(q[1:]) + 1e-30).all()
    # the candidates are the stored iterates, unflipped (already downhill), with xᵀAx > 0
    for c in result.candidates:
        if c.kind is CandidateKind.ITERATE:
            assert c.slope < 0 and c.curvature > 0
    # the consequence: no NPC is possible up to convergence when bᵀA⁻¹b < 0 — MINRES must
    # stop on NPC (or on a least-squares stop / exact step count) before converging
    b64 = f64(b)
    if b64 @ np.linalg.solve(A64, b64) < -1e-3 * (b64 @ b64):
        assert result.reason is not StopReason.CONVERGED


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 100), log_kappa=st.floats(0.0, 4.0), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_spd_iterates_descend_with_the_model(n, log_kappa, dtype, seed):
    # positive definite: q(x_k) < q(x_{k−1}) (Fong & Saunders), hence gᵀx_k < −½x_kᵀAx_k < 0
    A, b = spd(n, 10.0**log_kappa, dtype, seed)
    result = every_iterate(rtol=1e-10 if dtype is np.float64 else 1e-5, max_iter=3 * n + 5).solve(lambda v: A @ v, b)
    A64, g = f64(A), -f64(b)
    tol = 1e-4 if dtype is np.float32 else 1e-9
    q = np.array(result.q_history)
    assert q[0] == 0.0 and (np.diff(q) <= tol * np.abs(q[1:])).all()
    for it in result.iterates:
        x = f64(it.x)
        slope, curvature = g @ x, x @ A64 @ x
        assert slope <= -0.5 * curvature + tol * abs(slope) and slope < 0
        assert it.q == pytest.approx(0.5 * curvature + slope, rel=10 * tol, abs=1e-12)  # q(x) = ½xᵀAx + gᵀx


def test_gradient_of_the_residual_norm_is_always_decreased():
    # any symmetric A, no NPC stop: A·x_k ⟂ r_k gives gᵀA·x_k = −‖A·x_k‖²
    A, b = indefinite(30, 12, seed=4)
    for k in (1, 4, 9):
        x = MINRES(rtol=0.0, max_iter=k, detect_npc=False).solve(lambda v: A @ v, b).x
        Ax = A @ x
        assert -b @ Ax == pytest.approx(-(Ax @ Ax), rel=1e-10)


def test_warm_start_step_is_a_descent_direction_at_x0():
    A, b = indefinite(40, 10, seed=6, low=0.05)
    x0 = np.random.default_rng(1).standard_normal(40)
    r0 = b - A @ x0  # −∇q(x0)
    result = every_iterate(rtol=0.0, max_iter=60).solve(lambda v: A @ v, b, x0=x0)
    steps = [it.x - x0 for it in result.iterates if it.iteration > 0]
    assert steps and all(r0 @ s > 0 for s in steps)
    assert all(s @ A @ s > 0 for s in steps)


# ----------------------------------------------------------------------------- NPC certificate
@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 90), data=st.data(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_npc_certificate(n, data, dtype, seed):
    A, b = indefinite(n, data.draw(st.integers(1, n - 1)), seed, dtype)
    A64, b64 = f64(A), f64(b)
    # bᵀA⁻¹b < 0 forces an NPC exit (descent theorem); flip to it when needed
    if b64 @ np.linalg.solve(A64, b64) >= 0:
        lam, Q = np.linalg.eigh(A64)
        coef = Q.T @ b64
        coef[lam < 0] *= 10.0
        b = (Q @ coef).astype(dtype)
        b64 = f64(b)
    calls = Counting(A)
    result = MINRES(rtol=0.0, max_iter=4 * n).solve(calls, b)
    if b64 @ np.linalg.solve(A64, b64) < 0:
        assert result.reason is StopReason.NEGATIVE_CURVATURE
    if result.reason is not StopReason.NEGATIVE_CURVATURE:
        return
    nc = result.negative_curvature
    d = f64(nc.direction)
    scale = EPS[dtype] * 100 * np.linalg.norm(A64, 2) * (d @ d)
    curvature = d @ A64 @ d
    assert nc.curvature <= 0 and curvature <= scale  # rᵀAr ≤ 0 (up to rounding)
    assert nc.curvature == pytest.approx(curvature, abs=scale)
    assert nc.rayleigh == pytest.approx(curvature / (d @ d), abs=scale / (d @ d))
    assert nc.rayleigh >= np.linalg.eigvalsh(A64)[0] - scale / (d @ d)  # a Rayleigh quotient
    assert result.ritz_min <= nc.rayleigh + scale / (d @ d)  # r_{k−1} ∈ K_k
    assert nc.kind is NPC_KIND and nc.iteration == result.iterations + 1
    # k steps, and the true residual unless x is still the zero start
    assert result.matvecs == calls.calls == nc.iteration + (result.iterations > 0)
    # it is the residual b − A·x of the returned iterate, downhill: gᵀr = −‖r‖² < 0
    r = b64 - A64 @ f64(result.x)
    tol = 1e-3 if dtype is np.float32 else 1e-8
    np.testing.assert_allclose(d, r, rtol=0, atol=tol * np.linalg.norm(b64))
    assert b64 @ d > 0 and b64 @ d == pytest.approx(d @ d, rel=tol)
    # it comes back as a candidate, with the iterates
    extra = [c for c in result.candidates if c.kind is not CandidateKind.ITERATE]
    assert len(extra) == 1 and extra[0].kind is NPC_KIND
    assert extra[0].slope == pytest.approx(-(b64 @ d), rel=tol) and extra[0].curvature == nc.curvature
    np.testing.assert_array_equal(extra[0].direction, nc.direction)
    assert np.isfinite(result.x).all()


def test_npc_at_the_first_step_returns_b():
    A = np.diag([-1.0, 2.0, 3.0])
    b = np.array([3.0, 1.0, 0.0])  # bᵀAb = −7 < 0
    calls = Counting(A)
    result = MINRES().solve(calls, b)
    assert result.reason is StopReason.NEGATIVE_CURVATURE
    assert result.iterations == 0 and result.matvecs == calls.calls == 1  # zero start: no true-residual product
    np.testing.assert_array_equal(result.x, np.zeros(3))
    nc = result.negative_curvature
    np.testing.assert_allclose(nc.direction, b)
    assert nc.curvature == pytest.approx(-7.0) and nc.rayleigh == pytest.approx(-0.7) and nc.iteration == 1
    assert result.lanczos_alpha == (pytest.approx(-0.7),) and result.ritz_min == pytest.approx(-0.7)
    # the candidates: no iterate (x = 0 is no direction), just the certificate
    assert [c.kind for c in result.candidates] == [NPC_KIND]


def test_zero_curvature_counts_as_npc():
    A = np.diag([1.0, 2.0, -1.0, -2.0])
    b = np.ones(4)  # bᵀAb = 0, exactly also for b/‖b‖ = b/2
    result = MINRES().solve(lambda v: A @ v, b)
    assert result.reason is StopReason.NEGATIVE_CURVATURE
    assert result.negative_curvature.curvature == 0.0 and result.iterations == 0
    # without detection MINRES solves it in four steps (four eigenvalues)
    plain = MINRES(detect_npc=False, rtol=1e-12).solve(lambda v: A @ v, b)
    assert plain.reason is StopReason.CONVERGED and plain.iterations == 4
    np.testing.assert_allclose(plain.x, [1.0, 0.5, -1.0, -0.5])


def test_npc_with_a_preconditioner_certifies_the_preconditioned_residual():
    A, b = indefinite(30, 8, seed=9)
    d = np.random.default_rng(2).uniform(0.2, 3.0, 30)
    result = MINRES(rtol=0.0, max_iter=120).solve(lambda v: A @ v, b, precond=d)
    assert result.reason is StopReason.NEGATIVE_CURVATURE
    nc = result.negative_curvature
    r = b - A @ result.x
    np.testing.assert_allclose(nc.direction, d * r, atol=1e-8 * np.linalg.norm(b))  # D·r_{k−1}
    assert nc.direction @ A @ nc.direction == pytest.approx(nc.curvature, rel=1e-8) and nc.curvature < 0
    assert b @ nc.direction > 0


# ----------------------------------------------------------------------------- singular systems
@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 80), data=st.data(), seed=st.integers(0, 2**16))
def test_singular_consistent_converges_to_the_minimum_norm_solution(n, data, seed):
    n_zero = data.draw(st.integers(1, n - 1))
    n_negative = data.draw(st.integers(0, n - n_zero))
    A, _ = singular(n, n_zero, n_negative, seed)
    b = A @ np.random.default_rng(seed).standard_normal(n)  # b ∈ range(A)
    if np.linalg.norm(b) == 0:
        return
    result = MINRES(rtol=1e-10, max_iter=5 * n, detect_npc=n_negative == 0).solve(lambda v: A @ v, b)
    assert result.reason is StopReason.CONVERGED
    x_min = np.linalg.lstsq(A, b, rcond=None)[0]
    np.testing.assert_allclose(result.x, x_min, rtol=0, atol=1e-6 * np.linalg.norm(x_min))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(3, 100),
    data=st.data(),
    detect=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**16),
)
def test_singular_inconsistent_stops_on_a_least_squares_solution(n, data, detect, dtype, seed):
    n_zero = data.draw(st.integers(1, max(1, n // 3)))
    n_negative = data.draw(st.integers(0, 2))
    A64, N = singular(n, n_zero, min(n_negative, n - n_zero), seed)
    A = A64.astype(dtype)
    b = np.random.default_rng(seed + 1).standard_normal(n).astype(dtype)  # a null-space component
    result = MINRES(rtol=0.0, max_iter=4 * n, detect_npc=detect).solve(lambda v: A @ v, b)
    assert np.isfinite(result.x).all() and all(math.isfinite(v) for v in result.residual_norms)
    assert result.reason in (StopReason.STAGNATED, StopReason.NEGATIVE_CURVATURE)
    if not detect:
        assert result.reason is StopReason.STAGNATED
    x, b64 = f64(result.x), f64(b)
    x_ls = np.linalg.lstsq(A64, b64, rcond=1e-10)[0]
    assert np.linalg.norm(x) <= 1e3 * np.linalg.norm(x_ls)  # no blow-up along null(A)
    r = b64 - A64 @ x
    # the residual cannot fall below its null-space part, and stays close to it
    assert np.linalg.norm(r) >= np.linalg.norm(N.T @ b64) * (1 - 1e-6)
    if result.reason is StopReason.STAGNATED:  # a least-squares solution: Aᵀr ≈ 0
        floor = 1e-6 if dtype is np.float64 else 1e-2
        assert np.linalg.norm(A64 @ r) <= floor * np.linalg.norm(A64, 2) * np.linalg.norm(r)
    else:  # a certificate of (numerically) zero or negative curvature, downhill
        d = f64(result.negative_curvature.direction)
        assert d @ A64 @ d <= 1e3 * EPS[dtype] * np.linalg.norm(A64, 2) * (d @ d)
        assert b64 @ d > 0


# ----------------------------------------------------------------------------- stop reasons
def test_max_iter_and_exact_matvec_counts():
    A, b = spd(20, 1e3, seed=6)
    x0 = np.ones(20)
    calls = Counting(A)
    result = MINRES(rtol=0.0, max_iter=7).solve(calls, b, x0=x0)
    assert result.reason is StopReason.MAX_ITER and result.iterations == 7
    assert result.matvecs == calls.calls == 1 + 7 + 1  # r_0, one per step, the true residual
    assert result.true_residual_norm == pytest.approx(np.linalg.norm(b - A @ result.x), rel=1e-10)
    calls = Counting(A)
    quiet = MINRES(rtol=0.0, max_iter=7, true_residual=False).solve(calls, b)
    assert quiet.matvecs == calls.calls == 7 and quiet.true_residual_norm is None


def test_progress_stop():
    A, b = spd(200, 1e6, seed=2)
    result = MINRES(rtol=0.0, progress_tol=1e-2, max_iter=250).solve(lambda v: A @ v, b)
    assert result.reason is StopReason.PROGRESS
    assert martens_progress_stop(result.q_history, 1e-2) and not martens_progress_stop(result.q_history[:-1], 1e-2)


def test_warm_start_from_the_solution_stops_at_once():
    A, b = indefinite(40, 10, seed=3)
    x_star = np.linalg.solve(A, b)
    calls = Counting(A)
    result = MINRES().solve(calls, b, x0=x_star)
    assert result.reason is StopReason.CONVERGED and result.iterations == 0
    assert result.matvecs == calls.calls == 1
    np.testing.assert_array_equal(result.x, x_star)
    assert math.isnan(result.ritz_min) and result.lanczos_alpha == ()


def test_stagnation_when_the_true_residual_cannot_follow():
    A, b = spd(60, 1e5, np.float32, seed=1)
    result = MINRES(rtol=1e-7, max_iter=2000).solve(lambda v: A @ v, b)  # below float32's reach
    assert result.reason is StopReason.STAGNATED
    assert np.isfinite(result.x).all() and result.true_residual_norm > 1e-7 * result.rhs_norm


@pytest.mark.parametrize("solver", [MINRES(), MINRES(true_residual=False), MINRES(detect_npc=False)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_rhs(solver, dtype):
    calls = Counting(np.eye(5, dtype=dtype))
    result = solver.solve(calls, np.zeros(5, dtype=dtype), x0=np.ones(5, dtype=dtype))
    assert result.reason is StopReason.ZERO_RHS
    assert result.matvecs == calls.calls == 0 and result.iterations == 0
    np.testing.assert_array_equal(result.x, np.zeros(5))
    assert result.x.dtype == dtype
    assert isinstance(result, MinresResult) and math.isnan(result.ritz_max) and result.candidates == ()


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("poison_at", [1, 2, 5])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("indefinite_a", [False, True])
def test_non_finite_matvec_returns_the_last_good_iterate(value, poison_at, dtype, indefinite_a):
    A, b = indefinite(20, 0, seed=4, dtype=dtype) if not indefinite_a else indefinite(20, 5, seed=4, dtype=dtype)
    solver = MINRES(true_residual=False, detect_npc=False)
    calls = Counting(A, poison_at=poison_at, value=value)
    result = solver.solve(calls, b)
    assert result.reason is StopReason.NON_FINITE
    assert result.matvecs == calls.calls == poison_at
    assert np.isfinite(result.x).all() and result.iterations == poison_at - 1
    assert all(math.isfinite(q) for q in result.q_history)
    assert len(result.lanczos_alpha) == poison_at - 1  # the failed step is not in T_k
    if poison_at == 1:
        np.testing.assert_array_equal(result.x, np.zeros(20))
    else:  # bitwise the iterate of a clean run stopped at the same step
        clean = attrs.evolve(solver, max_iter=poison_at - 1).solve(lambda v: A @ v, b)
        np.testing.assert_array_equal(result.x, clean.x)


def test_non_finite_at_the_warm_start_falls_back_to_zero():
    A, b = spd(6, 10.0)
    result = MINRES().solve(Counting(A, poison_at=1), b, x0=np.ones(6))
    assert result.reason is StopReason.NON_FINITE and result.iterations == 0
    np.testing.assert_array_equal(result.x, np.zeros(6))
    assert result.true_residual_norm == pytest.approx(np.linalg.norm(b))


# ----------------------------------------------------------------------------- scaling
@pytest.mark.parametrize("magnitude", [1e-30, 1e30])
def test_extreme_float32_right_hand_sides(magnitude):
    # bᵀb = 1e-60 underflows (1e60 overflows) in float32: the solver rescales b exactly
    A, b = spd(30, 10.0, np.float32, seed=9)
    solver = MINRES(rtol=1e-4)
    result = solver.solve(lambda v: A @ v, b * np.float32(magnitude))
    assert result.reason is StopReason.CONVERGED
    assert result.x.dtype == np.float32 and np.isfinite(result.x).all()
    unit = solver.solve(lambda v: A @ v, b)
    np.testing.assert_allclose(f64(result.x), f64(unit.x) * magnitude, rtol=1e-5)
    assert result.rhs_norm == pytest.approx(np.linalg.norm(f64(b)) * magnitude, rel=1e-5)
    assert result.q == pytest.approx(unit.q * magnitude**2, rel=1e-4)
    assert result.ritz_min == pytest.approx(unit.ritz_min, rel=1e-5) and result.ritz_max == pytest.approx(unit.ritz_max, rel=1e-5)


@pytest.mark.parametrize(
    "magnitude",
    [
        1e-200,  # bᵀb underflows
        1e150,
        1e200,  # bᵀb overflows, and so does q ~ ‖b‖² (reported as ±inf)
    ],
)
def test_extreme_float64_right_hand_sides_with_npc(magnitude):
    A, b = indefinite(25, 6, seed=5)
    unit = MINRES().solve(lambda v: A @ v, b)
    big = MINRES().solve(lambda v: A @ v, b * magnitude)
    assert big.reason is unit.reason is StopReason.NEGATIVE_CURVATURE
    np.testing.assert_allclose(big.negative_curvature.direction, unit.negative_curvature.direction * magnitude, rtol=1e-12)
    expected = unit.negative_curvature.curvature * magnitude * magnitude  # -inf past float64's range
    assert big.negative_curvature.curvature == pytest.approx(expected, rel=1e-12)
    assert big.negative_curvature.rayleigh == pytest.approx(unit.negative_curvature.rayleigh, rel=1e-12)


def test_power_of_two_rescaling_is_exact():
    A, b = indefinite(15, 4, seed=8)
    for solver in (MINRES(rtol=0.0, max_iter=7, detect_npc=False), MINRES()):
        one = solver.solve(lambda v: A @ v, b)
        big = solver.solve(lambda v: A @ v, b * 2.0**40)
        assert big.reason is one.reason and big.iterations == one.iterations
        np.testing.assert_array_equal(big.x, one.x * 2.0**40)
        assert big.lanczos_alpha == one.lanczos_alpha and big.lanczos_beta == one.lanczos_beta
        if one.negative_curvature is not None:
            np.testing.assert_array_equal(big.negative_curvature.direction, one.negative_curvature.direction * 2.0**40)


# ----------------------------------------------------------------------------- dot and layout
def reversed_dot(u, v) -> float:
    """Sums the products in the opposite order (as another rank layout would)."""
    return float(np.sum((u * v)[::-1].astype(np.float64)))


def pairwise_dot(u, v) -> float:
    return math.fsum((u.astype(np.float64) * v.astype(np.float64)).tolist())


@pytest.mark.parametrize("dot", [reversed_dot, pairwise_dot])
@pytest.mark.parametrize("case", ["spd", "indefinite", "npc"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_custom_dot_gives_the_same_answer(dot, case, dtype):
    if case == "spd":
        A, b = spd(40, 100.0, dtype, seed=3)
        solver = MINRES(rtol=1e-10 if dtype is np.float64 else 1e-5)
    else:
        A, b = indefinite(40, 10, seed=3, dtype=dtype)
        solver = MINRES(rtol=1e-10 if dtype is np.float64 else 1e-5, detect_npc=case == "npc")
    plain = solver.solve(lambda v: A @ v, b)
    custom = solver.solve(lambda v: A @ v, b, dot=dot)
    assert plain.reason is custom.reason
    assert abs(plain.iterations - custom.iterations) <= (0 if case == "npc" else 2)
    tol = 1e-3 if dtype is np.float32 else 1e-8
    np.testing.assert_allclose(f64(custom.x), f64(plain.x), rtol=0, atol=tol * np.linalg.norm(f64(plain.x)))
    if case == "npc":
        np.testing.assert_allclose(
            f64(custom.negative_curvature.direction), f64(plain.negative_curvature.direction), rtol=tol, atol=tol
        )


def test_every_inner_product_goes_through_dot():
    # a layout with a "halo" entry that only the operator writes and ``dot`` ignores: an
    # inner product taken any other way (np.linalg.norm, np.dot) would see the junk
    A, b = spd(12, 10.0, seed=4)
    n = 12

    def matvec(v):
        return np.append(A @ v[:n], 3.0)

    def dot(u, v):
        return float(np.dot(u[:n], v[:n]))

    solver = MINRES(rtol=1e-12, max_iter=40)
    plain = solver.solve(lambda v: A @ v, b)
    halo = solver.solve(matvec, np.append(b, 5.0), dot=dot)
    assert halo.reason is plain.reason and halo.iterations == plain.iterations
    np.testing.assert_allclose(halo.x[:n], plain.x, rtol=1e-12)
    assert halo.q_history == pytest.approx(plain.q_history, rel=1e-12)
    assert halo.true_residual_norm == pytest.approx(plain.true_residual_norm, rel=1e-6, abs=1e-14)


def test_a_permuted_layout_gives_the_permuted_answer():
    A, b = indefinite(30, 7, seed=12)
    perm = np.random.default_rng(0).permutation(30)
    inverse = np.argsort(perm)
    plain = MINRES().solve(lambda v: A @ v, b)
    permuted = MINRES().solve(lambda v: (A @ v[inverse])[perm], b[perm])
    assert permuted.reason is plain.reason and permuted.iterations == plain.iterations
    np.testing.assert_allclose(permuted.x[inverse], plain.x, rtol=1e-10, atol=1e-12)
    if plain.negative_curvature is not None:
        np.testing.assert_allclose(permuted.negative_curvature.direction[inverse], plain.negative_curvature.direction, rtol=1e-10)


# ----------------------------------------------------------------------------- candidates
@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 80), data=st.data(), dtype=st.sampled_from(DTYPES), seed=st.integers(0, 2**16))
def test_candidates_are_downhill_with_product_free_curvature(n, data, dtype, seed):
    A, b = indefinite(n, data.draw(st.integers(0, n - 1)), seed, dtype)
    x0 = np.random.default_rng(seed).standard_normal(n).astype(dtype) if data.draw(st.booleans()) else None
    result = MINRES(max_iter=40).solve(lambda v: A @ v, b, x0=x0)
    g, A64 = -f64(b), f64(A)
    tol = 1e-3 if dtype is np.float32 else 1e-7
    stored = {it.iteration for it in result.iterates if not (it.iteration == 0 and x0 is None)}
    assert {c.iteration for c in result.candidates if c.kind is CandidateKind.ITERATE} == stored
    for c in result.candidates:
        d = f64(c.direction)
        norm = np.linalg.norm(g) * np.linalg.norm(d)
        assert c.slope <= 0.0 and g @ d <= tol * norm
        assert c.slope == pytest.approx(g @ d, rel=tol, abs=tol * norm)
        assert c.curvature == pytest.approx(d @ A64 @ d, rel=tol, abs=tol * np.linalg.norm(A64, 2) * (d @ d))
        assert c.q == pytest.approx(0.5 * c.curvature + c.slope)


def test_identity_preconditioner_gives_bitwise_the_same_iterates():
    A, b = indefinite(30, 6, seed=5)
    for solver in (MINRES(rtol=0.0, max_iter=12, detect_npc=False), MINRES()):
        plain = solver.solve(lambda v: A @ v, b)
        ones = solver.solve(lambda v: A @ v, b, precond=np.ones(30))
        assert plain.reason is ones.reason and plain.iterations == ones.iterations
        assert plain.q_history == ones.q_history and plain.lanczos_alpha == ones.lanczos_alpha
        for a, c in zip(plain.iterates, ones.iterates):
            np.testing.assert_array_equal(a.x, c.x)


def test_a_diagonal_preconditioner_solves_a_badly_scaled_system():
    rng = np.random.default_rng(3)
    A0, b = spd(40, 10.0, seed=3)
    s = 10.0 ** rng.uniform(-3, 3, 40)
    A = A0 * s[:, None] * s[None, :]  # symmetric, κ ~ 1e12 before scaling
    result = MINRES(rtol=1e-10, max_iter=200).solve(lambda v: A @ v, b, precond=1.0 / np.diag(A))
    assert result.reason is StopReason.CONVERGED and result.iterations < 60
    np.testing.assert_allclose(A @ result.x, b, rtol=0, atol=1e-8 * np.linalg.norm(b))


def test_an_operator_reusing_its_output_buffer_is_safe():
    A, b = indefinite(12, 3, seed=5)
    buffer = np.empty(12)

    def into_buffer(v):
        np.matmul(A, v, out=buffer)
        return buffer

    for solver in (MINRES(rtol=0.0, max_iter=8, detect_npc=False), MINRES()):
        one, two = solver.solve(into_buffer, b), solver.solve(lambda v: A @ v, b)
        np.testing.assert_array_equal(one.x, two.x)
        assert one.reason is two.reason


# ----------------------------------------------------------------------------- Ritz values
@settings(max_examples=60, deadline=None)
@given(
    alphas=st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=40),
    data=st.data(),
)
def test_tridiagonal_extremes_match_eigvalsh(alphas, data):
    k = len(alphas)
    betas = data.draw(st.lists(st.floats(0.0, 1e3) | st.just(0.0), min_size=k - 1, max_size=k - 1))
    T = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
    eig = np.linalg.eigvalsh(T)
    lo, hi = tridiagonal_extremes(alphas, betas)
    scale = max(1.0, np.abs(eig).max())
    assert lo == pytest.approx(eig[0], abs=1e-12 * scale)
    assert hi == pytest.approx(eig[-1], abs=1e-12 * scale)


def test_ritz_values_bracket_the_spectrum_and_converge():
    A, b = indefinite(50, 10, seed=1)
    lam = np.linalg.eigvalsh(A)
    result = MINRES(rtol=0.0, max_iter=50, detect_npc=False).solve(lambda v: A @ v, b)
    assert lam[0] - 1e-10 <= result.ritz_min <= result.ritz_max <= lam[-1] + 1e-10
    assert result.ritz_min == pytest.approx(lam[0], rel=1e-6) and result.ritz_max == pytest.approx(lam[-1], rel=1e-6)
    np.testing.assert_allclose(result.ritz_values()[[0, -1]], [result.ritz_min, result.ritz_max], rtol=1e-12)
    T = result.tridiagonal()
    assert T.shape == (50, 50) and np.allclose(T, T.T)


# ----------------------------------------------------------------------------- configuration and interface
@pytest.mark.parametrize(
    "options",
    [
        {"max_iter": 0},
        {"max_iter": 2.5},
        {"max_iter": True},
        {"rtol": math.nan},
        {"rtol": -1e-3},
        {"rtol": 1.0},
        {"progress_tol": -1.0},
        {"store_first": 0},
        {"store_growth": 1.0},
        {"true_residual": "yes"},
        {"detect_npc": 1},
    ],
)
def test_invalid_configs_are_rejected(options):
    with pytest.raises(ConfigError):
        MINRES(**options)


def test_configuration_and_result_types():
    solver = MINRES()
    assert isinstance(solver, KrylovSolver) and solver.name == "minres"
    assert (solver.max_iter, solver.rtol, solver.progress_tol, solver.detect_npc, solver.true_residual) == (
        250,
        1e-6,
        0.0,
        True,
        True,
    )
    assert MINRES(max_iter=np.int64(7)).max_iter == 7
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        solver.max_iter = 3
    A, b = spd(5, 10.0)
    result = solver.solve(lambda v: A @ v, b)
    assert isinstance(result, SolveResult) and isinstance(result, MinresResult)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.ritz_min = 0.0
    with pytest.raises(ValueError):
        result.x[0] = 1.0


def test_solver_keeps_no_state_between_calls():
    A, b = indefinite(12, 3, seed=3)
    solver = MINRES(max_iter=9)
    first = solver.solve(lambda v: A @ v, b)
    solver.solve(lambda v: -A @ v, b + 1.0)
    again = solver.solve(lambda v: A @ v, b)
    np.testing.assert_array_equal(first.x, again.x)
    assert first.q_history == again.q_history and first.reason is again.reason


@pytest.mark.parametrize(
    "call",
    [
        lambda A, b: MINRES().solve("not callable", b),
        lambda A, b: MINRES().solve(lambda v: A @ v, b[:, None]),
        lambda A, b: MINRES().solve(lambda v: A @ v, b.astype(np.int64)),
        lambda A, b: MINRES().solve(lambda v: A @ v, np.where(np.arange(4) == 1, np.nan, b)),
        lambda A, b: MINRES().solve(lambda v: A @ v, b, x0=np.ones(3)),
        lambda A, b: MINRES().solve(lambda v: A @ v, b, precond=-np.ones(4)),
        lambda A, b: MINRES().solve(lambda v: (A @ v)[:3], b),
    ],
)
def test_bad_input_raises_input_error(call):
    A, b = spd(4, 10.0)
    with pytest.raises(InputError):
        call(A, b)
