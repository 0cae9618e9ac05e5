"""A model-parallel MLP: each rank owns a slice of every layer's units; the data is whole.

``ShardedMLP(layers, ..., comm=comm)`` is an :class:`~hessfree.models.mlp.MLP` whose θ is
this rank's shard (``hessfree.models.split``: the columns W_l[:, units] and b_l[units] of
every layer l). Every rank sees the same rows; per layer and chunk of rows:

* forward: the rank computes its columns of z_l = a_{l−1}·W_l + b_l and of a_l = f(z_l),
  then **one allgather** gives every rank the whole a_l (and, at the output, the whole
  z_L, so every rank evaluates the loss on whole rows, bitwise alike: no reduction);
* backward: δ_L comes from the whole z_L; for l = L..2 the error of the layer below,
  E = δ_l·W_lᵀ, is a sum over ranks of δ_l[:, units]·W_l[:, units]ᵀ, so **one
  reduce-scatter** gives each rank its own columns of E (all it needs: its δ_{l−1}, its
  weight gradient a_{l−2}ᵀ·δ_{l−1}[:, units] and its share of the next E);
* the R-operator passes of Gv and Hv (``hessfree.models.sharded_curvature``) exchange
  R(a_l) and R(z_L) the same way, and the R-backward pass sums R(δ_l)·W_lᵀ (+ δ_l·V_lᵀ
  for Hv) in one reduce-scatter per layer.

So a gradient pass costs L allgathers and L − 1 reduce-scatters per chunk, a forward
pass L allgathers, a curvature product L allgathers and L − 1 reduce-scatters. Every
method returns the same sums as the serial MLP to rounding: ``evaluate``, ``loss`` and
``predict`` their whole values (equal on every rank), ``loss_grad`` and the products
this rank's shard of the vector. Every rank must call the same methods in the same order
(they are collective). ``warm_up`` is local (it compiles the serial model's kernels, the
same ones), so ``warm_numba_cache`` may run it on rank 0 alone.
"""

from __future__ import annotations

import attrs
import numpy as np

from hessfree.comm import Communicator
from hessfree.errors import InputError
from hessfree.models import kernels as K
from hessfree.models.base import Model
from hessfree.models.mlp import MLP
from hessfree.models.split import UnitSplit
from hessfree.models.workspace import Accumulator, rows_view


class LayerExchange:
    """A rank's two exchanges of model parallelism, through its communicator.

    Holds flat scratch buffers (grown as needed, one per purpose), so a pass allocates
    nothing per layer. One per rank: not thread-safe.
    """

    def __init__(self, comm: Communicator, split: UnitSplit):
        self.comm = comm
        self.split = split
        self.rank = comm.rank
        self._scratch: dict[tuple[str, str], np.ndarray] = {}

    def scratch(self, purpose: str, size: int, dtype) -> np.ndarray:
        """A flat buffer of ``size`` elements reserved for ``purpose`` (reused)."""
        key = (purpose, np.dtype(dtype).str)
        buf = self._scratch.get(key)
        if buf is None or buf.size < size:
            buf = self._scratch[key] = np.empty(max(size, 1), dtype=dtype)
        return buf[:size]

    def gather(self, layer: int, local: np.ndarray, full: np.ndarray) -> np.ndarray:
        """``full`` (n × d_layer) ← every rank's columns ``local`` (n × its width): one allgather."""
        counts = self.split.counts(layer, local.shape[0])
        flat = self.scratch("gather", sum(counts), local.dtype)
        self.comm.allgather(local, flat, counts)
        self.split.from_blocks(layer, flat, full)
        return full

    def sum_back(self, layer: int, terms, out: np.ndarray) -> np.ndarray:
        """``out`` (n × this rank's width of ``layer``) ← this rank's columns of
        Σ_ranks Σ_terms D·Mᵀ, for ``terms`` of (D: n × w of the layer above, M: d_layer × w,
        this rank's columns of a weight-shaped matrix): one reduce-scatter.

        Each rank block of the partial sum is computed straight into the send buffer
        (M's rows of that block: a contiguous slice), so nothing is copied.
        """
        n = out.shape[0]
        counts = self.split.counts(layer, n)
        flat = self.scratch("sum_back", sum(counts), out.dtype)
        start = 0
        for r, size in enumerate(counts):
            rows = self.split.units(layer, r)
            block = flat[start : start + size].reshape(n, rows.stop - rows.start)
            for k, (D, M) in enumerate(terms):
                if k == 0:
                    np.matmul(D, M[rows].T, out=block)
                else:
                    tmp = self.scratch("sum_back_term", size, out.dtype).reshape(block.shape)
                    np.matmul(D, M[rows].T, out=tmp)
                    block += tmp
            start += size
        self.comm.reduce_scatter(flat, out, counts)
        return out


def _communicator(instance, attribute, value) -> None:
    if not isinstance(value, Communicator):
        raise InputError(f"comm: ShardedMLP needs a Communicator, found {type(value).__name__}")


@attrs.frozen
class ShardedMLP(MLP):
    """This rank's part of a model-parallel ``MLP(layers, ...)`` over ``comm`` (module docstring).

    ``n_params`` is the shard's length; ``full`` is the whole network as a plain
    :class:`MLP` (for model files), ``split`` the unit blocks, ``gather_vector`` and
    ``shard_vector`` convert between a whole θ-shaped vector and this rank's shard.
    """

    comm: Communicator = attrs.field(default=None, kw_only=True, eq=False, repr=False, validator=_communicator)
    _split: UnitSplit = attrs.field(init=False, eq=False, repr=False)
    _index: np.ndarray = attrs.field(init=False, eq=False, repr=False)
    _full: MLP = attrs.field(init=False, eq=False, repr=False)
    _exchange: LayerExchange = attrs.field(init=False, eq=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        split = UnitSplit(self.layers, self.comm.size)
        object.__setattr__(self, "_split", split)
        object.__setattr__(self, "_index", split.shard_index(self.comm.rank))
        full = MLP(self.layers, activation=self.activation, loss=self.loss_kind, dtype=self.dtype,
                   chunk_size=self.chunk_size, parallel=self.parallel)
        object.__setattr__(self, "_full", full)
        object.__setattr__(self, "_exchange", LayerExchange(self.comm, split))

    # ---------------------------------------------------------------- the shard
    @property
    def split(self) -> UnitSplit:
        return self._split

    @property
    def full(self) -> MLP:
        """The whole network (same settings), e.g. to save a gathered θ as a model file."""
        return self._full

    @property
    def exchange(self) -> LayerExchange:
        return self._exchange

    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def n_params(self) -> int:
        return int(self._index.size)

    @property
    def n_params_total(self) -> int:
        """Length of the whole θ (all shards)."""
        return self._full.n_params

    def unflatten(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views ``(W_l[:, units], b_l[units])`` into this rank's shard."""
        return self._split.shard_views(self.check_vector(theta, "theta"), self.rank)

    def init_params(self, seed=0) -> np.ndarray:
        """This rank's slice of the serial model's initial θ (the same seed, the same weights)."""
        return self._full.init_params(seed)[self._index]

    def shard_vector(self, whole: np.ndarray) -> np.ndarray:
        """This rank's entries of a whole θ-shaped vector (a copy)."""
        return self._full.check_vector(whole, "whole vector")[self._index]

    def gather_vector(self, shard: np.ndarray) -> np.ndarray:
        """The whole θ-shaped vector from every rank's shard: one allgather (collective)."""
        shard = self.check_vector(shard, "shard")
        gathered = np.empty(self.n_params_total, dtype=self.dtype)
        self.comm.allgather(shard, gathered, self._split.shard_sizes())
        whole = np.empty_like(gathered)
        whole[self._split.gather_order()] = gathered
        return whole

    def warm_up(self) -> None:
        """Compile the kernels on the whole network, locally (no collective): the sharded
        passes call the same kernels on arrays of the same kinds."""
        self._full.warm_up()

    # ---------------------------------------------------------------- passes
    def local_buffers(self, rows: int) -> list:
        """``[None, B_1, ..., B_L]``, B_l of shape (rows, this rank's width of layer l)."""
        return [None] + [np.empty((rows, self._split.width(l, self.rank)), dtype=self.dtype)
                         for l in range(1, self.n_layers + 1)]

    def sharded_forward(self, weights, X: np.ndarray, full, local) -> None:
        """full[l] ← a_l (l < L) and z_L (l = L), every column; local[l] ← this rank's
        columns of them (the rank's own work): one allgather per layer."""
        prev, codes = X, self.activation_codes
        for l, (W, b) in enumerate(weights, start=1):
            np.matmul(prev, W, out=local[l])
            if l < self.n_layers:
                K.activate(local[l], b, codes[l - 1])
            else:
                np.add(local[l], b, out=local[l])
            self._exchange.gather(l, local[l], full[l])
            prev = full[l]

    def forward_into(self, weights, X, acts) -> None:
        """Refused: the whole-network forward pass cannot run on a shard's weights (the
        sharded passes use :meth:`sharded_forward`)."""
        raise InputError("forward_into: a ShardedMLP holds a slice of every layer; use sharded_forward")

    def _forward_pair(self, weights, X: np.ndarray, pair) -> np.ndarray:
        """z_L of X's rows (every column), the layers alternating between the two buffers
        (what ``evaluate`` and ``predict`` of the MLP run on)."""
        n = X.shape[0]
        full = [X] + [rows_view(pair[(l - 1) % 2], n, d) for l, d in enumerate(self.layers[1:], start=1)]
        widest = max(self._split.width(l, self.rank) for l in range(1, self.n_layers + 1))
        flat = self._exchange.scratch("forward", n * widest, self.dtype)
        local = [None] + [rows_view(flat, n, self._split.width(l, self.rank)) for l in range(1, self.n_layers + 1)]
        self.sharded_forward(weights, X, full, local)
        return full[-1]

    def own_columns(self, layer: int, full: np.ndarray, out: np.ndarray) -> np.ndarray:
        """out ← this rank's columns of a (n × d_layer) matrix."""
        out[...] = full[:, self._split.units(layer, self.rank)]
        return out

    def _loss_grad(self, theta, X, y, squares: bool):
        """(Σℓ, this rank's shard of Σ∇ℓ, of Σ∇ℓ⊙∇ℓ or None): chunk by chunk, a forward
        pass (L allgathers) and a backward pass (L − 1 reduce-scatters)."""
        weights = self.unflatten(theta)
        batch = self._labelled(X, y)
        sums = [self._accumulator()] + ([self._accumulator()] if squares else [])
        acc = sums[0][1]
        rows = min(batch.n, self.chunk_size)
        full = [None] + [np.empty((rows, d), dtype=self.dtype) for d in self.layers[1:]]
        local = self.local_buffers(rows)
        widest = max(b.shape[1] for b in local[1:])
        errs = [np.empty(rows * widest, dtype=self.dtype) for _ in range(2)]  # this rank's δ_l, alternating
        delta = np.empty((rows, self.n_outputs), dtype=self.dtype)
        colsum = np.empty(self.n_outputs, dtype=self.dtype)
        scale = np.empty(rows, dtype=self.dtype)
        total, codes, L = 0.0, self.activation_codes, self.n_layers
        for c, (start, stop) in enumerate(self.chunk_bounds(batch.n)):
            part = batch.rows(start, stop)
            n = part.n
            a = [part.X] + [buf[:n] for buf in full[1:]]
            mine = [None] + [buf[:n] for buf in local[1:]]
            self.sharded_forward(weights, part.X, a, mine)
            total += self.loss_into(a[L], part, True, delta[:n], colsum, scale[:n])
            d = self.own_columns(L, delta[:n], rows_view(errs[0], n, mine[L].shape[1]))
            self.own_columns(L, colsum[None, :], acc.bias_slot(L, c)[None, :])
            acc.bias_done(L, c)
            for l in range(L, 0, -1):
                acc.gemm(l, c, a[l - 1].T, d)
                if squares:
                    self._square_terms(sums[1][1], l, c, a[l - 1], d)
                if l > 1:
                    below = rows_view(errs[(L - l + 1) % 2], n, mine[l - 1].shape[1])
                    self._exchange.sum_back(l - 1, [(d, weights[l - 1][0])], below)
                    self.kernels.backprop_activation(below, mine[l - 1], codes[l - 2], acc.bias_slot(l - 1, c))
                    acc.bias_done(l - 1, c)
                    d = below
        if batch.n == 0:
            for vector, _ in sums:
                vector[:] = 0.0
        return total, sums[0][0], sums[1][0] if squares else None

    #: the passes are collective: the default's two passes keep their collectives where
    #: a trainer expects them (no evaluation takes a gradient along)
    fused_evaluation = False

    def evaluate_grad(self, theta, X, y=None, *, squares: bool = False):
        return Model.evaluate_grad(self, theta, X, y, squares=squares)

    def _accumulator(self) -> tuple[np.ndarray, Accumulator]:
        """A new shard-sized result vector and the accumulator adding chunks into it."""
        out = np.empty(self.n_params, dtype=self.dtype)
        scratch = self.unflatten(np.empty(self.n_params, dtype=self.dtype))
        return out, Accumulator(self.unflatten(out), scratch, self.kernels.add_into)

    def forward(self, theta, X, y=None, *, recycle=None):
        """The model-parallel forward pass of a batch at θ (this rank's shard), for many
        ``gv``/``hv`` products (``hessfree.models.sharded_curvature``)."""
        from hessfree.models.sharded_curvature import ShardedForwardCache

        return ShardedForwardCache(self, theta, self._labelled(X, y), recycle)
