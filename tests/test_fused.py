"""The fused Krylov vector updates are numpy's expressions bit for bit (``hessfree.solvers.fused``)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.solvers.fused import axpy, scale_add

SCALES = st.floats(-30, 30)


@settings(deadline=None, max_examples=60)
@given(n=st.integers(1, 300), dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16),
       sx=SCALES, sy=SCALES, sa=SCALES, sb=SCALES)
def test_the_fused_updates_are_numpys_bit_for_bit(n, dtype, seed, sx, sy, sa, sb):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0**sx).astype(dtype)
    y = (rng.standard_normal(n) * 10.0**sy).astype(dtype)
    a, b = float(rng.standard_normal() * 10.0**sa), float(rng.standard_normal() * 10.0**sb)
    with np.errstate(over="ignore", invalid="ignore"):  # extreme scales overflow alike
        fused = axpy(x, a, y)
        assert fused.dtype == dtype and fused is not x
        np.testing.assert_array_equal(fused, x + a * y)
        expected = x.copy()
        expected *= a
        expected += b * y
    out = x.copy()
    assert scale_add(out, a, b, y) is out
    np.testing.assert_array_equal(out, expected)


def test_other_shapes_and_dtypes_go_to_numpy():
    x = np.arange(6.0).reshape(2, 3)
    np.testing.assert_array_equal(axpy(x, 2.0, x), x + 2.0 * x)
    mixed = np.ones(3, dtype=np.float32)
    np.testing.assert_array_equal(axpy(mixed, 0.5, np.ones(3)), mixed + 0.5 * np.ones(3))
    out = np.ones(3, dtype=np.float32)
    scale_add(out, 2.0, 1.0, np.ones(3))  # float64 v: numpy's in-place rules
    np.testing.assert_array_equal(out, np.full(3, 3.0, dtype=np.float32))
