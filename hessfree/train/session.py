"""A whole training run: data, model, method and communicator from one frozen config.

``RunConfig`` carries every key of ``hessfree train`` (and of its ``--config`` TOML file);
``Session`` builds the rank's data shard, the model and the trainer, and ``Session.run``
yields one record per iteration. Callbacks (metrics file, checkpoints, the CLI's
progress line) consume the records; the library itself never prints.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Iterator

import attrs
import numpy as np

from hessfree.data import ShardMode, load_dataset
from hessfree.errors import ConfigError
from hessfree.models import MLP
from hessfree.train.config import TrainConfig, _count, _enum, _non_negative, _positive


class Backend(enum.Enum):
    SERIAL = "serial"
    THREADS = "threads"
    MPI = "mpi"
    AUTO = "auto"


def _hidden(value) -> tuple[int, ...]:
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p != ""]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        parts = [value]
    else:
        raise ConfigError(f"hidden: expected comma-separated layer widths like 400,150, found {value!r}")
    try:
        widths = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise ConfigError(f"hidden: expected comma-separated positive integers, found {value!r}") from None
    if any(w < 1 for w in widths) or any(isinstance(p, (bool, float)) for p in parts):
        raise ConfigError(f"hidden: expected positive integers, found {value!r}")
    return widths


def _choice(*allowed):
    def check(instance, attribute, value):
        if value not in allowed:
            raise ConfigError(f"{attribute.name}: expected one of {', '.join(allowed)}, found {value!r}")

    return check


def _optional_path(value):
    return None if value in (None, "") else str(value)


@attrs.frozen(kw_only=True)
class RunConfig:
    """Every setting of one training run (the keys of ``hessfree train`` and its TOML file)."""

    dataset: str = "digits"
    data_dir: str | None = attrs.field(default=None, converter=_optional_path)
    hidden: tuple[int, ...] = attrs.field(default=(100,), converter=_hidden)
    activation: str = attrs.field(default="tanh", validator=_choice("tanh", "sigmoid", "relu", "softplus"))
    loss: str = attrs.field(
        default="softmax_cross_entropy",
        validator=_choice("softmax_cross_entropy", "logistic_cross_entropy", "squared_error"),
    )
    dtype: str = attrs.field(default="float64", validator=_choice("float32", "float64"))
    validation: float = attrs.field(default=0.0, validator=_non_negative)
    samples: int | None = None
    comm: Backend = attrs.field(default=Backend.AUTO, converter=_enum(Backend))
    ranks: int = attrs.field(default=1, validator=_count)
    comm_timeout: float = attrs.field(default=300.0, validator=_positive)
    train: TrainConfig = attrs.field(factory=TrainConfig)
    metrics: str | None = attrs.field(default=None, converter=_optional_path)
    checkpoint_dir: str | None = attrs.field(default=None, converter=_optional_path)
    checkpoint_every: int = attrs.field(default=1, validator=_count)
    resume: bool = attrs.field(default=False, converter=bool)
    quiet: bool = attrs.field(default=False, converter=bool)
    simulate: str | None = attrs.field(default=None, converter=_optional_path)  # interconnect preset
    sim_latency: float | None = attrs.field(default=None, validator=attrs.validators.optional(_non_negative))
    sim_bandwidth: float | None = attrs.field(default=None, validator=attrs.validators.optional(_positive))
    sim_collective: str = attrs.field(default="ring", validator=_choice("ring", "recursive-doubling", "tree"))
    sim_compute_scale: float = attrs.field(default=1.0, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if self.samples is not None and (isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1):
            raise ConfigError(f"samples: expected a positive integer, found {self.samples!r}")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume: needs checkpoint_dir (where to find the checkpoint)")
        if self.simulate is None and (self.sim_latency is not None or self.sim_bandwidth is not None):
            raise ConfigError("sim_latency/sim_bandwidth: need simulate (an interconnect preset to start from)")

    def simulated_network(self):
        """The α–β network of ``--simulate`` with any overrides, or None."""
        if self.simulate is None:
            return None
        from hessfree.cost import interconnect
        from hessfree.cost.network import Network

        base = interconnect(self.simulate)
        latency = base.latency if self.sim_latency is None else self.sim_latency
        inverse_bandwidth = base.inverse_bandwidth if self.sim_bandwidth is None else 1.0 / self.sim_bandwidth
        return Network(latency, inverse_bandwidth)

    def trajectory(self, size: int) -> dict:
        """The settings that determine the trajectory (not run length or output options)."""
        train = attrs.asdict(self.train)
        for key in ("iterations", "epochs", "max_rejected"):
            train.pop(key)
        train["method"] = self.train.method.value
        return dict(
            dataset=self.dataset,
            data_dir=os.path.abspath(self.data_dir) if self.data_dir else None,
            samples=self.samples,
            validation=self.validation,
            hidden=list(self.hidden),
            activation=self.activation,
            loss=self.loss,
            dtype=self.dtype,
            ranks=size,
            train=train,
        )

    def trajectory_hash(self, size: int) -> str:
        return hashlib.sha256(json.dumps(self.trajectory(size), sort_keys=True).encode()).hexdigest()

    def as_dict(self) -> dict:
        out = attrs.asdict(self, recurse=False)
        out["comm"] = self.comm.value
        out["hidden"] = list(self.hidden)
        out["train"] = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in attrs.asdict(self.train).items()}
        return out


#: TOML / CLI keys that belong to ``TrainConfig`` (the rest are ``RunConfig``'s own)
TRAIN_KEYS = tuple(a.name for a in attrs.fields(TrainConfig))
RUN_KEYS = tuple(a.name for a in attrs.fields(RunConfig) if a.name != "train")


def make_run_config(values: dict) -> RunConfig:
    """RunConfig from a flat mapping of keys (``-`` or ``_``); unknown keys are a ConfigError."""
    run, train = {}, {}
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key in TRAIN_KEYS:
            train[key] = value
        elif key in RUN_KEYS:
            run[key] = value
        else:
            raise ConfigError(f"{raw_key}: unknown key; known keys: {', '.join(sorted(RUN_KEYS + TRAIN_KEYS))}")
    for key, value in {**run, **train}.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, found {value!r}")
    try:
        return RunConfig(train=TrainConfig(**train), **run)
    except TypeError as exc:  # attrs: a value of the wrong kind for a field without validator
        raise ConfigError(str(exc)) from None


def environment(comm) -> dict:
    import numba

    from hessfree import __version__

    return dict(
        hessfree=__version__,
        python=sys.version.split()[0],
        numpy=np.__version__,
        numba=numba.__version__,
        platform=platform.platform(),
        backend=type(comm).__name__,
        ranks=comm.size,
    )


class Session:
    """One rank's view of a run: its data shard, the model and the trainer."""

    def __init__(self, config: RunConfig, comm):
        self.config = config
        self.comm = comm
        self.data = load_dataset(
            config.dataset,
            data_dir=config.data_dir,
            dtype=np.dtype(config.dtype),
            rank=comm.rank,
            size=comm.size,
            shard=ShardMode.STRIDED,  # balanced parts of every batch window (see train.batches)
            validation=config.validation,
            samples=config.samples,
            seed=config.train.seed,
        )
        n_classes = self.data.n_classes
        self.model = MLP(
            [self.data.n_features, *config.hidden, n_classes],
            activation=config.activation,
            loss=config.loss,
            dtype=config.dtype,
            parallel=bool(getattr(comm, "allows_parallel_kernels", False)) and comm.size == 1,
        )
        self.trainer = make_trainer(self.model, self.data, config.train, comm)

    def header(self) -> dict:
        """The first line of a metrics file: resolved config and environment."""
        return dict(
            kind="config",
            config=self.config.as_dict(),
            trajectory_hash=self.config.trajectory_hash(self.comm.size),
            model=dict(layers=list(self.model.layers), n_params=self.model.n_params),
            data=dict(name=self.data.name, n_train=self.data.n_train_global, n_test=self.data.n_test_global),
            environment=environment(self.comm),
        )

    def initial_state(self):
        return self.trainer.initial_state()

    def run(self, state, total: int) -> Iterator:
        return self.trainer.run(state, total)


def make_trainer(model, data, config: TrainConfig, comm):
    """The trainer of the configured method (the method registry lives in ``hessfree.train.methods``)."""
    from hessfree.train.methods import trainer_for

    return trainer_for(config.method)(model, data, config, comm)


class MetricsWriter:
    """JSON lines: a config line, one line per record, a final ``result`` line. Rank 0 only."""

    def __init__(self, path: str | os.PathLike, header: dict, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a" if append else "w", encoding="utf-8")
        self._write(header)

    def _write(self, obj: dict) -> None:
        self._file.write(json.dumps(obj, allow_nan=False, default=_json_default) + "\n")
        self._file.flush()

    def record(self, record) -> None:
        self._write(dict(kind="iteration", **record.as_dict()))

    def close(self, result: dict) -> None:
        self._write(dict(kind="result", **result))
        self._file.close()


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
