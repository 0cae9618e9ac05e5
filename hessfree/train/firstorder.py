"""First-order baselines (SGD, momentum SGD, Adam, AdamW), data- or model-parallel on the same communicator.

Each update takes the next b samples of a per-epoch permutation of the *global* indices
(``SeedSequence([seed, epoch])``, the same for any number of ranks); every rank computes
the ones in its shard; **one** allreduce of [Σ∇ℓ, Σℓ]; then

    SGD:  θ ← θ − η·g            MSGD:  v ← μ·v − η·g,  θ ← θ + v      (g = Σ∇ℓ / b + wd·θ)

    Adam (Kingma & Ba 2015), t the number of updates applied so far, this one included:
          m ← β₁·m + (1−β₁)·g,  v ← β₂·v + (1−β₂)·g²,
          m̂ = m / (1−β₁ᵗ),  v̂ = v / (1−β₂ᵗ),  θ ← θ − η·(m̂ / (√v̂ + ε))   (g as for SGD)

    AdamW (Loshchilov & Hutter 2019, as PyTorch's AdamW): g = Σ∇ℓ / b, *without* wd·θ;
          the same m, v; θ ← θ·(1 − η·wd) first, then θ ← θ − η·(m̂ / (√v̂ + ε)),
          i.e. θₜ = θₜ₋₁ − η·(m̂ / (√v̂ + ε) + wd·θₜ₋₁), the decay from the pre-step θ

An epoch is ⌊n/b⌋ updates (the same count on every rank). A non-finite reduced gradient
skips the update on every rank alike: θ, the moments and Adam's t stay as they were.
Model-parallel (``hessfree.train.layout``): every rank takes all b samples through its
slice of the network, no gradient allreduce, the update on its shard only; whether the
gradient is finite is then one scalar allreduce, so that every rank skips alike. One
record per epoch, ``iteration`` counting updates (skipped ones included). The reported
objective is the same for every method, mean loss + ½·wd·‖θ‖² (AdamW too, although its
decay is not the gradient of that term).
"""

from __future__ import annotations

import math
import time

import attrs
import numpy as np

from hessfree.comm import Phase
from hessfree.methods import Update
from hessfree.train import updates
from hessfree.train.batches import epoch_permutation
from hessfree.train.config import TrainConfig
from hessfree.train.records import IterationRecord
from hessfree.train.trainer import Trainer, TrainState


@attrs.frozen(kw_only=True)
class FirstOrderState(TrainState):
    """``iteration`` counts epochs (the run length); ``updates`` the update slots of those
    epochs, skipped ones included; ``applied`` the updates applied (Adam's step count t).
    ``velocity`` is MSGD's v or Adam's first moment m, ``second_moment`` Adam's v (None for
    SGD and MSGD)."""

    velocity: np.ndarray
    second_moment: np.ndarray | None = None
    updates: int = 0
    applied: int = 0


class FirstOrderTrainer(Trainer):
    """``step(state)`` runs one epoch of data-parallel mini-batch updates."""

    State = FirstOrderState

    def __init__(self, model, data, config: TrainConfig, comm=None):
        if config.method.is_hessian_free:
            raise ValueError(f"FirstOrderTrainer runs first-order methods, not {config.method.value}")
        super().__init__(model, data, config, comm)
        self.updates_per_epoch = max(1, self.n_train // self.batch_size)
        self.rule = config.method.spec.update
        self.momentum = config.momentum if self.rule is Update.MOMENTUM else 0.0
        self.adaptive = self.rule in (Update.ADAM, Update.ADAMW)
        #: AdamW decays θ itself, so its gradient leaves out the weight-decay term
        self.decoupled_decay = config.weight_decay if self.rule is Update.ADAMW else 0.0
        self.coupled_decay = 0.0 if self.rule is Update.ADAMW else config.weight_decay
        #: the mean gradient of the current update: a vector of its own, because written
        #: over the reduced sum the kernel's loop is not vectorised (0.27 ms against 0.05)
        self._g = np.empty_like(self._reduce_buffer[:-1])

    def initial_state(self, theta=None) -> FirstOrderState:
        theta = self.initial_theta(theta)
        second = np.zeros_like(theta) if self.adaptive else None
        return FirstOrderState(theta=theta, velocity=np.zeros_like(theta), second_moment=second)

    def state_from_payload(self, arrays: dict, scalars: dict) -> FirstOrderState:
        """As the base class; a checkpoint written before Adam (no ``second_moment``, no
        ``applied``) is an SGD or MSGD state: no second moment, every update applied."""
        scalars = {"second_moment": None, "applied": scalars.get("updates", 0), **scalars}
        return super().state_from_payload(arrays, scalars)

    def gradient_sum(self, theta: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Σ∇ℓ over the mini-batch on all ranks: **one** allreduce of [Σ∇ℓ, Σℓ]; a view of
        the reduce buffer, valid until the next call."""
        X, y = self.local_rows(indices)
        loss, grad = self.model.loss_grad(theta, X, y)
        return self.reduced_sums(loss, grad)[:-1]

    def gradient(self, theta: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, int]:
        """(g, this rank's count of its non-finite elements): the mean mini-batch gradient
        over all ranks, Σ∇ℓ/b, with the weight-decay term μθ except for AdamW (decoupled
        decay), in a vector this trainer keeps. (No objective: its ‖θ‖² would cost a
        collective when sharded.)"""
        bad = updates.mean_gradient_into(self.gradient_sum(theta, indices), self.batch_size, theta, self.coupled_decay, self._g)
        return self._g, bad

    def evaluate(self, theta: np.ndarray) -> tuple[float, float, float | None]:
        """(objective, train error, test error): one scalar allreduce (phase OTHER)."""
        loss, wrong = self.model.evaluate(theta, self.train)
        test_wrong = self.model.evaluate(theta, self.test)[1] if self.test is not None and self.test.n else 0
        total = self.layout.sum_scalars(loss, wrong, test_wrong)
        test = total[2] / self.n_test if self.test is not None and self.n_test else None
        return self.regularised(total[0] / self.n_train, theta), float(total[1] / self.n_train), test

    def update(self, theta: np.ndarray, velocity: np.ndarray, g: np.ndarray, second_moment: np.ndarray | None = None, t: int = 1) -> None:
        """One update in place (``hessfree.train.updates``): SGD, momentum with ``velocity``
        as v, or Adam(W) with ``velocity`` as m, ``second_moment`` as v and ``t`` the step
        count (≥ 1, this update included); see the module docstring."""
        c = self.config
        updates.step(self.rule, theta, velocity, second_moment, g, lr=c.lr, momentum=self.momentum,
                     decoupled_decay=self.decoupled_decay, beta1=c.beta1, beta2=c.beta2, eps=c.adam_eps, t=t)

    def step(self, state: FirstOrderState) -> tuple[FirstOrderState, IterationRecord]:
        counts0 = self.comm.counts()
        t0 = time.perf_counter()
        theta, velocity = state.theta.copy(), state.velocity.copy()
        second = state.second_moment.copy() if state.second_moment is not None else None
        if self.adaptive and second is None:  # a state made by hand, without Adam's v
            second = np.zeros_like(theta)
        perm = epoch_permutation(self.config.seed, state.iteration, self.n_train)
        b = self.batch_size
        rejected, applied = state.rejected, state.applied
        with self.comm.phase(Phase.GRADIENT):
            for u in range(self.updates_per_epoch):
                g, nonfinite = self.gradient(theta, perm[u * b : (u + 1) * b])
                if not self.layout.none_nonfinite(nonfinite):
                    rejected += 1
                    if rejected >= self.config.max_rejected:
                        break
                    continue
                rejected = 0
                applied += 1
                self.update(theta, velocity, g, second, applied)
        t1 = time.perf_counter()
        with self.comm.phase(Phase.OTHER):
            loss, train_error, test_error = self.evaluate(theta)
        new = attrs.evolve(
            state,
            theta=theta,
            velocity=velocity,
            second_moment=second,
            iteration=state.iteration + 1,
            updates=state.updates + self.updates_per_epoch,
            applied=applied,
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
