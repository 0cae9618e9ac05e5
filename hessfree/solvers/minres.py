"""MINRES with non-positive-curvature (NPC) detection (Liu & Roosta; Newton-MR).

MINRES solves a symmetric, possibly indefinite or singular A·x = b with one product per
iteration: the Lanczos process builds an orthonormal basis V_k of the Krylov space
K_k(A, r_0) with A·V_k = V_{k+1}·T̄_k (T̄_k tridiagonal, (k+1)×k, diagonal α_j,
off-diagonal β_j), and x_k = x_0 + V_k·y_k minimises ‖b − A·x‖ over x_0 + K_k. The small
least-squares problem min ‖β_1·e_1 − T̄_k·y‖ is solved by updating a QR factorisation of
T̄_k with one 2×2 reflection [c s; s −c] per step (Paige & Saunders 1975; the same
conventions as SciPy's minres, c_0 = −1, s_0 = 0):

    [δ_k⁽²⁾  ε_{k+1}  ]   [c_{k−1}   s_{k−1}] [δ_k⁽¹⁾  0      ]
    [γ_k⁽¹⁾  δ_{k+1}⁽¹⁾] = [s_{k−1}  −c_{k−1}] [α_k     β_{k+1}],

    γ_k⁽²⁾ = √(γ_k⁽¹⁾² + β_{k+1}²),  c_k = γ_k⁽¹⁾/γ_k⁽²⁾,  s_k = β_{k+1}/γ_k⁽²⁾,
    τ_k = c_k·φ_{k−1},  φ_k = s_k·φ_{k−1} = ‖r_k‖,  x_k = x_{k−1} + τ_k·d_k,
    d_k = (v_k − δ_k⁽²⁾·d_{k−1} − ε_k·d_{k−2}) / γ_k⁽²⁾.

The residual is carried as a vector too (one axpy, no product), as Liu & Roosta do:

    r_k = s_k²·r_{k−1} − φ_k·c_k·v_{k+1}.

Why: with Q_k = G_k⋯G_1 the product of the reflections, r_k = φ_k·V_{k+1}·Q_kᵀe_{k+1}, and
G_k·e_{k+1} = s_k·e_k − c_k·e_{k+1} with Q_{k−1}ᵀe_k = r_{k−1}/φ_{k−1} gives the update.
It serves the model value q(x_k) and the candidate curvature x_kᵀAx_k = x_kᵀ(b − r_k)
(the Tracker's product-free formula: the two inner products bᵀx_k and r_kᵀx_k per step,
shared with q), the convergence test and the NPC certificate. (The Lanczos route,
(x_k − x_0)ᵀA(x_k − x_0) = y_kᵀT_ky_k, would need the coefficients y_k, which MINRES never
forms: its short recurrences update x_k directly.)

**The NPC test** (derived here, Liu & Roosta's condition c_{k−1}·γ_k⁽¹⁾ ≥ 0). Q_{k−1}
triangularises the first k−1 columns of T_k, so its last row meets T_k only in the
diagonal: e_kᵀ·Q_{k−1}·T_k = γ_k⁽¹⁾·e_kᵀ. With r_{k−1} = φ_{k−1}·V_k·Q_{k−1}ᵀe_k and
V_kᵀAV_k = T_k,

    r_{k−1}ᵀ A r_{k−1} = φ_{k−1}² · e_kᵀQ_{k−1}T_kQ_{k−1}ᵀe_k = φ_{k−1}²·γ_k⁽¹⁾·(Q_{k−1})_{kk}
                      = −c_{k−1}·γ_k⁽¹⁾·φ_{k−1}²          ((Q_{k−1})_{kk} = −c_{k−1}).

So ρ_{k−1} := −c_{k−1}·γ_k⁽¹⁾ is exactly the Rayleigh quotient r_{k−1}ᵀAr_{k−1}/‖r_{k−1}‖²,
available at iteration k right after the product A·v_k, before x_k is formed. When
ρ_{k−1} ≤ 0 (and ``detect_npc`` is on) the solver stops with NEGATIVE_CURVATURE, keeps
x_{k−1} and reports r_{k−1} (curvature ρ_{k−1}·‖r_{k−1}‖²) through the Tracker. Started
from x_0 = 0, r_{k−1} is already downhill: A·x_{k−1} ⟂ r_{k−1} (the least-squares
optimality), so bᵀr_{k−1} = ‖r_{k−1}‖², i.e. gᵀr_{k−1} = −‖r_{k−1}‖² < 0; the Tracker
orients it anyway. For the first iteration ρ_0 = α_1 = r_0ᵀAr_0/‖r_0‖² (c_0 = −1).
Zero curvature counts (ρ = 0): an inconsistent system (b ∉ range A, so q is unbounded
below) ends this way in exact arithmetic — at the grade, T_k is singular, γ_k⁽¹⁾ = 0, and
r_{k−1} is the least-squares residual, in null(A).

By the same algebra ‖A·r_{k−1}‖ = φ_{k−1}·√(γ_k⁽¹⁾² + δ_{k+1}⁽¹⁾²) (SciPy's "Arnorm"), also
free; it drives the least-squares stop below.

**What holds for the iterates** (x_0 = 0, exact arithmetic). MINRES equals the conjugate
residual method (CR): x_k = x_{k−1} + a_k·p_k, p_k = r_{k−1} + b_k·p_{k−1}, with
a_k = ρ_{k−1}‖r_{k−1}‖²/‖Ap_k‖², b_k = ρ_{k−1}‖r_{k−1}‖²/(ρ_{k−2}‖r_{k−2}‖²), and its
residuals are A-orthogonal (r_iᵀAr_j = 0, i ≠ j). While no NPC was met (ρ_0, …, ρ_{k−1} > 0,
always the case for positive-definite A) every a_j, b_j > 0, so x_k = Σ_{j<k} e_j·r_j with
coefficients e_j > 0 that grow with k. With bᵀr_j = ‖r_j‖² this gives

    gᵀx_k = −Σ_j e_j‖r_j‖² < gᵀx_{k−1} < … < 0   and   x_kᵀAx_k = Σ_j e_j²·ρ_j‖r_j‖² > 0   (g = −b):

every iterate is a descent direction for q with positive curvature, and −gᵀx_k grows
monotonically. With NPC detection on this holds for *any* symmetric A, since x_k is only
formed after ρ_{k−1} > 0 was checked. For positive-definite A moreover q(x_k) decreases
strictly (Fong & Saunders 2012: ‖x_k − x*‖_A decreases), so gᵀx_k < −½·x_kᵀAx_k < 0; on
indefinite A before NPC the tests observe q decreasing too, but that is not proved here.
For a warm start all of this holds for the step x_k − x_0 with r_0 = b − A·x_0 in place of b
(a descent direction of q at x_0). Besides, for any symmetric A, gᵀA·x_k = −‖A·x_k‖²
(from A·x_k ⟂ r_k): x_k always decreases ‖g + A·x‖. In floating point these hold up to
rounding; MINRES's attainable accuracy on ill-conditioned A is worse than CG's (its
residual gap grows like eps·κ², Sleijpen, van der Vorst & Modersitzki 2000).

**Preconditioning**: a diagonal positive M⁻¹ = D is supported. MINRES then runs on the
symmetric D^½·A·D^½ (without forming square roots): the Lanczos vectors w_j live in
residual space and u_j = D·w_j in solution space, β_{k+1} = √(w̄ᵀD·w̄), the
monotonically decreasing φ_k is ‖r_k‖_D = √(r_kᵀD·r_k), the NPC test is on the
preconditioned residual: the direction reported is D·r_{k−1}, with
(D·r)ᵀA(D·r) = ρ_{k−1}·r_{k−1}ᵀD·r_{k−1} ≤ 0, and the Ritz values are those of D^½AD^½.
``residual_norms`` and the convergence test use the plain 2-norm ‖r_k‖, as CG does.

**Stops.** CONVERGED: ‖r_k‖ ≤ rtol·‖b‖ (confirmed on b − A·x with ``true_residual``, one
product; STAGNATED if the true residual cannot follow). NEGATIVE_CURVATURE: ρ_{k−1} ≤ 0.
STAGNATED, keeping x_{k−1}, for a least-squares solution: with root_k = ‖A·r_{k−1}‖/‖r_{k−1}‖
(free, above) and ‖A‖ estimated by the largest ‖A·v_j‖ = ‖T̄ e_j‖ met (≤ ‖A‖),

* root_k ≤ max(rtol, √eps)·‖A‖ (SciPy's istop = 2, never tighter than √eps): x_{k−1}
  minimises ‖b − A·x‖ to that tolerance while ‖r_{k−1}‖ is above the target, so b is
  (numerically) not in range(A) — an inconsistent system, where q has no minimiser;
* root_k > root_{k−1} ≤ 10·√eps·‖A‖: in exact arithmetic root keeps falling (γ⁽¹⁾ is the
  decaying solution of a three-term recurrence); once rounding has excited the growing
  one, the next steps blow x up along null(A) by many orders of magnitude, so stop.

Together they keep the iterates of an inconsistent system finite and of moderate size
(an LS solution, not the minimum-norm one: x keeps a component along null(A)). In exact
arithmetic an inconsistent system instead ends in zero curvature (NPC) at the grade: T_k
turns singular, γ_k⁽¹⁾ = 0, and r_{k−1} is the LS residual, in null(A). STAGNATED also
when the Lanczos process ends (β_{k+1} = 0) on an x_k whose true residual misses the
target. PROGRESS: Martens' relative-progress test on q, off by default (meaningful where
q decreases monotonically). NON_FINITE: a product or scalar became inf/NaN (x is the last
finite iterate). MAX_ITER. Consistent singular systems converge, from x_0 = 0, to the
minimum-norm solution (the iterates stay in K(A, b) ⊆ range(A)).

Every inner product goes through ``dot``, so the same code runs on any vector layout.
Per iteration: one product, five inner products (α, β, bᵀx, rᵀx, ‖r‖).
"""

from __future__ import annotations

import math
from typing import ClassVar

import attrs
import numpy as np

from hessfree.solvers._problem import Candidates, Problem, Tracker, all_finite, confirm_convergence, start
from hessfree.solvers.base import (
    CandidateKind,
    KrylovSolver,
    SolveResult,
    StopReason,
    flag_field,
    martens_progress_stop,
    max_iter_field,
    store_first_field,
    store_growth_field,
    tolerance_field,
)

#: The kind the NPC residual is reported with. CandidateKind has no member for a MINRES
#: residual yet; ``RESIDUAL`` is used as soon as base.py defines it.
NPC_KIND: CandidateKind = getattr(CandidateKind, "RESIDUAL", CandidateKind.CG_DIRECTION)


def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@attrs.frozen(eq=False)
class MinresResult(SolveResult):
    """A :class:`SolveResult` plus the Lanczos tridiagonal T_k of the solve.

    ``lanczos_alpha`` (α_1..α_k) and ``lanczos_beta`` (β_2..β_k) are the diagonal and
    off-diagonal of T_k = V_kᵀAV_k (of D^½AD^½ with a preconditioner), k = the number of
    Lanczos steps taken (products with A, not counting r_0 or the true residual);
    ``ritz_min`` ≤ ``ritz_max`` are its extreme eigenvalues — by interlacing
    λ_min(A) ≤ ritz_min and ritz_max ≤ λ_max(A), and after an NPC exit (without a
    preconditioner) ritz_min ≤ the certificate's Rayleigh quotient ≤ 0. NaN when no step
    was taken. The Lanczos scalars do not depend on b's scale. ``ritz_min``/``ritz_max``
    cost O(k) memory and O(53·k) scalar work (Sturm bisection), not a dense k×k matrix.
    """

    lanczos_alpha: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    lanczos_beta: tuple[float, ...] = attrs.field(default=(), converter=_floats)
    ritz_min: float = attrs.field(default=math.nan, converter=float)
    ritz_max: float = attrs.field(default=math.nan, converter=float)

    def tridiagonal(self) -> np.ndarray:
        """T_k as a dense k×k float64 matrix."""
        a, b = np.asarray(self.lanczos_alpha), np.asarray(self.lanczos_beta)
        return np.diag(a) + np.diag(b, 1) + np.diag(b, -1)

    def ritz_values(self) -> np.ndarray:
        """All eigenvalues of T_k, ascending (dense eigvalsh: O(k³), on demand)."""
        return np.linalg.eigvalsh(self.tridiagonal()) if self.lanczos_alpha else np.empty(0)


@attrs.frozen
class MINRES(KrylovSolver):
    """MINRES with NPC detection: ``MINRES(max_iter=250, rtol=1e-6, progress_tol=0.0)``.

    Stops on ‖r‖ ≤ rtol·‖b‖ (CONVERGED, confirmed on b − A·x when ``true_residual`` is on;
    STAGNATED when the true residual cannot follow), on r_{k−1}ᵀAr_{k−1} ≤ 0
    (NEGATIVE_CURVATURE, when ``detect_npc`` is on — the default; off, MINRES solves
    indefinite systems through), on a least-squares solution of an inconsistent system
    (STAGNATED), on Martens' progress test when ``progress_tol`` > 0 (PROGRESS), on a
    non-finite value (NON_FINITE) or after ``max_iter`` products (MAX_ITER). ``iterations``
    counts products with A (Lanczos steps) whose iterate was formed; after an NPC or
    least-squares exit at step k the result holds x_{k−1}. Keeps the iterates at
    ⌈store_first·store_growthʲ⌉ and the last, and returns them as candidates turned
    downhill, with their curvature xᵀAx = xᵀ(b − r) from the carried residual (no product),
    plus the NPC residual (kind :data:`NPC_KIND`). ``precond`` (the positive inverse
    diagonal M⁻¹) is supported. One product per iteration; returns a
    :class:`MinresResult` (a SolveResult with the Lanczos tridiagonal and its extreme
    Ritz values).
    """

    name: ClassVar[str] = "minres"

    max_iter: int = max_iter_field(250)
    rtol: float = tolerance_field(1e-6)
    progress_tol: float = tolerance_field(0.0)
    store_first: int = store_first_field()
    store_growth: float = store_growth_field()
    true_residual: bool = flag_field(True)
    detect_npc: bool = flag_field(True)

    def solve(self, matvec, b, x0=None, *, dot=None, precond=None) -> MinresResult:
        result = super().solve(matvec, b, x0, dot=dot, precond=precond)
        return result if isinstance(result, MinresResult) else _with_lanczos(result, [], [])

    def _run(self, problem: Problem) -> MinresResult:
        tracker = Tracker.start(problem, self.max_iter, self.store_first, self.store_growth)
        alphas: list[float] = []
        betas: list[float] = []  # β_2, β_3, … (β_{k+1} of each step)
        reason = _iterate(self, problem, tracker, alphas, betas)
        result = tracker.result(self.name, reason, true_residual=self.true_residual, candidates=Candidates.DOWNHILL)
        return _with_lanczos(result, alphas, betas[: max(len(alphas) - 1, 0)])


def _with_lanczos(result: SolveResult, alphas: list[float], betas: list[float]) -> MinresResult:
    values = {a.alias: getattr(result, a.name) for a in attrs.fields(type(result))}
    lo, hi = tridiagonal_extremes(alphas, betas) if alphas else (math.nan, math.nan)
    return MinresResult(**values, lanczos_alpha=alphas, lanczos_beta=betas, ritz_min=lo, ritz_max=hi)


def _iterate(config: MINRES, problem: Problem, tracker: Tracker, alphas: list[float], betas: list[float]) -> StopReason:
    """The MINRES recurrence; leaves the last good iterate in the tracker, returns why it
    stopped. Vectors are never modified in place once shared (stored iterates are
    references; a failed step must leave the last good state intact)."""
    x, r, ok = start(tracker)
    if not ok:
        return StopReason.NON_FINITE
    target = config.rtol * problem.rhs_norm
    if tracker.residual_norms[-1] <= target:
        return StopReason.CONVERGED
    # least-squares stops (module docstring): solved to tolerance, never asked beyond √eps;
    # rounding-driven growth of ‖A·r‖/‖r‖ once it is below floor·10
    floor = math.sqrt(problem.eps)
    ls_tol = max(config.rtol, floor)
    root_prev = math.inf

    z = problem.precondition(r)
    phi2 = problem.inner(r, z)  # rᵀDr
    if not all_finite(phi2):
        return StopReason.NON_FINITE
    if not phi2 > 0.0:  # rᵀDr underflowed: nothing to build a Krylov space on
        return StopReason.STAGNATED
    phi = math.sqrt(phi2)  # φ_0 = β_1
    w_prev, w, u = None, r / phi, z / phi  # Lanczos vectors: w residual space, u = D·w
    beta = phi  # β_k (the coupling to w_prev)
    c, s = -1.0, 0.0  # the previous reflection (c_0, s_0)
    delta1 = 0.0  # δ_k⁽¹⁾
    eps_k = 0.0  # ε_k
    d_prev = d_prev2 = None  # d_{k−1}, d_{k−2}
    anorm = 0.0  # max_j ‖A·v_j‖ ≤ ‖A‖

    for k in range(1, config.max_iter + 1):
        Au = problem.apply(u)
        alpha = problem.inner(u, Au)  # non-finite if A·u is
        if not all_finite(alpha):
            return StopReason.NON_FINITE
        w_bar = Au - alpha * w  # a new array: the operator may reuse its output buffer
        if w_prev is not None:
            w_bar -= beta * w_prev
        z_bar = problem.precondition(w_bar)
        beta_next2 = problem.inner(w_bar, z_bar)
        if not all_finite(beta_next2) or beta_next2 < 0.0:
            return StopReason.NON_FINITE
        beta_next = math.sqrt(beta_next2)  # β_{k+1}
        alphas.append(alpha)
        betas.append(beta_next)

        # apply the previous reflection to the new column of T̄_k
        delta2 = c * delta1 + s * alpha  # δ_k⁽²⁾
        gamma1 = s * delta1 - c * alpha  # γ_k⁽¹⁾
        eps_next = s * beta_next  # ε_{k+1}
        delta1_next = -c * beta_next  # δ_{k+1}⁽¹⁾
        anorm = max(anorm, math.sqrt((beta * beta if k > 1 else 0.0) + alpha * alpha + beta_next2))

        # NPC: ρ_{k−1} = −c_{k−1}·γ_k⁽¹⁾ = r_{k−1}ᵀAr_{k−1} / ‖r_{k−1}‖² (module docstring)
        rho = -c * gamma1
        if config.detect_npc and rho <= 0.0:
            direction = problem.precondition(r)  # D·r_{k−1} (r_{k−1} itself without D)
            tracker.direction(direction, rho * problem.inner(r, direction), k, NPC_KIND)
            return StopReason.NEGATIVE_CURVATURE
        # least squares: root = ‖A·r_{k−1}‖/‖r_{k−1}‖ = √(γ_k⁽¹⁾² + δ_{k+1}⁽¹⁾²) ≤ tol·‖A‖
        # means x_{k−1} already minimises ‖b − A·x‖ (to tolerance); with ‖r_{k−1}‖ still
        # above the target, b is (numerically) not in range(A). It also guarantees
        # γ_k⁽²⁾ ≥ root > 0 below: no division by zero.
        root = math.hypot(gamma1, delta1_next)
        if root <= ls_tol * anorm:
            return StopReason.STAGNATED
        # root rising again from below 10·√eps·‖A‖: in exact arithmetic it would go on
        # falling (γ⁽¹⁾ follows the decaying solution of a three-term recurrence); in
        # floating point the growing solution has taken over and the next steps would
        # blow x up along null(A) (inconsistent systems). Keep x_{k−1}.
        if root > root_prev and root_prev <= 10.0 * floor * anorm:
            return StopReason.STAGNATED
        root_prev = root

        gamma2 = math.hypot(gamma1, beta_next)  # γ_k⁽²⁾
        c_next, s_next = gamma1 / gamma2, beta_next / gamma2
        tau = c_next * phi  # τ_k
        phi_next = s_next * phi  # φ_k
        d = u.copy() if d_prev is None else u - delta2 * d_prev
        if d_prev2 is not None:
            d -= eps_k * d_prev2
        d /= gamma2
        x_next = x + tau * d
        if beta_next > 0.0:
            w_next = w_bar / beta_next
            u_next = w_next if problem.precond is None else z_bar / beta_next
        else:  # the Krylov space is invariant: s_k = 0, φ_k = 0, x_k is exact
            w_next = u_next = np.zeros_like(w)
        r_next = (s_next * s_next) * r - (phi_next * c_next) * w_next
        q, bx, xax = tracker.model_terms(x_next, r_next)
        rnorm = problem.norm(r_next)
        if not all_finite(tau, phi_next, q, rnorm):
            return StopReason.NON_FINITE
        tracker.record(k, x_next, q, bx, xax, rnorm)

        x, r, phi = x_next, r_next, phi_next
        w_prev, w, u, beta = w, w_next, u_next, beta_next
        c, s, delta1, eps_k = c_next, s_next, delta1_next, eps_next
        d_prev2, d_prev = d_prev, d

        if rnorm <= target:
            reason, r_true = confirm_convergence(tracker, target, config.true_residual)
            if reason is not None:
                return reason
            r = r_true  # residual replacement; the Lanczos recurrence does not use r
        if beta_next == 0.0:
            return StopReason.STAGNATED  # exhausted, and the true residual missed the target
        if martens_progress_stop(tracker.q_history, config.progress_tol):
            return StopReason.PROGRESS
    return StopReason.MAX_ITER


# --------------------------------------------------------------------------- Ritz values
def _count_below(alphas, betas, x: float, pivmin: float) -> int:
    """Eigenvalues of the symmetric tridiagonal (alphas, betas) below x (Sturm count via
    the LDLᵀ pivots of T − x·I)."""
    count, pivot = 0, 1.0
    for i, a in enumerate(alphas):
        pivot = a - x - (betas[i - 1] ** 2 / pivot if i else 0.0)
        if abs(pivot) < pivmin:
            pivot = -pivmin
        if pivot < 0.0:
            count += 1
    return count


def tridiagonal_extremes(alphas, betas) -> tuple[float, float]:
    """(θ_min, θ_max) of the symmetric tridiagonal with diagonal ``alphas`` and
    off-diagonal ``betas``, by bisection on Sturm counts: O(k) memory, O(k·53) work,
    accurate to a few eps·‖T‖ (no dense k×k matrix)."""
    a = [float(v) for v in alphas]
    b = [float(v) for v in betas]
    k = len(a)
    if k == 0:
        return math.nan, math.nan
    radius = [abs(b[i - 1]) if i else 0.0 for i in range(k)]
    for i in range(k - 1):
        radius[i] += abs(b[i])
    lo = min(ai - ri for ai, ri in zip(a, radius))  # Gershgorin
    hi = max(ai + ri for ai, ri in zip(a, radius))
    scale = max(abs(lo), abs(hi))
    if scale == 0.0:
        return 0.0, 0.0
    lo, hi = lo - 4.0 * np.finfo(np.float64).eps * scale, hi + 4.0 * np.finfo(np.float64).eps * scale
    pivmin = float(np.finfo(np.float64).tiny) * max(1.0, max((v * v for v in b), default=1.0))

    def smallest_with(count: int) -> float:
        left, right = lo, hi  # count_below(left) < count ≤ count_below(right) (right ≥ θ)
        while right - left > 2.0 * np.finfo(np.float64).eps * scale:
            mid = 0.5 * (left + right)
            if mid <= left or mid >= right:
                break
            if _count_below(a, b, mid, pivmin) >= count:
                right = mid
            else:
                left = mid
        return 0.5 * (left + right)

    return smallest_with(1), smallest_with(k)
