"""Hybrid-CG (the paper's policy): CG on the exact Hessian, except for the one solve right
after a negative-curvature event, which uses the Gauss-Newton matrix.

The exact Hessian keeps all curvature information, but CG cannot use a negative-curvature
direction well; the Gauss-Newton matrix is positive semi-definite (with damping, definite)
so the solve after such an event is guaranteed a Newton-type descent step. Then the
exact Hessian is tried again.

The trainer stays ignorant of the policy: it hands every solver one operator, calls
``solve(op, b, x0, previous=last_result)``, and reads ``result.curvature`` only for its
logs. Hybrid needs that operator to carry ``op.exact`` and ``op.gauss_newton`` (callables).
"""

from __future__ import annotations

from typing import ClassVar

import attrs
import numpy as np

from hessfree.errors import ConfigError
from hessfree.solvers._problem import prepare, zero_rhs_result
from hessfree.solvers.base import Curvature, SolveResult
from hessfree.solvers.cg import CG, check_previous, run_cg


def hybrid_curvature(previous: SolveResult | None) -> Curvature:
    """GAUSS_NEWTON right after a solve that met negative curvature on a non-Gauss-Newton
    operator; EXACT otherwise (first solve, no event, or the Gauss-Newton solve just done)."""
    if previous is None or previous.negative_curvature is None:
        return Curvature.EXACT
    if previous.curvature is Curvature.GAUSS_NEWTON:
        return Curvature.EXACT
    return Curvature.GAUSS_NEWTON


def _operators(matvec):
    exact = getattr(matvec, "exact", None)
    gauss_newton = getattr(matvec, "gauss_newton", None)
    if not callable(exact) or not callable(gauss_newton):
        raise ConfigError(
            "hybrid solver: the curvature operator must provide callables .exact (Hessian-vector "
            f"product) and .gauss_newton (Gauss-Newton product); {type(matvec).__name__} does not"
        )
    return exact, gauss_newton


@attrs.frozen
class Hybrid(CG):
    """Hybrid-CG: CG (with all of CG's options) plus the curvature policy above,
    ``Hybrid(max_iter=250, rtol=1e-6, progress_tol=5e-4)``."""

    name: ClassVar[str] = "hybrid"

    def solve(self, matvec, b, x0=None, *, dot=None, previous=None, precond=None) -> SolveResult:
        check_previous(previous)
        exact, gauss_newton = _operators(matvec)
        curvature = hybrid_curvature(previous)
        operator = gauss_newton if curvature is Curvature.GAUSS_NEWTON else exact
        problem = prepare(operator, b, x0, dot, precond)
        if isinstance(problem, np.ndarray):
            result = zero_rhs_result(problem, self.name)
        else:
            result = run_cg(self, problem, self.name)
        return attrs.evolve(result, curvature=curvature)
