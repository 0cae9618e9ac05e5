"""A whole training run as one frozen config: the keys of ``hessfree train`` and its TOML file.

``RunConfig`` holds what :class:`~hessfree.train.config.TrainConfig` does not: the data,
the network, the communicator, outputs and the simulated cluster. ``make_run_config``
builds it from a flat mapping (command-line options or a TOML file, ``-`` or ``_`` in
keys); ``load_toml`` reads a config file strictly: keys at the top level or in a
``[train]`` table, values of the right type (a string is never a boolean), anything
else refused with the key named.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import tomllib

import attrs

from hessfree.atomic import read_regular_or
from hessfree.comm import Backend
from hessfree.cost.network import Collective
from hessfree.cost.presets import INTERCONNECTS
from hessfree.data.loader import DatasetName
from hessfree.errors import ConfigError
from hessfree.models.mlp import Loss
from hessfree.train.config import TrainConfig
from hessfree.train.layout import Parallel
from hessfree.validate import bool_field, config, enum_field, int_field, real_field, text, text_field

#: thread ranks share one process: beyond this many, a run is a mistake, not a cluster
MAX_THREAD_RANKS = 256


class DType(enum.Enum):
    FLOAT32 = "float32"
    FLOAT64 = "float64"


def _hidden(value) -> tuple[int, ...]:
    """Hidden widths from ``"400,150"``, ``[400, 150]`` or ``400``."""
    from hessfree.validate import integer

    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p != ""]
        try:
            parts = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"hidden: expected comma-separated layer widths like 400,150, found {value!r}") from None
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    return tuple(integer("hidden", p, minimum=1) for p in parts)


def _activation(value) -> str | tuple[str, ...]:
    """One activation name, or one per hidden layer (``"sigmoid,linear,sigmoid"`` or a list);
    the model checks the names and the count."""
    if isinstance(value, (list, tuple)):
        return tuple(text("activation", v) for v in value)
    names = [p.strip() for p in text("activation", value).split(",")]
    return names[0] if len(names) == 1 else tuple(names)


@config
class RunConfig:
    """Every setting of one training run (the keys of ``hessfree train`` and its TOML file)."""

    dataset: DatasetName = enum_field(DatasetName, DatasetName.DIGITS)
    data_dir: str | None = text_field(None)
    hidden: tuple[int, ...] = attrs.field(default=(100,), converter=_hidden)
    activation: str | tuple[str, ...] = attrs.field(default="tanh", converter=_activation)
    loss: Loss = enum_field(Loss, Loss.SOFTMAX_CROSS_ENTROPY)
    dtype: DType = enum_field(DType, DType.FLOAT64)
    validation: float = real_field(0.0, low=0, high=1, high_open=True)
    #: train to reproduce the inputs (a deep autoencoder): outputs as wide as the inputs,
    #: the error reported is the squared reconstruction error per image
    autoencoder: bool = bool_field(False)
    samples: int | None = int_field(None, optional=True)
    comm: Backend = enum_field(Backend, Backend.AUTO)
    #: data: every rank a shard of the data and the whole θ; model: every rank all the
    #: data and a slice of every layer's units (not part of the trajectory: the same to rounding)
    parallel: Parallel = enum_field(Parallel, Parallel.DATA)
    ranks: int = int_field(1, maximum=MAX_THREAD_RANKS)  # thread ranks of this process
    comm_timeout: float = real_field(300.0, low=0, high=1e6, low_open=True)
    train: TrainConfig = attrs.field(factory=TrainConfig, validator=attrs.validators.instance_of(TrainConfig))
    metrics: str | None = text_field(None)
    checkpoint_dir: str | None = text_field(None)
    checkpoint_every: int = int_field(1)
    resume: bool = bool_field(False)
    overwrite: bool = bool_field(False)  # replace the checkpoints already in checkpoint_dir
    save_model: str | None = text_field(None)  # write the trained network here (hessfree.modelfile)
    quiet: bool = bool_field(False)
    verbose: int = int_field(0, minimum=0)  # wider progress lines (more columns)
    simulate: str | None = text_field(None)  # interconnect preset
    # bounded so that simulated times stay finite numbers over any run length
    sim_latency: float | None = real_field(None, optional=True, low=0, high=1e3)  # seconds
    sim_bandwidth: float | None = real_field(None, optional=True, low=1, high=1e18)  # bytes/s
    sim_collective: Collective = enum_field(Collective, Collective.RING)
    sim_compute_scale: float = real_field(1.0, low=1e-6, high=1e6)

    def __attrs_post_init__(self) -> None:
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume: needs checkpoint_dir (where to find the checkpoint)")
        if self.resume and self.overwrite:
            raise ConfigError("overwrite: cannot be combined with resume (continue the checkpoints or replace them, not both)")
        if self.simulate is not None and self.simulate not in INTERCONNECTS:
            raise ConfigError(f"simulate: expected one of {', '.join(INTERCONNECTS)}, found {self.simulate!r}")
        if self.simulate is None and (self.sim_latency is not None or self.sim_bandwidth is not None):
            raise ConfigError("sim_latency/sim_bandwidth: need simulate (an interconnect preset to start from)")

    def simulated_network(self):
        """The α–β network of ``simulate`` with any overrides, or None."""
        if self.simulate is None:
            return None
        from hessfree.cost import interconnect
        from hessfree.cost.network import Network

        base = interconnect(self.simulate)
        latency = base.latency if self.sim_latency is None else self.sim_latency
        inverse_bandwidth = base.inverse_bandwidth if self.sim_bandwidth is None else 1.0 / self.sim_bandwidth
        return Network(latency, inverse_bandwidth)

    def trajectory(self, size: int | None = None, *, data=None) -> dict:
        """The settings that determine the trajectory, which a checkpoint must share to be
        resumed: the data's content, model, dtype and method settings; not run length,
        outputs, backend, rank count or layout (batches do not depend on the rank count, so a
        checkpoint continues on any), and not where the data files are (the dataset is
        identified by its content fingerprint, see ``hessfree.data.loader.source_fingerprint``).

        ``data`` is the loaded :class:`~hessfree.data.dataset.Dataset` whose fingerprint to
        use (any rank's shard: they agree); without it the dataset is opened to compute it.
        ``size`` is accepted for compatibility and ignored.
        """
        train = self.train.identity()
        # resolved, as checkpoints before the per-method default stored it: a default run of
        # any method but gn-cg (whose default became the last iterate) keeps its identity
        train["backtracking"] = self.train.walk_back
        return dict(
            dataset=self.dataset.value,
            data=self.data_fingerprint() if data is None or not data.fingerprint else data.fingerprint,
            samples=self.samples,
            validation=self.validation,
            **({"autoencoder": True} if self.autoencoder else {}),  # absent when off: old identities stay valid
            hidden=list(self.hidden),
            activation=self.activation if isinstance(self.activation, str) else list(self.activation),
            loss=self.loss.value,
            dtype=self.dtype.value,
            train=train,
        )

    def trajectory_hash(self, size: int | None = None, *, data=None) -> str:
        return hashlib.sha256(json.dumps(self.trajectory(size, data=data), sort_keys=True).encode()).hexdigest()

    def data_fingerprint(self) -> str:
        """The content fingerprint of this run's dataset (opens it; cached per process)."""
        from hessfree.data.loader import dataset_fingerprint

        return dataset_fingerprint(self.dataset, data_dir=self.data_dir, seed=self.train.seed, samples=self.samples)

    def as_dict(self) -> dict:
        """JSON-ready: every setting, enums by value."""

        def plain(value):
            if isinstance(value, enum.Enum):
                return value.value
            if isinstance(value, tuple):
                return [plain(v) for v in value]
            return value

        out = {k: plain(v) for k, v in attrs.asdict(self, recurse=False).items()}
        out["train"] = {k: plain(v) for k, v in attrs.asdict(self.train, recurse=False).items()}
        return out


#: keys that belong to ``TrainConfig`` (the rest are ``RunConfig``'s own)
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
    try:
        return RunConfig(train=TrainConfig(**train), **run)
    except TypeError as exc:  # attrs: a missing or unexpected argument
        raise ConfigError(str(exc)) from None


#: a config file is a few hundred bytes; larger ones are refused before they are read
MAX_CONFIG_BYTES = 1 << 20
#: the one table a config file may have besides top-level keys
TOML_TABLES = ("train",)


def load_toml(path: str | os.PathLike) -> dict:
    """The flat key → value mapping of a TOML config file (ConfigError naming what is wrong)."""
    try:
        raw = read_regular_or(path, MAX_CONFIG_BYTES, lambda reason: ConfigError(f"--config {path}: {reason}"),
                              too_large=f"larger than {MAX_CONFIG_BYTES} bytes: not a config file")
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"--config {path}: not a UTF-8 text file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML ({exc})") from None
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict):
            if key not in TOML_TABLES:
                raise ConfigError(f"--config {path}: unknown table [{key}]; put keys at the top level or in [train]")
            flat.update(value)
        else:
            flat[key] = value
    check_values(flat)
    return flat


def check_values(values: dict, where: str = "") -> None:
    """Check each known key's value on its own (type and range), as the config classes
    will: a config file's wrong value is refused even when a flag overrides it. Unknown
    keys are left to :func:`make_run_config`."""
    fields = {f.name: f for f in attrs.fields(RunConfig) if f.name != "train"}
    fields.update({f.name: f for f in attrs.fields(TrainConfig)})
    for raw_key, value in values.items():
        field = fields.get(str(raw_key).replace("-", "_"))
        if field is None or field.converter is None:
            continue
        try:
            field.converter(value)
        except ConfigError as exc:
            raise ConfigError(f"{where}{exc}") from None
