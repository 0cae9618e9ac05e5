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
"""

from __future__ import annotations

from typing import ClassVar

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
class CG(KrylovSolver):
    """Conjugate gradient (HF-CG): ``CG(max_iter=250, rtol=1e-6, progress_tol=5e-4)``.

    Stops on ‖r‖ ≤ rtol·‖b‖ (CONVERGED; STAGNATED if the true residual cannot follow the
    updated one), Martens' relative progress (PROGRESS), pᵀAp ≤ 0
    (NEGATIVE_CURVATURE), a non-finite value (NON_FINITE) or after ``max_iter``
    iterations (MAX_ITER). Keeps the iterates at ⌈store_first·store_growthʲ⌉ and the last.
    ``true_residual`` (default on) confirms a convergence claim on b − A·x and reports
    ‖b − A·x‖ at exit, one matvec each (shared when they coincide).
    """

    name: ClassVar[str] = "cg"

    max_iter: int = max_iter_field(250)
    rtol: float = tolerance_field(1e-6)
    progress_tol: float = tolerance_field(5e-4)
    store_first: int = store_first_field()
    store_growth: float = store_growth_field()
    true_residual: bool = flag_field(True)

    def _run(self, problem: Problem) -> SolveResult:
        tracker = Tracker.start(problem, self.max_iter, self.store_first, self.store_growth)
        reason = _iterate(self, problem, tracker)
        return tracker.result(self.name, reason, true_residual=self.true_residual, candidates=Candidates.AS_IS)


def _iterate(config: CG, problem: Problem, tracker: Tracker) -> StopReason:
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
        if pAp <= 0.0:
            tracker.direction(p, pAp, i, CandidateKind.CG_DIRECTION)
            return StopReason.NEGATIVE_CURVATURE
        alpha = rz / pAp
        # new arrays, never in place: stored iterates are references, and a bad step
        # must leave the last good (x, r) untouched
        x_next = x + alpha * p
        r_next = r - alpha * Ap
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
        rz = rz_next
        p *= beta
        p += z
    return StopReason.MAX_ITER
