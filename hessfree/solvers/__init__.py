"""Krylov solvers for the Hessian-free inner problem A·x = −g (minimise q(x) = ½xᵀAx + gᵀx).

``CG`` (HF-CG, stops on negative curvature), ``BiCGStab`` (indefinite A, returns
descent candidates) and ``MINRES`` (symmetric indefinite A, one product per step, stops
with a non-positive-curvature certificate) share one interface, :class:`KrylovSolver`, and one result type,
:class:`SolveResult`. Which solver and curvature a training method uses is declared in
the method table (``hessfree.methods``); the paper's Hybrid is CG plus a curvature policy
there, not a solver of its own.
"""

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
from hessfree.solvers.minres import MINRES, MinresResult

__all__ = [
    "CG",
    "BiCGStab",
    "MINRES",
    "MinresResult",
    "KrylovSolver",
    "SolveResult",
    "StopReason",
    "NegativeCurvature",
    "Candidate",
    "CandidateKind",
    "Curvature",
    "Iterate",
    "martens_progress_stop",
    "storage_schedule",
]
