"""Armijo backtracking line search on the full objective."""

from __future__ import annotations

import math
from typing import Callable

import attrs


@attrs.frozen
class LineSearchResult:
    """α (0 when no trial satisfied the condition), f(θ + α·p), and the trials spent."""

    alpha: float
    value: float
    trials: int
    extra: object = None  # whatever the objective returned beside its value at the accepted α

    @property
    def accepted(self) -> bool:
        return self.alpha > 0


def armijo(
    objective: Callable[[float], tuple[float, object]],
    f0: float,
    slope: float,
    *,
    c: float,
    shrink: float,
    max_trials: int,
    alpha0: float = 1.0,
    first: tuple[float, object] | None = None,
) -> LineSearchResult:
    """Largest α = alpha0·shrinkᵏ with f(θ + α·p) ≤ f0 + c·α·gᵀp, k < max_trials.

    ``objective(α)`` returns (f(θ + α·p), extra). ``first``, when given, is the already
    known value at alpha0 (e.g. from CG-backtracking) and is not evaluated again.
    A non-finite trial value never satisfies the condition. ``slope`` = gᵀp must be < 0.
    """
    alpha = alpha0
    trials = 0
    for k in range(max_trials):
        if k == 0 and first is not None:
            value, extra = first
        else:
            value, extra = objective(alpha)
            trials += 1
        if math.isfinite(value) and value <= f0 + c * alpha * slope:
            return LineSearchResult(alpha, value, trials, extra)
        alpha *= shrink
    return LineSearchResult(0.0, f0, trials, None)
