"""Bi-CG-STAB on a possibly indefinite A, harvesting descent candidates (paper, Algorithm 3).

Bi-CG-STAB needs neither symmetry nor definiteness: each iteration takes a Bi-CG step
along p̂ (α = ρ / r̂ᵀAp̂, with the shadow residual r̂ = r_0) and then a one-dimensional
residual-minimising step along ŝ (ω = tᵀs / tᵀt, t = Aŝ): two matvecs per iteration.

It does not stop on negative curvature. Instead everything it produces is a candidate
step for the trainer, oriented downhill by d̃ = −sign(gᵀd)·d (g = −b):

* the stored iterates x_j (schedule and last), with curvature x_jᵀAx_j = x_jᵀ(b − r_j),
  free from the recurrence;
* the directions p̂_j and ŝ_j whose curvature (p̂ᵀAp̂ = p̂ᵀv, ŝᵀAŝ = ŝᵀt, free as well)
  is negative — the first such direction met and the one of most negative Rayleigh
  quotient.

Either d̃ᵀAd̃ > 0 and gᵀd̃ < 0 (a Newton-type step) or d̃ᵀAd̃ < 0 and gᵀd̃ < 0 (a
negative-curvature descent direction); the trainer picks by backtracking and Armijo.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from hessfree.solvers._problem import Candidates, Problem, Tracker, all_finite, confirm_convergence, start
from hessfree.solvers.base import (
    CandidateKind,
    KrylovSolver,
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


@solver_config
class BiCGStab(KrylovSolver):
    """Bi-CG-STAB with candidates: ``BiCGStab(max_iter=50, rtol=1e-6, progress_tol=0.0)``.

    Runs its iteration budget (the paper's fixed count) unless it converges
    (‖r‖ ≤ rtol·‖b‖, tested after each half step too, and confirmed on b − A·x when
    ``true_residual`` is on, as for CG), breaks down (BREAKDOWN_RHO when
    |r̂ᵀr| or |r̂ᵀAp̂| falls below eps·‖r̂‖·‖·‖; BREAKDOWN_OMEGA when |tᵀs| ≤ eps·‖t‖·‖s‖)
    or meets a non-finite value. ``progress_tol`` > 0 enables Martens' progress test on
    its (non-monotone) q. Each iteration costs two matvecs; a converged half step one.
    """

    name: ClassVar[str] = "bicgstab"

    max_iter: int = max_iter_field(50)
    rtol: float = tolerance_field(1e-6)
    progress_tol: float = tolerance_field(0.0)
    store_first: int = store_first_field()
    store_growth: float = store_growth_field()
    true_residual: bool = flag_field(True)

    def _run(self, problem: Problem) -> SolveResult:
        tracker = Tracker.start(problem, self.max_iter, self.store_first, self.store_growth)
        reason = _iterate(self, problem, tracker)
        return tracker.result(self.name, reason, true_residual=self.true_residual, candidates=Candidates.DOWNHILL)


def _curvature_check(tracker: Tracker, d: np.ndarray, curvature: float, i: int, kind: CandidateKind) -> None:
    if curvature < 0.0:
        tracker.direction(d, curvature, i, kind)


def _iterate(config: BiCGStab, problem: Problem, tracker: Tracker) -> StopReason:
    """The Bi-CG-STAB recurrence; leaves the last good iterate in the tracker."""
    x, r, ok = start(tracker)
    if not ok:
        return StopReason.NON_FINITE
    eps, target = problem.eps, config.rtol * problem.rhs_norm
    rnorm = tracker.residual_norms[-1]
    if rnorm <= target:
        return StopReason.CONVERGED
    r_hat = r.copy()  # shadow residual r̂ = r_0, so ρ_1 = ‖r_0‖² ≠ 0
    r_hat_norm = rnorm
    rho_prev = alpha = omega = 1.0
    p = v = None
    for i in range(1, config.max_iter + 1):
        rho = problem.inner(r_hat, r)
        # ρ ≈ 0 relative to ‖r̂‖‖r‖: the Lanczos biorthogonality can no longer be continued
        if not abs(rho) > eps * r_hat_norm * rnorm:
            return StopReason.BREAKDOWN_RHO
        if p is None:
            p = r.copy()
        else:
            beta = (rho / rho_prev) * (alpha / omega)
            p -= omega * v
            p *= beta
            p += r
        p_hat = problem.precondition(p)
        # A·p̂ is needed again after the second product (p ← r + β(p − ωv)): own a copy,
        # in case the operator writes every product into one buffer
        v = problem.apply(p_hat).copy()
        curv_p = problem.inner(p_hat, v)  # p̂ᵀAp̂, non-finite if A·p̂ is
        if not all_finite(curv_p):
            return StopReason.NON_FINITE
        _curvature_check(tracker, p_hat, curv_p, i, CandidateKind.SEARCH_P)
        rv = problem.inner(r_hat, v)
        if not abs(rv) > eps * r_hat_norm * problem.norm(v):
            return StopReason.BREAKDOWN_RHO
        alpha = rho / rv
        s = r - alpha * v  # residual after the Bi-CG half step
        snorm = problem.norm(s)
        if not all_finite(alpha, snorm):
            return StopReason.NON_FINITE
        if snorm <= target:
            x_half = x + alpha * p_hat
            if not _half_step(tracker, i, x_half, s, snorm):
                return StopReason.NON_FINITE
            reason, r_true = confirm_convergence(tracker, target, config.true_residual)
            if reason is not None:
                return reason
            # residual replacement after a half step: restart the recurrence from x_half
            x, r, rnorm, p = x_half, r_true, tracker.residual_norms[-1], None
            continue
        s_hat = problem.precondition(s)
        t = problem.apply(s_hat)
        curv_s = problem.inner(s_hat, t)
        if not all_finite(curv_s):
            return StopReason.NON_FINITE
        _curvature_check(tracker, s_hat, curv_s, i, CandidateKind.SEARCH_S)
        tt, ts = problem.inner(t, t), problem.inner(t, s)
        if not all_finite(tt, ts):
            return StopReason.NON_FINITE
        # ω = tᵀs/tᵀt minimises ‖s − ωt‖; t ⟂ s (relative to eps) leaves nothing to minimise
        # and would make the next β = … / ω blow up: keep the half step and stop
        if not abs(ts) > eps * math.sqrt(tt) * snorm:
            ok = _half_step(tracker, i, x + alpha * p_hat, s, snorm)
            return StopReason.BREAKDOWN_OMEGA if ok else StopReason.NON_FINITE
        omega = ts / tt
        x_next = x + alpha * p_hat + omega * s_hat
        r_next = s - omega * t
        q, bx, xax = tracker.model_terms(x_next, r_next)
        rnorm = problem.norm(r_next)
        if not all_finite(omega, q, rnorm):
            return StopReason.NON_FINITE
        x, r = x_next, r_next
        tracker.record(i, x, q, bx, xax, rnorm)
        if rnorm <= target:
            reason, r_true = confirm_convergence(tracker, target, config.true_residual)
            if reason is not None:
                return reason
            r, rnorm = r_true, tracker.residual_norms[-1]  # residual replacement
        if martens_progress_stop(tracker.q_history, config.progress_tol):
            return StopReason.PROGRESS
        rho_prev = rho
    return StopReason.MAX_ITER


def _half_step(tracker: Tracker, i: int, x: np.ndarray, s: np.ndarray, snorm: float) -> bool:
    """Record x + α·p̂ (residual s) as iterate i; False (nothing recorded) if not finite."""
    q, bx, xax = tracker.model_terms(x, s)
    if not all_finite(q):
        return False
    tracker.record(i, x, q, bx, xax, snorm)
    return True
