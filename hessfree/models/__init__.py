"""Models: the ``Model`` interface and the dense ``MLP`` with exact curvature products."""

from hessfree.models.base import Model
from hessfree.models.curvature import DenseNet, ForwardCache
from hessfree.models.mlp import MLP, Activation, Batch, Loss, ModelConfigError

__all__ = ["MLP", "Activation", "Batch", "DenseNet", "ForwardCache", "Loss", "Model", "ModelConfigError"]
