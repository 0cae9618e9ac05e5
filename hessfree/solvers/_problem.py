"""Machinery shared by the solvers: input checks, exact rescaling, bookkeeping, results.

Rescaling. The solvers work on b̃ = 2⁻ᴱ·b with ‖b̃‖ ∈ [½, 1): multiplying by a power of
two is exact in floating point, A is linear, so every iterate is the exact 2⁻ᴱ-multiple of
the unscaled one — but no inner product can under- or overflow (a float32 b of size 1e-30
has bᵀb = 1e-60, which is 0 in float32). Results are scaled back (x, directions by 2ᴱ,
q and curvatures by 2²ᴱ). E is found with ``dot`` alone, so it is the same on every rank
whatever the vector layout.
"""

from __future__ import annotations

import enum
import math
from typing import Callable

import attrs
import numpy as np

from hessfree.errors import InputError
from hessfree.solvers.base import (
    Candidate,
    CandidateKind,
    Iterate,
    NegativeCurvature,
    SolveResult,
    StopReason,
    storage_schedule,
)

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _vector(value, name: str, n: int | None, dtype) -> np.ndarray:
    array = np.asarray(value)
    if array.ndim != 1 or (n is not None and array.shape != (n,)):
        want = "a 1-D array" if n is None else f"shape ({n},)"
        raise InputError(f"{name}: expected {want}, found shape {array.shape}")
    if dtype is None:
        if array.dtype not in _FLOATS:
            raise InputError(f"{name}: expected float32 or float64, found dtype {array.dtype}")
    elif array.dtype != dtype:
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise InputError(f"{name}: expected a real vector ({dtype}), found dtype {array.dtype}")
        array = array.astype(dtype)
    if not np.isfinite(array).all():
        raise InputError(f"{name}: contains inf or NaN")
    return array


def rhs_exponent(b: np.ndarray, dot: Callable) -> int | None:
    """E with ‖2⁻ᴱ·b‖ ∈ [½, 1), or None when b = 0 (found with ``dot`` only)."""
    info = np.finfo(b.dtype)
    step = info.maxexp // 2  # a shift that cannot overflow a vector whose square underflowed
    enough = info.nmant - info.minexp  # 2^enough lifts the smallest subnormal above 1
    shift, scaled = 0, b
    for _ in range(16):
        with np.errstate(over="ignore", under="ignore"):  # detecting these is the point
            n2 = float(dot(scaled, scaled))
        if math.isnan(n2):
            raise InputError("b: its inner product with itself is NaN")
        if math.isinf(n2):
            shift -= step
        elif n2 < float(info.tiny):
            if n2 == 0.0 and shift >= enough:
                return None
            shift += step
        else:
            _, e = math.frexp(math.sqrt(n2))  # ‖scaled‖ = m·2ᵉ, m ∈ [½, 1)
            return e - shift
        scaled = np.ldexp(b, shift)
    raise InputError("b: could not find a finite scale for its norm (is dot a real inner product?)")


@attrs.define
class Problem:
    """One solve's inputs, in the scaled frame, with the matvec counter."""

    matvec: Callable
    b: np.ndarray  # 2⁻ᴱ·b
    x0: np.ndarray | None  # 2⁻ᴱ·x0, None for a zero start
    dot: Callable
    precond: np.ndarray | None
    exponent: int
    rhs_norm: float  # ‖b̃‖
    matvecs: int = 0

    @property
    def dtype(self) -> np.dtype:
        return self.b.dtype

    @property
    def eps(self) -> float:
        return float(np.finfo(self.b.dtype).eps)

    def apply(self, v: np.ndarray) -> np.ndarray:
        """A·v, counted, checked for shape, cast to the working dtype."""
        self.matvecs += 1
        out = np.asarray(self.matvec(v))
        if out.shape != v.shape:
            raise InputError(f"matvec: returned shape {out.shape} for an input of shape {v.shape}")
        if out.dtype != self.dtype:
            out = out.astype(self.dtype)
        return out

    def inner(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(self.dot(a, b))

    def norm(self, v: np.ndarray) -> float:
        v2 = self.inner(v, v)
        return math.sqrt(v2) if v2 >= 0.0 else math.nan

    def precondition(self, v: np.ndarray) -> np.ndarray:
        """M⁻¹·v for the diagonal preconditioner (v itself without one)."""
        return v if self.precond is None else self.precond * v

    def unscale(self, v: np.ndarray) -> np.ndarray:
        return np.ldexp(v, self.exponent) if self.exponent else v

    def unscale2(self, value: float) -> float:
        """value·2^(2E); ±inf when that overflows a Python float (q of a huge float64 b)."""
        if not self.exponent:
            return value
        try:
            return math.ldexp(value, 2 * self.exponent)
        except OverflowError:
            return math.copysign(math.inf, value)


def prepare(matvec, b, x0, dot, precond) -> Problem | np.ndarray:
    """Validate and rescale the inputs; for b = 0 return the zero vector instead."""
    if not callable(matvec):
        raise InputError(f"matvec: expected a callable, found {type(matvec).__name__}")
    if dot is None:
        dot = np.dot
    elif not callable(dot):
        raise InputError(f"dot: expected a callable, found {type(dot).__name__}")
    b = _vector(b, "b", None, None)
    if b.size == 0:
        raise InputError("b: is empty")
    n, dtype = b.shape[0], b.dtype
    if x0 is not None:
        x0 = _vector(x0, "x0", n, dtype)
    if precond is not None:
        precond = _vector(precond, "precond", n, dtype)
        if not (precond > 0).all():
            raise InputError("precond: the inverse diagonal must be positive")
    exponent = rhs_exponent(b, dot)
    if exponent is None:
        return np.zeros(n, dtype=dtype)
    b_scaled = np.ldexp(b, -exponent)
    if x0 is not None:
        x0 = np.ldexp(x0, -exponent)
        x0_norm2 = float(dot(x0, x0))
        if not math.isfinite(x0_norm2):
            raise InputError("x0: too large to represent at the scale of b")
        if x0_norm2 == 0.0:
            x0 = None
    problem = Problem(matvec, b_scaled, x0, dot, precond, exponent, 0.0)
    problem.rhs_norm = problem.norm(b_scaled)
    return problem


def zero_rhs_result(x: np.ndarray, solver: str) -> SolveResult:
    """b = 0: x = 0 minimises q whenever A is positive semi-definite, and costs nothing."""
    return SolveResult(
        x=x,
        reason=StopReason.ZERO_RHS,
        iterations=0,
        matvecs=0,
        q=0.0,
        q_history=(0.0,),
        residual_norms=(0.0,),
        rhs_norm=0.0,
        true_residual_norm=0.0,
        iterates=(Iterate(0, x, 0.0),),
        negative_curvature=None,
        candidates=(),
        solver=solver,
    )


class Candidates(enum.Enum):
    """Which descent candidates a solver hands the trainer."""

    #: the iterates after the start, as they are (CG: never flipped; a step with gᵀx ≥ 0
    #: is for the trainer to discard)
    AS_IS = "as-is"
    #: every stored iterate and the negative-curvature directions met, each turned
    #: downhill by d̃ = −sign(gᵀd)·d (Bi-CG-STAB, as in the paper)
    DOWNHILL = "downhill"


@attrs.define
class _Stored:
    iteration: int
    x: np.ndarray
    q: float
    bx: float  # bᵀx
    xax: float  # xᵀAx = xᵀ(b − r)


@attrs.define
class _Direction:
    direction: np.ndarray  # oriented downhill
    curvature: float
    rayleigh: float
    slope: float
    iteration: int
    kind: CandidateKind


def orient_downhill(d: np.ndarray, bd: float) -> tuple[np.ndarray, float]:
    """d̃ = −sign(gᵀd)·d with g = −b (sign(0) = −1, as in the paper) and its slope gᵀd̃ ≤ 0."""
    if bd < 0.0:  # gᵀd = −bᵀd > 0: d points uphill, flip it
        return -d, bd
    return d, -bd


@attrs.define
class Tracker:
    """Per-solve bookkeeping: q and residual histories, the iterate schedule, and the
    negative-curvature directions met (the first and the most negative Rayleigh quotient).

    Stored iterates are references: the solvers never modify an x in place.
    """

    problem: Problem
    schedule: frozenset[int]
    q_history: list[float] = attrs.field(factory=list)
    residual_norms: list[float] = attrs.field(factory=list)
    stored: list[_Stored] = attrs.field(factory=list)
    last: _Stored | None = None
    first_nc: _Direction | None = None
    worst_nc: _Direction | None = None
    true_norm: float | None = None  # ‖b − A·x‖ of the last recorded x, when known
    replaced_norm: float | None = None  # the true residual at the last residual replacement

    @classmethod
    def start(cls, problem: Problem, max_iter: int, first: int, growth: float) -> "Tracker":
        return cls(problem, storage_schedule(max_iter, first, growth))

    def model_terms(self, x: np.ndarray, r: np.ndarray) -> tuple[float, float, float]:
        """(q, bᵀx, xᵀAx) from x and r = b − A·x without a matvec:
        q = ½xᵀAx − bᵀx = −½·xᵀ(b + r) and xᵀAx = xᵀ(b − r)."""
        bx = self.problem.inner(self.problem.b, x)
        rx = self.problem.inner(r, x)
        return -0.5 * (bx + rx), bx, bx - rx

    def record(self, iteration: int, x: np.ndarray, q: float, bx: float, xax: float, rnorm: float) -> None:
        self.q_history.append(q)
        self.residual_norms.append(rnorm)
        self.last = _Stored(iteration, x, q, bx, xax)
        self.true_norm = None
        if iteration in self.schedule:
            self.stored.append(self.last)

    def direction(self, d: np.ndarray, curvature: float, iteration: int, kind: CandidateKind) -> None:
        """Note a direction with dᵀAd ≤ 0 (copied: the solvers update theirs in place)."""
        p = self.problem
        rayleigh = curvature / p.inner(d, d)
        first = self.first_nc is None
        worst = self.worst_nc is None or rayleigh < self.worst_nc.rayleigh
        if not (first or worst):
            return
        oriented, slope = orient_downhill(d, p.inner(p.b, d))
        entry = _Direction(oriented.copy() if oriented is d else oriented, curvature, rayleigh, slope, iteration, kind)
        if first:
            self.first_nc = entry
        if worst:
            self.worst_nc = entry

    # ------------------------------------------------------------------ results
    def _iterates(self) -> list[_Stored]:
        kept = list(self.stored)
        if not kept or kept[-1].iteration != self.last.iteration:
            kept.append(self.last)
        return kept

    def _negative_curvature(self) -> NegativeCurvature | None:
        d = self.first_nc
        if d is None:
            return None
        p = self.problem
        return NegativeCurvature(p.unscale(d.direction), p.unscale2(d.curvature), d.rayleigh, d.iteration, d.kind)

    def _direction_candidates(self) -> list[Candidate]:
        p, out = self.problem, []
        for d in (self.first_nc, self.worst_nc):
            if d is not None and not any(c is d for c in out):
                out.append(d)
        return [
            Candidate(p.unscale(d.direction), p.unscale2(d.curvature), p.unscale2(d.slope), d.iteration, d.kind)
            for d in out
        ]

    def downhill_iterates(self) -> list[Candidate]:
        """Every stored iterate (x ≠ 0) as d̃ = −sign(gᵀx)·x with its curvature xᵀAx."""
        p, out = self.problem, []
        for s in self._iterates():
            if self._at_zero_start(s):
                continue  # no direction at all
            d, slope = orient_downhill(s.x, s.bx)
            out.append(Candidate(p.unscale(d), p.unscale2(s.xax), p.unscale2(slope), s.iteration, CandidateKind.ITERATE))
        return out

    def iterates_as_they_are(self) -> list[Candidate]:
        """The iterates after the start (the start x₀ is no step of the solver's), unflipped,
        with slope gᵀx = −bᵀx and curvature xᵀAx = 2(q(x) − gᵀx) (from q(x) = ½xᵀAx + gᵀx):
        no product needed, and computed in the scaled frame, so nothing can overflow."""
        p, out = self.problem, []
        for s in self._iterates():
            if s.iteration == 0:
                continue
            slope = p.unscale2(-s.bx)
            out.append(Candidate(p.unscale(s.x), 2.0 * (p.unscale2(s.q) - slope), slope, s.iteration, CandidateKind.ITERATE))
        return out

    def _at_zero_start(self, s: _Stored) -> bool:
        return s.iteration == 0 and self.problem.x0 is None

    def result(self, solver: str, reason: StopReason, *, true_residual: bool, candidates: "Candidates") -> SolveResult:
        """The SolveResult for the last recorded iterate, scaled back to the caller's frame.

        With ``true_residual`` the residual ‖b − A·x‖ is reported: recomputed with one
        counted matvec unless already known (zero start, warm start that stopped at once,
        a confirmed convergence).
        """
        p = self.problem
        true_norm = None
        if true_residual:
            true_norm = self.true_norm
            if true_norm is None:
                x = self.last.x
                true_norm = p.norm(p.b) if self._at_zero_start(self.last) else p.norm(p.b - p.apply(x))
            if not math.isfinite(true_norm):
                true_norm = math.inf
        scale = math.ldexp(1.0, p.exponent)
        iterates = [Iterate(s.iteration, p.unscale(s.x), p.unscale2(s.q)) for s in self._iterates()]
        if candidates is Candidates.DOWNHILL:
            found = self.downhill_iterates() + self._direction_candidates()
        else:
            found = self.iterates_as_they_are()
        return SolveResult(
            x=iterates[-1].x,
            reason=reason,
            iterations=self.last.iteration,
            matvecs=p.matvecs,
            q=iterates[-1].q,
            q_history=[p.unscale2(q) for q in self.q_history],
            residual_norms=[scale * rn for rn in self.residual_norms],
            rhs_norm=scale * p.rhs_norm,
            true_residual_norm=None if true_norm is None else scale * true_norm,
            iterates=iterates,
            negative_curvature=self._negative_curvature(),
            candidates=found,
                solver=solver,
        )


def all_finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def start(tracker: Tracker) -> tuple[np.ndarray, np.ndarray, bool]:
    """Record iterate 0 and return (x_0, r_0 = b − A·x_0, ok).

    One matvec, only for a non-zero start. If A·x_0 is not finite, the start falls back
    to x_0 = 0 (always finite) and ``ok`` is False: the caller stops with NON_FINITE.
    """
    p = tracker.problem
    warm = p.x0 is not None
    if warm:
        x = p.x0.copy()
        r = p.b - p.apply(x)
        q, bx, xax = tracker.model_terms(x, r)
        rnorm = p.norm(r)
        if all_finite(q, rnorm):
            tracker.record(0, x, q, bx, xax, rnorm)
            tracker.true_norm = rnorm  # r_0 was computed, not updated: it is the true residual
            return x, r, True
        p.x0 = None  # the zero start is the last finite point we know
    x, r = np.zeros_like(p.b), p.b.copy()
    tracker.record(0, x, 0.0, 0.0, 0.0, p.rhs_norm)
    return x, r, not warm


def confirm_convergence(
    tracker: Tracker, target: float, enabled: bool
) -> tuple[StopReason | None, np.ndarray | None]:
    """Check a convergence claim of the recursively updated residual against the truth.

    The updated residual drifts from b − A·x in floating point (badly so for Bi-CG-STAB on
    ill-conditioned A). With ``enabled`` (the solver's ``true_residual`` option) the claim
    costs one matvec: CONVERGED if ‖b − A·x‖ ≤ target; STAGNATED if the true residual did
    not at least halve since the last replacement (the dtype's attainable accuracy is
    reached); otherwise ``(None, r_true)``: the caller replaces its residual by r_true
    (van der Vorst & Ye's residual replacement) and iterates on. Disabled, the claim is
    taken as it is.
    """
    if not enabled:
        return StopReason.CONVERGED, None
    p = tracker.problem
    r_true = p.b - p.apply(tracker.last.x)
    true_norm = p.norm(r_true)
    tracker.true_norm = true_norm
    if not math.isfinite(true_norm):
        return StopReason.NON_FINITE, None
    if true_norm <= target:
        return StopReason.CONVERGED, None
    if tracker.replaced_norm is not None and true_norm > 0.5 * tracker.replaced_norm:
        return StopReason.STAGNATED, None
    tracker.replaced_norm = true_norm
    tracker.residual_norms[-1] = true_norm
    return None, r_true
