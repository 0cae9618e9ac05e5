"""Training: configuration, the Hessian-free trainer and its phases, records."""

from hessfree.train.config import Method, TrainConfig
from hessfree.train.hf import CurvatureOperator, HessianFreeTrainer, HFState
from hessfree.train.records import IterationRecord

__all__ = ["Method", "TrainConfig", "HessianFreeTrainer", "HFState", "CurvatureOperator", "IterationRecord"]
