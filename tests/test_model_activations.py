"""Per-layer activations (linear included) and autoencoder targets: configuration,
initialisation, products against the slow references, and the memory of the chunked passes."""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_model import (
    ACTIVATIONS,
    ref_gauss_newton,
    ref_loss_of_outputs,
    ref_outputs,
    relu_kink_free,
)

from hessfree.errors import ConfigError, InputError
from hessfree.models import MLP, Activation, Model
from hessfree.models import kernels as K


# ----------------------------------------------------------------- configuration
def test_activations_one_name_per_hidden_layer():
    uniform = MLP([3, 4, 5, 2], activation="sigmoid")
    assert uniform.activations == ("sigmoid", "sigmoid")
    assert uniform.activation is Activation.SIGMOID
    listed = MLP([3, 4, 5, 2], activation=["sigmoid", "sigmoid"])
    assert listed.activation is Activation.SIGMOID and listed == uniform and hash(listed) == hash(uniform)
    mixed = MLP([3, 4, 5, 6, 2], activation=["sigmoid", "Linear", Activation.RELU])
    assert mixed.activations == ("sigmoid", "linear", "relu")
    assert mixed.activation == (Activation.SIGMOID, Activation.LINEAR, Activation.RELU)
    assert mixed.activation_codes == (K.SIGMOID, K.LINEAR, K.RELU)
    assert MLP(mixed.layers, activation=mixed.activation) == mixed  # the attribute round-trips
    assert MLP([3, 2], activation="relu").activations == ()
    assert MLP([3, 2], activation=[]).activations == ()


@pytest.mark.parametrize(
    "layers, activation, message",
    [
        ([3, 4, 5, 2], ["tanh"], r"activation: expected one name, or 2 names \(one per hidden layer of layers \[3, 4, 5, 2\]\), found 1 name \['tanh'\]"),
        ([3, 4, 2], ["tanh", "linear"], r"expected one name, or 1 name \(one per hidden layer of layers \[3, 4, 2\]\), found 2 names \['tanh', 'linear'\]"),
        ([3, 4, 5, 2], ["tanh", "swish"], r"activation: expected one of tanh, sigmoid, relu, softplus, linear, found 'swish' \(hidden layer 2 of 2"),
        ([3, 4, 2], "swish", r"activation: expected one of tanh, sigmoid, relu, softplus, linear, found 'swish'"),
        ([3, 4, 2], 3, r"activation: expected one of .* or a sequence of them \(one per hidden layer\), found 3"),
    ],
)
def test_bad_activations_raise_config_error_naming_value_and_expectation(layers, activation, message):
    with pytest.raises(ConfigError, match=message) as info:
        MLP(layers, activation=activation)
    assert isinstance(info.value, InputError)  # what these settings raised before: callers keep working


def test_mlp_implements_every_abstract_member_of_model():
    assert not MLP.__abstractmethods__
    for name in ("batch", "evaluate", "dtype", "layers", "n_params", "init_params", "loss_grad", "forward"):
        assert name in Model.__abstractmethods__


def test_init_scales_each_layer_for_its_own_activation():
    model = MLP([300, 200, 100, 150, 50], activation=["sigmoid", "linear", "relu"])
    limits = [
        4 * np.sqrt(6 / 500),  # sigmoid: four times Glorot
        np.sqrt(6 / 300),  # linear: Glorot
        np.sqrt(6 / 100),  # relu: He
        np.sqrt(6 / 150),  # output layer: scaled for the last hidden layer's activation (relu)
    ]
    for (W, b), limit in zip(model.unflatten(model.init_params(0)), limits):
        assert 0.98 * limit < np.abs(W).max() <= limit
        assert not b.any()


def test_linear_hidden_layers_compose_into_one_affine_layer():
    rng = np.random.default_rng(5)
    deep = MLP([4, 3, 5, 2], activation="linear", loss="squared_error")
    flat = MLP([4, 2], loss="squared_error")
    theta = deep.init_params(1) + 0.1 * rng.standard_normal(deep.n_params)
    (W1, b1), (W2, b2), (W3, b3) = deep.unflatten(theta)
    W, b = W1 @ W2 @ W3, (b1 @ W2 + b2) @ W3 + b3
    X, T = rng.standard_normal((7, 4)), rng.standard_normal((7, 2))
    assert deep.loss(theta, X, T) == pytest.approx(flat.loss(np.concatenate([W.ravel(), b]), X, T), rel=1e-12)


# ----------------------------------------------------------------- autoencoders
@st.composite
def autoencoders(draw):
    """A small autoencoder d0-h1-...-code-...-d0 with per-layer activations, targets = inputs."""
    half = [draw(st.integers(1, 5)) for _ in range(draw(st.integers(1, 2)))]
    layers = [draw(st.integers(1, 6))] + half + half[-2::-1] + [0]
    layers[-1] = layers[0]
    n_hidden = len(layers) - 2
    activation = draw(st.lists(st.sampled_from(ACTIVATIONS), min_size=n_hidden, max_size=n_hidden))
    loss = draw(st.sampled_from(["logistic_cross_entropy", "squared_error"]))
    n, chunk, seed = draw(st.integers(1, 10)), draw(st.integers(1, 11)), draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    model = MLP(layers, activation=activation, loss=loss, chunk_size=chunk)
    theta = model.init_params(seed) + 0.3 * rng.standard_normal(model.n_params)
    X = rng.random((n, layers[0]))  # pixel-like intensities in [0, 1)
    return model, theta, X, rng


@settings(max_examples=40)
@given(autoencoders())
def test_autoencoder_products_match_the_references(problem):
    model, theta, X, rng = problem
    batch = model.batch(X, X)
    assert batch.targets.base is batch.X and not batch.targets.flags.writeable  # converted and stored once (a read-only view)
    z = ref_outputs(model, theta, X)
    expected = sum(ref_loss_of_outputs(model.loss_kind.value, z[i], X[i])[0] for i in range(len(X)))
    loss, grad = model.loss_grad(theta, batch)
    assert loss == pytest.approx(expected, rel=1e-10, abs=1e-12)
    assert model.evaluate(theta, batch)[0] == pytest.approx(expected, rel=1e-10, abs=1e-12)
    if not relu_kink_free(model, theta, X, margin=1e-3):
        return
    eps = 1e-6
    v = rng.standard_normal(model.n_params)
    fd_grad = np.array([(model.loss(theta + eps * e, batch) - model.loss(theta - eps * e, batch)) / (2 * eps) for e in np.eye(model.n_params)])
    np.testing.assert_allclose(grad, fd_grad, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(fd_grad).max()))
    cache = model.forward(theta, batch)
    Gv = ref_gauss_newton(model, theta, X, X) @ v
    np.testing.assert_allclose(cache.gv(v), Gv, rtol=1e-6, atol=1e-7 * max(1.0, np.abs(Gv).max()))
    fd_hv = (model.loss_grad(theta + eps * v, batch)[1] - model.loss_grad(theta - eps * v, batch)[1]) / (2 * eps)
    np.testing.assert_allclose(cache.hv(v), fd_hv, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(fd_hv).max()))


@settings(max_examples=30)
@given(autoencoders())
def test_autoencoder_float32_and_chunking(problem):
    model, theta, X, rng = problem
    v = rng.standard_normal(model.n_params)
    whole = MLP(model.layers, activation=model.activation, loss=model.loss_kind, chunk_size=10_000)
    f1, g1 = model.loss_grad(theta, X, X)
    f2, g2 = whole.loss_grad(theta, X, X)
    assert f1 == pytest.approx(f2, rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(g1, g2, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(model.gv(theta, v, X, X), whole.gv(theta, v, X, X), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(model.hv(theta, v, X, X), whole.hv(theta, v, X, X), rtol=1e-11, atol=1e-12)
    m32 = MLP(model.layers, activation=model.activation, loss=model.loss_kind, dtype=np.float32)
    t32, X32, v32 = theta.astype(np.float32), X.astype(np.float32), v.astype(np.float32)
    t64, X64, v64 = t32.astype(np.float64), X32.astype(np.float64), v32.astype(np.float64)
    cache32, cache64 = m32.forward(t32, X32, X32), model.forward(t64, X64, X64)
    for a32, a64 in [
        (m32.loss_grad(t32, X32, X32)[1], model.loss_grad(t64, X64, X64)[1]),
        (cache32.gv(v32), cache64.gv(v64)),
        (cache32.hv(v32), cache64.hv(v64)),
    ]:
        assert a32.dtype == np.float32
        np.testing.assert_allclose(a32, a64, rtol=2e-3, atol=2e-4 * max(1.0, np.abs(a64).max()))


def test_logistic_targets_outside_the_unit_interval_are_refused():
    model = MLP([4, 3, 4], activation="sigmoid", loss="logistic_cross_entropy")
    X = np.arange(8, dtype=np.uint8).reshape(2, 4) * 30  # raw 0..255 pixels, not probabilities
    with pytest.raises(InputError, match=r"targets in \[0, 1\] for logistic_cross_entropy.*\[0, 210\]"):
        model.batch(X, X)
    assert model.batch(X / 255.0, X / 255.0).targets.max() == pytest.approx(210 / 255)
    MLP([4, 3, 4], loss="squared_error").batch(X, X)  # other losses take any finite targets


@pytest.mark.parametrize("loss", ["logistic_cross_entropy", "softmax_cross_entropy"])
def test_parallel_kernels_with_mixed_activations_give_bitwise_the_serial_results(loss):
    rng = np.random.default_rng(8)
    rows, layers = 3000, [40, 120, 90, 100, 40]
    assert rows * 90 >= K.PARALLEL_MIN_ELEMENTS
    acts = ["sigmoid", "linear", "relu"]
    serial = MLP(layers, activation=acts, loss=loss, chunk_size=1100)
    parallel = MLP(layers, activation=acts, loss=loss, chunk_size=1100, parallel=True)
    theta = serial.init_params(0)
    X = rng.random((rows, 40))
    v = rng.standard_normal(serial.n_params)
    fs, gs = serial.loss_grad(theta, X, X)
    fp, gp = parallel.loss_grad(theta, X, X)
    assert fs == fp and np.array_equal(gs, gp)
    cs, cp = serial.forward(theta, X, X), parallel.forward(theta, X, X)
    assert np.array_equal(cs.gv(v), cp.gv(v)) and np.array_equal(cs.hv(v), cp.hv(v))


# ----------------------------------------------------------------- memory of the chunked passes
def _peak_bytes(fn) -> int:
    """Peak of the memory numpy allocates while ``fn`` runs (after a warm-up call: numba's
    first call of a kernel signature allocates too)."""
    fn()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_chunked_passes_use_memory_of_one_chunk_and_products_allocate_only_their_result():
    rng = np.random.default_rng(9)
    layers = [60, 200, 100, 20, 100, 200, 60]
    chunk, n = 128, 3000
    model = MLP(layers, activation=["sigmoid", "sigmoid", "linear", "sigmoid", "sigmoid"], loss="logistic_cross_entropy", chunk_size=chunk)
    theta = model.init_params(0)
    batch = model.batch(*(2 * (rng.random((n, 60)),)))
    v = rng.standard_normal(model.n_params)
    item = np.dtype(model.dtype).itemsize
    width_sum, widest = sum(layers[1:]), max(layers[1:])
    vectors = 2 * model.n_params * item  # the gradient and one accumulation scratch
    slack = 128 * 1024  # numpy's 64 KiB ufunc buffer (bias broadcast), kernels' per-block sums, views
    grad_bound = vectors + chunk * (width_sum + 2 * widest + 1) * item + slack
    assert _peak_bytes(lambda: model.loss_grad(theta, batch)) <= grad_bound
    assert _peak_bytes(lambda: model.evaluate(theta, batch)) <= chunk * (2 * widest + 1) * item + slack
    cache = model.forward(theta, batch)
    cache.hv(v)  # the δ_l are computed once, by the first exact product
    out = np.empty(model.n_params)
    assert _peak_bytes(lambda: (cache.gv(v, out=out), cache.hv(v, out=out))) <= slack
    # the cache itself: the batch's activations and errors, and one chunk of workspace
    fresh = _peak_bytes(lambda: model.forward(theta, batch).hv(v))
    kept = n * (2 * width_sum + 1) * item  # a_l and z_L's state, δ_L, scale; then δ_l of hidden layers
    workspace = chunk * (2 * width_sum + 3 * widest) * item  # R(z_l), R(a_l); 3 buffers of the widest layer
    vectors = 3 * model.n_params * item  # its copy of θ, the accumulation scratch, the result
    assert fresh <= kept + workspace + vectors + slack
