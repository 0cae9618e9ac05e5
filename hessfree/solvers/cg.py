"""Preconditioned conjugate gradient with Martens' stops and a negative-curvature exit.

CG minimises q(x) = ½xᵀAx − bᵀx over growing Krylov spaces. Each step moves along p by
the exact minimiser α = rᵀz / pᵀAp of q on that line — which exists only if pᵀAp > 0.
When pᵀAp ≤ 0, q is unbounded below along p: CG stops, keeps the current iterate and
returns p (turned downhill) as a negative-curvature direction. This is the paper's
HF-CG; if it happens at the first iteration the iterate is still x_0 and the caller
falls back to −g.

CG's descent candidates are its stored iterates after the start, as they are (never
flipped: an iterate of CG on a positive-definite A is always downhill), each with its
slope gᵀx and curvature xᵀAx = 2(q(x) − gᵀx), free from the recurrence.

**Lanczos for free.** CG's step lengths α_j = r_{j−1}ᵀz_{j−1} / p_jᵀAp_j and ratios
β_j = r_jᵀz_j / r_{j−1}ᵀz_{j−1} are the LDLᵀ factors of the Lanczos tridiagonal T_k of
K_k(A, r_0) (Saad, *Iterative Methods for Sparse Linear Systems*, §6.7.3):

    T_11 = 1/α_1,   T_jj = 1/α_j + β_{j−1}/α_{j−1},   T_{j,j+1} = √β_j / α_j.

The result (a :class:`CGResult`) carries T_k's diagonal and off-diagonal and its extreme
eigenvalues, the Ritz values ``ritz_min`` ≤ ``ritz_max`` (λ_min(A) ≤ ritz_min,
ritz_max ≤ λ_max(A) by interlacing; of D^½AD^½ with a preconditioner): no product, a few
scalars per step. The step that meets pᵀAp ≤ 0 contributes its 1/α = pᵀAp/rᵀz ≤ 0 too,
so T_k is then not positive definite and ritz_min ≤ 0. With ``keep_lowest`` the solver
also keeps (one inner product pᵀp per step, and a copy when it improves) the search
direction of smallest Rayleigh quotient pᵀAp/pᵀp met, turned downhill, as
``CGResult.lowest``: a direction of negative curvature of A − σI for any shift σ above
that quotient (the trainer's undamped Hessian when σ is the damping λ), even when A
itself is positive definite. With ``ritz_vectors`` = m > 0 it keeps (references, no
copies: CG makes a new residual every step) its first m residuals, which are the Lanczos
vectors up to scaling and sign (v_{j+1} = (−1)ʲ·r_j/‖r_j‖), and returns the Ritz vector
y = V_m·s of T_m's smallest eigenvalue θ (its Rayleigh quotient yᵀAy/yᵀy is θ in exact
arithmetic; no product is spent to check) as ``CGResult.ritz_vector``: the best
negative-curvature direction the Krylov space holds, which no iterate or search direction
need be. Memory m·n; not with a preconditioner.
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np

from hessfree.solvers.fused import axpy, scale_add
from hessfree.solvers._problem import Candidates, Problem, Tracker, all_finite, confirm_convergence, orient_downhill, start
from hessfree.solvers.base import (
    CandidateKind,
    KrylovSolver,
    NegativeCurvature,
    SolveResult,
    StopReason,
    flag_field,
    solver_config,
    martens_progress_stop,
    max_iter_field,
    store_first_field,
    store_growth_field,
    tolerance_field,
)
from hessfree.validate import integer


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@attrs.frozen(eq=False)
class CGResult(SolveResult):
    """A :class:`SolveResult` plus the Lanczos tridiagonal T_k that CG's coefficients give
    (module docstring), its extreme Ritz values (NaN when no step was taken) and, with
    ``keep_lowest``, the search direction of smallest Rayleigh quotient (else None)."""

    lanczos_alpha: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    lanczos_beta: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    ritz_min: float = attrs.field(default=math.nan, converter=float)
    ritz_max: float = attrs.field(default=math.nan, converter=float)
    lowest: NegativeCurvature | None = None
    ritz_vector: NegativeCurvature | None = None

    def tridiagonal(self) -> np.ndarray:
        """T_k as a dense k×k float64 matrix."""
        a, b = np.asarray(self.lanczos_alpha), np.asarray(self.lanczos_beta)
        return np.diag(a) + np.diag(b, 1) + np.diag(b, -1)


@attrs.define
class _Lanczos:
    """CG's coefficients as they come (1/α_j and β_j), and the lowest direction met."""

    inv_alpha: list[float] = attrs.field(factory=list)
    beta: list[float] = attrs.field(factory=list)
    keep_lowest: bool = False
    lowest: tuple | None = None  # (rayleigh, p copy, pᵀAp, iteration)
    ritz_vectors: int = 0
    residuals: list = attrs.field(factory=list)  # (r_j, r_jᵀr_j) for j < ritz_vectors

    def step(self, p: np.ndarray, r: np.ndarray, pAp: float, rz: float, i: int, problem: Problem) -> None:
        if len(self.residuals) < self.ritz_vectors:
            self.residuals.append((r, rz))  # r_{i−1}: never modified in place by CG
        self.inv_alpha.append(pAp / rz)
        if self.keep_lowest:
            pp = problem.inner(p, p)
            if pp > 0.0 and all_finite(pp):
                rayleigh = pAp / pp
                if self.lowest is None or rayleigh < self.lowest[0]:
                    self.lowest = (rayleigh, p.copy(), pAp, i)

    def tridiagonal(self) -> tuple[list[float], list[float]]:
        a, b = self.inv_alpha, self.beta[: max(len(self.inv_alpha) - 1, 0)]
        diag = [a[0]] + [a[j] + b[j - 1] * a[j - 1] for j in range(1, len(a))] if a else []
        off = [math.sqrt(max(b[j], 0.0)) * a[j] for j in range(len(b))]
        return diag, off

    def ritz_vector(self, problem: Problem) -> NegativeCurvature | None:
        """The Ritz vector of the smallest eigenvalue of T_m (m Lanczos vectors kept)."""
        m = len(self.residuals)
        if m == 0 or problem.precond is not None:
            return None
        diag, off = self.tridiagonal()
        diag, off = diag[:m], off[: m - 1]
        if not all_finite(*diag, *off):
            return None
        T = np.diag(diag) + np.diag(off, 1) + np.diag(off, -1)
        values, vectors = np.linalg.eigh(T)
        theta, s = float(values[0]), vectors[:, 0]
        y = np.zeros_like(problem.b)
        for j, (r, rz) in enumerate(self.residuals):
            y += (s[j] * (-1.0 if j % 2 else 1.0) / math.sqrt(rz)) * r
        yy = problem.inner(y, y)
        if not (all_finite(yy) and yy > 0.0):
            return None
        d, _ = orient_downhill(y, problem.inner(problem.b, y))
        return NegativeCurvature(problem.unscale(d), problem.unscale2(theta * yy), theta, m, CandidateKind.CG_DIRECTION)

    def lowest_direction(self, problem: Problem) -> NegativeCurvature | None:
        if self.lowest is None:
            return None
        rayleigh, p, pAp, i = self.lowest
        d, _ = orient_downhill(p, problem.inner(problem.b, p))
        return NegativeCurvature(problem.unscale(d), problem.unscale2(pAp), rayleigh, i, CandidateKind.CG_DIRECTION)


@solver_config
class CG(KrylovSolver):
    """Conjugate gradient (HF-CG): ``CG(max_iter=250, rtol=1e-6, progress_tol=5e-4)``.

    Stops on ‖r‖ ≤ rtol·‖b‖ (CONVERGED; STAGNATED if the true residual cannot follow the
    updated one), Martens' relative progress (PROGRESS), pᵀAp ≤ 0
    (NEGATIVE_CURVATURE), a non-finite value (NON_FINITE) or after ``max_iter``
    iterations (MAX_ITER). Keeps the iterates at ⌈store_first·store_growthʲ⌉ and the last.
    ``true_residual`` (default on) confirms a convergence claim on b − A·x and reports
    ‖b − A·x‖ at exit, one matvec each (shared when they coincide). Returns a
    :class:`CGResult` (the Lanczos tridiagonal and its extreme Ritz values, free);
    ``keep_lowest`` (default off) also keeps the search direction of smallest Rayleigh
    quotient (one inner product more per step, no product); ``ritz_vectors`` = m (default
    0) the first m residuals, for the Ritz vector of the smallest Ritz value of T_m.
    """

    name: ClassVar[str] = "cg"

    max_iter: int = max_iter_field(250)
    rtol: float = tolerance_field(1e-6)
    progress_tol: float = tolerance_field(5e-4)
    store_first: int = store_first_field()
    store_growth: float = store_growth_field()
    true_residual: bool = flag_field(True)
    keep_lowest: bool = flag_field(False)
    ritz_vectors: int = attrs.field(default=0, converter=lambda v: integer("ritz_vectors", v, 0))

    def solve(self, matvec, b, x0=None, *, dot=None, precond=None) -> CGResult:
        result = super().solve(matvec, b, x0, dot=dot, precond=precond)
        return result if isinstance(result, CGResult) else _with_lanczos(result, _Lanczos(), None)

    def _run(self, problem: Problem) -> CGResult:
        tracker = Tracker.start(problem, self.max_iter, self.store_first, self.store_growth)
        lanczos = _Lanczos(keep_lowest=self.keep_lowest, ritz_vectors=self.ritz_vectors)
        reason = _iterate(self, problem, tracker, lanczos)
        result = tracker.result(self.name, reason, true_residual=self.true_residual, candidates=Candidates.AS_IS)
        return _with_lanczos(result, lanczos, problem)


def _with_lanczos(result: SolveResult, lanczos: _Lanczos, problem: Problem | None) -> CGResult:
    from hessfree.solvers.minres import tridiagonal_extremes

    values = {a.alias: getattr(result, a.name) for a in attrs.fields(type(result))}
    diag, off = lanczos.tridiagonal()
    lo, hi = tridiagonal_extremes(diag, off) if diag and all_finite(*diag, *off) else (math.nan, math.nan)
    lowest = lanczos.lowest_direction(problem) if problem is not None else None
    ritz = lanczos.ritz_vector(problem) if problem is not None else None
    return CGResult(**values, lanczos_alpha=diag, lanczos_beta=off, ritz_min=lo, ritz_max=hi, lowest=lowest, ritz_vector=ritz)


def _iterate(config: CG, problem: Problem, tracker: Tracker, lanczos: _Lanczos) -> StopReason:
    """The CG recurrence; leaves the last good iterate in the tracker, returns why it stopped."""
    x, r, ok = start(tracker)
    if not ok:
        return StopReason.NON_FINITE
    target = config.rtol * problem.rhs_norm
    if tracker.residual_norms[-1] <= target:
        return StopReason.CONVERGED
    z = problem.precondition(r)
    rz = problem.inner(r, z)  # rᵀM⁻¹r
    p = z.copy()
    for i in range(1, config.max_iter + 1):
        Ap = problem.apply(p)
        pAp = problem.inner(p, Ap)  # a NaN or inf anywhere in A·p makes this non-finite
        if not all_finite(pAp):
            return StopReason.NON_FINITE
        lanczos.step(p, r, pAp, rz, i, problem)  # bookkeeping only: 1/α_i, r_{i−1}, the lowest p
        if pAp <= 0.0:
            tracker.direction(p, pAp, i, CandidateKind.CG_DIRECTION)
            return StopReason.NEGATIVE_CURVATURE
        alpha = rz / pAp
        # new arrays, never in place: stored iterates are references, and a bad step
        # must leave the last good (x, r) untouched
        x_next = axpy(x, alpha, p)  # x + α·p in one pass (``hessfree.solvers.fused``)
        r_next = axpy(r, -alpha, Ap)  # r − α·A·p
        q, bx, xax = tracker.model_terms(x_next, r_next)
        rnorm = problem.norm(r_next)
        if not all_finite(alpha, q, rnorm):
            return StopReason.NON_FINITE
        x, r = x_next, r_next
        tracker.record(i, x, q, bx, xax, rnorm)
        if rnorm <= target:
            reason, r_true = confirm_convergence(tracker, target, config.true_residual)
            if reason is not None:
                return reason
            r = r_true  # residual replacement; p keeps its direction
        if martens_progress_stop(tracker.q_history, config.progress_tol):
            return StopReason.PROGRESS
        z = problem.precondition(r)
        rz_next = problem.inner(r, z)
        beta = rz_next / rz  # makes p_{i+1} A-conjugate to p_i
        lanczos.beta.append(beta)
        rz = rz_next
        scale_add(p, beta, 1.0, z)  # p ← β·p + z
    return StopReason.MAX_ITER
