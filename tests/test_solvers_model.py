"""The solvers on real curvature: a small MLP at a saddle (all-zero first-layer weights).

With W_1 = 0 and b_1 = 0 the hidden activations are tanh(0) = 0, so the W_2 block of the
Hessian vanishes while its coupling to W_1 (through the output error δ_2) does not: a zero
diagonal block with a non-zero off-diagonal block forces negative eigenvalues. The
gradient is non-zero (along W_1, b_1 and b_2), so the solvers meet that curvature.
"""

from __future__ import annotations

import numpy as np
import pytest

from hessfree.models import MLP
from hessfree.methods import Method, next_curvature
from hessfree.solvers import CG, BiCGStab, CandidateKind, Curvature, StopReason


class Curvatures:
    """Per-sample-averaged exact Hessian (the default) and Gauss-Newton products."""

    def __init__(self, model, theta, X, y):
        self.cache = model.forward(theta, X, y)
        self.n = X.shape[0]

    def exact(self, v):
        return self.cache.hv(v) / self.n

    def gauss_newton(self, v):
        return self.cache.gv(v) / self.n + 1e-4 * v  # a little damping: definite

    __call__ = exact


@pytest.fixture(scope="module")
def saddle():
    model = MLP(layers=[6, 5, 3], activation="tanh", loss="softmax_cross_entropy")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 6))
    y = rng.integers(0, 3, 40)
    theta = model.init_params(1)
    W1, b1 = model.unflatten(theta)[0]
    W1[...] = 0.0
    b1[...] = 0.0
    loss, grad = model.loss_grad(theta, X, y)
    g = grad / X.shape[0]
    H = np.array([Curvatures(model, theta, X, y).exact(e) for e in np.eye(model.n_params)])
    return model, theta, X, y, g, H


def loss_second_difference(model, theta, X, y, d, t=1e-3):
    """(f(θ+td) + f(θ−td) − 2f(θ)) / t² ≈ dᵀ∇²f d, per sample."""
    f = lambda th: model.loss(th, X, y) / X.shape[0]  # noqa: E731
    return (f(theta + t * d) + f(theta - t * d) - 2 * f(theta)) / t**2


def test_the_point_is_a_saddle(saddle):
    model, theta, X, y, g, H = saddle
    eigenvalues = np.linalg.eigvalsh((H + H.T) / 2)
    assert eigenvalues[0] < -1e-2 < 1e-2 < eigenvalues[-1]
    assert np.linalg.norm(g) > 1e-3


def test_cg_stops_on_negative_curvature_of_the_loss(saddle):
    model, theta, X, y, g, H = saddle
    op = Curvatures(model, theta, X, y)
    result = CG().solve(op, -g)
    assert result.reason is StopReason.NEGATIVE_CURVATURE
    d = result.negative_curvature.direction
    assert result.negative_curvature.curvature == pytest.approx(d @ H @ d, rel=1e-8)
    assert d @ H @ d < 0
    assert g @ d <= 0  # oriented downhill
    # the loss itself curves down along d
    assert loss_second_difference(model, theta, X, y, d) == pytest.approx(d @ H @ d, rel=1e-3)


def test_bicgstab_returns_descent_candidates_along_negative_curvature(saddle):
    model, theta, X, y, g, H = saddle
    op = Curvatures(model, theta, X, y)
    result = BiCGStab(max_iter=20).solve(op, -g)
    assert np.isfinite(result.x).all()
    negative = [c for c in result.candidates if c.curvature < 0]
    assert any(c.kind in (CandidateKind.SEARCH_P, CandidateKind.SEARCH_S) for c in negative)
    for c in result.candidates:
        assert c.slope <= 0 and g @ c.direction <= 1e-12
        assert c.curvature == pytest.approx(c.direction @ H @ c.direction, rel=1e-6, abs=1e-12)
    # a step along the most negative candidate lowers the loss (descent + negative curvature)
    best = min(negative, key=lambda c: c.curvature / (c.direction @ c.direction))
    f0 = model.loss(theta, X, y)
    step = best.direction / np.linalg.norm(best.direction)
    assert model.loss(theta + 0.5 * step, X, y) < f0


def test_hybrid_uses_gauss_newton_after_the_saddle(saddle):
    """Hybrid = CG + its policy: negative curvature on the exact Hessian at the saddle,
    then a Gauss-Newton solve, which is a Newton-type descent step."""
    model, theta, X, y, g, H = saddle
    op = Curvatures(model, theta, X, y)
    first = CG().solve(op.exact, -g)
    assert first.reason is StopReason.NEGATIVE_CURVATURE
    curvature = next_curvature(Method.HYBRID, Curvature.EXACT, first.negative_curvature is not None)
    assert curvature is Curvature.GAUSS_NEWTON
    second = CG().solve(op.gauss_newton, -g)
    assert second.negative_curvature is None
    assert g @ second.x < 0  # a Newton-type descent step on the definite Gauss-Newton model