"""Method name → trainer class. Adding a method: one small class and one entry here."""

from __future__ import annotations

from types import MappingProxyType

from hessfree.train.config import Method
from hessfree.train.hf import HessianFreeTrainer
from hessfree.train.sgd import SGDTrainer

TRAINERS = MappingProxyType(
    {
        Method.GN_CG: HessianFreeTrainer,
        Method.HESS_CG: HessianFreeTrainer,
        Method.BICGSTAB: HessianFreeTrainer,
        Method.HYBRID: HessianFreeTrainer,
        Method.SGD: SGDTrainer,
        Method.MSGD: SGDTrainer,
    }
)


def trainer_for(method: Method):
    return TRAINERS[Method(method)]
