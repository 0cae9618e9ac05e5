"""``fit``: the one way to run training, from a notebook, a benchmark or the CLI.

    from hessfree.data import load_dataset
    from hessfree.models import MLP
    from hessfree.train import TrainConfig, fit

    data = load_dataset("digits")
    model = MLP([data.n_features, 100, data.n_classes])
    result = fit(model, data, TrainConfig(method="gn-cg", iterations=20))
    result.history[-1].train_error

``fit`` compiles the kernels before the first timed phase, resumes from a checkpoint if
asked, runs the method's steps, writes checkpoints, keeps the simulated cluster clock,
turns divergence into a result (never an exit), and calls the callbacks with every
record. It never prints. A checkpoint continues on any rank count, backend and layout
(the state does not depend on them; its vectors are stored whole); ``RunInfo.resume_note`` says when they changed. With
``save_model`` rank 0 writes the trained network to a model file (``hessfree.modelfile``)
at the end. On several ranks every rank calls ``fit`` with its own
communicator and data shard (see :func:`hessfree.train.run.run` for a whole run from a
:class:`~hessfree.train.runconfig.RunConfig`); callbacks run on rank 0 only, and a
callback's request to stop is broadcast, so every rank stops at the same iteration.
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Sequence

import attrs
import numpy as np

from hessfree import checkpoint
from hessfree.atomic import check_writable, remove_stale_temporaries
from hessfree.comm import Communicator, SerialComm, warm_numba_cache
from hessfree.comm.base import with_later_kinds
from hessfree.data.dataset import Dataset
from hessfree.errors import ConfigError, DivergedError, HessfreeError
from hessfree.methods import Family
from hessfree.models.base import Model
from hessfree.solvers import fused
from hessfree.train import updates
from hessfree.train.config import TrainConfig
from hessfree.train.firstorder import FirstOrderTrainer
from hessfree.train.hf import HessianFreeTrainer
from hessfree.train.layout import bind
from hessfree.train.records import IterationRecord
from hessfree.train.trainer import Trainer, TrainState
from hessfree.validate import config, int_field, real_field

#: the trainer of each method family (the method table says which family a method is)
TRAINERS = {Family.HESSIAN_FREE: HessianFreeTrainer, Family.FIRST_ORDER: FirstOrderTrainer}


def make_trainer(model: Model, data: Dataset, config: TrainConfig, comm: Communicator | None = None) -> Trainer:
    """The trainer of the configured method."""
    return TRAINERS[config.method.spec.family](model, data, config, comm)


class Status(enum.Enum):
    COMPLETED = "ok"  # ran to the configured length
    STOPPED = "stopped"  # a callback asked to stop (early stopping)
    DIVERGED = "diverged"  # the method could not make progress


@attrs.frozen(kw_only=True)
class RunInfo:
    """What a run is, for callbacks' ``on_start`` (metrics headers, progress lines)."""

    method: str
    layers: tuple[int, ...]
    n_params: int
    data: str
    n_train: int
    n_test: int
    ranks: int
    backend: str
    start: int  # iterations (HF) or epochs already done (a resumed run starts later)
    total: int
    resumed_from: str | None = None
    #: set when a resumed run continues on another rank count or backend than the
    #: checkpoint's: what changed and what it means for bitwise reproducibility
    resume_note: str | None = None
    warnings: tuple[str, ...] = ()
    #: what the evaluation arrays hold: "test", "validation" (held out) or "none"
    evaluation: str = "test"
    #: an autoencoder run: the errors are squared reconstruction errors per sample
    reconstruct: bool = False
    #: how the ranks share the work: "data" or "model" (``hessfree.train.layout``)
    parallel: str = "data"


@attrs.frozen(kw_only=True)
class FitResult:
    """How a run ended, its final state and every record of this call."""

    status: Status
    message: str
    state: TrainState
    history: tuple[IterationRecord, ...]
    saved_model: str | None = None  # the model file written (``save_model``), on rank 0

    @property
    def last(self) -> IterationRecord | None:
        return self.history[-1] if self.history else None

    def summary(self) -> dict:
        """JSON-ready: status, iterations done, and the last record's main numbers."""
        out = dict(status=self.status.value, message=self.message, iterations=self.state.iteration)
        last = self.last
        if last is not None:
            out.update(
                sim_time_s=last.sim_time_s, loss=last.loss, train_error=last.train_error, test_error=last.test_error,
                time_s=last.time_s, epochs=last.epochs, comm_calls=last.comm_calls, comm_bytes=last.comm_bytes,
            )
        return out


class Callback:
    """Hooks called on rank 0. Override what you need; ``on_iteration`` may return True
    to stop the run after this iteration (all ranks stop together).

    ``on_warmup_start``/``on_warmup_end`` bracket the kernel warm-up before training: numba
    compiles the kernels there on the first run (tens of seconds) and loads them from its
    cache afterwards (under a second).
    """

    def on_warmup_start(self) -> None:
        pass

    def on_warmup_end(self, seconds: float) -> None:
        pass

    def on_start(self, info: RunInfo) -> None:
        pass

    def on_iteration(self, record: IterationRecord, state: TrainState) -> bool | None:
        return None

    def on_end(self, result: FitResult) -> None:
        pass


@config
class Checkpointing:
    """Where and how often ``fit`` saves the full training state (atomically, verified)."""

    directory: str | Path = attrs.field(converter=Path)
    every: int = int_field(1)
    keep: int = int_field(2)
    #: a new (not resumed) run into a directory that already holds checkpoints of its own
    #: configuration removes them first; without it such a run is refused (ConfigError).
    #: Other configurations' checkpoints are never touched (file names carry the scope)
    overwrite: bool = attrs.field(default=False, converter=bool)


@config
class Simulation:
    """Report simulated cluster time: collectives charged by an α–β ``network`` with the
    ``collective`` algorithm, compute measured here times ``compute_scale``."""

    network: object  # hessfree.cost.Network
    collective: str = "ring"
    compute_scale: float = real_field(1.0, low=0, low_open=True)


def identity_of(model: Model, data: Dataset, config: TrainConfig, ranks: int | None = None) -> dict:
    """The settings that determine a trajectory (checkpoints of another one are refused):
    the model, the data's content (its fingerprint, else its name) and sizes, the method
    settings. Not the rank count (``ranks`` is ignored): the state does not depend on it."""
    return dict(
        model=_architecture(model), data=data.fingerprint or data.name, n_train=data.n_train_global,
        n_test=data.n_test_global, train=config.identity(),
    )


def _architecture(model: Model) -> dict:
    activation = getattr(model, "activations", None) or getattr(model, "activation", None)
    return dict(
        layers=list(model.layers),
        activation=[str(getattr(a, "value", a)) for a in activation] if isinstance(activation, (list, tuple)) else str(getattr(activation, "value", activation)),
        loss=str(getattr(getattr(model, "loss_kind", None), "value", getattr(model, "loss_name", ""))),
        dtype=str(np.dtype(model.dtype)),
    )


def identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def fit(
    model: Model,
    data: Dataset,
    config: TrainConfig,
    comm: Communicator | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    checkpoints: Checkpointing | None = None,
    resume: bool = False,
    simulate: Simulation | None = None,
    identity: dict | None = None,
    theta: np.ndarray | None = None,
    warm_up: bool = True,
    save_model: str | os.PathLike | None = None,
    model_notes: dict | None = None,
) -> FitResult:
    """Train ``model`` on this rank's ``data`` shard with ``config``; see the module docstring.

    ``checkpoints`` saves every ``every`` iterations (HF) or epochs (first-order) and at the
    end; ``resume`` continues from the newest verified checkpoint there (refused, with the
    differing settings named, if it belongs to another configuration: ``identity``, by
    default the model, data content, method settings; not the rank count or backend, so a
    checkpoint continues on any). A new run into a directory that already holds
    checkpoints of its configuration is refused unless ``checkpoints.overwrite`` (runs of
    other configurations may share the directory: their checkpoints are never touched).
    Output paths are checked, stale temporaries of this run removed and the checkpoint
    loaded before any work; an error there is agreed on by every rank (:func:`agree`). ``theta`` starts from given
    parameters instead of the seeded initialisation. ``save_model`` writes the trained
    network (with the data's input scaling, the run's summary and ``model_notes``) to a
    model file on rank 0 unless the run diverged (see :mod:`hessfree.modelfile`). Raises
    only for bad input, I/O and communication failures; divergence and early stops are a
    :class:`FitResult` status.
    """
    raw = comm if comm is not None else SerialComm()
    comm = _simulated(raw, simulate)
    lead = comm.rank == 0
    hooks = list(callbacks) if lead else []
    identity = identity if identity is not None else identity_of(model, data, config)
    config_hash = identity_hash(identity)
    # set-up: everything that can fail before any work, on every rank alike, then one
    # agreement so that an error every rank meets is reported once (see ``agree``)
    failure = None
    try:
        _check_outputs(checkpoints, save_model, lead)
        if checkpoints is not None and lead:
            checkpoint.clean_temporaries(checkpoints.directory, config_hash)
        if checkpoints is not None and not resume:
            _claim_directory(checkpoints, lead, config_hash)
        model = bind(model, comm)  # a sharded model's collectives go through the (simulated) comm
        trainer = make_trainer(model, data, config, comm)
        state, resumed, warnings, note, loaded = trainer.initial_state(theta), None, (), None, None
        if resume:
            if checkpoints is None:
                raise checkpoint.CheckpointError("resume: needs a checkpoint directory")
            loaded = checkpoint.load_latest(checkpoints.directory, identity, config_hash,
                                            decode=_decoder(trainer, state))
            state = loaded.state
            resumed, warnings = f"iteration {state.iteration} in {checkpoints.directory}", loaded.warnings
            note = resume_note(loaded.scalars.get("written_by"), _writer(raw))
    except Exception as exc:  # noqa: BLE001 - every rank must learn of it (re-raised by agree)
        failure = exc
    agree(raw, failure)
    if warm_up:
        for hook in hooks:
            hook.on_warmup_start()
        started = time.perf_counter()
        warm_numba_cache(comm, lambda: (model.warm_up(), fused.warm_up(), updates.warm_up()))
        for hook in hooks:
            hook.on_warmup_end(time.perf_counter() - started)
    clock_zero = getattr(comm, "clock", None)  # the simulated clock starts after the warm-up
    if clock_zero is not None and loaded is not None:
        clock_zero -= loaded.scalars.get("sim_time_s") or 0.0
    total = config.run_length
    info = RunInfo(
        method=config.method.value, layers=tuple(model.layers), n_params=trainer.layout.n_params, data=data.name,
        n_train=data.n_train_global, n_test=data.n_test_global, ranks=comm.size, backend=type(raw).__name__,
        start=state.iteration, total=total, resumed_from=resumed, resume_note=note, warnings=tuple(warnings),
        evaluation=data.evaluation.value,
        reconstruct=data.reconstruct,
        parallel=trainer.layout.parallel.value,
    )
    for hook in hooks:
        hook.on_start(info)
    history: list[IterationRecord] = []
    status, message = Status.COMPLETED, ""
    try:
        for state, record in trainer.run(state, total):
            if clock_zero is not None:
                record = attrs.evolve(record, sim_time_s=comm.clock - clock_zero)
            history.append(record)
            stop = _agreed(raw, any([bool(hook.on_iteration(record, state)) for hook in hooks])) and state.iteration < total
            if checkpoints is not None and (state.iteration % checkpoints.every == 0 or state.iteration == total or stop):
                _save(trainer, state, record, checkpoints, identity, lead, raw)
            if stop:
                status, message = Status.STOPPED, f"stopped by a callback after {state.iteration} of {total}"
                break
    except DivergedError as exc:
        status, message = Status.DIVERGED, str(exc)
    saved = None
    if save_model is not None and status is not Status.DIVERGED:
        whole = trainer.layout.whole(state.theta)  # every rank: a collective under model parallelism
    if save_model is not None and status is not Status.DIVERGED and lead:
        from hessfree import modelfile

        summary = FitResult(status=status, message=message, state=state, history=tuple(history)).summary()
        unit = "iterations" if config.method.is_hessian_free else "epochs"
        training = dict(method=config.method.value, unit=unit, run_length=total, summary=summary,
                        train_config=_plain(attrs.asdict(config)), **(model_notes or {}))
        saved = str(modelfile.save_model(save_model, trainer.layout.whole_model, whole, data=data, training=training))
    result = FitResult(status=status, message=message, state=state, history=tuple(history), saved_model=saved)
    for hook in hooks:
        hook.on_end(result)
    return result


def _plain(value):
    """JSON-ready: enums by value, tuples as lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _claim_directory(policy: Checkpointing, lead: bool, config_hash: str) -> None:
    """Refuse (every rank alike) a new run into a directory holding checkpoints of this
    configuration, or, with ``overwrite``, remove them (rank 0; the other ranks do not
    look). Checkpoints of other configurations are scoped by their names and never
    touched: runs of several configurations can share a directory."""
    found = checkpoint.own(policy.directory, config_hash)
    if not found:
        return
    if not policy.overwrite:
        raise ConfigError(
            f"checkpoint_dir: {policy.directory} already holds checkpoints of this run's configuration (newest "
            f"{found[0].manifest.name}); continue them with resume (--resume) or replace them with overwrite (--overwrite)"
        )
    if lead:
        checkpoint.remove(policy.directory, config_hash)


def _check_outputs(checkpoints: Checkpointing | None, save_model, lead: bool) -> None:
    """The files rank 0 will write, checked before any work (OSError naming the path)."""
    if not lead:
        return
    if checkpoints is not None:
        check_writable(checkpoints.directory, "checkpoints", directory=True)
    if save_model is not None:
        check_writable(save_model, "the model file")
        path = Path(save_model)
        if path.parent.is_dir():
            remove_stale_temporaries(path.parent, path.name)


def later_scalar_defaults(kind: type[TrainState]) -> dict:
    """The defaults of the scalar fields a state class declares as added after its first
    checkpoints (``ADDED_LATER``): what a checkpoint written before them resumes with."""
    fields = attrs.fields_dict(kind)
    return {name: fields[name].default for name in getattr(kind, "ADDED_LATER", ())}


def _decoder(trainer: Trainer, fresh: TrainState):
    """``decode(arrays, scalars)`` for :func:`checkpoint.load_latest`: the payload must have
    the names, dtypes, shapes and types of this run's fresh state, then becomes a state."""
    template = trainer.payload_template(fresh)

    def decode(arrays: dict, scalars: dict) -> TrainState:
        if isinstance(scalars.get("comm"), dict):  # written before the model-parallel collectives existed
            scalars = {**scalars, "comm": with_later_kinds(scalars["comm"])}
        scalars = {**later_scalar_defaults(type(fresh)), **scalars}
        checkpoint.check_payload(template, arrays, scalars)
        sim = scalars.get("sim_time_s")
        if sim is not None and (isinstance(sim, bool) or not isinstance(sim, (int, float)) or not np.isfinite(sim)):
            raise checkpoint.CheckpointError(f"malformed manifest: scalars.sim_time_s is {sim!r}")
        writer = scalars.get("written_by")
        if writer is not None and not (isinstance(writer, dict) and isinstance(writer.get("ranks"), int)
                                       and isinstance(writer.get("backend"), str)):
            raise checkpoint.CheckpointError(f"malformed manifest: scalars.written_by is {writer!r}")
        return trainer.state_from_payload(arrays, scalars)

    return decode


# ---------------------------------------------------------------------------- agreement
#: the attribute :func:`agree` sets on the errors it raises: a :class:`JobError` saying
#: which rank reports the error and with which exit code every rank ends
JOB_ATTRIBUTE = "hessfree_job"


@attrs.frozen
class JobError:
    """How a job ends after an agreed error: ``reporter`` (the lowest failing rank) prints
    it, every rank exits with ``code``; ``rank`` is the rank holding this record."""

    reporter: int
    rank: int
    code: int
    ranks: int


class FailedElsewhere(HessfreeError):
    """This rank stops because another rank failed during the set-up; that rank reports
    the error (one line for the job), every rank exits with its code."""

    def __init__(self, job: JobError):
        super().__init__(f"rank {job.reporter} failed during the set-up (reported there)")
        self.exit_code = job.code
        setattr(self, JOB_ATTRIBUTE, job)


def job_of(exc: BaseException) -> JobError | None:
    """The :class:`JobError` of an error raised by :func:`agree` (None for any other):
    every rank knows of it, so the job needs no abort."""
    return getattr(exc, JOB_ATTRIBUTE, None)


def agree(comm: Communicator, failure: Exception | None) -> None:
    """Every process rank learns whether any rank failed, in one small collective, and
    then raises: every failing rank its own error, the others :class:`FailedElsewhere`;
    each tagged with a :class:`JobError` (``job_of``) naming the reporting rank (the
    lowest failing one) and the exit code (its error's). Errors that every rank meets
    (configuration, data, checkpoints, output paths) are thus reported once, and every
    rank exits with the right code without aborting the job. On one rank, and on thread
    ranks (a failing thread wakes the others; ``run_threads`` re-raises its error), it
    only re-raises ``failure``."""
    if comm.size == 1 or _thread_ranks(comm):
        if failure is not None:
            raise failure
        return
    codes = np.zeros(comm.size, dtype=np.int64)
    if failure is not None:
        code = getattr(failure, "exit_code", 1)
        codes[comm.rank] = code if isinstance(code, int) and not isinstance(code, bool) and code > 0 else 1
    comm.allreduce(codes, out=codes)
    failed = np.flatnonzero(codes)
    if failed.size == 0:
        return
    job = JobError(reporter=int(failed[0]), rank=comm.rank, code=int(codes[failed[0]]), ranks=int(failed.size))
    if failure is not None:
        setattr(failure, JOB_ATTRIBUTE, job)
        raise failure
    raise FailedElsewhere(job)


def _thread_ranks(comm: Communicator) -> bool:
    from hessfree.comm.threads import ThreadComm

    return isinstance(comm, ThreadComm)


_BACKENDS = {"SerialComm": "serial", "ThreadComm": "threads", "MPIComm": "mpi"}


def _writer(comm: Communicator) -> dict:
    return dict(ranks=comm.size, backend=_BACKENDS.get(type(comm).__name__, type(comm).__name__))


def _ranks(n) -> str:
    return f"{n} rank" if n == 1 else f"{n} ranks"


def resume_note(before: dict | None, now: dict) -> str | None:
    """One line when a checkpoint written on one rank count/backend continues on another
    (None when nothing changed, or for a checkpoint that does not say)."""
    if not before or (before.get("ranks"), before.get("backend")) == (now["ranks"], now["backend"]):
        return None
    was = f"{_ranks(before.get('ranks'))} ({before.get('backend')})"
    is_ = f"{_ranks(now['ranks'])} ({now['backend']})"
    return f"{was} → {is_}: reduction order differs, results match to rounding, not bitwise"


def _simulated(comm: Communicator, simulate: Simulation | None) -> Communicator:
    if simulate is None:
        return comm
    from hessfree.cost import simulated_comm

    return simulated_comm(comm, simulate.network, simulate.collective, compute_scale=simulate.compute_scale)


def _save(trainer: Trainer, state, record, policy: Checkpointing, identity: dict, lead: bool, comm: Communicator) -> None:
    """Rank 0 writes the checkpoint; no rank runs ahead of it (a barrier, not metered in
    the records: they count only the steps' collectives). Every rank builds the payload
    (whole vectors: an allgather each under model parallelism)."""
    arrays, scalars = trainer.state_payload(state)
    if lead:
        scalars["sim_time_s"] = record.sim_time_s
        scalars["written_by"] = _writer(comm)  # not part of the identity: any rank count resumes
        checkpoint.save(policy.directory, state.iteration, arrays, scalars, identity, identity_hash(identity),
                        keep=policy.keep)
    comm.barrier()


def _agreed(comm: Communicator, stop: bool) -> bool:
    """Rank 0's stop decision on every rank (one tiny broadcast when there are several)."""
    if comm.size == 1:
        return stop
    flag = np.array([1 if stop else 0], dtype=np.int64)
    comm.bcast(flag, root=0)
    return bool(flag[0])
