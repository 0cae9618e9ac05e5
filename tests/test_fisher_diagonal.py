"""The gradient pass's squared per-sample gradients (Martens' diagonal preconditioner),
against a loop over samples, chunked and unchunked, for every activation and loss."""

import numpy as np
import pytest

from hessfree.models import MLP

CASES = [
    ([5, 4, 3], "tanh", "softmax_cross_entropy"),
    ([5, 6, 2, 3], ["relu", "linear"], "softmax_cross_entropy"),
    ([5, 4, 5], ["sigmoid"], "logistic_cross_entropy"),
    ([5, 3, 4], ["softplus"], "squared_error"),
]


def problem(layers, loss, dtype, n=17, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, layers[0])).astype(dtype)
    if loss == "softmax_cross_entropy":
        y = rng.integers(0, layers[-1], n)
    elif loss == "logistic_cross_entropy":
        y = rng.random((n, layers[-1])).astype(dtype)
    else:
        y = rng.standard_normal((n, layers[-1])).astype(dtype)
    return X, y


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layers, activation, loss", CASES)
def test_squares_are_the_sum_of_per_sample_squared_gradients(layers, activation, loss, dtype):
    model = MLP(layers, activation=activation, loss=loss, dtype=dtype)
    X, y = problem(layers, loss, dtype)
    theta = model.init_params(1)
    total, grad, squares = model.loss_grad_squares(theta, X, y)
    per_sample = np.array([model.loss_grad(theta, X[i : i + 1], y[i : i + 1])[1].astype(np.float64) for i in range(len(X))])
    rtol = 1e-10 if dtype == np.float64 else 2e-4
    np.testing.assert_allclose(squares, (per_sample**2).sum(axis=0), rtol=rtol, atol=rtol * np.abs(per_sample**2).max())
    plain = model.loss_grad(theta, X, y)
    assert total == plain[0] and np.array_equal(grad, plain[1])  # the gradient is untouched


def test_chunked_squares_match_and_are_deterministic():
    layers, activation, loss = CASES[1]
    X, y = problem(layers, loss, np.float64, n=50)
    whole = MLP(layers, activation=activation, loss=loss)
    chunked = MLP(layers, activation=activation, loss=loss, chunk_size=7)
    theta = whole.init_params(2)
    a, b = whole.loss_grad_squares(theta, X, y)[2], chunked.loss_grad_squares(theta, X, y)[2]
    np.testing.assert_allclose(a, b, rtol=1e-12)
    assert np.array_equal(b, chunked.loss_grad_squares(theta, X, y)[2])
    assert np.all(a >= 0)


def test_an_empty_batch_gives_zeros():
    model = MLP([3, 2, 2])
    total, grad, squares = model.loss_grad_squares(model.init_params(0), np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    assert total == 0 and not grad.any() and not squares.any()
