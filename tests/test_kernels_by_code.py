"""Each activation's specialized copy of the activation kernels computes that activation's
formula (``hessfree.models.kernels``: the code is decided outside the inner loops, once
per block of rows, so a wrong branch would silently use another activation's f')."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.models import kernels as K

# f'(z) and h(a) = f''(z)/f'(z) as functions of the activation value a = f(z), in numpy
DERIVATIVES = {
    K.TANH: (lambda a: 1 - a * a, lambda a: -(a + a)),
    K.SIGMOID: (lambda a: a * (1 - a), lambda a: 1 - (a + a)),
    K.RELU: (lambda a: (a > 0).astype(a.dtype), lambda a: np.zeros_like(a)),
    K.SOFTPLUS: (lambda a: -np.expm1(-a), lambda a: np.exp(-a)),
    K.LINEAR: (lambda a: np.ones_like(a), lambda a: np.zeros_like(a)),
}
ACTIVATION_VALUES = {  # a = f(z) for z ~ N(0, 2²): each activation's own range
    K.TANH: np.tanh,
    K.SIGMOID: lambda z: 1 / (1 + np.exp(-z)),
    K.RELU: lambda z: np.maximum(z, 0),
    K.SOFTPLUS: lambda z: np.logaddexp(z, 0),
    K.LINEAR: lambda z: z,
}


def arrays(seed, rows, width, dtype, code):
    rng = np.random.default_rng(seed)
    draw = lambda: rng.standard_normal((rows, width)).astype(dtype)  # noqa: E731
    A = ACTIVATION_VALUES[code](2 * draw()).astype(dtype)
    return A, draw, rng


def close(dtype):
    return dict(rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-5 if dtype == np.float32 else 1e-12)


@settings(deadline=None, max_examples=40)
@given(code=st.sampled_from(sorted(DERIVATIVES)), dtype=st.sampled_from([np.float32, np.float64]),
       rows=st.integers(1, 200), width=st.integers(1, 40), seed=st.integers(0, 2**16), has2=st.booleans())
def test_each_code_computes_its_own_activations_formulas(code, dtype, rows, width, seed, has2):
    A, draw, rng = arrays(seed, rows, width, dtype, code)
    dact, ratio = DERIVATIVES[code]
    G, G2, D, RZ = draw(), draw(), draw(), draw()
    vb = rng.standard_normal(width).astype(dtype)
    for ks in (K.SERIAL, K.PARALLEL):
        g, colsum = G.copy(), np.empty(width, dtype)
        ks.backprop_activation(g, A, code, colsum)
        np.testing.assert_allclose(g, G * dact(A), **close(dtype))
        np.testing.assert_allclose(colsum, g.sum(axis=0, dtype=np.float64), **close(dtype))

        p1, ra = G.copy(), np.empty_like(G)
        ks.r_activation(p1, G2, has2, vb, A, code, ra)
        rz = G + vb + (G2 if has2 else 0)
        np.testing.assert_allclose(p1, rz, **close(dtype))
        np.testing.assert_allclose(ra, dact(A) * rz, **close(dtype))

        g1, colsum = G.copy(), np.empty(width, dtype)
        ks.r_backprop_activation(g1, G2, D, A, RZ, code, colsum)
        np.testing.assert_allclose(g1, (G + G2) * dact(A) + D * ratio(A) * RZ, **close(dtype))


@pytest.mark.parametrize("code", sorted(DERIVATIVES))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_serial_and_parallel_copies_agree_bit_for_bit_on_large_arrays(code, dtype):
    rows, width = 2000, 160
    assert rows * width >= K.PARALLEL_MIN_ELEMENTS
    A, draw, rng = arrays(code, rows, width, dtype, code)
    G, G2, D, RZ = draw(), draw(), draw(), draw()
    vb = rng.standard_normal(width).astype(dtype)
    results = []
    for ks in (K.SERIAL, K.BY_SIZE):
        g, c1 = G.copy(), np.empty(width, dtype)
        ks.backprop_activation(g, A, code, c1)
        p1, ra = G.copy(), np.empty_like(G)
        ks.r_activation(p1, G2, True, vb, A, code, ra)
        g1, c2 = G.copy(), np.empty(width, dtype)
        ks.r_backprop_activation(g1, G2, D, A, RZ, code, c2)
        results.append((g, c1, p1, ra, g1, c2))
    for serial, parallel in zip(*results):
        np.testing.assert_array_equal(serial, parallel)
