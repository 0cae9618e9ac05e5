"""Curvature products of a model-parallel MLP on a cached forward pass (Gv and Hv).

The same R-operator passes as ``hessfree.models.curvature`` (Schraudolph's Gauss-Newton
product, Pearlmutter's exact Hessian product), on this rank's columns of every layer:

* R-forward: the rank computes its columns of R(z_l) = R(a_{l−1})·W_l + a_{l−1}·V_l + v_b
  and of R(a_l) = f'(z_l) ⊙ R(z_l), then one allgather gives every rank the whole
  R(a_l) (and at the output the whole R(z_L), which the loss Hessian needs by rows);
* R(δ_L) = H_L·R(z_L) from whole rows, equal on every rank; the rank keeps its columns;
* R-backward, l = L..2: this rank's columns of R(δ_{l−1}) need Σ_ranks of
  R(δ_l)[:, units]·W_l[:, units]ᵀ (+ δ_l[:, units]·V_l[:, units]ᵀ for Hv): one
  reduce-scatter, then the rank's own elementwise kernel (the f'' term of Hv uses its
  columns of δ_{l−1}, a_{l−1} and R(z_{l−1}));
* the weight products a_{l−1}ᵀ·R(δ_l) (+ R(a_{l−1})ᵀ·δ_l for Hv) need whole a_{l−1},
  R(a_{l−1}) (gathered) and this rank's columns of δ_l: the rank's shard of the product.

The exact Hessian also needs δ_l of every hidden layer, computed once per cache by the
back-propagation of the gradient pass (L − 1 reduce-scatters per chunk). So a product
costs L allgathers and L − 1 reduce-scatters per chunk of rows, whichever product.

The cache is a :class:`~hessfree.models.curvature.ForwardCache` (the same product loop)
whose exchange points are its own: the forward pass, ``_r_forward``, ``_output_r_delta``,
``_r_back`` and ``_error_below``. It keeps, per row of the batch, the whole activations Σ_{l≥1} d_l (every rank
needs them), this rank's columns of them (Σ d_l / P) and, for Hv, its columns of δ_l.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import numpy as np

from hessfree.models.curvature import ForwardCache
from hessfree.models.curvature import _Chunk as _WholeChunk
from hessfree.models.workspace import Accumulator, quiet_float_errors, rows_view

if TYPE_CHECKING:
    from hessfree.models.mlp import Batch
    from hessfree.models.sharded import ShardedMLP


@attrs.define
class _Chunk(_WholeChunk):
    """A chunk's forward pass: ``acts`` every column (what the GEMMs read), ``mine`` this
    rank's columns [None, a_1 … a_{L−1}, z_L] (what its kernels read), ``delta_out`` and
    ``deltas`` this rank's columns of δ_L and δ_l."""

    mine: list = attrs.field(kw_only=True)


class ShardedForwardCache(ForwardCache):
    """One batch's model-parallel forward pass at a fixed θ (this rank's shard), reused by
    every curvature product; ``gv(v)`` / ``hv(v)`` take and return this rank's shard.

    Collective: every rank must create it and call the same products in the same order.
    ``loss_sum`` and ``n`` are equal on every rank. ``recycle`` hands over the buffers of
    a previous cache of the same model (which then refuses products).
    """

    @quiet_float_errors
    def __init__(self, model: ShardedMLP, theta, batch: Batch, recycle: ShardedForwardCache | None = None):
        pool = self._begin(model, theta, batch, recycle)
        self._x = model.exchange
        L, rank, split = model.n_layers, model.rank, model.split
        widths = [split.width(l, rank) for l in range(1, L + 1)]
        rows = min(max(batch.n, 1), model.chunk_size)
        self.chunks: list[_Chunk] = []
        full_delta = np.empty((rows, model.n_outputs), dtype=model.dtype)
        colsum = np.empty(model.n_outputs, dtype=model.dtype)
        for start, stop in model.chunk_bounds(batch.n):
            part = batch.rows(start, stop)
            acts = [part.X] + pool.buffers(part.n, model.layers[1:], model.dtype)[1:]
            mine = pool.buffers(part.n, widths, model.dtype)
            model.sharded_forward(self.weights, part.X, acts, mine)
            scale = pool.empty((part.n,), model.dtype)
            self.loss_sum += model.loss_into(acts[L], part, True, full_delta[: part.n], colsum, scale)
            delta = model.own_columns(L, full_delta[: part.n], pool.empty((part.n, widths[-1]), model.dtype))
            self.chunks.append(_Chunk(part, acts, delta, scale, mine=mine))
        # workspace shared by all chunks: this rank's R(z_l), R(a_l); the whole R(a_l) and
        # R(z_L) (gathered); two buffers of the widest own width used in turn for R(δ_l),
        # one for the GEMM products the kernels consume at once, and zeros (Hv's second
        # back-propagated term arrives already summed into the first)
        widest = rows * max(widths)
        self._rz, self._ra = (pool.buffers(rows, widths, model.dtype) for _ in range(2))
        self._ra_full = pool.buffers(rows, model.layers[1:], model.dtype)
        self._g1 = [pool.empty((widest,), model.dtype) for _ in range(2)]
        self._g2 = pool.empty((widest,), model.dtype)
        self._zeros = np.zeros(widest, dtype=model.dtype)
        self._out_hess = np.empty((rows, model.n_outputs), dtype=model.dtype)
        self._colsum_out = np.empty(model.n_outputs, dtype=model.dtype)
        self._colsum = [None] + [np.empty(w, dtype=model.dtype) for w in widths]
        self._scratch = model.unflatten(np.empty(model.n_params, dtype=model.dtype))
        self._pool = pool

    def _buffers(self) -> list[np.ndarray]:
        arrays = super()._buffers() + self._ra_full[1:]
        for ch in self.chunks:
            arrays += ch.mine[1:]
        return arrays

    def _width(self, layer: int) -> int:
        return self.model.split.width(layer, self.model.rank)

    def _error_below(self, l: int, n: int, delta: np.ndarray) -> np.ndarray:
        """This rank's columns of δ_l·W_lᵀ (summed over ranks): one reduce-scatter."""
        out = self._pool.empty((n, self._width(l - 1)), self.model.dtype)
        return self._x.sum_back(l - 1, [(delta, self.weights[l - 1][0])], out)

    @staticmethod
    def _own(ch: _Chunk) -> list:
        return ch.mine

    def _g1_view(self, l: int, n: int) -> np.ndarray:
        """The buffer for this rank's R(δ_l) (layers alternate between the two)."""
        return rows_view(self._g1[(self.model.n_layers - l) % 2], n, self._width(l))

    def _r_forward(self, ch: _Chunk, V, n: int) -> tuple[list, list]:
        """This rank's R(z_l) and the whole R(a_l) (R(z_L) at l = L) of one chunk."""
        L, codes = self.model.n_layers, self.model.activation_codes
        rz = [None] + [buf[:n] for buf in self._rz[1:]]
        ra = [None] + [buf[:n] for buf in self._ra[1:]]
        ra_full = [None] + [buf[:n] for buf in self._ra_full[1:]]
        for l in range(1, L + 1):
            W = self.weights[l - 1][0]
            Vw, vb = V[l - 1]
            np.matmul(ch.acts[l - 1], Vw, out=rz[l])  # a_{l−1}·V_l, this rank's columns
            has2 = l > 1
            g2 = rows_view(self._g2, n, self._width(l))
            if has2:
                np.matmul(ra_full[l - 1], W, out=g2)  # R(a_{l−1})·W_l
            if l < L:
                self._k.r_activation(rz[l], g2, has2, vb, ch.mine[l], codes[l - 1], ra[l])
                self._x.gather(l, ra[l], ra_full[l])
            else:
                self._k.r_output(rz[l], g2, has2, vb)
                self._x.gather(l, rz[l], ra_full[l])  # the whole R(z_L)
        return rz, ra_full

    def _output_r_delta(self, ch: _Chunk, rz: list, ra: list, n: int, acc: Accumulator, c: int) -> np.ndarray:
        """This rank's columns of R(δ_L) = H_L·R(z_L), computed on whole rows (the same on
        every rank, ``ra[L]`` is the whole R(z_L)); its column sums into the bias slot."""
        model, L = self.model, self.model.n_layers
        hess = self._out_hess[:n]
        self._k.loss_hessian_product(ch.acts[L], ra[L], ch.scale, model.loss_kind.code, hess, self._colsum_out)
        model.own_columns(L, self._colsum_out[None, :], acc.bias_slot(L, c)[None, :])
        acc.bias_done(L, c)
        return model.own_columns(L, hess, self._g1_view(L, n))

    def _r_back(self, l: int, n: int, g1: np.ndarray, ch: _Chunk, V, exact: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """This rank's columns of R(δ_l)·W_lᵀ (+ δ_l·V_lᵀ for Hv), summed over ranks in one
        reduce-scatter; the second term is then zeros (it is in the first)."""
        below = self._g1_view(l - 1, n)
        terms = [(g1, self.weights[l - 1][0])] + ([(ch.deltas[l], V[l - 1][0])] if exact else [])
        self._x.sum_back(l - 1, terms, below)
        return below, rows_view(self._zeros, n, self._width(l - 1)) if exact else None
