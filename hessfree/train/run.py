"""A whole run from a :class:`RunConfig`: start the ranks, build each rank's data and model,
and call :func:`~hessfree.train.fit.fit` on every one of them.

    from hessfree.train.run import run
    from hessfree.train.runconfig import make_run_config

    result = run(make_run_config({"method": "gn-cg", "ranks": 2, "comm": "threads"}))

This is what ``hessfree train`` does between parsing its options and rendering the
records (the CLI passes a progress callback). Under ``mpirun`` each process is one rank;
with ``comm = "threads"`` the ranks are threads of this process. ``run`` returns rank 0's
:class:`~hessfree.train.fit.FitResult`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import attrs
import numpy as np

from hessfree.atomic import check_writable
from hessfree.blas import blas_threads, local_ranks, threads_per_rank
from hessfree.comm import Backend, Communicator, make_comm, resolve_backend, run_threads
from hessfree.comm.factory import check_launcher
from hessfree.data import ShardMode, load_dataset
from hessfree.data.dataset import Dataset
from hessfree.errors import ConfigError
from hessfree.models import MLP
from hessfree.models.sharded import ShardedMLP
from hessfree.limits import exceeds_memory, memory_text, size_text
from hessfree.train.fit import Callback, Checkpointing, FitResult, Simulation, agree, fit
from hessfree.train.layout import Parallel
from hessfree.train.metrics import MetricsFile
from hessfree.train.runconfig import RunConfig


#: a lower bound of the parameter-sized vectors a run holds per rank (θ, the gradient,
#: the warm start and the Krylov vectors for HF; θ, the gradient and a moment otherwise)
VECTORS_HF, VECTORS_FIRST_ORDER = 6, 3
CHUNK_ROWS = 8192  # MLP's default chunk


def memory_needed(layers: Sequence[int], itemsize: int, rows: int, curvature_rows: int, hessian_free: bool) -> int:
    """A lower bound of the bytes one rank needs: parameter-sized vectors, the
    activations of one chunk of ``rows`` rows (the gradient pass keeps every layer's) and,
    for HF, the curvature batch's cached forward pass. Python ints: never overflows."""
    n_params = sum((a + 1) * b for a, b in zip(layers[:-1], layers[1:]))
    widths = sum(layers[1:])
    vectors = VECTORS_HF if hessian_free else VECTORS_FIRST_ORDER
    need = n_params * itemsize * vectors + min(rows, CHUNK_ROWS) * widths * itemsize
    if hessian_free:
        need += curvature_rows * widths * itemsize
    return need


def check_memory(config: RunConfig, layers: Sequence[int], data: Dataset, size: int, ranks_here: int) -> None:
    """ConfigError naming the widest layer (and where its width comes from) when this run
    cannot fit in this machine's memory, before any of it is allocated."""
    itemsize = np.dtype(config.dtype.value).itemsize
    hessian_free = config.train.method.is_hessian_free
    batch_rows = -(-min(config.train.global_batch, data.n_train_global) // max(1, size))  # per rank
    per_rank = memory_needed(layers, itemsize, data.n_train, batch_rows, hessian_free)
    need = per_rank * max(1, ranks_here)
    if not exceeds_memory(need):
        return
    widths = list(layers)
    widest = max(range(1, len(widths)), key=lambda i: widths[i - 1] * widths[i])
    n_hidden = len(widths) - 2
    source = "hidden" if widest <= n_hidden else f"the data's {widths[-1]} outputs ({data.name})"
    where = f"layer {widest} ({widths[widest - 1]}→{widths[widest]} units, from {source})"
    n_params = sum((a + 1) * b for a, b in zip(widths[:-1], widths[1:]))
    raise ConfigError(
        f"hidden: layers {'-'.join(map(str, widths))} ({n_params:,} parameters, {config.dtype.value}) need at least "
        f"{size_text(need)} on {ranks_here} rank{'s' if ranks_here != 1 else ''} of this machine, mostly {where}; "
        f"{memory_text()}"
    )


def check_outputs(config: RunConfig) -> None:
    """The paths rank 0 will write, checked before any work (OSError naming the path)."""
    if config.metrics:
        check_writable(config.metrics, "the metrics file")
    if config.checkpoint_dir:
        check_writable(config.checkpoint_dir, "checkpoints", directory=True)
    if config.save_model:
        check_writable(config.save_model, "the model file")


def build(config: RunConfig, comm: Communicator, ranks_here: int | None = None) -> tuple[Dataset, MLP]:
    """This rank's data shard and the network the config describes (refused before it is
    allocated when it cannot fit in memory; ``ranks_here``: ranks sharing this machine).
    Model-parallel: all the data, and this rank's slice of the network (``ShardedMLP``)."""
    model_parallel = config.parallel is Parallel.MODEL
    data = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        dtype=np.dtype(config.dtype.value),
        rank=0 if model_parallel else comm.rank,
        size=1 if model_parallel else comm.size,
        shard=ShardMode.STRIDED,  # balanced parts of every batch window (see train.batches)
        validation=config.validation,
        samples=config.samples,
        seed=config.train.seed,
    )
    if config.autoencoder:
        data = attrs.evolve(data, reconstruct=True)
    check_memory(config, [data.n_features, *config.hidden, data.n_outputs], data, 1 if model_parallel else comm.size,
                 ranks_here if ranks_here is not None else _ranks_here(comm))
    settings = dict(
        activation=config.activation,
        loss=config.loss,
        dtype=config.dtype.value,
        parallel=bool(comm.allows_parallel_kernels) and comm.size == 1,
    )
    layers = [data.n_features, *config.hidden, data.n_outputs]
    if model_parallel:
        return data, ShardedMLP(layers, comm=comm, **settings)
    model = MLP(layers, **settings)
    if model.parallel and not model.reaches_parallel_kernels(max(data.n_train, data.n_test)):
        model = attrs.evolve(model, parallel=False)  # the same numbers, without compiling the parallel set
    return data, model


def fit_rank(config: RunConfig, comm: Communicator, callbacks: Sequence[Callback] = ()) -> FitResult:
    """What every rank runs: check the outputs, build, then fit (callbacks and files on
    rank 0 only). An error every rank meets in the set-up is agreed on (one report)."""
    failure = None
    try:
        if comm.rank == 0:
            check_outputs(config)
        data, model = build(config, comm)
    except Exception as exc:  # noqa: BLE001 - re-raised on every rank by agree
        failure = exc
    agree(comm, failure)
    return _fit_built(config, comm, callbacks, data, model)


def _fit_built(config: RunConfig, comm: Communicator, callbacks: Sequence[Callback], data: Dataset, model: MLP) -> FitResult:
    hooks = list(callbacks)
    if config.metrics:
        hooks.insert(0, MetricsFile(config.metrics, config.as_dict(), config.trajectory_hash(data=data), append=config.resume))
    network = config.simulated_network()
    return fit(
        model,
        data,
        config.train,
        comm,
        callbacks=hooks,
        checkpoints=Checkpointing(directory=config.checkpoint_dir, every=config.checkpoint_every, overwrite=config.overwrite)
        if config.checkpoint_dir else None,
        resume=config.resume,
        simulate=None if network is None else Simulation(
            network=network, collective=config.sim_collective.value, compute_scale=config.sim_compute_scale
        ),
        identity=config.trajectory(data=data),
        save_model=config.save_model,
        model_notes=dict(settings=config.as_dict()) if config.save_model else None,
    )


def backend_of(config: RunConfig, environ=None) -> Backend:
    """The concrete backend; ``ranks`` > 1 only with thread ranks (mpirun sets its own).
    A backend that contradicts the launcher is refused: ``threads`` or ``serial`` in a
    process that mpirun started as one of several ranks would run independent copies of
    the same run, writing the same files."""
    backend = resolve_backend(config.comm, environ, ranks=config.ranks)
    check_launcher(backend, environ)
    if backend is not Backend.THREADS and config.ranks != 1:
        raise ConfigError(f"ranks: only --comm threads takes --ranks (found {config.ranks} with {backend.value}); under MPI use mpirun -n")
    return backend


def _ranks_here(comm: Communicator) -> int:
    """Ranks sharing this machine's memory: MPI ranks on this node (1 otherwise; thread
    ranks are counted by the caller)."""
    return local_ranks() if type(comm).__name__ == "MPIComm" else 1


def run(
    config: RunConfig,
    callbacks: Sequence[Callback] = (),
    *,
    comm: Communicator | None = None,
    on_rank_error: Callable[[Communicator, BaseException], None] | None = None,
) -> FitResult:
    """Run ``config`` on its backend; rank 0's result. ``comm`` overrides the backend
    (e.g. a communicator you already have under MPI).

    ``on_rank_error(comm, exc)`` is called on a process rank (serial or MPI) whose run
    raised, before the exception propagates. An error raised in the set-up (outputs,
    data, model, checkpoints) was agreed on by every rank (``hessfree.train.fit.job_of``
    says which rank reports it and with which exit code): every rank raises, nobody
    waits, and the job can end cleanly. Any other error happened on this rank alone:
    the other ranks would wait in their next collective until the deadline, so the CLI
    reports it and aborts the job there. (Thread ranks need no help: a failing thread
    wakes the others.)
    """
    limit = contextlib.nullcontext()
    if comm is None:
        backend = backend_of(config)
        if backend is Backend.THREADS:
            return run_threads(lambda rank_comm: _fit_thread_rank(config, rank_comm, callbacks), config.ranks,
                               timeout=config.comm_timeout)[0]
        comm = make_comm(backend, timeout=config.comm_timeout)
        if backend is Backend.MPI:
            # one process per MPI rank: share this node's cores among the ranks on it
            # (a serial run keeps the BLAS settings it was started with)
            limit = blas_threads(threads_per_rank(local_ranks()))
    try:
        with limit:
            return fit_rank(config, comm, callbacks)
    except BaseException as exc:
        if on_rank_error is not None:
            on_rank_error(comm, exc)
        raise


def _fit_thread_rank(config: RunConfig, comm: Communicator, callbacks: Sequence[Callback]) -> FitResult:
    """``fit_rank`` on one of ``config.ranks`` thread ranks (they share this process's memory)."""
    failure = None
    try:
        if comm.rank == 0:
            check_outputs(config)
        data, model = build(config, comm, ranks_here=config.ranks)
    except Exception as exc:  # noqa: BLE001
        failure = exc
    agree(comm, failure)
    return _fit_built(config, comm, callbacks, data, model)

