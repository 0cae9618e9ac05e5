"""Fused elementwise updates of the Krylov recurrences: one pass over memory where numpy
takes two or three (the scaled vector into a temporary, then the sum).

Every rank of a data-parallel run repeats the solver's vector work on the whole vector:
on 2 cores, one CG iteration's vector operations on 318,010 float32 values took 0.78 ms
for one rank and 13.6 ms for 16 thread ranks with numpy, 0.46 and 8.7 ms fused (measured
here; ``benchmarks/bench_goals.py`` times whole HF iterations at 16 ranks). The kernels compute exactly numpy's expressions, in the
same order and the same precision: the scalars are first cast to the arrays' dtype (as
numpy does with a Python float, NEP 50), each product and sum is rounded on its own (no
``fastmath``, so no fused multiply-add), so the results are bitwise numpy's (tested).
Anything but two 1-D arrays of one floating dtype goes to numpy itself.
"""

from __future__ import annotations

import numba
import numpy as np

JIT = dict(nogil=True, cache=True, fastmath=False, error_model="numpy")


@numba.njit(**JIT)
def _axpy_into(x, a, y, out):
    for i in range(x.size):
        out[i] = x[i] + a * y[i]


@numba.njit(**JIT)
def _scale_add(out, a, b, v):
    for i in range(out.size):
        out[i] = out[i] * a + b * v[i]


def _fusable(*arrays: np.ndarray) -> bool:
    first = arrays[0]
    return first.dtype.kind == "f" and all(a.ndim == 1 and a.dtype == first.dtype and a.size == first.size for a in arrays)


def axpy(x: np.ndarray, alpha: float, y: np.ndarray) -> np.ndarray:
    """A new array x + alpha·y (numpy's ``x + alpha * y``, bitwise)."""
    if not _fusable(x, y):
        return x + alpha * y
    out = np.empty_like(x)
    _axpy_into(x, x.dtype.type(alpha), y, out)
    return out


def scale_add(out: np.ndarray, a: float, b: float, v: np.ndarray) -> np.ndarray:
    """out ← a·out + b·v in place (numpy's ``out *= a; out += b * v``, bitwise); returns out."""
    if not _fusable(out, v):
        out *= a
        out += b * v
        return out
    kind = out.dtype.type
    _scale_add(out, kind(a), kind(b), v)
    return out


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels for float32 and float64."""
    for dtype in (np.float32, np.float64):
        x = np.ones(2, dtype=dtype)
        axpy(x, 0.5, x)
        scale_add(x.copy(), 0.5, 0.25, x)
