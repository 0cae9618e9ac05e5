"""Curvature products of a dense network on a cached forward pass.

A :class:`ForwardCache` holds one batch's forward pass at a fixed θ (activations, loss
state, and, once an exact product is asked for, the backward errors δ_l) together with
workspace buffers, so a Krylov solve's tens of products at one θ repeat no forward work
and allocate nothing but their result.

* Gauss-Newton G·v = Σᵢ Jᵢᵀ H_L,ᵢ Jᵢ v (Schraudolph): the R-forward pass gives Jv = R(z_L),
  the loss Hessian multiplies it, and the *linear* backward pass applies Jᵀ;
* exact Hessian H·v (Pearlmutter's R-operator): the same R-forward pass, then the
  R-backward pass, which adds the terms the Gauss-Newton matrix drops: R(a_{l−1})ᵀ·δ_l in
  the weight gradient, δ_l·V_lᵀ and f''(z) ⊙ R(z) in the back-propagated error.

The cache works through the documented interface :class:`DenseNet` (which
:class:`hessfree.models.MLP` implements), never through a model's private members.

Memory, per row of the batch: the cache keeps Σ_{l≥1} d_l activations (and as many
again for the δ_l of exact products), plus, for one chunk of rows, R(z_l) and R(a_l) of
every layer and three buffers of the widest layer for the back-propagated errors.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Protocol

import attrs
import numpy as np

from hessfree.errors import InputError
from hessfree.models.workspace import Accumulator, Pool, quiet_float_errors, rows_view

if TYPE_CHECKING:
    from hessfree.models.mlp import Batch


class DenseNet(Protocol):
    """What a :class:`ForwardCache` needs of its model (all of it public on ``MLP``).

    Layer l (1..L) computes z_l = a_{l−1}·W_l + b_l; hidden layer l applies the activation
    of kernel code ``activation_codes[l−1]``; z_L feeds the loss of kernel code
    ``loss_kind.code``.
    """

    layers: tuple[int, ...]
    dtype: np.dtype
    chunk_size: int

    @property
    def n_layers(self) -> int: ...

    @property
    def n_params(self) -> int: ...

    @property
    def n_outputs(self) -> int: ...

    @property
    def activation_codes(self) -> tuple[int, ...]: ...

    @property
    def loss_kind(self): ...  # has ``.code``, the loss's kernel code

    @property
    def kernels(self): ...  # the numba kernel set (``hessfree.models.kernels``)

    def check_vector(self, v, name: str) -> np.ndarray: ...

    def unflatten(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]: ...

    def chunk_bounds(self, n: int) -> Iterator[tuple[int, int]]: ...

    def forward_into(self, weights, X: np.ndarray, acts: Sequence[np.ndarray]) -> None: ...

    def loss_into(self, Z, batch: Batch, want_delta: bool, D, colsum, scale) -> float: ...


@attrs.define
class _Chunk:
    batch: Batch
    acts: list  # [X, a_1, ..., a_{L−1}, p_L (output state)]
    delta_out: np.ndarray  # δ_L
    scale: np.ndarray
    deltas: list | None = None  # [None, δ_1, ..., δ_{L−1}, δ_L], filled for the exact Hessian


class ForwardCache:
    """One batch's forward pass at a fixed θ, reused by every curvature product.

    ``gv(v)`` and ``hv(v)`` return the batch *sums* (callers divide by the global
    batch size). ``loss_sum`` is the batch loss at θ, ``n`` the number of rows. Not
    thread-safe: one cache per rank. ``batch`` must be validated by ``model.batch`` and
    carry labels or targets. ``recycle``: a previous cache whose buffers this one takes
    over (that cache is then released and refuses further products).
    """

    @quiet_float_errors
    def __init__(self, model: DenseNet, theta, batch: Batch, recycle: ForwardCache | None = None):
        pool = self._begin(model, theta, batch, recycle)
        L = model.n_layers
        rows = min(max(batch.n, 1), model.chunk_size)
        self.chunks: list[_Chunk] = []
        for start, stop in model.chunk_bounds(batch.n):
            part = batch.rows(start, stop)
            acts = [part.X] + pool.buffers(part.n, model.layers[1:], model.dtype)[1:]
            model.forward_into(self.weights, part.X, acts)
            delta = pool.empty(acts[L].shape, model.dtype)
            scale = pool.empty((part.n,), model.dtype)
            colsum = np.empty(model.n_outputs, dtype=model.dtype)
            self.loss_sum += model.loss_into(acts[L], part, True, delta, colsum, scale)
            self.chunks.append(_Chunk(part, acts, delta, scale))
        # workspace shared by all chunks: R(z_l) and R(a_l) of every layer (the R-backward
        # pass reads them again), two buffers of the widest layer used in turn for R(δ_l),
        # and one for the GEMM products the kernels consume at once
        widest = rows * max(model.layers[1:])
        self._rz, self._ra = (pool.buffers(rows, model.layers[1:], model.dtype) for _ in range(2))
        self._g1 = [pool.empty((widest,), model.dtype) for _ in range(2)]
        self._g2 = pool.empty((widest,), model.dtype)
        self._colsum = [None] + [np.empty(d, dtype=model.dtype) for d in model.layers[1:]]
        self._scratch = model.unflatten(np.empty(model.n_params, dtype=model.dtype))  # one per cache, not per product
        self._pool = pool  # what is left of a recycled cache: the δ_l buffers, if any

    def _begin(self, model: DenseNet, theta, batch: Batch, recycle: ForwardCache | None) -> Pool:
        """The cache's identity (model, a copy of θ and its weight views, the batch size, a
        zero loss sum); the pool of ``recycle``'s buffers, or an empty one."""
        pool = recycle._release() if recycle is not None else Pool()
        self._released = False
        self.model = model
        self._k = model.kernels
        self.theta = model.check_vector(theta, "theta").copy()
        self.weights = model.unflatten(self.theta)
        self.n = batch.n
        self.loss_sum = 0.0
        return pool

    def _release(self) -> Pool:
        """Hand every buffer to a new cache; this cache refuses products from now on."""
        if self._released:
            raise InputError("recycle: this forward cache was already recycled")
        self._released = True
        arrays = self._buffers()
        self.chunks = []
        return Pool(arrays)

    def _buffers(self) -> list[np.ndarray]:
        """Every reusable buffer of this cache."""
        arrays = []
        for ch in self.chunks:
            arrays += ch.acts[1:] + [ch.delta_out, ch.scale]
            if ch.deltas is not None:
                arrays += [d for d in ch.deltas[1:-1]]
        for group in (self._rz, self._ra):
            arrays += group[1:]
        return arrays + self._g1 + [self._g2]

    @quiet_float_errors
    def _ensure_deltas(self) -> None:
        """δ_l for every hidden layer (the exact Hessian needs them; computed once)."""
        codes, L = self.model.activation_codes, self.model.n_layers
        for ch in self.chunks:
            if ch.deltas is not None:
                continue
            deltas = [None] * (L + 1)
            deltas[L] = ch.delta_out
            for l in range(L, 1, -1):
                d = self._error_below(l, ch.batch.n, deltas[l])
                self._k.backprop_activation(d, self._own(ch)[l - 1], codes[l - 2], self._colsum[l - 1])
                deltas[l - 1] = d
            ch.deltas = deltas

    def _error_below(self, l: int, n: int, delta: np.ndarray) -> np.ndarray:
        """δ_l·W_lᵀ, the back-propagated error of layer l − 1 (a buffer of the pool)."""
        out = self._pool.empty((n, self.model.layers[l - 1]), self.model.dtype)
        return np.matmul(delta, self.weights[l - 1][0].T, out=out)

    @staticmethod
    def _own(ch: _Chunk) -> list:
        """The activations the elementwise kernels of a chunk work on (all of them here)."""
        return ch.acts

    def _g1_view(self, l: int, n: int) -> np.ndarray:
        """The buffer for R(δ_l) (layers alternate between the two)."""
        return rows_view(self._g1[(self.model.n_layers - l) % 2], n, self.model.layers[l])

    def _r_forward(self, ch: _Chunk, V, n: int) -> tuple[list, list]:
        """R(z_l) and R(a_l) for every layer of one chunk (views of the workspace)."""
        model = self.model
        L, codes = model.n_layers, model.activation_codes
        rz = [None] + [buf[:n] for buf in self._rz[1:]]
        ra = [None] + [buf[:n] for buf in self._ra[1:]]
        for l in range(1, L + 1):
            W = self.weights[l - 1][0]
            Vw, vb = V[l - 1]
            np.matmul(ch.acts[l - 1], Vw, out=rz[l])  # a_{l−1}·V_l
            has2 = l > 1
            g2 = rows_view(self._g2, n, model.layers[l])
            if has2:
                np.matmul(ra[l - 1], W, out=g2)  # R(a_{l−1})·W_l
            if l < L:
                self._k.r_activation(rz[l], g2, has2, vb, ch.acts[l], codes[l - 1], ra[l])
            else:
                self._k.r_output(rz[l], g2, has2, vb)
        return rz, ra

    @quiet_float_errors
    def _product(self, v, out, exact: bool) -> np.ndarray:
        if self._released:
            raise InputError("this forward cache was recycled by a newer one; compute a new forward pass")
        model = self.model
        V = model.unflatten(v)
        if out is None:
            out = np.empty(model.n_params, dtype=model.dtype)
        elif out.shape != (model.n_params,) or out.dtype != model.dtype or not out.flags.c_contiguous:
            raise InputError(f"out: expected a contiguous ({model.n_params},) {model.dtype} array, found {out.shape} {out.dtype}")
        if exact:
            self._ensure_deltas()
        acc = Accumulator(model.unflatten(out), self._scratch, self._k.add_into)
        for c, ch in enumerate(self.chunks):
            self._chunk_product(acc, c, ch, V, exact)
        if not self.chunks:
            out[:] = 0.0
        return out

    def _chunk_product(self, acc: Accumulator, c: int, ch: _Chunk, V, exact: bool) -> None:
        """Add chunk ``c``'s Gv (or Hv) into the accumulator: the R-forward pass, R(δ_L),
        then layer by layer the weight products and the R-backward pass."""
        L, codes = self.model.n_layers, self.model.activation_codes
        n = ch.batch.n
        own = self._own(ch)
        rz, ra = self._r_forward(ch, V, n)
        g1 = self._output_r_delta(ch, rz, ra, n, acc, c)
        for l in range(L, 0, -1):
            acc.gemm(l, c, ch.acts[l - 1].T, g1)  # a_{l−1}ᵀ·R(δ_l)
            if exact and l > 1:
                acc.gemm(l, c, ra[l - 1].T, ch.deltas[l])  # R(a_{l−1})ᵀ·δ_l
            if l == 1:
                break
            below, g2 = self._r_back(l, n, g1, ch, V, exact)
            bias = acc.bias_slot(l - 1, c)
            if exact:
                self._k.r_backprop_activation(below, g2, ch.deltas[l - 1], own[l - 1], rz[l - 1], codes[l - 2], bias)
            else:
                self._k.backprop_activation(below, own[l - 1], codes[l - 2], bias)
            acc.bias_done(l - 1, c)
            g1 = below

    def _output_r_delta(self, ch: _Chunk, rz: list, ra: list, n: int, acc: Accumulator, c: int) -> np.ndarray:
        """R(δ_L) = H_L·R(z_L), its column sums into the output bias slot."""
        L = self.model.n_layers
        g1 = self._g1_view(L, n)
        self._k.loss_hessian_product(ch.acts[L], rz[L], ch.scale, self.model.loss_kind.code, g1, acc.bias_slot(L, c))
        acc.bias_done(L, c)
        return g1

    def _r_back(self, l: int, n: int, g1: np.ndarray, ch: _Chunk, V, exact: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """(R(δ_l)·W_lᵀ, δ_l·V_lᵀ or None): the two back-propagated terms of layer l − 1."""
        below = self._g1_view(l - 1, n)
        np.matmul(g1, self.weights[l - 1][0].T, out=below)
        if not exact:
            return below, None
        g2 = rows_view(self._g2, n, self.model.layers[l - 1])
        np.matmul(ch.deltas[l], V[l - 1][0].T, out=g2)
        return below, g2

    def gv(self, v, out=None) -> np.ndarray:
        """Σᵢ Jᵢᵀ H_L,ᵢ Jᵢ v over the batch (Gauss-Newton; positive semi-definite)."""
        return self._product(self.model.check_vector(v, "v"), out, exact=False)

    def hv(self, v, out=None) -> np.ndarray:
        """Σᵢ ∇²ℓᵢ v over the batch (exact Hessian, R-operator)."""
        return self._product(self.model.check_vector(v, "v"), out, exact=True)
