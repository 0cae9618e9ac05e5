"""The interface every model offers the trainer and the solvers."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Model(ABC):
    """A differentiable model on a flat parameter vector θ.

    Every method returns **sums over the batch**, never means: in data-parallel training
    each rank computes its local sums, the communicator reduces them, and the trainer
    divides by the global sample count.
    """

    @property
    @abstractmethod
    def n_params(self) -> int:
        """Length of θ."""

    @abstractmethod
    def init_params(self, seed) -> np.ndarray:
        """A freshly initialised θ (deterministic in ``seed``)."""

    @abstractmethod
    def loss_grad(self, theta, X, y=None) -> tuple[float, np.ndarray]:
        """(Σᵢ ℓᵢ, Σᵢ ∇ℓᵢ) over the batch."""

    @abstractmethod
    def loss(self, theta, X, y=None) -> float:
        """Σᵢ ℓᵢ over the batch (forward pass only)."""

    @abstractmethod
    def forward(self, theta, X, y=None, *, recycle=None):
        """The forward pass of a batch, kept for many curvature products at this θ.

        The returned object has ``gv(v)`` and ``hv(v)`` methods (and ``n``, the batch size).
        ``recycle`` is a previous result whose memory may be reused (it becomes invalid).
        """

    def gv(self, theta, v, X, y=None) -> np.ndarray:
        """Σᵢ Jᵢᵀ H_L,ᵢ Jᵢ v: the Gauss-Newton matrix of the batch times v."""
        return self.forward(theta, X, y).gv(v)

    def hv(self, theta, v, X, y=None) -> np.ndarray:
        """Σᵢ ∇²ℓᵢ v: the exact Hessian of the batch times v."""
        return self.forward(theta, X, y).hv(v)

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
