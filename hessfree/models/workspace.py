"""Memory the model's passes work in, shared by the gradient (``mlp``) and the products (``curvature``).

* :class:`Accumulator` adds per-chunk contributions into the views of a flat result vector,
  always in the same order (results do not depend on how buffers were obtained);
* :class:`Pool` hands the arrays of a released forward cache to the next one;
* :func:`rows_view` carves an (n, width) matrix out of a flat buffer: two such buffers,
  used in turn, hold values that only the next layer's step reads (back-propagated
  errors, GEMM products consumed at once), instead of one buffer per layer;
* :func:`quiet_float_errors`, the float-error policy of every public entry point.
"""

from __future__ import annotations

import functools

import numpy as np


def quiet_float_errors(method):
    """Overflow to ±inf and NaN are results the trainer handles (step rejected), not warnings."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return method(*args, **kwargs)

    return wrapper


def rows_view(flat: np.ndarray, n: int, width: int) -> np.ndarray:
    """The first n·width elements of ``flat`` as a C-contiguous (n, width) matrix (a view)."""
    return flat[: n * width].reshape(n, width)


class Accumulator:
    """Adds per-chunk contributions into the views of a flat result vector.

    ``views`` are the per-layer ``(W_l, b_l)`` views of the result and ``scratch`` those of
    a vector of the same layout (``model.unflatten`` of each). The first chunk writes each
    layer's slot directly (GEMM ``out=``); later chunks and second terms go through the
    scratch and are added in, always in the same order. ``add_into(out, x)`` is the
    kernel that adds (see ``kernels``).
    """

    def __init__(self, views, scratch, add_into):
        self._add_into = add_into
        self.views = views
        self.scratch = scratch
        self.written: set[tuple[int, str]] = set()

    def gemm(self, layer: int, chunk: int, a: np.ndarray, b: np.ndarray) -> None:
        """W-slot of ``layer`` += a·b."""
        key = (layer, "W")
        W = self.views[layer - 1][0]
        if key not in self.written:
            np.matmul(a, b, out=W)
            self.written.add(key)
        else:
            tmp = self.scratch[layer - 1][0]
            np.matmul(a, b, out=tmp)
            self._add_into(W, tmp)

    def bias_slot(self, layer: int, chunk: int) -> np.ndarray:
        """Where a kernel should write this chunk's column sum for the bias of ``layer``."""
        if (layer, "b") not in self.written:
            return self.views[layer - 1][1]
        return self.scratch[layer - 1][1]

    def bias_done(self, layer: int, chunk: int) -> None:
        key = (layer, "b")
        if key not in self.written:
            self.written.add(key)
        else:
            self._add_into(self.views[layer - 1][1], self.scratch[layer - 1][1])


class Pool:
    """Arrays handed back by a released cache, reused by the next one of the same shapes.

    A fresh cache otherwise pays first-touch page faults on all of its buffers (tens of
    MB for a 5,000-row batch), which costs as much as a few GEMMs.
    """

    def __init__(self, arrays=()):
        self._free: dict[tuple, list[np.ndarray]] = {}
        for a in arrays:
            self._free.setdefault((a.shape, a.dtype.str), []).append(a)

    def empty(self, shape, dtype) -> np.ndarray:
        stack = self._free.get((tuple(shape), np.dtype(dtype).str))
        return stack.pop() if stack else np.empty(shape, dtype=dtype)

    def buffers(self, rows: int, widths, dtype) -> list:
        """``[None, B_1, ..., B_k]`` with B_i of shape (rows, widths[i−1]) (index = layer)."""
        return [None] + [self.empty((rows, d), dtype) for d in widths]
