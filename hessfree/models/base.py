"""The interface every model offers the trainers (``hessfree.train``) and the solvers."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from hessfree.errors import ConfigError


class Model(ABC):
    """A differentiable model on a flat parameter vector θ.

    Every method returns **sums over the batch**, never means: in data-parallel training
    each rank computes its local sums, the communicator reduces them, and the trainer
    divides by the global sample count.

    The trainers validate their data once with :meth:`batch` and then pass the validated
    batch (or rows of its arrays, ``X`` with labels or targets ``y``) to :meth:`evaluate`,
    :meth:`loss_grad` and :meth:`forward`. Wherever a method takes ``X, y=None``, ``X`` is
    either raw samples with ``y`` their labels or targets, or a batch from :meth:`batch`
    with ``y`` omitted.
    """

    # ---------------------------------------------------------------- description
    @property
    @abstractmethod
    def layers(self) -> tuple[int, ...]:
        """Layer widths ``(d0, ..., dL)``: inputs, hidden layers, outputs (recorded in run metadata)."""

    @property
    @abstractmethod
    def n_params(self) -> int:
        """Length of θ."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype:
        """The floating dtype (float32 or float64) of θ, of every result vector and of validated batches."""

    @abstractmethod
    def init_params(self, seed) -> np.ndarray:
        """A freshly initialised θ (deterministic in ``seed``: an int or a ``numpy.random.Generator``)."""

    # ---------------------------------------------------------------- data
    @abstractmethod
    def batch(self, X, y=None):
        """Validate samples once and return them as a batch object for the other methods.

        ``y`` is integer class labels of shape (n,) or dense targets of shape (n, d_L), or
        None for prediction only. The batch has ``n`` (row count), ``X`` (the rows, in
        :attr:`dtype`), and ``labels`` / ``targets`` (one of them set when ``y`` was given),
        whose rows the trainers index to form mini-batches. A batch passed back in is
        returned as it is. Unusable input raises ``hessfree.errors.InputError``.
        """

    # ---------------------------------------------------------------- batch sums
    @abstractmethod
    def evaluate(self, theta, X, y=None) -> tuple[float, int]:
        """(Σᵢ ℓᵢ, number of misclassified rows) over the batch, from forward passes only."""

    @abstractmethod
    def loss_grad(self, theta, X, y=None) -> tuple[float, np.ndarray]:
        """(Σᵢ ℓᵢ, Σᵢ ∇ℓᵢ) over the batch; the gradient is a new (n_params,) vector of :attr:`dtype`."""

    def loss_grad_squares(self, theta, X, y=None) -> tuple[float, np.ndarray, np.ndarray]:
        """(Σᵢ ℓᵢ, Σᵢ ∇ℓᵢ, Σᵢ ∇ℓᵢ⊙∇ℓᵢ): the gradient and the empirical Fisher diagonal
        (for Martens' preconditioner). Models that cannot compute it refuse the option."""
        raise ConfigError(f"preconditioner: {type(self).__name__} does not compute the per-sample squared "
                          "gradients it needs; expected preconditioner 'none'")

    #: whether :meth:`evaluate_grad` costs one pass (the trainers then take an evaluation's
    #: gradient along when they may need it next) rather than the default two
    fused_evaluation = False

    def evaluate_grad(self, theta, X, y=None, *, squares: bool = False):
        """(Σᵢ ℓᵢ, Σᵢ errorᵢ, Σᵢ ∇ℓᵢ, Σᵢ ∇ℓᵢ⊙∇ℓᵢ or None): :meth:`evaluate` and
        :meth:`loss_grad` (:meth:`loss_grad_squares` with ``squares``) at one θ. The
        default runs them one after the other; a model that shares the forward pass sets
        :attr:`fused_evaluation`."""
        loss, wrong = self.evaluate(theta, X, y)
        if squares:
            _, grad, sq = self.loss_grad_squares(theta, X, y)
            return loss, wrong, grad, sq
        return loss, wrong, self.loss_grad(theta, X, y)[1], None

    @abstractmethod
    def loss(self, theta, X, y=None) -> float:
        """Σᵢ ℓᵢ over the batch (forward pass only)."""

    @abstractmethod
    def forward(self, theta, X, y=None, *, recycle=None):
        """The forward pass of a batch, kept for many curvature products at this θ.

        The returned object has ``gv(v, out=None)`` (Gauss-Newton) and ``hv(v, out=None)``
        (exact Hessian) methods returning batch sums, ``n`` (the batch size) and
        ``loss_sum`` (Σᵢ ℓᵢ at θ); it keeps its own copy of θ. ``recycle`` is a previous
        result whose memory may be reused (it becomes invalid).
        """

    def gv(self, theta, v, X, y=None) -> np.ndarray:
        """Σᵢ Jᵢᵀ H_L,ᵢ Jᵢ v: the Gauss-Newton matrix of the batch times v."""
        return self.forward(theta, X, y).gv(v)

    def hv(self, theta, v, X, y=None) -> np.ndarray:
        """Σᵢ ∇²ℓᵢ v: the exact Hessian of the batch times v."""
        return self.forward(theta, X, y).hv(v)

    # ---------------------------------------------------------------- classification
    def warm_up(self) -> None:
        """Compile (or load from a cache) whatever the model's passes need, on a tiny batch,
        before anything is timed (``fit`` calls it once per rank). The default runs each
        pass once on two rows of zeros with class labels."""
        theta = self.init_params(0)
        X = np.zeros((2, self.layers[0]), dtype=self.dtype)
        y = np.zeros(2, dtype=np.int64)
        self.loss_grad(theta, X, y)
        self.evaluate(theta, X, y)
        cache = self.forward(theta, X, y)
        cache.gv(theta)
        cache.hv(theta)

    @abstractmethod
    def predict(self, theta, X) -> np.ndarray:
        """Predicted class index of each row of X."""

    @abstractmethod
    def error_count(self, theta, X, y=None) -> int:
        """Number of misclassified rows of the batch."""

    def error_rate(self, theta, X, y=None) -> float:
        """Fraction of misclassified rows of the batch."""
        n = X.n if hasattr(X, "n") else len(X)
        return self.error_count(theta, X, y) / n if n else 0.0
