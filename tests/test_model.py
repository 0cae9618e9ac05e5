"""The MLP's loss, gradient, Gauss-Newton and exact Hessian products against slow references."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.errors import InputError
from hessfree.models import MLP

ACTIVATIONS = ["tanh", "sigmoid", "relu", "softplus", "linear"]
LOSSES = ["softmax_cross_entropy", "logistic_cross_entropy", "squared_error"]


# ----------------------------------------------------------------- slow numpy reference
def ref_act(name, z):
    return {
        "tanh": np.tanh,
        "sigmoid": lambda t: 1 / (1 + np.exp(-t)),
        "relu": lambda t: np.maximum(t, 0),
        "softplus": lambda t: np.logaddexp(0, t),
        "linear": lambda t: t,
    }[name](z)


def ref_outputs(model, theta, X):
    """z_L for every row, by the obvious loop over layers."""
    a = X
    for l, (W, b) in enumerate(model.unflatten(theta), start=1):
        z = a @ W + b
        a = ref_act(model.activations[l - 1], z) if l < model.n_layers else z
    return a


def ref_loss_of_outputs(loss, z, T):
    """Per-row loss and its Hessian in z, from the textbook formulas."""
    if loss == "softmax_cross_entropy":
        p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        return -(T * np.log(p)).sum(), T.sum() * (np.diag(p) - np.outer(p, p))
    if loss == "logistic_cross_entropy":
        # −(t log σ + (1 − t) log(1 − σ)) written as log(1 + e^z) − t·z: log(1 − σ) loses all
        # its digits once σ rounds to 1 (large z, as an autoencoder's outputs reach)
        s = 1 / (1 + np.exp(-z))
        return (np.logaddexp(0, z) - T * z).sum(), np.diag(s * (1 - s))
    return 0.5 * ((z - T) ** 2).sum(), np.eye(z.size)


def one_hot(y, k):
    T = np.zeros((y.size, k))
    T[np.arange(y.size), y] = 1
    return T


def dense_targets(y, k):
    """The targets the loss sees: y itself when dense, else the one-hot rows of the labels."""
    return y if y.ndim == 2 else one_hot(y, k)


def ref_gauss_newton(model, theta, X, y):
    """Dense Σᵢ Jᵢᵀ H_L,ᵢ Jᵢ with Jᵢ from central differences of the reference outputs."""
    eps = 1e-6
    n_p = model.n_params
    J = np.empty((X.shape[0], model.n_outputs, n_p))
    for k in range(n_p):
        e = np.zeros(n_p)
        e[k] = eps
        J[:, :, k] = (ref_outputs(model, theta + e, X) - ref_outputs(model, theta - e, X)) / (2 * eps)
    z = ref_outputs(model, theta, X)
    T = dense_targets(y, model.n_outputs)
    G = np.zeros((n_p, n_p))
    for i in range(X.shape[0]):
        _, H = ref_loss_of_outputs(model.loss_kind.value, z[i], T[i])
        G += J[i].T @ H @ J[i]
    return G


# ----------------------------------------------------------------- random problems
@st.composite
def activation_choices(draw, n_hidden):
    """One name for every hidden layer (as a string), or a list with one name per hidden layer."""
    if draw(st.booleans()):
        return draw(st.sampled_from(ACTIVATIONS))
    return draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=n_hidden, max_size=n_hidden))


@st.composite
def problems(draw, max_hidden_layers=3):
    """A small random network (per-layer activations, linear included), θ, and a batch
    whose targets are integer labels or dense targets in [0, 1] (any loss takes both)."""
    n_hidden = draw(st.integers(1, max_hidden_layers))
    layers = [draw(st.integers(1, 6))] + [draw(st.integers(1, 5)) for _ in range(n_hidden)] + [draw(st.integers(2, 4))]
    activation = draw(activation_choices(n_hidden))
    loss = draw(st.sampled_from(LOSSES))
    n = draw(st.integers(1, 12))
    chunk = draw(st.integers(1, 13))
    dense = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    model = MLP(layers, activation=activation, loss=loss, chunk_size=chunk)
    theta = model.init_params(seed) + 0.3 * rng.standard_normal(model.n_params)
    X = rng.standard_normal((n, layers[0]))
    y = rng.random((n, layers[-1])) if dense else rng.integers(0, layers[-1], n)
    return model, theta, X, y, rng


def relu_kink_free(model, theta, X, margin=1e-4):
    """Finite differences are meaningless where a relu pre-activation sits at its kink."""
    if "relu" not in model.activations:
        return True
    a = X
    for l, (W, b) in enumerate(model.unflatten(theta), start=1):
        z = a @ W + b
        if l == model.n_layers:
            break
        name = model.activations[l - 1]
        if name == "relu" and np.any(np.abs(z) < margin):
            return False
        a = ref_act(name, z)
    return True


@settings(max_examples=60)
@given(problems())
def test_loss_matches_reference(problem):
    model, theta, X, y, _ = problem
    z = ref_outputs(model, theta, X)
    T = dense_targets(y, model.n_outputs)
    expected = sum(ref_loss_of_outputs(model.loss_kind.value, z[i], T[i])[0] for i in range(len(y)))
    assert model.loss(theta, X, y) == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert model.loss_grad(theta, X, y)[0] == pytest.approx(expected, rel=1e-10, abs=1e-12)


@settings(max_examples=60)
@given(problems())
def test_gradient_matches_central_differences(problem):
    model, theta, X, y, _ = problem
    if not relu_kink_free(model, theta, X, margin=1e-3):
        return
    _, grad = model.loss_grad(theta, X, y)
    eps = 1e-6
    fd = np.empty(model.n_params)
    for k in range(model.n_params):
        e = np.zeros(model.n_params)
        e[k] = eps
        fd[k] = (model.loss(theta + e, X, y) - model.loss(theta - e, X, y)) / (2 * eps)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(fd).max()))


@settings(max_examples=40)
@given(problems(max_hidden_layers=2))
def test_gv_matches_dense_gauss_newton(problem):
    model, theta, X, y, rng = problem
    if not relu_kink_free(model, theta, X, margin=1e-3):
        return
    G = ref_gauss_newton(model, theta, X, y)
    v = rng.standard_normal(model.n_params)
    np.testing.assert_allclose(model.gv(theta, v, X, y), G @ v, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(G @ v).max()))


@settings(max_examples=60)
@given(problems())
def test_hv_matches_differences_of_the_gradient(problem):
    model, theta, X, y, rng = problem
    if not relu_kink_free(model, theta, X, margin=1e-3):
        return
    v = rng.standard_normal(model.n_params)
    eps = 1e-6
    fd = (model.loss_grad(theta + eps * v, X, y)[1] - model.loss_grad(theta - eps * v, X, y)[1]) / (2 * eps)
    np.testing.assert_allclose(model.hv(theta, v, X, y), fd, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(fd).max()))


@settings(max_examples=60)
@given(problems())
def test_hv_symmetric_and_gv_symmetric_positive_semidefinite(problem):
    model, theta, X, y, rng = problem
    cache = model.forward(theta, X, y)
    u, v = rng.standard_normal((2, model.n_params))
    scale = max(1.0, np.linalg.norm(u) * np.linalg.norm(v) * len(y))
    assert u @ cache.hv(v) == pytest.approx(v @ cache.hv(u), abs=1e-10 * scale)
    assert u @ cache.gv(v) == pytest.approx(v @ cache.gv(u), abs=1e-10 * scale)
    assert v @ cache.gv(v) >= -1e-12 * scale


@settings(max_examples=40)
@given(problems(), st.integers(1, 5))
def test_chunked_equals_unchunked(problem, chunk):
    model, theta, X, y, rng = problem
    whole = MLP(model.layers, activation=model.activation, loss=model.loss_kind, chunk_size=10_000)
    small = MLP(model.layers, activation=model.activation, loss=model.loss_kind, chunk_size=chunk)
    v = rng.standard_normal(model.n_params)
    f1, g1 = whole.loss_grad(theta, X, y)
    f2, g2 = small.loss_grad(theta, X, y)
    assert f2 == pytest.approx(f1, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(g2, g1, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(small.gv(theta, v, X, y), whole.gv(theta, v, X, y), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(small.hv(theta, v, X, y), whole.hv(theta, v, X, y), rtol=1e-11, atol=1e-12)


@settings(max_examples=30)
@given(problems())
def test_float32_close_to_float64(problem):
    model, theta, X, y, rng = problem
    m32 = MLP(model.layers, activation=model.activation, loss=model.loss_kind, dtype=np.float32)
    v = rng.standard_normal(model.n_params)
    t32, X32, v32 = theta.astype(np.float32), X.astype(np.float32), v.astype(np.float32)
    # compare at the float32-rounded point so only the arithmetic differs
    t64, X64, v64 = t32.astype(np.float64), X32.astype(np.float64), v32.astype(np.float64)
    f64, g64 = model.loss_grad(t64, X64, y)
    f32, g32 = m32.loss_grad(t32, X32, y)
    assert g32.dtype == np.float32
    assert f32 == pytest.approx(f64, rel=1e-4, abs=1e-4)
    for a32, a64 in [
        (g32, g64),
        (m32.gv(t32, v32, X32, y), model.gv(t64, v64, X64, y)),
        (m32.hv(t32, v32, X32, y), model.hv(t64, v64, X64, y)),
    ]:
        assert a32.dtype == np.float32
        np.testing.assert_allclose(a32, a64, rtol=2e-3, atol=2e-4 * max(1.0, np.abs(a64).max()))


def test_dense_targets_match_one_hot_labels():
    rng = np.random.default_rng(3)
    for loss in LOSSES:
        model = MLP([4, 5, 3], loss=loss)
        theta = model.init_params(0)
        X, y = rng.standard_normal((9, 4)), rng.integers(0, 3, 9)
        T = one_hot(y, 3)
        v = rng.standard_normal(model.n_params)
        f1, g1 = model.loss_grad(theta, X, y)
        f2, g2 = model.loss_grad(theta, X, T)
        assert f1 == pytest.approx(f2, rel=1e-14)
        np.testing.assert_allclose(g1, g2, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(model.hv(theta, v, X, y), model.hv(theta, v, X, T), rtol=1e-13, atol=1e-15)


def test_products_are_bitwise_deterministic():
    rng = np.random.default_rng(1)
    model = MLP([30, 20, 10, 5], activation="softplus", chunk_size=16)
    theta = model.init_params(2)
    X, y = rng.standard_normal((50, 30)), rng.integers(0, 5, 50)
    v = rng.standard_normal(model.n_params)
    cache = model.forward(theta, X, y)
    assert np.array_equal(cache.hv(v), cache.hv(v))
    assert np.array_equal(cache.gv(v), model.gv(theta, v, X, y))
    assert np.array_equal(model.loss_grad(theta, X, y)[1], model.loss_grad(theta, X, y)[1])


def test_cache_holds_a_copy_of_theta():
    rng = np.random.default_rng(2)
    model = MLP([3, 4, 2])
    theta = model.init_params(0)
    X, y = rng.standard_normal((5, 3)), rng.integers(0, 2, 5)
    v = rng.standard_normal(model.n_params)
    cache = model.forward(theta, X, y)
    before = cache.gv(v)
    theta += 1.0
    assert np.array_equal(cache.gv(v), before)


def test_unflatten_views_write_theta_and_layout():
    model = MLP([3, 4, 2])
    assert model.n_params == 3 * 4 + 4 + 4 * 2 + 2
    theta = np.zeros(model.n_params)
    (W1, b1), (W2, b2) = model.unflatten(theta)
    assert W1.shape == (3, 4) and b1.shape == (4,) and W2.shape == (4, 2) and b2.shape == (2,)
    W2[1, 0] = 7.0
    assert theta[3 * 4 + 4 + 1 * 2 + 0] == 7.0


def test_init_is_deterministic_and_scaled():
    model = MLP([100, 50, 10])
    a, b = model.init_params(5), model.init_params(5)
    assert np.array_equal(a, b)
    W1 = model.unflatten(a)[0][0]
    assert np.abs(W1).max() <= np.sqrt(6 / 150)
    assert 0.5 * np.sqrt(2 / 150) < W1.std() < 1.5 * np.sqrt(2 / 150)
    assert not np.array_equal(a, model.init_params(6))


def test_predict_and_error_rate():
    model = MLP([2, 2], activation="tanh")  # no hidden layer: z = xW + b
    theta = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    X = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0]])
    assert list(model.predict(theta, X)) == [0, 1, 0]
    assert model.error_count(theta, X, np.array([0, 1, 1])) == 1
    assert model.error_rate(theta, X, np.array([0, 1, 1])) == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda m, r: m.loss_grad(m.init_params(0), r.standard_normal((4, 3)), np.zeros(4, int)), r"X: expected shape \(n, 5\).*found \(4, 3\)"),
        (lambda m, r: m.loss_grad(m.init_params(0), r.standard_normal((4, 5)), np.array([0, 1, 2, 3])), r"labels in \[0, 3\).*\[0, 3\]"),
        (lambda m, r: m.loss_grad(m.init_params(0), r.standard_normal((4, 5)), np.array([0, -1, 2, 1])), r"labels in \[0, 3\)"),
        (lambda m, r: m.loss_grad(m.init_params(0), np.full((4, 5), np.nan), np.zeros(4, int)), r"X: expected finite"),
        (lambda m, r: m.loss_grad(m.init_params(0), r.standard_normal((4, 5)), np.zeros(3, int)), r"expected 4 labels"),
        (lambda m, r: m.loss_grad(np.zeros(7), r.standard_normal((4, 5)), np.zeros(4, int)), r"theta: expected shape \(39,\).*found \(7,\)"),
        (lambda m, r: m.hv(m.init_params(0), np.zeros(5), r.standard_normal((4, 5)), np.zeros(4, int)), r"v: expected shape \(39,\)"),
        (lambda m, r: m.loss_grad(m.init_params(0), r.standard_normal((4, 5)), np.zeros((4, 2))), r"targets of shape \(4, 3\)"),
        (lambda m, r: m.loss_grad(m.init_params(0), np.array([["a"] * 5] * 4), np.zeros(4, int)), r"numeric array"),
    ],
)
def test_bad_input_raises_typed_error_quoting_shapes(make, message):
    model = MLP([5, 4, 3])
    with pytest.raises(InputError, match=message):
        make(model, np.random.default_rng(0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(layers=[5]), "at least two"),
        (dict(layers=[5, 0, 3]), "positive integers"),
        (dict(layers=[5, 3], activation="swish"), "activation: expected one of"),
        (dict(layers=[5, 3], loss="hinge"), "loss: expected one of"),
        (dict(layers=[5, 3], dtype=np.int32), "float32 or float64"),
        (dict(layers=[5, 3], chunk_size=0), "chunk_size"),
    ],
)
def test_bad_model_configuration(kwargs, message):
    with pytest.raises(InputError, match=message):
        MLP(**kwargs)


@pytest.mark.parametrize("loss", LOSSES)
def test_parallel_kernels_give_bitwise_the_serial_results(loss):
    from hessfree.models import kernels as K

    rng = np.random.default_rng(4)
    rows, hidden = 3000, 100
    assert rows * hidden >= K.PARALLEL_MIN_ELEMENTS  # the hidden layers really use the parallel set
    serial = MLP([30, hidden, 20, 10], activation="softplus", loss=loss, chunk_size=4000)
    parallel = MLP([30, hidden, 20, 10], activation="softplus", loss=loss, chunk_size=4000, parallel=True)
    theta = serial.init_params(0)
    X, y = rng.standard_normal((rows, 30)), rng.integers(0, 10, rows)
    v = rng.standard_normal(serial.n_params)
    fs, gs = serial.loss_grad(theta, X, y)
    fp, gp = parallel.loss_grad(theta, X, y)
    assert fs == fp and np.array_equal(gs, gp)
    assert np.array_equal(serial.gv(theta, v, X, y), parallel.gv(theta, v, X, y))
    assert np.array_equal(serial.hv(theta, v, X, y), parallel.hv(theta, v, X, y))
    assert serial.error_count(theta, X, y) == parallel.error_count(theta, X, y)
    # and every kernel of the two sets alike, on one large array
    G = rng.standard_normal((rows, hidden))
    A = np.tanh(rng.standard_normal((rows, hidden)))
    outs = []
    for ks in (K.SERIAL, K.PARALLEL):
        g, c = G.copy(), np.empty(hidden)
        ks.backprop_activation(g, A, K.TANH, c)
        outs.append((g, c))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


def test_recycled_cache_gives_bitwise_the_fresh_results_and_old_one_is_released():
    rng = np.random.default_rng(7)
    model = MLP([12, 9, 7, 4], activation="sigmoid", chunk_size=5)
    X, y = rng.standard_normal((13, 12)), rng.integers(0, 4, 13)
    v = rng.standard_normal(model.n_params)
    old = model.forward(model.init_params(1), X, y)
    old.hv(v)  # the δ_l buffers exist and are handed over too
    theta = model.init_params(2)
    new = model.forward(theta, X, y, recycle=old)
    fresh = model.forward(theta, X, y)
    assert np.array_equal(new.hv(v), fresh.hv(v)) and np.array_equal(new.gv(v), fresh.gv(v))
    assert new.loss_sum == fresh.loss_sum
    with pytest.raises(InputError, match="recycled"):
        old.gv(v)
    with pytest.raises(InputError, match="already recycled"):
        model.forward(theta, X, y, recycle=old)
