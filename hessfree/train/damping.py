"""Levenberg–Marquardt damping from the reduction ratio ρ (Martens 2010)."""

from __future__ import annotations

import math

from hessfree.train.config import TrainConfig


def quadratic_model(step_slope: float, step_curvature: float) -> float:
    """q(s) − q(0) = gᵀs + ½ sᵀBs for a step s with slope gᵀs and curvature sᵀBs (undamped B)."""
    return step_slope + 0.5 * step_curvature


def reduction_ratio(f_new: float, f_old: float, predicted: float) -> float:
    """ρ = (f(θ+s) − f(θ)) / (q(s) − q(0)).

    A step that increases the objective (or a non-finite value) gives ρ = −∞; a model that
    predicts no decrease (predicted ≥ 0) gives −∞ too, so λ grows.
    """
    actual = f_new - f_old
    if not (math.isfinite(actual) and math.isfinite(predicted)) or actual > 0 or predicted >= 0:
        return -math.inf
    return actual / predicted


def update_damping(damping: float, rho: float, config: TrainConfig) -> float:
    """λ·3/2 when ρ < 1/4, λ·2/3 when ρ > 3/4 (factors and thresholds from the config), clipped."""
    if not rho >= config.rho_low:  # also catches NaN
        damping *= config.damping_increase
    elif rho > config.rho_high:
        damping *= config.damping_decrease
    return min(config.damping_max, max(config.damping_min, damping))
