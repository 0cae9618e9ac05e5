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


def sufficient_decrease(
    objective: Callable[[float], tuple[float, object]],
    f0: float,
    predicted: Callable[[float], float],
    *,
    c: float,
    shrink: float,
    max_trials: int,
    grow: float = 1.0,
    max_forward: int = 0,
    first: tuple[float, object] | None = None,
) -> LineSearchResult:
    """A step length α with f(α) ≤ f0 + c·predicted(α), from α = 1, tracking both ways.

    ``predicted(α) < 0`` is the model's change along the path (for a negative-curvature
    step α·gᵀd + ½α²·dᵀHd; for the curvilinear path α²·(gᵀs + ½dᵀHd)). When α = 1
    satisfies the condition and ``max_forward`` > 0, α grows by ``grow`` while the
    condition still holds *and* the objective keeps decreasing (Liu & Roosta's forward
    tracking; at most ``max_forward`` trials); otherwise α shrinks by ``shrink`` until it
    holds (at most ``max_trials`` trials in all, as :func:`armijo`). A non-finite value
    never satisfies the condition. ``first`` is the already known value at α = 1.
    """

    def ok(alpha: float, value: float) -> bool:
        return math.isfinite(value) and value <= f0 + c * predicted(alpha)

    alpha, trials = 1.0, 0
    if first is not None:
        value, extra = first
    else:
        value, extra = objective(alpha)
        trials += 1
    if ok(alpha, value):
        for _ in range(max_forward):
            longer = alpha * grow
            v, e = objective(longer)
            trials += 1
            if not (ok(longer, v) and v < value):
                break
            alpha, value, extra = longer, v, e
        return LineSearchResult(alpha, value, trials, extra)
    for _ in range(max_trials - 1):
        alpha *= shrink
        value, extra = objective(alpha)
        trials += 1
        if ok(alpha, value):
            return LineSearchResult(alpha, value, trials, extra)
    return LineSearchResult(0.0, f0, trials, None)
