"""Training: the method table's trainers, ``fit`` (the one entry point), configs, records.

``fit(model, data, config)`` trains; ``run(run_config)`` starts the ranks of a whole run
described by a :class:`RunConfig` and calls ``fit`` on each.
"""

from hessfree.methods import Method
from hessfree.train.config import TrainConfig
from hessfree.train.fit import Callback, Checkpointing, FitResult, RunInfo, Simulation, Status, fit, make_trainer
from hessfree.train.firstorder import FirstOrderState, FirstOrderTrainer
from hessfree.train.hf import CurvatureOperator, HessianFreeTrainer, HFState
from hessfree.train.records import IterationRecord
from hessfree.train.runconfig import RunConfig, load_toml, make_run_config
from hessfree.train.trainer import Trainer, TrainState

__all__ = [
    "Callback",
    "Checkpointing",
    "CurvatureOperator",
    "FirstOrderState",
    "FirstOrderTrainer",
    "FitResult",
    "HFState",
    "HessianFreeTrainer",
    "IterationRecord",
    "Method",
    "RunConfig",
    "RunInfo",
    "Simulation",
    "Status",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "fit",
    "load_toml",
    "make_run_config",
    "make_trainer",
]
