"""Negative-curvature steps: lengths, predicted decreases, the choice, the damping floor.

Pure arithmetic on reduced scalars (every rank computes the same numbers from the same
replicated vectors), used by the HF step in ``hessfree.train.hf``. Notation: g the
gradient, H the *undamped* curvature of the objective (the Krylov operator is
B = H + λI; weight decay μ belongs to H), d a direction with dᵀHd < 0 turned downhill
(gᵀd ≤ 0), u = d/‖d‖ and R = uᵀHu its Rayleigh quotient, s the Newton-type candidate.

**Length** (Curtis & Robinson 2019; Royer & Wright 2018 for gᵀu = 0). Along u the
quadratic model is unbounded below, so the length comes from the cubic model

    m(t) = t·gᵀu + ½t²·R + t³/(6κ),     t* = κ·(−R + √(R² − 2gᵀu/κ)),

κ = 1/L an estimate of the inverse Lipschitz constant of H along the path, carried from
step to step and learnt from every accepted step (:func:`next_scale`):

* a negative-curvature step accepted at α: κ ← κ·α (t* ∝ κ: the search found the length,
  and forward tracking lets it grow by up to 2¹⁰ in one step);
* a Newton-type step s: its remainder ε = f(θ+s) − f(θ) − q(s) bounds L from below when
  positive, ε ≤ L‖s‖³/6, so κ ← √(κ·κ̂) with the secant estimate κ̂ = ‖s‖³/(6ε); when f
  fell below the quadratic model (ε ≤ 0) nothing bounds L and κ doubles;
* a curvilinear step accepted at α: κ ← κ·α;
* a failed negative-curvature search: κ ← κ/4.

κ starts at 1 (L = 1 in the units of θ); near a saddle of a network with small weights the
model remainders are tiny and κ grows. With gᵀu = 0 the step is t* = 2κ|R|: Royer &
Wright's |R|-long step for L = 2/κ.

**Choice** (Gould, Lucidi, Roma & Toint 2000; the decreases as Curtis & Robinson compare
them). The Newton-type candidate s predicts q(s) = gᵀs + ½sᵀHs, its quadratic model kept
honest by the Levenberg–Marquardt damping; the negative-curvature step predicts
m(t*) = t*·gᵀu + ½t*²R + t*³/(6κ), its cubic model kept honest by κ (the quadratic model
alone would promise an unbounded decrease: on digits the negative-curvature steps chosen
by it decreased f by 4–30% of what it predicted). The rule ``scaled`` takes the step
predicting the larger decrease.

**Acceptance.** A negative-curvature step is accepted on f(θ+αd) ≤ f + c·(α·gᵀd + ½α²dᵀHd)
(the sufficient-decrease test of the model along d: for gᵀd = 0 the σα²·½dᵀHd test of
Royer & Wright), with forward tracking (Liu & Roosta): α grows by :data:`GROW` while the
test holds and f keeps falling. The curvilinear path θ + α²s + αd (Moré & Sorensen 1979)
is accepted on f ≤ f + c·α²·(gᵀs + ½dᵀHd), by backtracking.

**Damping floor** (``damping_rule = "indefinite"``): λ ≥ :data:`FLOOR_FACTOR`·|ν| where
ν < 0 is the most negative curvature the previous solve met (a Rayleigh quotient of one of
its vectors, or its smallest Ritz value): free, and B is positive definite as far as that
solve could see.
"""

from __future__ import annotations

import math

#: forward-tracking factor and the most forward trials of one search
GROW = 2.0
MAX_FORWARD = 10
#: κ stays within these bounds
SCALE_MIN, SCALE_MAX = 1e-8, 1e8
#: the indefinite damping rule keeps λ ≥ FLOOR_FACTOR·|most negative curvature seen|
FLOOR_FACTOR = 1.5


def cubic_length(rayleigh: float, slope: float, scale: float) -> float:
    """t* > 0 minimising t·slope + ½t²·rayleigh + t³/(6·scale) over t > 0.

    ``slope`` = gᵀu ≤ 0 and ``rayleigh`` = uᵀHu < 0 for a unit u; ``scale`` = κ > 0.
    Both terms under the square root are non-negative, so nothing cancels.
    """
    if not (rayleigh < 0.0 and scale > 0.0):
        raise ValueError(f"cubic_length: need rayleigh < 0 and scale > 0, found {rayleigh}, {scale}")
    a = max(-slope, 0.0)
    return scale * (-rayleigh + math.sqrt(rayleigh * rayleigh + 2.0 * a / scale))


def model_change(slope: float, curvature: float, alpha: float = 1.0) -> float:
    """The quadratic model's change along α·p: α·gᵀp + ½α²·pᵀHp."""
    return alpha * slope + 0.5 * alpha * alpha * curvature


def curvilinear_change(alpha: float, newton_slope: float, nc_curvature: float) -> float:
    """Moré & Sorensen's predicted change along θ + α²s + αd: α²·(gᵀs + ½dᵀHd)."""
    return alpha * alpha * (newton_slope + 0.5 * nc_curvature)


def prefer_negative_curvature(newton_change: float | None, nc_change: float) -> bool:
    """Gould et al.'s choice: the negative-curvature step when its model predicts the
    larger decrease (or there is no Newton-type candidate)."""
    if newton_change is None or not math.isfinite(newton_change):
        return True
    return nc_change < newton_change


def cubic_change(slope: float, curvature: float, length: float, scale: float, alpha: float = 1.0) -> float:
    """The cubic model's change along α·d for a step d of length ``length``:
    α·gᵀd + ½α²·dᵀHd + (α·‖d‖)³/(6κ)."""
    return model_change(slope, curvature, alpha) + (alpha * length) ** 3 / (6.0 * scale)


def secant_scale(scale: float, length: float, remainder: float) -> float:
    """κ after an accepted Newton-type step of length ``length`` whose objective exceeded its
    quadratic model by ``remainder``: √(κ·κ̂) with κ̂ = length³ / (6·remainder) when the
    remainder is positive, 2κ when it is not; κ when either is not finite."""
    if not (math.isfinite(length) and math.isfinite(remainder)) or length <= 0.0:
        return scale
    if remainder <= 0.0:
        return clip_scale(GROW * scale)
    return clip_scale(math.sqrt(scale * clip_scale(length**3 / (6.0 * remainder))))


def clip_scale(scale: float) -> float:
    return min(SCALE_MAX, max(SCALE_MIN, scale))


#: a failed negative-curvature search divides κ by this
FAILED_SHRINK = 4.0


def damping_floor(damping: float, most_negative: float, damping_max: float) -> float:
    """The λ of the solve under the indefinite rule: max(λ, FLOOR_FACTOR·|ν|) for ν < 0
    (λ itself when nothing negative was seen), at most ``damping_max``."""
    if not most_negative < 0.0:  # also NaN: nothing seen
        return damping
    return min(damping_max, max(damping, FLOOR_FACTOR * -most_negative))
