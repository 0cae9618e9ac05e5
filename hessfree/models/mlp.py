"""A multilayer perceptron on a flat parameter vector, with exact curvature products.

Layer l (1..L) computes z_l = a_{l−1}·W_l + b_l with W_l of shape (d_{l−1}, d_l); hidden
layers apply the activation a_l = f(z_l); the output z_L feeds the loss. θ stores, layer
after layer, W_l row-major then b_l.

Products (all sums over the batch, computed chunk by chunk so memory stays bounded):

* gradient: the usual backward pass, δ_L = ∂ℓ/∂z_L, δ_{l−1} = (δ_l·W_lᵀ) ⊙ f'(z_{l−1}),
  ∇W_l = a_{l−1}ᵀ·δ_l, ∇b_l = Σ_rows δ_l;
* Gauss-Newton G·v = Σᵢ Jᵢᵀ H_L,ᵢ Jᵢ v (Schraudolph): the R-forward pass gives Jv = R(z_L),
  the loss Hessian multiplies it, and the *linear* backward pass applies Jᵀ;
* exact Hessian H·v (Pearlmutter's R-operator): the same R-forward pass, then the
  R-backward pass, which adds the terms the Gauss-Newton matrix drops: R(a_{l−1})ᵀ·δ_l in
  the weight gradient, δ_l·V_lᵀ and f''(z) ⊙ R(z) in the back-propagated error.

A :class:`ForwardCache` holds one batch's forward pass (activations, loss state, and,
once an exact product is asked for, the backward errors δ_l) together with workspace
buffers, so a Krylov solve's tens of products at one θ repeat no forward work and
allocate nothing but their result.
"""

from __future__ import annotations

import enum
import functools
import math
import attrs
import numpy as np

from hessfree.errors import InputError
from hessfree.models import kernels as K
from hessfree.models.base import Model


class Activation(enum.Enum):
    TANH = "tanh"
    SIGMOID = "sigmoid"
    RELU = "relu"
    SOFTPLUS = "softplus"

    @property
    def code(self) -> int:
        return {"tanh": K.TANH, "sigmoid": K.SIGMOID, "relu": K.RELU, "softplus": K.SOFTPLUS}[self.value]


class Loss(enum.Enum):
    SOFTMAX_CROSS_ENTROPY = "softmax_cross_entropy"
    LOGISTIC_CROSS_ENTROPY = "logistic_cross_entropy"
    SQUARED_ERROR = "squared_error"

    @property
    def code(self) -> int:
        return {
            "softmax_cross_entropy": K.SOFTMAX_CE,
            "logistic_cross_entropy": K.LOGISTIC_CE,
            "squared_error": K.SQUARED,
        }[self.value]


def _quiet_float_errors(method):
    """Overflow to ±inf and NaN are results the trainer handles (step rejected), not warnings."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            return method(*args, **kwargs)

    return wrapper


def _enum(kind):
    def convert(value):
        if isinstance(value, kind):
            return value
        try:
            return kind(str(value).lower().replace("-", "_"))
        except ValueError:
            choices = ", ".join(m.value for m in kind)
            raise InputError(f"{kind.__name__.lower()}: expected one of {choices}, found {value!r}") from None

    return convert


def _layers(value) -> tuple[int, ...]:
    try:
        layers = tuple(int(d) for d in value)
    except (TypeError, ValueError):
        raise InputError(f"layers: expected a sequence of positive integers, found {value!r}") from None
    if len(layers) < 2 or any(d < 1 for d in layers) or any(d != v for d, v in zip(layers, value)):
        raise InputError(f"layers: expected at least two positive integers [d0, ..., dL], found {list(value)}")
    return layers


def _dtype(value) -> np.dtype:
    dtype = np.dtype(value)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise InputError(f"dtype: expected float32 or float64, found {dtype}")
    return dtype


def _positive_int(instance, attribute, value) -> None:
    if not isinstance(value, int) or value < 1:
        raise InputError(f"{attribute.name}: expected a positive integer, found {value!r}")


@attrs.frozen(eq=False)
class Batch:
    """Samples validated once against a model: use it to skip re-validation in hot loops.

    ``X`` is C-contiguous in the model's dtype; ``labels`` (int64, in [0, d_L)) or
    ``targets`` (dense, shape (n, d_L), the model's dtype) give the loss its targets.
    """

    X: np.ndarray
    labels: np.ndarray | None
    targets: np.ndarray | None

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    def rows(self, start: int, stop: int) -> "Batch":
        """The sub-batch of rows [start, stop) (views, no copy)."""
        return Batch(
            self.X[start:stop],
            None if self.labels is None else self.labels[start:stop],
            None if self.targets is None else self.targets[start:stop],
        )


@attrs.frozen
class MLP(Model):
    """Dense feed-forward network: ``MLP(layers=[d0, ..., dL], activation, loss, dtype)``.

    ``chunk_size`` bounds the rows processed at once (memory ∝ chunk_size · Σ d_l).
    ``parallel`` spreads the elementwise kernels over numba's threads (bitwise the same
    results); leave it False when several threads of one process use models at once.
    """

    layers: tuple[int, ...] = attrs.field(converter=_layers)
    activation: Activation = attrs.field(default=Activation.TANH, converter=_enum(Activation))
    loss_kind: Loss = attrs.field(default=Loss.SOFTMAX_CROSS_ENTROPY, converter=_enum(Loss), alias="loss")
    dtype: np.dtype = attrs.field(default=np.float64, converter=_dtype)
    chunk_size: int = attrs.field(default=8192, validator=_positive_int)
    parallel: bool = attrs.field(default=False, converter=bool)
    _offsets: tuple[tuple[int, int, int], ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        offsets, start = [], 0
        for d_in, d_out in zip(self.layers[:-1], self.layers[1:]):
            offsets.append((start, start + d_in * d_out, start + d_in * d_out + d_out))
            start += d_in * d_out + d_out
        object.__setattr__(self, "_offsets", tuple(offsets))

    @property
    def kernels(self):
        """The numba kernel set this model uses (serial or parallel, see ``parallel``)."""
        return K.kernels(self.parallel)

    # ---------------------------------------------------------------- parameters
    @property
    def n_layers(self) -> int:
        return len(self.layers) - 1

    @property
    def n_params(self) -> int:
        return self._offsets[-1][2]

    @property
    def n_inputs(self) -> int:
        return self.layers[0]

    @property
    def n_outputs(self) -> int:
        return self.layers[-1]

    def unflatten(self, theta: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views ``(W_l, b_l)`` into θ, W_l of shape (d_{l−1}, d_l): writing them writes θ."""
        theta = self._check_vector(theta, "theta")
        views = []
        for (w0, w1, b1), d_in, d_out in zip(self._offsets, self.layers[:-1], self.layers[1:]):
            views.append((theta[w0:w1].reshape(d_in, d_out), theta[w1:b1]))
        return views

    def init_params(self, seed=0) -> np.ndarray:
        """Scaled random weights, zero biases.

        Glorot-uniform (limit √(6/(d_in+d_out))) for tanh and softplus, four times that
        for sigmoid (its slope at 0 is 1/4), He-uniform (√(6/d_in)) for relu.
        """
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        theta = np.zeros(self.n_params, dtype=self.dtype)
        for W, _ in self.unflatten(theta):
            d_in, d_out = W.shape
            if self.activation is Activation.RELU:
                limit = math.sqrt(6.0 / d_in)
            else:
                limit = math.sqrt(6.0 / (d_in + d_out))
                if self.activation is Activation.SIGMOID:
                    limit *= 4.0
            W[...] = rng.uniform(-limit, limit, size=W.shape)
        return theta

    # ---------------------------------------------------------------- validation
    def _check_vector(self, v, name: str) -> np.ndarray:
        v = np.asarray(v)
        if v.shape != (self.n_params,):
            raise InputError(f"{name}: expected shape ({self.n_params},) for layers {list(self.layers)}, found {v.shape}")
        if v.dtype != self.dtype:
            if not np.issubdtype(v.dtype, np.floating):
                raise InputError(f"{name}: expected a floating-point vector ({self.dtype}), found dtype {v.dtype}")
            v = v.astype(self.dtype)
        return np.ascontiguousarray(v)

    def batch(self, X, y=None) -> Batch:
        """Validate samples once: shape, dtype, finiteness, label range.

        ``y`` is either integer class labels of shape (n,) in [0, d_L), or dense targets of
        shape (n, d_L) (any loss). ``y=None`` is allowed for prediction only.
        """
        if isinstance(X, Batch):
            if y is not None:
                raise InputError("y: must be omitted when X is already a validated Batch")
            return X
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise InputError(f"X: expected shape (n, {self.n_inputs}) for layers {list(self.layers)}, found {X.shape}")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise InputError(f"X: expected a numeric array, found dtype {X.dtype}")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if not K.all_finite(X):
            raise InputError(f"X: expected finite values, found NaN or inf in the {X.shape} {X.dtype} array")
        labels = targets = None
        if y is not None:
            y = np.asarray(y)
            if y.ndim == 1 and (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
                labels = self._check_labels(y, X.shape[0])
            elif y.ndim == 2:
                targets = self._check_targets(y, X.shape[0])
            else:
                raise InputError(
                    f"y: expected integer labels of shape ({X.shape[0]},) or targets of shape "
                    f"({X.shape[0]}, {self.n_outputs}), found {y.shape} {y.dtype}"
                )
        return Batch(X, labels, targets)

    def _check_labels(self, y: np.ndarray, n: int) -> np.ndarray:
        if y.shape != (n,):
            raise InputError(f"y: expected {n} labels to match X, found shape {y.shape}")
        if n and (int(y.min()) < 0 or int(y.max()) >= self.n_outputs):
            raise InputError(
                f"y: expected labels in [0, {self.n_outputs}), found values in [{int(y.min())}, {int(y.max())}]"
            )
        return np.ascontiguousarray(y, dtype=np.int64)

    def _check_targets(self, y: np.ndarray, n: int) -> np.ndarray:
        if y.shape != (n, self.n_outputs):
            raise InputError(f"y: expected targets of shape ({n}, {self.n_outputs}), found {y.shape}")
        y = np.ascontiguousarray(y, dtype=self.dtype)
        if not K.all_finite(y):
            raise InputError(f"y: expected finite targets, found NaN or inf in the {y.shape} array")
        return y

    def _labelled(self, X, y) -> Batch:
        batch = self.batch(X, y)
        if batch.labels is None and batch.targets is None:
            raise InputError("y: labels or targets are required for a loss")
        return batch

    def _chunks(self, n: int):
        for start in range(0, n, self.chunk_size):
            yield start, min(n, start + self.chunk_size)

    # ---------------------------------------------------------------- forward
    def _forward_into(self, weights, X: np.ndarray, acts: list[np.ndarray]) -> None:
        """acts[l] ← a_l for l = 1..L−1 and acts[L] ← z_L (buffers with X.shape[0] rows)."""
        prev = X
        code = self.activation.code
        for l, (W, b) in enumerate(weights, start=1):
            out = acts[l]
            np.matmul(prev, W, out=out)
            if l < self.n_layers:
                K.activate(out, b, code)
            else:
                np.add(out, b, out=out)
            prev = out

    def _buffers(self, rows: int, first: int = 1) -> list[np.ndarray | None]:
        return [None] * first + [np.empty((rows, d), dtype=self.dtype) for d in self.layers[first:]]

    def _loss_state(self, Z, batch: Batch, want_delta: bool, D, colsum, scale) -> float:
        dense = batch.targets is not None
        labels = batch.labels if not dense else _NO_LABELS
        targets = batch.targets if dense else _no_targets(self.dtype)
        return float(self.kernels.loss_forward(Z, labels, targets, dense, self.loss_kind.code, want_delta, D, colsum, scale))

    def loss(self, theta, X, y=None) -> float:
        """Σᵢ ℓᵢ over the batch (forward passes only)."""
        return self.evaluate(theta, X, y)[0]

    @_quiet_float_errors
    def evaluate(self, theta, X, y=None) -> tuple[float, int]:
        """(Σᵢ ℓᵢ, number of misclassified rows) from one forward pass."""
        weights = self.unflatten(theta)
        batch = self._labelled(X, y)
        labels = batch.labels if batch.labels is not None else np.argmax(batch.targets, axis=1)
        rows = min(batch.n, self.chunk_size)
        acts = self._buffers(rows)
        scale = np.empty(rows, dtype=self.dtype)
        total, wrong = 0.0, 0
        for start, stop in self._chunks(batch.n):
            part = batch.rows(start, stop)
            view = [part.X] + [a[: part.n] for a in acts[1:]]
            self._forward_into(weights, part.X, view)
            out = view[-1]
            total += self._loss_state(out, part, False, out, _no_colsum(self.dtype), scale[: part.n])
            wrong += int(self.kernels.count_errors(out, labels[start:stop]))
        return total, wrong

    @_quiet_float_errors
    def loss_grad(self, theta, X, y=None) -> tuple[float, np.ndarray]:
        """(Σᵢ ℓᵢ, Σᵢ ∇ℓᵢ) over the batch."""
        weights = self.unflatten(theta)
        batch = self._labelled(X, y)
        grad = np.empty(self.n_params, dtype=self.dtype)
        acc = _Accumulator(self, grad)
        rows = min(batch.n, self.chunk_size)
        acts = self._buffers(rows)
        errs = self._buffers(rows)  # δ_l buffers
        scale = np.empty(rows, dtype=self.dtype)
        total = 0.0
        code = self.activation.code
        L = self.n_layers
        for c, (start, stop) in enumerate(self._chunks(batch.n)):
            part = batch.rows(start, stop)
            n = part.n
            a = [part.X] + [buf[:n] for buf in acts[1:]]
            d = [None] + [buf[:n] for buf in errs[1:]]
            self._forward_into(weights, part.X, a)
            total += self._loss_state(a[L], part, True, d[L], acc.bias_slot(L, c), scale[:n])
            acc.bias_done(L, c)
            for l in range(L, 0, -1):
                acc.gemm(l, c, a[l - 1].T, d[l])
                if l > 1:
                    np.matmul(d[l], weights[l - 1][0].T, out=d[l - 1])
                    self.kernels.backprop_activation(d[l - 1], a[l - 1], code, acc.bias_slot(l - 1, c))
                    acc.bias_done(l - 1, c)
        if batch.n == 0:
            grad[:] = 0.0
        return total, grad

    def forward(self, theta, X, y=None, *, recycle: "ForwardCache | None" = None) -> "ForwardCache":
        """Forward pass of a batch at θ, for many ``gv``/``hv`` products (θ is copied).

        ``recycle`` hands the buffers of a cache no longer needed to the new one.
        """
        return ForwardCache(self, theta, self._labelled(X, y), recycle)

    # ---------------------------------------------------------------- prediction
    def _outputs(self, theta, X):
        """Yield (rows, output state) chunk by chunk: probabilities, or z for squared error."""
        weights = self.unflatten(theta)
        batch = self.batch(X)
        rows = min(batch.n, self.chunk_size)
        acts = self._buffers(rows)
        for start, stop in self._chunks(batch.n):
            part = batch.rows(start, stop)
            view = [part.X] + [a[: part.n] for a in acts[1:]]
            self._forward_into(weights, part.X, view)
            yield start, stop, view[-1]

    def predict(self, theta, X) -> np.ndarray:
        """Arg-max class of each row (z_L's arg-max: the same for every loss)."""
        n = X.n if isinstance(X, Batch) else np.asarray(X).shape[0]
        out = np.empty(n, dtype=np.int64)
        for start, stop, Z in self._outputs(theta, X):
            out[start:stop] = np.argmax(Z, axis=1)
        return out

    def error_count(self, theta, X, y=None) -> int:
        """Rows whose arg-max output differs from the label (or the target's arg-max)."""
        batch = self._labelled(X, y)
        labels = batch.labels if batch.labels is not None else np.argmax(batch.targets, axis=1)
        wrong = 0
        for start, stop, Z in self._outputs(theta, batch):
            wrong += int(self.kernels.count_errors(Z, labels[start:stop]))
        return wrong


_NO_LABELS = np.zeros(0, dtype=np.int64)


def _no_targets(dtype) -> np.ndarray:
    return np.zeros((0, 0), dtype=dtype)


def _no_colsum(dtype) -> np.ndarray:
    return np.zeros(0, dtype=dtype)


class _Accumulator:
    """Adds per-chunk contributions into the views of a flat result vector.

    The first chunk writes each layer's slot directly (GEMM ``out=``); later chunks and
    second terms go through a scratch buffer and are added in, always in the same order.
    """

    def __init__(self, model: MLP, out: np.ndarray, scratch: np.ndarray | None = None):
        self._k = model.kernels
        self.views = model.unflatten(out)
        if scratch is None:
            scratch = np.empty(model.n_params, dtype=model.dtype)
        self.scratch = model.unflatten(scratch)
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
            self._k.add_into(W, tmp)

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
            self._k.add_into(self.views[layer - 1][1], self.scratch[layer - 1][1])


@attrs.define
class _Chunk:
    batch: Batch
    acts: list  # [X, a_1, ..., a_{L−1}, p_L (output state)]
    delta_out: np.ndarray  # δ_L
    scale: np.ndarray
    deltas: list | None = None  # [None, δ_1, ..., δ_{L−1}, δ_L], filled for the exact Hessian


class _Pool:
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
        return [None] + [self.empty((rows, d), dtype) for d in widths]


class ForwardCache:
    """One batch's forward pass at a fixed θ, reused by every curvature product.

    ``gv(v)`` and ``hv(v)`` return the batch *sums* (callers divide by the global
    batch size). ``loss_sum`` is the batch loss at θ. Not thread-safe: one cache per rank.
    ``recycle``: a previous cache whose buffers this one takes over (that cache is then
    released and refuses further products).
    """

    @_quiet_float_errors
    def __init__(self, model: MLP, theta, batch: Batch, recycle: "ForwardCache | None" = None):
        pool = recycle._release() if recycle is not None else _Pool()
        self._released = False
        self.model = model
        self._k = model.kernels
        self.theta = model._check_vector(theta, "theta").copy()
        self.weights = model.unflatten(self.theta)
        self.n = batch.n
        self.loss_sum = 0.0
        L = model.n_layers
        rows = min(max(batch.n, 1), model.chunk_size)
        self.chunks: list[_Chunk] = []
        for start, stop in model._chunks(batch.n):
            part = batch.rows(start, stop)
            acts = [part.X] + pool.buffers(part.n, model.layers[1:], model.dtype)[1:]
            model._forward_into(self.weights, part.X, acts)
            delta = pool.empty(acts[L].shape, model.dtype)
            scale = pool.empty((part.n,), model.dtype)
            colsum = np.empty(model.n_outputs, dtype=model.dtype)
            self.loss_sum += model._loss_state(acts[L], part, True, delta, colsum, scale)
            self.chunks.append(_Chunk(part, acts, delta, scale))
        # workspace shared by all chunks: R(z_l), R(a_l), and two back-propagation buffers
        self._rz, self._ra, self._g1, self._g2 = (pool.buffers(rows, model.layers[1:], model.dtype) for _ in range(4))
        self._colsum = [None] + [np.empty(d, dtype=model.dtype) for d in model.layers[1:]]
        self._scratch = np.empty(model.n_params, dtype=model.dtype)  # one per cache, not per product
        self._pool = pool  # what is left of a recycled cache: the δ_l buffers, if any

    def _release(self) -> _Pool:
        """Hand every buffer to a new cache; this cache refuses products from now on."""
        if self._released:
            raise InputError("recycle: this forward cache was already recycled")
        self._released = True
        arrays = []
        for ch in self.chunks:
            arrays += ch.acts[1:] + [ch.delta_out, ch.scale]
            if ch.deltas is not None:
                arrays += [d for d in ch.deltas[1:-1]]
        for group in (self._rz, self._ra, self._g1, self._g2):
            arrays += group[1:]
        self.chunks = []
        return _Pool(arrays)

    @_quiet_float_errors
    def _ensure_deltas(self) -> None:
        """δ_l for every hidden layer (the exact Hessian needs them; computed once)."""
        code, L = self.model.activation.code, self.model.n_layers
        for ch in self.chunks:
            if ch.deltas is not None:
                continue
            deltas = [None] * (L + 1)
            deltas[L] = ch.delta_out
            for l in range(L, 1, -1):
                d = np.matmul(deltas[l], self.weights[l - 1][0].T, out=self._pool.empty((ch.batch.n, self.model.layers[l - 1]), self.model.dtype))
                self._k.backprop_activation(d, ch.acts[l - 1], code, self._colsum[l - 1])
                deltas[l - 1] = d
            ch.deltas = deltas

    def _r_forward(self, ch: _Chunk, V, n: int) -> tuple[list, list]:
        """R(z_l) and R(a_l) for every layer of one chunk (views of the workspace)."""
        L, code = self.model.n_layers, self.model.activation.code
        rz = [None] + [buf[:n] for buf in self._rz[1:]]
        ra = [None] + [buf[:n] for buf in self._ra[1:]]
        g2 = [None] + [buf[:n] for buf in self._g2[1:]]
        for l in range(1, L + 1):
            W = self.weights[l - 1][0]
            Vw, vb = V[l - 1]
            np.matmul(ch.acts[l - 1], Vw, out=rz[l])  # a_{l−1}·V_l
            has2 = l > 1
            if has2:
                np.matmul(ra[l - 1], W, out=g2[l])  # R(a_{l−1})·W_l
            if l < L:
                self._k.r_activation(rz[l], g2[l], has2, vb, ch.acts[l], code, ra[l])
            else:
                self._k.r_output(rz[l], g2[l], has2, vb)
        return rz, ra

    @_quiet_float_errors
    def _product(self, v, out, exact: bool) -> np.ndarray:
        if self._released:
            raise InputError("this forward cache was recycled by a newer one; compute a new forward pass")
        model, L, code = self.model, self.model.n_layers, self.model.activation.code
        V = model.unflatten(v)
        if out is None:
            out = np.empty(model.n_params, dtype=model.dtype)
        elif out.shape != (model.n_params,) or out.dtype != model.dtype or not out.flags.c_contiguous:
            raise InputError(f"out: expected a contiguous ({model.n_params},) {model.dtype} array, found {out.shape} {out.dtype}")
        if exact:
            self._ensure_deltas()
        acc = _Accumulator(model, out, self._scratch)
        for c, ch in enumerate(self.chunks):
            n = ch.batch.n
            rz, ra = self._r_forward(ch, V, n)
            g1 = [None] + [buf[:n] for buf in self._g1[1:]]
            g2 = [None] + [buf[:n] for buf in self._g2[1:]]
            # R(δ_L) = H_L·R(z_L), in g1[L]
            self._k.loss_hessian_product(ch.acts[L], rz[L], ch.scale, model.loss_kind.code, g1[L], acc.bias_slot(L, c))
            acc.bias_done(L, c)
            for l in range(L, 0, -1):
                acc.gemm(l, c, ch.acts[l - 1].T, g1[l])  # a_{l−1}ᵀ·R(δ_l)
                if exact and l > 1:
                    acc.gemm(l, c, ra[l - 1].T, ch.deltas[l])  # R(a_{l−1})ᵀ·δ_l
                if l == 1:
                    break
                W = self.weights[l - 1][0]
                np.matmul(g1[l], W.T, out=g1[l - 1])
                if exact:
                    np.matmul(ch.deltas[l], V[l - 1][0].T, out=g2[l - 1])
                    self._k.r_backprop_activation(
                        g1[l - 1], g2[l - 1], ch.deltas[l - 1], ch.acts[l - 1], rz[l - 1], code, acc.bias_slot(l - 1, c)
                    )
                else:
                    self._k.backprop_activation(g1[l - 1], ch.acts[l - 1], code, acc.bias_slot(l - 1, c))
                acc.bias_done(l - 1, c)
        if not self.chunks:
            out[:] = 0.0
        return out

    def gv(self, v, out=None) -> np.ndarray:
        """Σᵢ Jᵢᵀ H_L,ᵢ Jᵢ v over the batch (Gauss-Newton; positive semi-definite)."""
        return self._product(self.model._check_vector(v, "v"), out, exact=False)

    def hv(self, v, out=None) -> np.ndarray:
        """Σᵢ ∇²ℓᵢ v over the batch (exact Hessian, R-operator)."""
        return self._product(self.model._check_vector(v, "v"), out, exact=True)
