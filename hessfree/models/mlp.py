"""A multilayer perceptron on a flat parameter vector: loss, gradient, and its curvature cache.

Layer l (1..L) computes z_l = a_{l−1}·W_l + b_l with W_l of shape (d_{l−1}, d_l); hidden
layer l applies its activation a_l = f_l(z_l) (one activation for every hidden layer, or
one per hidden layer: a deep autoencoder's linear code layer between sigmoid layers); the
output z_L feeds the loss. θ stores, layer after layer, W_l row-major then b_l.

Products (all sums over the batch, computed chunk by chunk so memory stays bounded):

* gradient: the usual backward pass, δ_L = ∂ℓ/∂z_L, δ_{l−1} = (δ_l·W_lᵀ) ⊙ f'_{l−1}(z_{l−1}),
  ∇W_l = a_{l−1}ᵀ·δ_l, ∇b_l = Σ_rows δ_l;
* Gauss-Newton and exact Hessian products: :meth:`MLP.forward` returns a
  :class:`~hessfree.models.curvature.ForwardCache` (module ``curvature``).

Memory of the chunked passes, per row of a chunk (``chunk_size`` rows at most): the
gradient keeps the Σ_{l≥1} d_l activations and two error buffers of the widest layer;
``evaluate``/``predict`` keep two activation buffers of the widest layer.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator, Sequence

import attrs
import numpy as np

from hessfree.errors import ConfigError, InputError
from hessfree.models import kernels as K
from hessfree.models.base import Model
from hessfree.models.curvature import ForwardCache
from hessfree.validate import boolean, integer
from hessfree.models.workspace import Accumulator, quiet_float_errors, rows_view


class ModelConfigError(ConfigError, InputError):
    """A model setting (layers, activation, loss, dtype, chunk_size) that cannot be used.

    A :class:`~hessfree.errors.ConfigError`; also an :class:`~hessfree.errors.InputError`,
    which these settings raised before, so callers catching either keep working.
    """


class Activation(enum.Enum):
    TANH = "tanh"
    SIGMOID = "sigmoid"
    RELU = "relu"
    SOFTPLUS = "softplus"
    LINEAR = "linear"

    @property
    def code(self) -> int:
        return {"tanh": K.TANH, "sigmoid": K.SIGMOID, "relu": K.RELU, "softplus": K.SOFTPLUS, "linear": K.LINEAR}[self.value]


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


def _member(kind, value, where: str = ""):
    if isinstance(value, kind):
        return value
    try:
        return kind(str(value).lower().replace("-", "_"))
    except ValueError:
        choices = ", ".join(m.value for m in kind)
        raise ModelConfigError(f"{kind.__name__.lower()}: expected one of {choices}, found {value!r}{where}") from None


def _enum(kind):
    def convert(value):
        return _member(kind, value)

    return convert


def _activation(value) -> Activation | tuple[Activation, ...]:
    """One activation (a name or an :class:`Activation`), or a sequence of them (one per hidden layer)."""
    if isinstance(value, (str, Activation)):
        return _member(Activation, value)
    try:
        items = tuple(value)
    except TypeError:
        choices = ", ".join(m.value for m in Activation)
        raise ModelConfigError(
            f"activation: expected one of {choices}, or a sequence of them (one per hidden layer), found {value!r}"
        ) from None
    return tuple(_member(Activation, a, f" (hidden layer {i} of {len(items)} in {list(items)!r})") for i, a in enumerate(items, 1))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _layers(value) -> tuple[int, ...]:
    """Widths d0, ..., dL: integers ≥ 1 (numpy integers accepted, booleans refused)."""
    try:
        layers = tuple(integer("layers", d, 1) for d in value)
    except TypeError:
        raise ModelConfigError(f"layers: expected a sequence of positive integers, found {value!r}") from None
    except ConfigError:
        raise ModelConfigError(f"layers: expected positive integers [d0, ..., dL], found {list(value)!r}") from None
    if len(layers) < 2:
        raise ModelConfigError(f"layers: expected at least two positive integers [d0, ..., dL], found {list(value)}")
    return layers


def _dtype(value) -> np.dtype:
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise ModelConfigError(f"dtype: expected float32 or float64, found {value!r}") from None
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ModelConfigError(f"dtype: expected float32 or float64, found {dtype}")
    return dtype


def _check_size(layers: tuple[int, ...], n_params: int, itemsize: int) -> None:
    """An absurd width is refused before anything is allocated: θ alone (n_params ×
    itemsize, Python ints) larger than this machine's memory, naming the largest layer."""
    from hessfree.limits import exceeds_memory, memory_text, size_text

    if not exceeds_memory(n_params * itemsize):
        return
    sizes = [(d_in + 1) * d_out for d_in, d_out in zip(layers[:-1], layers[1:])]
    worst = max(range(len(sizes)), key=sizes.__getitem__)
    raise ModelConfigError(
        f"layers: {list(layers)} have {n_params:,} parameters ({size_text(n_params * itemsize)} for θ alone), more "
        f"than fits in memory ({memory_text()}); layer {worst + 1} ({layers[worst]}→{layers[worst + 1]} units) "
        f"holds {sizes[worst]:,} of them"
    )


def _positive_int(instance, attribute, value) -> None:
    try:
        integer(attribute.name, value, 1)
    except ConfigError as exc:
        raise ModelConfigError(str(exc)) from None


def _flag(value) -> bool:
    try:
        return boolean("parallel", value)
    except ConfigError as exc:
        raise ModelConfigError(str(exc)) from None


def _read_only(a: np.ndarray | None) -> np.ndarray | None:
    """A read-only view of ``a`` (None stays None). A batch's labels and targets are always
    read-only: numba compiles a kernel once per signature, and read-only is part of an
    array's type, so labels of both kinds (a dataset's are read-only) would compile the
    loss kernels twice, once inside the first timed iteration."""
    if a is None:
        return None
    view = a.view()
    view.flags.writeable = False
    return view


@attrs.frozen(eq=False)
class Batch:
    """Samples validated once against a model: use it to skip re-validation in hot loops.

    ``X`` is C-contiguous in the model's dtype; ``labels`` (int64, in [0, d_L)) or
    ``targets`` (dense, shape (n, d_L), the model's dtype) give the loss its targets, as
    read-only views, whatever is given (validated values stay valid; see ``_read_only``).
    """

    X: np.ndarray
    labels: np.ndarray | None = attrs.field(converter=_read_only)
    targets: np.ndarray | None = attrs.field(converter=_read_only)

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

    def take(self, positions: np.ndarray) -> "Batch":
        """The sub-batch of these rows, in this order (copies; validated already)."""
        return Batch(
            self.X[positions],
            None if self.labels is None else self.labels[positions],
            None if self.targets is None else self.targets[positions],
        )


@attrs.frozen
class MLP(Model):
    """Dense feed-forward network: ``MLP(layers=[d0, ..., dL], activation, loss, dtype)``.

    ``activation`` is one name (tanh, sigmoid, relu, softplus, linear), applied in every
    hidden layer, or a sequence with one name per hidden layer (``len(layers) − 2`` of
    them), e.g. ``["sigmoid", "sigmoid", "linear", "sigmoid", "sigmoid"]`` for a deep
    autoencoder with a linear code layer. A wrong name or length is a
    :class:`ModelConfigError` (a :class:`~hessfree.errors.ConfigError`).
    :attr:`activations` always has one name per hidden layer; ``activation`` is the
    :class:`Activation` when all hidden layers share it, else the tuple of them.

    ``chunk_size`` bounds the rows processed at once (memory ∝ chunk_size · Σ d_l).
    ``parallel`` spreads the elementwise kernels over numba's threads (bitwise the same
    results); leave it False when several threads of one process use models at once.
    """

    layers: tuple[int, ...] = attrs.field(converter=_layers)
    activation: Activation | tuple[Activation, ...] = attrs.field(default=Activation.TANH, converter=_activation)
    loss_kind: Loss = attrs.field(default=Loss.SOFTMAX_CROSS_ENTROPY, converter=_enum(Loss), alias="loss")
    dtype: np.dtype = attrs.field(default=np.float64, converter=_dtype)
    chunk_size: int = attrs.field(default=8192, validator=_positive_int)
    parallel: bool = attrs.field(default=False, converter=_flag)
    _offsets: tuple[tuple[int, int, int], ...] = attrs.field(init=False, repr=False, eq=False)
    _codes: tuple[int, ...] = attrs.field(init=False, repr=False, eq=False)
    #: a kernel set forced for warm-up only (None: chosen by ``parallel``)
    _forced_kernels: object = attrs.field(init=False, default=None, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        offsets, start = [], 0
        for d_in, d_out in zip(self.layers[:-1], self.layers[1:]):
            offsets.append((start, start + d_in * d_out, start + d_in * d_out + d_out))
            start += d_in * d_out + d_out
        _check_size(self.layers, start, np.dtype(self.dtype).itemsize)
        object.__setattr__(self, "_offsets", tuple(offsets))
        hidden = len(self.layers) - 2
        if isinstance(self.activation, tuple):
            if len(self.activation) != hidden:
                names = [a.value for a in self.activation]
                raise ModelConfigError(
                    f"activation: expected one name, or {_count(hidden, 'name')} (one per hidden layer of layers "
                    f"{list(self.layers)}), found {_count(len(names), 'name')} {names}"
                )
            if hidden and all(a is self.activation[0] for a in self.activation):
                object.__setattr__(self, "activation", self.activation[0])  # uniform: the single name
        per_layer = (self.activation,) * hidden if isinstance(self.activation, Activation) else self.activation
        object.__setattr__(self, "_codes", tuple(a.code for a in per_layer))

    def reaches_parallel_kernels(self, rows: int) -> bool:
        """Whether a pass over at most ``rows`` rows would run any parallel kernel: the
        parallel set takes arrays of ``kernels.PARALLEL_MIN_ELEMENTS`` elements or more,
        and the kernels' arrays are a chunk's rows of one layer's units, a weight matrix
        or a bias. (A model that never reaches them need not compile them.)"""
        rows = min(rows, self.chunk_size)
        weights = max(d_in * d_out for d_in, d_out in zip(self.layers[:-1], self.layers[1:]))
        return max(rows * max(self.layers[1:]), weights) >= K.PARALLEL_MIN_ELEMENTS

    @property
    def kernels(self):
        """The numba kernel set this model uses (serial or parallel, see ``parallel``)."""
        return self._forced_kernels if self._forced_kernels is not None else K.kernels(self.parallel)

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) every kernel this model can run, on a tiny
        batch, so that no compilation happens inside a timed phase. A ``parallel`` model runs
        the parallel kernels only on large arrays, so those are compiled here explicitly."""
        sets = (K.SERIAL, K.PARALLEL) if self.parallel else (K.SERIAL,)
        X = np.zeros((2, self.n_inputs), dtype=self.dtype)
        targets = (np.zeros(2, dtype=np.int64),)
        if self.loss_kind is not Loss.SOFTMAX_CROSS_ENTROPY:
            targets += (np.full((2, self.n_outputs), 0.5, dtype=self.dtype),)
        for kernels in sets:
            model = attrs.evolve(self)
            object.__setattr__(model, "_forced_kernels", kernels)
            theta = model.init_params(0)
            for y in targets:
                model.loss_grad(theta, X, y)
                model.evaluate(theta, X, y)
                cache = model.forward(theta, X, y)
                cache.gv(theta)
                cache.hv(theta)

    @property
    def activations(self) -> tuple[str, ...]:
        """The activation name of each hidden layer, layer 1 first (empty without hidden layers)."""
        if isinstance(self.activation, Activation):
            return (self.activation.value,) * (self.n_layers - 1)
        return tuple(a.value for a in self.activation)

    @property
    def activation_codes(self) -> tuple[int, ...]:
        """The kernel code (``hessfree.models.kernels``) of each hidden layer's activation."""
        return self._codes

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
        theta = self.check_vector(theta, "theta")
        views = []
        for (w0, w1, b1), d_in, d_out in zip(self._offsets, self.layers[:-1], self.layers[1:]):
            views.append((theta[w0:w1].reshape(d_in, d_out), theta[w1:b1]))
        return views

    def init_params(self, seed=0) -> np.ndarray:
        """Scaled random weights, zero biases.

        W_l is scaled for the activation of layer l (the output layer, which has none, for
        the last hidden layer's): Glorot-uniform (limit √(6/(d_in+d_out))) for tanh,
        softplus and linear, four times that for sigmoid (its slope at 0 is 1/4),
        He-uniform (√(6/d_in)) for relu.
        """
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        theta = np.zeros(self.n_params, dtype=self.dtype)
        if isinstance(self.activation, Activation):
            scaled_for = (self.activation,) * self.n_layers
        else:
            scaled_for = self.activation + (self.activation[-1] if self.activation else Activation.LINEAR,)
        for (W, _), activation in zip(self.unflatten(theta), scaled_for):
            d_in, d_out = W.shape
            if activation is Activation.RELU:
                limit = math.sqrt(6.0 / d_in)
            else:
                limit = math.sqrt(6.0 / (d_in + d_out))
                if activation is Activation.SIGMOID:
                    limit *= 4.0
            W[...] = rng.uniform(-limit, limit, size=W.shape)
        return theta

    # ---------------------------------------------------------------- validation
    def check_vector(self, v, name: str = "v") -> np.ndarray:
        """``v`` as a C-contiguous (n_params,) vector of the model's dtype (converted from
        another floating dtype), or an InputError naming ``name`` and the expected shape."""
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
        shape (n, d_L) (any loss; in [0, 1] for logistic cross-entropy), e.g.
        ``model.batch(X, X)`` for an autoencoder (X is then converted and stored once).
        ``y=None`` is allowed for prediction only.
        """
        if isinstance(X, Batch):
            if y is not None:
                raise InputError("y: must be omitted when X is already a validated Batch")
            return X
        same = y is X
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_inputs:
            raise InputError(f"X: expected shape (n, {self.n_inputs}) for layers {list(self.layers)}, found {X.shape}")
        if not (np.issubdtype(X.dtype, np.floating) or np.issubdtype(X.dtype, np.integer)):
            raise InputError(f"X: expected a numeric array, found dtype {X.dtype}")
        X = np.ascontiguousarray(X, dtype=self.dtype)
        if not K.all_finite(X):
            raise InputError(f"X: expected finite values, found NaN or inf in the {X.shape} {X.dtype} array")
        labels = targets = None
        if same:
            targets = self._check_targets(X, X.shape[0])
        elif y is not None:
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
        if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
            raise InputError(f"y: expected numeric targets, found dtype {y.dtype}")
        y = np.ascontiguousarray(y, dtype=self.dtype)
        if not K.all_finite(y):
            raise InputError(f"y: expected finite targets, found NaN or inf in the {y.shape} array")
        if self.loss_kind is Loss.LOGISTIC_CROSS_ENTROPY and y.size:
            lo, hi = float(y.min()), float(y.max())
            if lo < 0.0 or hi > 1.0:
                raise InputError(
                    f"y: expected targets in [0, 1] for logistic_cross_entropy (probabilities, e.g. pixel "
                    f"intensities scaled to [0, 1]), found values in [{lo:g}, {hi:g}]"
                )
        return y

    def _labelled(self, X, y) -> Batch:
        batch = self.batch(X, y)
        if batch.labels is None and batch.targets is None:
            raise InputError("y: labels or targets are required for a loss")
        return batch

    # ---------------------------------------------------------------- building blocks
    # (public: the curvature cache works through these; see curvature.DenseNet)
    def chunk_bounds(self, n: int) -> Iterator[tuple[int, int]]:
        """(start, stop) of each chunk of at most ``chunk_size`` rows of an n-row batch."""
        for start in range(0, n, self.chunk_size):
            yield start, min(n, start + self.chunk_size)

    def forward_into(self, weights, X: np.ndarray, acts: Sequence[np.ndarray]) -> None:
        """acts[l] ← a_l for l = 1..L−1 and acts[L] ← z_L.

        ``weights`` is ``unflatten(θ)``; acts[l] are C-contiguous buffers of shape
        (X.shape[0], d_l) (acts[0] is not used), none of them the same memory as the one
        before it.
        """
        prev = X
        codes = self._codes
        for l, (W, b) in enumerate(weights, start=1):
            out = acts[l]
            np.matmul(prev, W, out=out)
            if l < self.n_layers:
                K.activate(out, b, codes[l - 1])
            else:
                np.add(out, b, out=out)
            prev = out

    def loss_into(self, Z, batch: Batch, want_delta: bool, D, colsum, scale) -> float:
        """Σᵢ ℓᵢ of the rows of ``batch`` from their outputs Z = z_L (see ``kernels.loss_forward``).

        Overwrites Z with the output state the loss Hessian needs; with ``want_delta``
        writes δ_L = ∂ℓ/∂z_L into D and its column sum into ``colsum``; ``scale`` (n,)
        receives the per-row factor of the softmax Hessian.
        """
        dense = batch.targets is not None
        labels = batch.labels if not dense else _NO_LABELS
        targets = batch.targets if dense else _no_targets(self.dtype)
        return float(self.kernels.loss_forward(Z, labels, targets, dense, self.loss_kind.code, want_delta, D, colsum, scale))

    def _pair(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Two flat buffers that hold any layer's (rows, d_l) values, used in turn."""
        size = rows * max(self.layers[1:])
        return np.empty(size, dtype=self.dtype), np.empty(size, dtype=self.dtype)

    def _forward_pair(self, weights, X: np.ndarray, pair) -> np.ndarray:
        """z_L of X's rows, the layers' activations alternating between the two buffers."""
        n = X.shape[0]
        acts = [X] + [rows_view(pair[(l - 1) % 2], n, d) for l, d in enumerate(self.layers[1:], start=1)]
        self.forward_into(weights, X, acts)
        return acts[-1]

    # ---------------------------------------------------------------- loss and gradient
    def loss(self, theta, X, y=None) -> float:
        """Σᵢ ℓᵢ over the batch (forward passes only)."""
        return self.evaluate(theta, X, y)[0]

    @quiet_float_errors
    def evaluate(self, theta, X, y=None) -> tuple[float, float]:
        """(Σᵢ ℓᵢ, Σᵢ errorᵢ) from one forward pass: the number of misclassified rows for
        class labels; for dense targets (e.g. an autoencoder's, the inputs themselves) the
        squared error Σᵢ‖ŷᵢ − tᵢ‖² of the outputs ŷ = the loss's output map of z (sigmoid
        for logistic cross-entropy, softmax, or z for squared error), Martens' measure."""
        weights = self.unflatten(theta)
        batch = self._labelled(X, y)
        rows = min(batch.n, self.chunk_size)
        pair = self._pair(rows)
        scale = np.empty(rows, dtype=self.dtype)
        total, wrong = 0.0, 0
        for start, stop in self.chunk_bounds(batch.n):
            part = batch.rows(start, stop)
            out = self._forward_pair(weights, part.X, pair)
            if batch.labels is None:  # before the loss pass, which may overwrite z
                wrong += float(np.sum(np.square(self._output_map(out) - part.targets), dtype=np.float64))
            total += self.loss_into(out, part, False, out, _no_colsum(self.dtype), scale[: part.n])
            if batch.labels is not None:
                wrong += int(self.kernels.count_errors(out, batch.labels[start:stop]))
        return total, wrong

    def _output_map(self, z: np.ndarray) -> np.ndarray:
        """The network's outputs ŷ from the last pre-activation z, as the loss sees them."""
        if self.loss_kind is Loss.LOGISTIC_CROSS_ENTROPY:
            return 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z), overflow-free
        if self.loss_kind is Loss.SOFTMAX_CROSS_ENTROPY:
            e = np.exp(z - z.max(axis=1, keepdims=True))
            return e / e.sum(axis=1, keepdims=True)
        return z

    @quiet_float_errors
    def loss_grad(self, theta, X, y=None):
        """(Σᵢ ℓᵢ, Σᵢ ∇ℓᵢ) over the batch."""
        return self._loss_grad(theta, X, y, squares=False)[:2]

    @quiet_float_errors
    def loss_grad_squares(self, theta, X, y=None) -> tuple[float, np.ndarray, np.ndarray]:
        """(Σᵢ ℓᵢ, Σᵢ ∇ℓᵢ, Σᵢ ∇ℓᵢ ⊙ ∇ℓᵢ): the gradient and the diagonal of the empirical
        Fisher matrix (Martens' preconditioner) in one pass.

        A sample's gradient of W_l is the outer product a_{l−1,i} δ_{l,i}ᵀ, so its square
        summed over the samples is (a_{l−1}⊙a_{l−1})ᵀ(δ_l⊙δ_l): one more GEMM per layer of
        the gradient's own shape; the bias's is the column sum of δ_l⊙δ_l.
        """
        return self._loss_grad(theta, X, y, squares=True)

    fused_evaluation = True

    @quiet_float_errors
    def evaluate_grad(self, theta, X, y=None, *, squares: bool = False):
        """(Σᵢ ℓᵢ, Σᵢ errorᵢ, Σᵢ ∇ℓᵢ, Σᵢ ∇ℓᵢ⊙∇ℓᵢ or None) in **one** pass: :meth:`evaluate`'s
        error measure counted on the gradient pass's own forward outputs (the same
        arithmetic, so the same loss and errors as :meth:`evaluate`, bit for bit)."""
        total, grad, sq, wrong = self._loss_grad(theta, X, y, squares=squares, errors=True)
        return total, wrong, grad, sq

    def _loss_grad(self, theta, X, y, squares: bool, errors: bool = False):
        weights = self.unflatten(theta)
        batch = self._labelled(X, y)
        grad = np.empty(self.n_params, dtype=self.dtype)
        acc = Accumulator(self.unflatten(grad), self.unflatten(np.empty(self.n_params, dtype=self.dtype)), self.kernels.add_into)
        sq = sq_acc = None
        if squares:
            sq = np.empty(self.n_params, dtype=self.dtype)
            sq_acc = Accumulator(self.unflatten(sq), self.unflatten(np.empty(self.n_params, dtype=self.dtype)), self.kernels.add_into)
        rows = min(batch.n, self.chunk_size)
        acts = [None] + [np.empty((rows, d), dtype=self.dtype) for d in self.layers[1:]]
        errs = self._pair(rows)  # δ_l, δ_{l−1} alternate between the two
        scale = np.empty(rows, dtype=self.dtype)
        total, wrong = 0.0, 0
        codes = self._codes
        L = self.n_layers
        for c, (start, stop) in enumerate(self.chunk_bounds(batch.n)):
            part = batch.rows(start, stop)
            n = part.n
            a = [part.X] + [buf[:n] for buf in acts[1:]]
            self.forward_into(weights, part.X, a)
            d = rows_view(errs[0], n, self.layers[L])
            if errors and batch.labels is None:  # before the loss pass overwrites z
                wrong += float(np.sum(np.square(self._output_map(a[L]) - part.targets), dtype=np.float64))
            total += self.loss_into(a[L], part, True, d, acc.bias_slot(L, c), scale[:n])
            if errors and batch.labels is not None:
                wrong += int(self.kernels.count_errors(a[L], batch.labels[start:stop]))
            acc.bias_done(L, c)
            for l in range(L, 0, -1):
                acc.gemm(l, c, a[l - 1].T, d)
                if squares:
                    self._square_terms(sq_acc, l, c, a[l - 1], d)
                if l > 1:
                    below = rows_view(errs[(L - l + 1) % 2], n, self.layers[l - 1])
                    np.matmul(d, weights[l - 1][0].T, out=below)
                    self.kernels.backprop_activation(below, a[l - 1], codes[l - 2], acc.bias_slot(l - 1, c))
                    acc.bias_done(l - 1, c)
                    d = below
        if batch.n == 0:
            grad[:] = 0.0
            if squares:
                sq[:] = 0.0
        return (total, grad, sq, wrong) if errors else (total, grad, sq)

    @staticmethod
    def _square_terms(acc: Accumulator, layer: int, chunk: int, a_below: np.ndarray, d: np.ndarray) -> None:
        """Add one chunk's Σᵢ (∇_W ℓᵢ)² = (a⊙a)ᵀ(δ⊙δ) and Σᵢ (∇_b ℓᵢ)² = Σᵢ δᵢ⊙δᵢ of ``layer``."""
        d2 = np.square(d)
        acc.gemm(layer, chunk, np.square(a_below).T, d2)
        np.sum(d2, axis=0, out=acc.bias_slot(layer, chunk))
        acc.bias_done(layer, chunk)

    def forward(self, theta, X, y=None, *, recycle: ForwardCache | None = None) -> ForwardCache:
        """Forward pass of a batch at θ, for many ``gv``/``hv`` products (θ is copied).

        ``recycle`` hands the buffers of a cache no longer needed to the new one.
        """
        return ForwardCache(self, theta, self._labelled(X, y), recycle)

    # ---------------------------------------------------------------- prediction
    def _outputs(self, theta, X):
        """Yield (rows, output state) chunk by chunk: z_L (the loss state is not applied)."""
        weights = self.unflatten(theta)
        batch = self.batch(X)
        pair = self._pair(min(batch.n, self.chunk_size))
        for start, stop in self.chunk_bounds(batch.n):
            part = batch.rows(start, stop)
            yield start, stop, self._forward_pair(weights, part.X, pair)

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


_NO_LABELS = _read_only(np.zeros(0, dtype=np.int64))


def _no_targets(dtype) -> np.ndarray:
    return _read_only(np.zeros((0, 0), dtype=dtype))


def _no_colsum(dtype) -> np.ndarray:
    return np.zeros(0, dtype=dtype)
