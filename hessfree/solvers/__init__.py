"""Krylov solvers for the Hessian-free inner problem A·x = −g (minimise q(x) = ½xᵀAx + gᵀx).

``CG`` (HF-CG, stops on negative curvature), ``BiCGStab`` (indefinite A, returns descent
candidates) and ``Hybrid`` (exact Hessian, Gauss-Newton after a negative-curvature event)
share one interface, :class:`KrylovSolver`, and one result type, :class:`SolveResult`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Mapping

import attrs

from hessfree.errors import ConfigError
from hessfree.solvers.base import (
    Candidate,
    CandidateKind,
    Curvature,
    Iterate,
    KrylovSolver,
    NegativeCurvature,
    SolveResult,
    StopReason,
    martens_progress_stop,
    storage_schedule,
)
from hessfree.solvers.bicgstab import BiCGStab
from hessfree.solvers.cg import CG
from hessfree.solvers.hybrid import Hybrid, hybrid_curvature

#: name → solver class, for the CLI (read-only)
SOLVERS: Mapping[str, type[KrylovSolver]] = MappingProxyType({"cg": CG, "bicgstab": BiCGStab, "hybrid": Hybrid})


def make_solver(name: str, **options) -> KrylovSolver:
    """``make_solver("cg", max_iter=100)``; ConfigError on an unknown name or option."""
    key = str(name).lower().replace("-", "").replace("_", "")
    if key not in SOLVERS:
        raise ConfigError(f"solver: expected one of {', '.join(SOLVERS)}, found {name!r}")
    cls = SOLVERS[key]
    known = {a.alias for a in attrs.fields(cls)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"{key} solver: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**options)


__all__ = [
    "CG",
    "BiCGStab",
    "Hybrid",
    "KrylovSolver",
    "SolveResult",
    "StopReason",
    "NegativeCurvature",
    "Candidate",
    "CandidateKind",
    "Curvature",
    "Iterate",
    "SOLVERS",
    "make_solver",
    "hybrid_curvature",
    "martens_progress_stop",
    "storage_schedule",
]
