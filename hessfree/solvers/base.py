"""The Krylov-solver interface: stop reasons, results, the shared config fields, and the
two pieces of Martens' practice every solver shares (iterate storage, progress test).

Every solver minimises the quadratic model

    q(x) = ½·xᵀAx − bᵀx,     b = −g,

whose stationary point solves A·x = b. When A is positive definite that is the Newton-type
step; when it is not, q is unbounded below along any d with dᵀAd < 0, and such a d,
turned to point downhill (d̃ = −sign(gᵀd)·d), is a useful step of its own.
"""

from __future__ import annotations

import abc
import enum
import math
from typing import Any, Callable, Sequence

import attrs
import numpy as np

from hessfree.errors import ConfigError
from hessfree.validate import bool_field, field_transformer, int_field, real_field

#: ``dot(a, b) -> float``: the inner product all solvers use (``numpy.dot`` by default).
Dot = Callable[[np.ndarray, np.ndarray], Any]
#: ``matvec(v) -> A·v``: any callable returning a new 1-D array of v's shape.
MatVec = Callable[[np.ndarray], np.ndarray]


class StopReason(enum.Enum):
    """Why a solve ended. Breakdowns are data, never exceptions."""

    CONVERGED = "converged"  # ‖r‖ ≤ rtol·‖b‖ (confirmed on b − A·x when true_residual is on)
    STAGNATED = "stagnated"  # the updated residual met rtol, the true one cannot: accuracy floor
    PROGRESS = "progress"  # Martens' relative progress of q fell below progress_tol
    MAX_ITER = "max_iter"  # the iteration budget ran out
    NEGATIVE_CURVATURE = "negative_curvature"  # CG met pᵀAp ≤ 0
    BREAKDOWN_RHO = "breakdown_rho"  # Bi-CG-STAB: r̂ᵀr or r̂ᵀAp̂ ≈ 0 (Lanczos breakdown)
    BREAKDOWN_OMEGA = "breakdown_omega"  # Bi-CG-STAB: ω ≈ 0 (stabilisation step stagnates)
    NON_FINITE = "non_finite"  # a matvec or a scalar became inf/NaN; x is the last finite iterate
    ZERO_RHS = "zero_rhs"  # b = 0: x = 0 is the answer, no matvec spent


class Curvature(enum.Enum):
    """Which curvature matrix a Hessian-free solve multiplies by (the solvers themselves
    only see a matvec; the method table and the trainer choose)."""

    EXACT = "exact"  # the Hessian of the loss, Hv by the R-operator
    GAUSS_NEWTON = "gauss_newton"  # JᵀH_L J, positive semi-definite


class CandidateKind(enum.Enum):
    """Where a descent candidate comes from."""

    ITERATE = "iterate"  # a stored iterate x_j
    SEARCH_P = "search_p"  # a Bi-CG-STAB search direction p̂_j with p̂ᵀAp̂ < 0
    SEARCH_S = "search_s"  # a Bi-CG-STAB stabilisation direction ŝ_j with ŝᵀAŝ < 0
    CG_DIRECTION = "cg_direction"  # the CG direction p with pᵀAp ≤ 0
    RESIDUAL = "residual"  # a MINRES residual r with rᵀAr ≤ 0 (non-positive-curvature certificate)


def _readonly(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _array(value) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 1:
        raise TypeError(f"expected a 1-D numpy array, found {type(value).__name__}")
    return _readonly(value)


@attrs.frozen(eq=False)
class Iterate:
    """A stored iterate x_i (read-only) with its model value q(x_i); for CG-backtracking."""

    iteration: int = attrs.field(validator=attrs.validators.instance_of(int))
    x: np.ndarray = attrs.field(converter=_array)
    q: float = attrs.field(converter=float)


@attrs.frozen(eq=False)
class NegativeCurvature:
    """A direction with dᵀAd ≤ 0, already oriented downhill (bᵀd ≥ 0, i.e. gᵀd ≤ 0).

    ``rayleigh`` = dᵀAd / dᵀd is the scale-free curvature (an upper bound on A's smallest
    eigenvalue); ``iteration`` is the solver iteration that produced it (1-based).
    """

    direction: np.ndarray = attrs.field(converter=_array)
    curvature: float = attrs.field(converter=float)
    rayleigh: float = attrs.field(converter=float)
    iteration: int = attrs.field(validator=attrs.validators.instance_of(int))
    kind: CandidateKind = attrs.field(validator=attrs.validators.instance_of(CandidateKind))


@attrs.frozen(eq=False)
class Candidate:
    """A descent candidate d̃ = −sign(gᵀd)·d for backtracking and Armijo.

    ``curvature`` = d̃ᵀAd̃ (negative: a negative-curvature direction; positive: a
    Newton-type one), ``slope`` = gᵀd̃ ≤ 0, ``q`` = q(d̃) = ½·curvature + slope.
    """

    direction: np.ndarray = attrs.field(converter=_array)
    curvature: float = attrs.field(converter=float)
    slope: float = attrs.field(converter=float)
    iteration: int = attrs.field(validator=attrs.validators.instance_of(int))
    kind: CandidateKind = attrs.field(validator=attrs.validators.instance_of(CandidateKind))

    @property
    def q(self) -> float:
        return 0.5 * self.curvature + self.slope


@attrs.frozen(eq=False)
class SolveResult:
    """What a solve produced and why it stopped. Every array in it is read-only.

    ``q_history[i]`` and ``residual_norms[i]`` belong to iterate i (index 0: the start);
    residuals are the recursively updated ones, free of matvecs. ``true_residual_norm`` is
    ‖b − A·x‖ recomputed at exit when the solver's ``true_residual`` option is on (that
    product is included in ``matvecs``, which counts every call of the operator).
    """

    x: np.ndarray = attrs.field(converter=_array)
    reason: StopReason = attrs.field(validator=attrs.validators.instance_of(StopReason))
    iterations: int = attrs.field(validator=attrs.validators.instance_of(int))
    matvecs: int = attrs.field(validator=attrs.validators.instance_of(int))
    q: float = attrs.field(converter=float)
    q_history: tuple[float, ...] = attrs.field(converter=tuple)
    residual_norms: tuple[float, ...] = attrs.field(converter=tuple)
    rhs_norm: float = attrs.field(converter=float)
    true_residual_norm: float | None
    iterates: tuple[Iterate, ...] = attrs.field(converter=tuple)
    negative_curvature: NegativeCurvature | None
    candidates: tuple[Candidate, ...] = attrs.field(converter=tuple)
    solver: str


# ----------------------------------------------------------------------- config fields
# Solver options use the package's validation vocabulary (``hessfree.validate``); the
# solver classes are ``@solver_config`` so an error names the option.
solver_config = attrs.frozen(field_transformer=field_transformer)


def max_iter_field(default: int):
    return int_field(default)


def tolerance_field(default: float):
    """A tolerance in [0, 1) (0 turns the test off)."""
    return real_field(default, low=0, high=1, high_open=True)


def store_first_field():
    return int_field(5)


def store_growth_field():
    return real_field(1.3, low=1, low_open=True)


def flag_field(default: bool):
    return bool_field(default)


# ------------------------------------------------------------------ Martens' practice
def storage_schedule(max_iter: int, first: int = 5, growth: float = 1.3) -> frozenset[int]:
    """Iterations whose iterates are kept for CG-backtracking: i = ⌈first·growthʲ⌉ ≤ max_iter.

    (The solver keeps the last iterate as well.) With the defaults: 5, 7, 9, 11, 15, 19,
    25, 32, 41, 54, 69, 90, 117, 152, 197 — O(log max_iter) vectors, not max_iter.
    """
    if max_iter < 1 or first < 1 or not growth > 1.0:
        raise ConfigError(f"storage_schedule: need max_iter ≥ 1, first ≥ 1, growth > 1; found {max_iter}, {first}, {growth}")
    keep, j = set(), 0
    while True:
        # round away representation noise (5·1.3² = 8.450000000000001) before the ceiling
        i = math.ceil(round(first * growth**j, 9))
        if i > max_iter:
            return frozenset(keep)
        keep.add(i)
        j += 1


def martens_progress_stop(q_history: Sequence[float], tol: float) -> bool:
    """Martens' relative-progress test on the model values q_0..q_i (i = len − 1).

    With window k = max(10, ⌈0.1·i⌉), stop when i > k, q_i < 0 and
    (q_i − q_{i−k}) / q_i < k·tol: the last k iterations reduced q by less than a
    fraction k·tol of its value. ``tol = 0`` disables the test.
    """
    i = len(q_history) - 1
    if tol <= 0.0:
        return False
    k = max(10, math.ceil(0.1 * i))
    if i <= k:
        return False
    q_i = q_history[i]
    return q_i < 0.0 and (q_i - q_history[i - k]) / q_i < k * tol


class KrylovSolver(abc.ABC):
    """A configured, stateless Krylov solver for A·x = b (the minimiser of q).

    Subclasses are frozen attrs classes; ``solve`` may be called any number of times, from
    any thread, and keeps nothing between calls. Every solver returns its **descent
    candidates** in ``SolveResult.candidates``, each with its slope gᵀd and curvature dᵀAd,
    under its own rules (CG: its iterates as they are; Bi-CG-STAB: iterates and
    negative-curvature directions turned downhill), so the trainer reads one shape.
    """

    name: str = "krylov"

    def solve(
        self,
        matvec: MatVec,
        b: np.ndarray,
        x0: np.ndarray | None = None,
        *,
        dot: Dot | None = None,
        precond: np.ndarray | None = None,
    ) -> SolveResult:
        """Solve A·x = b from ``x0`` (default 0).

        ``matvec(v)`` returns A·v (a new array); ``dot(a, b)`` is the inner product (the
        same code then runs on any vector layout); ``precond`` is the inverse diagonal
        M⁻¹ of a diagonal preconditioner (positive).
        """
        from hessfree.solvers._problem import prepare, zero_rhs_result

        problem = prepare(matvec, b, x0, dot, precond)
        if isinstance(problem, np.ndarray):
            return zero_rhs_result(problem, self.name)
        return self._run(problem)

    @abc.abstractmethod
    def _run(self, problem) -> SolveResult:
        """The solver proper, on validated and rescaled inputs (b ≠ 0)."""
