"""First-order baselines (SGD, momentum SGD), data-parallel on the same communicator.

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

import attrs
import numpy as np

from hessfree.comm import Phase
from hessfree.methods import Update
from hessfree.train.batches import epoch_permutation
from hessfree.train.config import TrainConfig
from hessfree.train.records import IterationRecord
from hessfree.train.trainer import Trainer, TrainState


@attrs.frozen(kw_only=True)
class FirstOrderState(TrainState):
    """``iteration`` counts epochs (the run length); ``updates`` the parameter updates."""

    velocity: np.ndarray
    updates: int = 0


class FirstOrderTrainer(Trainer):
    """``step(state)`` runs one epoch of data-parallel mini-batch updates."""

    State = FirstOrderState

    def __init__(self, model, data, config: TrainConfig, comm=None):
        if config.method.is_hessian_free:
            raise ValueError(f"FirstOrderTrainer runs first-order methods, not {config.method.value}")
        super().__init__(model, data, config, comm)
        self.updates_per_epoch = max(1, self.n_train // self.batch_size)
        self.momentum = config.momentum if config.method.spec.update is Update.MOMENTUM else 0.0

    def initial_state(self, theta=None) -> FirstOrderState:
        theta = self.initial_theta(theta)
        return FirstOrderState(theta=theta, velocity=np.zeros_like(theta))

    def gradient(self, theta: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Mean mini-batch gradient over all ranks: one allreduce of [Σ∇ℓ, Σℓ]."""
        X, y = self.local_rows(indices)
        loss, grad = self.model.loss_grad(theta, X, y)
        return self.reduced_gradient(loss, grad, self.batch_size, theta)[1]

    def evaluate(self, theta: np.ndarray) -> tuple[float, float, float | None]:
        """(objective, train error, test error): one scalar allreduce (phase OTHER)."""
        loss, wrong = self.model.evaluate(theta, self.train)
        test_wrong = self.model.evaluate(theta, self.test)[1] if self.test is not None and self.test.n else 0
        total = self.comm.allreduce_scalars(loss, wrong, test_wrong)
        test = total[2] / self.n_test if self.test is not None and self.n_test else None
        return self.regularised(total[0] / self.n_train, theta), float(total[1] / self.n_train), test

    def update(self, theta: np.ndarray, velocity: np.ndarray, g: np.ndarray) -> None:
        """One update in place: SGD θ ← θ − η·g, or momentum v ← μ·v − η·g, θ ← θ + v."""
        lr, mu = self.config.lr, self.momentum
        if mu:
            velocity *= mu
            velocity -= lr * g
            theta += velocity
        else:
            theta -= lr * g

    def step(self, state: FirstOrderState) -> tuple[FirstOrderState, IterationRecord]:
        counts0 = self.comm.counts()
        t0 = time.perf_counter()
        theta, velocity = state.theta.copy(), state.velocity.copy()
        perm = epoch_permutation(self.config.seed, state.iteration, self.n_train)
        b = self.batch_size
        rejected = state.rejected
        with self.comm.phase(Phase.GRADIENT):
            for u in range(self.updates_per_epoch):
                g = self.gradient(theta, perm[u * b : (u + 1) * b])
                if not np.all(np.isfinite(g)):
                    rejected += 1
                    if rejected >= self.config.max_rejected:
                        break
                    continue
                rejected = 0
                self.update(theta, velocity, g)
        t1 = time.perf_counter()
        with self.comm.phase(Phase.OTHER):
            loss, train_error, test_error = self.evaluate(theta)
        new = attrs.evolve(
            state,
            theta=theta,
            velocity=velocity,
            iteration=state.iteration + 1,
            updates=state.updates + self.updates_per_epoch,
            rejected=rejected,
            samples=state.samples + self.updates_per_epoch * b,
            time_s=state.time_s + time.perf_counter() - t0,
            comm=state.comm + self.counts_since(counts0),
        )
        record = self.record(
            new,
            new.updates,
            loss=loss,
            train_error=train_error,
            test_error=test_error,
            time_gradient_s=t1 - t0,
            step_size=self.config.lr,
            accepted=rejected == 0,
        )
        return new, record

    def divergence(self, state: FirstOrderState, record: IterationRecord) -> str | None:
        if state.rejected >= self.config.max_rejected or not math.isfinite(record.loss):
            return f"epoch {state.iteration}: the gradient or loss is not finite; training diverged (lower --lr)"
        return None
