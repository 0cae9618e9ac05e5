"""Models: the ``Model`` interface and the dense ``MLP`` with exact curvature products."""

from hessfree.models.base import Model
from hessfree.models.mlp import MLP, Activation, Batch, ForwardCache, Loss

__all__ = ["MLP", "Model", "Activation", "Loss", "Batch", "ForwardCache"]
