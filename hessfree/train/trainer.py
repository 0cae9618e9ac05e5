"""What every trainer shares: the data shard, the reduced gradient, the run loop, records.

A trainer composes a model, this rank's data shard, a configuration and a communicator;
the model's layout (``hessfree.train.layout``: data- or model-parallel) says how sums are
reduced and inner products taken, so one code path serves both.
``step(state) -> (state, record)`` runs one outer iteration (HF) or one epoch
(first-order methods); ``run(state, total)`` steps until ``state.iteration == total`` and
raises :class:`~hessfree.errors.DivergedError` when the method says the run diverged.
States are frozen: a step returns a new one and never modifies the parameters in place.
"""

from __future__ import annotations

import enum
from typing import ClassVar, Iterator

import attrs
import numpy as np

from hessfree.comm import CommCounts, Communicator, SerialComm
from hessfree.data.dataset import Dataset
from hessfree.errors import DivergedError
from hessfree.models.base import Model
from hessfree.train.batches import local_positions
from hessfree.train.config import TrainConfig
from hessfree.train.layout import layout_of
from hessfree.train.records import IterationRecord
from hessfree.train.updates import mean_gradient


@attrs.frozen(kw_only=True)
class TrainState:
    """What every method carries from one step to the next (subclasses add their own)."""

    theta: np.ndarray
    iteration: int = 0  # steps completed: HF outer iterations, or first-order epochs
    rejected: int = 0  # consecutive rejected steps
    samples: int = 0  # samples pushed through the network so far (for epochs)
    comm: CommCounts = attrs.field(factory=CommCounts)  # collectives of the steps, per phase
    time_s: float = 0.0


def state_payload(state: TrainState) -> tuple[dict, dict]:
    """(arrays, scalars) of a state, for a checkpoint: arrays are the ndarray fields,
    enums are stored by value and the counts as a nested dict."""
    arrays, scalars = {}, {}
    for field in attrs.fields(type(state)):
        value = getattr(state, field.name)
        if isinstance(value, np.ndarray):
            arrays[field.name] = value
        elif isinstance(value, CommCounts):
            scalars[field.name] = value.as_dict()
        elif isinstance(value, enum.Enum):
            scalars[field.name] = value.value
        else:
            scalars[field.name] = value
    return arrays, scalars


def state_from_payload(kind: type[TrainState], arrays: dict, scalars: dict) -> TrainState:
    """The inverse of :func:`state_payload` (KeyError names a missing field)."""
    values = {}
    for field in attrs.fields(kind):
        if field.name in arrays:
            values[field.name] = arrays[field.name].copy()
            continue
        value = scalars[field.name]
        if field.name == "comm":
            value = CommCounts.from_dict(value)
        elif "enum" in field.metadata and value is not None:
            value = field.metadata["enum"](value)
        values[field.name] = value
    return kind(**values)


class Trainer:
    """The shared plumbing of the HF and first-order trainers."""

    State: ClassVar[type[TrainState]] = TrainState

    def __init__(self, model: Model, data: Dataset, config: TrainConfig, comm: Communicator | None = None):
        self.model = model
        self.config = config
        self.comm = comm if comm is not None else SerialComm()
        self.layout = layout_of(model, self.comm)
        self.train = model.batch(data.X_train, data.train_targets)
        self.test = model.batch(data.X_test, data.test_targets) if data.has_test else None
        self.n_train = data.n_train_global
        self.n_test = data.n_test_global
        self.rows = data.shard.train_rows if data.shard is not None else range(data.n_train)
        self.batch_size = min(config.global_batch, self.n_train)
        self.dtype = np.dtype(model.dtype)
        self._reduce_buffer = np.empty(model.n_params + 1, dtype=self.dtype)

    # ------------------------------------------------------------------ state
    def initial_theta(self, theta: np.ndarray | None) -> np.ndarray:
        """θ₀: the given (whole) parameters, this rank's part of them, or ``init_scale`` ×
        the model's seeded initialisation."""
        if theta is not None:
            return self.layout.part(theta)
        theta = self.model.init_params(self.config.seed)
        scale = self.config.init_scale
        return theta if scale == 1.0 else (theta * scale).astype(theta.dtype, copy=False)

    def state_payload(self, state: TrainState) -> tuple[dict, dict]:
        """(arrays, scalars) of a checkpoint: every array a whole vector, whatever the
        layout (collective under model parallelism: every rank must call it)."""
        arrays, scalars = state_payload(state)
        return {name: self.layout.whole(a) for name, a in arrays.items()}, scalars

    def payload_template(self, state: TrainState) -> tuple[dict, dict]:
        """The names, dtypes and shapes of :meth:`state_payload` without its values (no
        collective), to check a checkpoint against."""
        arrays, scalars = state_payload(state)
        return {name: self.layout.whole_like(a) for name, a in arrays.items()}, scalars

    def state_from_payload(self, arrays: dict, scalars: dict) -> TrainState:
        """The state of a checkpoint's whole vectors: this rank's part of each."""
        return state_from_payload(self.State, {name: self.layout.part(a) for name, a in arrays.items()}, scalars)

    # ------------------------------------------------------------------ shared phases
    def local_rows(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(X, y) of the samples of a global index set that live in this rank's shard."""
        rows = local_positions(self.rows, indices)
        train = self.train
        return train.X[rows], (train.labels[rows] if train.labels is not None else train.targets[rows])

    def reduced_gradient(self, loss_sum: float, grad_sum: np.ndarray, count: int, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """(f, g) from local sums over ``count`` samples in all: **one** allreduce of
        [Σ∇ℓ, Σℓ] (model-parallel: none, the shard's sums are complete); f = Σℓ/count +
        ½μ‖θ‖², g = Σ∇ℓ/count + μθ (μ the weight decay)."""
        buf = self.reduced_sums(loss_sum, grad_sum)
        g = mean_gradient(buf[:-1], count, theta, self.config.weight_decay)
        return self.regularised(float(buf[-1]) / count, theta), g

    def reduced_sums(self, loss_sum: float, grad_sum: np.ndarray) -> np.ndarray:
        """[Σ∇ℓ, Σℓ] of all ranks: **one** allreduce (model-parallel: none); the reduce
        buffer, valid until the next call."""
        buf = self._reduce_buffer
        buf[:-1] = grad_sum
        buf[-1] = loss_sum
        self.layout.reduce(buf)
        return buf

    def regularised(self, mean_loss: float, theta: np.ndarray) -> float:
        """The objective: mean loss plus ½μ‖θ‖²."""
        mu = self.config.weight_decay
        return float(mean_loss + 0.5 * mu * self.layout.dot(theta, theta)) if mu else float(mean_loss)

    def counts_since(self, before: CommCounts) -> CommCounts:
        return self.comm.counts() - before

    def record(self, state: TrainState, iteration: int, **fields) -> IterationRecord:
        """The record of a finished step; ``iteration`` is what the record counts."""
        return IterationRecord(
            iteration=iteration,
            epochs=state.samples / self.n_train,
            comm_phases=state.comm,
            time_s=state.time_s,
            **fields,
        )

    # ------------------------------------------------------------------ the loop
    def step(self, state: TrainState) -> tuple[TrainState, IterationRecord]:
        raise NotImplementedError

    def initial_state(self, theta: np.ndarray | None = None) -> TrainState:
        raise NotImplementedError

    def divergence(self, state: TrainState, record: IterationRecord) -> str | None:
        """Why the run must stop as diverged after this step, or None."""
        raise NotImplementedError

    def run(self, state: TrainState, total: int) -> Iterator[tuple[TrainState, IterationRecord]]:
        """Steps until ``state.iteration == total`` (a total, so a resumed run continues the
        count); raises DivergedError when :meth:`divergence` says so."""
        while state.iteration < total:
            state, record = self.step(state)
            yield state, record
            reason = self.divergence(state, record)
            if reason is not None:
                raise DivergedError(reason)

