"""Data-parallel mini-batch SGD and momentum SGD: the baselines, on the same communicator.

Each update takes the next b samples of a per-epoch permutation of the *global* indices
(``SeedSequence([seed, epoch])``, the same for any number of ranks); every rank computes
the ones in its shard; **one** allreduce of [Σ∇ℓ, Σℓ]; then

    SGD:  θ ← θ − η·g            MSGD:  v ← μ·v − η·g,  θ ← θ + v      (g = Σ∇ℓ / b + wd·θ)

An epoch is ⌊n/b⌋ updates (the same count on every rank). A non-finite reduced gradient
skips the update on every rank alike. One record per epoch, ``iteration`` counting updates.
"""

from __future__ import annotations

import math
import time
from typing import Iterator

import attrs
import numpy as np

from hessfree.comm import Phase, SerialComm
from hessfree.data.dataset import Dataset
from hessfree.errors import DivergedError
from hessfree.models.base import Model
from hessfree.train.batches import epoch_permutation, local_positions
from hessfree.train.config import Method, TrainConfig
from hessfree.train.records import IterationRecord, add_counts, total_bytes, total_calls, zero_counts


@attrs.frozen(kw_only=True)
class SGDState:
    theta: np.ndarray
    velocity: np.ndarray
    iteration: int = 0  # epochs completed (the run length counts epochs)
    updates: int = 0
    rejected: int = 0  # consecutive skipped (non-finite) updates
    samples: int = 0
    comm: dict = attrs.field(factory=zero_counts)  # cumulative collectives/bytes per phase (steps only)
    time_s: float = 0.0


_SGD_SCALARS = ("iteration", "updates", "rejected", "samples", "comm", "time_s")


def sgd_state_payload(state: SGDState) -> tuple[dict, dict]:
    return dict(theta=state.theta, velocity=state.velocity), {k: getattr(state, k) for k in _SGD_SCALARS}


def sgd_state_from_payload(arrays: dict, scalars: dict) -> SGDState:
    return SGDState(theta=arrays["theta"].copy(), velocity=arrays["velocity"].copy(), **{k: scalars[k] for k in _SGD_SCALARS})



class SGDTrainer:
    """``step(state)`` runs one epoch of data-parallel (momentum) SGD."""

    state_payload = staticmethod(sgd_state_payload)
    state_from_payload = staticmethod(sgd_state_from_payload)

    def __init__(self, model: Model, data: Dataset, config: TrainConfig, comm=None):
        if config.method not in (Method.SGD, Method.MSGD):
            raise ValueError(f"SGDTrainer runs sgd and msgd, not {config.method.value}")
        self.model, self.config = model, config
        self.comm = comm if comm is not None else SerialComm()
        self.train = model.batch(data.X_train, data.y_train)
        self.test = model.batch(data.X_test, data.y_test) if data.has_test else None
        self.n_train, self.n_test = data.n_train_global, data.n_test_global
        self.batch_size = min(config.global_batch, self.n_train)
        self.rows = data.shard.train_rows if data.shard is not None else range(data.n_train)
        self.updates_per_epoch = max(1, self.n_train // self.batch_size)
        self.momentum = config.momentum if config.method is Method.MSGD else 0.0
        self._buf = np.empty(model.n_params + 1, dtype=np.dtype(getattr(model, "dtype", np.float64)))

    def initial_state(self, theta=None) -> SGDState:
        theta = self.model.init_params(self.config.seed) if theta is None else np.array(theta)
        return SGDState(theta=theta, velocity=np.zeros_like(theta))

    def gradient(self, theta: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Mean mini-batch gradient over all ranks: one allreduce of [Σ∇ℓ, Σℓ]."""
        X = self.train.X[rows]
        y = self.train.labels[rows] if self.train.labels is not None else self.train.targets[rows]
        loss, grad = self.model.loss_grad(theta, X, y)
        self._buf[:-1] = grad
        self._buf[-1] = loss
        self.comm.allreduce(self._buf, out=self._buf)
        g = self._buf[:-1] / self.batch_size
        if self.config.weight_decay:
            g = g + self.config.weight_decay * theta
        return g

    def evaluate(self, theta: np.ndarray) -> tuple[float, float, float | None]:
        """(objective, train error, test error): one scalar allreduce (phase OTHER)."""
        loss, wrong = self.model.evaluate(theta, self.train)
        test_wrong = self.model.evaluate(theta, self.test)[1] if self.test is not None and self.test.n else 0
        total = self.comm.allreduce_scalars(loss, wrong, test_wrong)
        f = total[0] / self.n_train
        if self.config.weight_decay:
            f += 0.5 * self.config.weight_decay * float(theta @ theta)
        test = total[2] / self.n_test if self.test is not None and self.n_test else None
        return float(f), float(total[1] / self.n_train), test

    def step(self, state: SGDState) -> tuple[SGDState, IterationRecord]:
        counts0 = self.comm.counts()
        t0 = time.perf_counter()
        theta, velocity = state.theta.copy(), state.velocity.copy()
        perm = epoch_permutation(self.config.seed, state.iteration, self.n_train)
        b = self.batch_size
        rejected = state.rejected
        lr, mu = self.config.lr, self.momentum
        with self.comm.phase(Phase.GRADIENT):
            for u in range(self.updates_per_epoch):
                rows = local_positions(self.rows, perm[u * b : (u + 1) * b])
                g = self.gradient(theta, rows)
                if not np.all(np.isfinite(g)):
                    rejected += 1
                    if rejected >= self.config.max_rejected:
                        break
                    continue
                rejected = 0
                if mu:
                    velocity *= mu
                    velocity -= lr * g
                    theta += velocity
                else:
                    theta -= lr * g
        t1 = time.perf_counter()
        with self.comm.phase(Phase.OTHER):
            loss, train_error, test_error = self.evaluate(theta)
        samples = state.samples + self.updates_per_epoch * self.batch_size
        new = attrs.evolve(
            state,
            theta=theta,
            velocity=velocity,
            iteration=state.iteration + 1,
            updates=state.updates + self.updates_per_epoch,
            rejected=rejected,
            samples=samples,
            time_s=state.time_s + time.perf_counter() - t0,
            comm=add_counts(state.comm, self.comm.counts() - counts0),
        )
        record = IterationRecord(
            iteration=new.updates,
            epochs=samples / self.n_train,
            comm_calls=total_calls(new.comm),
            comm_bytes=total_bytes(new.comm),
            loss=loss,
            train_error=train_error,
            test_error=test_error,
            time_s=new.time_s,
            time_gradient_s=t1 - t0,
            step_size=lr,
            accepted=rejected == 0,
            comm_phases=new.comm,
        )
        return new, record

    def run(self, state: SGDState, epochs: int) -> Iterator[tuple[SGDState, IterationRecord]]:
        while state.iteration < epochs:
            state, record = self.step(state)
            yield state, record
            if state.rejected >= self.config.max_rejected or not math.isfinite(record.loss):
                raise DivergedError(f"epoch {state.iteration}: the gradient or loss is not finite; SGD diverged (lower --lr)")

