"""Models: the ``Model`` interface, the dense ``MLP`` with exact curvature products, and its
model-parallel form ``ShardedMLP`` (each rank a slice of every layer's units)."""

from hessfree.models.base import Model
from hessfree.models.curvature import DenseNet, ForwardCache
from hessfree.models.mlp import MLP, Activation, Batch, Loss, ModelConfigError
from hessfree.models.sharded import ShardedMLP

__all__ = ["MLP", "Activation", "Batch", "DenseNet", "ForwardCache", "Loss", "Model", "ModelConfigError", "ShardedMLP"]
