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

from hessfree.blas import blas_threads, local_ranks, threads_per_rank
from hessfree.comm import Backend, Communicator, make_comm, resolve_backend, run_threads
from hessfree.data import ShardMode, load_dataset
from hessfree.data.dataset import Dataset
from hessfree.errors import ConfigError
from hessfree.models import MLP
from hessfree.train.fit import Callback, Checkpointing, FitResult, Simulation, fit
from hessfree.train.metrics import MetricsFile
from hessfree.train.runconfig import RunConfig


def build(config: RunConfig, comm: Communicator) -> tuple[Dataset, MLP]:
    """This rank's data shard and the network the config describes."""
    data = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        dtype=np.dtype(config.dtype.value),
        rank=comm.rank,
        size=comm.size,
        shard=ShardMode.STRIDED,  # balanced parts of every batch window (see train.batches)
        validation=config.validation,
        samples=config.samples,
        seed=config.train.seed,
    )
    if config.autoencoder:
        data = attrs.evolve(data, reconstruct=True)
    model = MLP(
        [data.n_features, *config.hidden, data.n_outputs],
        activation=config.activation,
        loss=config.loss,
        dtype=config.dtype.value,
        parallel=bool(comm.allows_parallel_kernels) and comm.size == 1,
    )
    return data, model


def fit_rank(config: RunConfig, comm: Communicator, callbacks: Sequence[Callback] = ()) -> FitResult:
    """What every rank runs: build, then fit (callbacks and files on rank 0 only)."""
    data, model = build(config, comm)
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


def backend_of(config: RunConfig) -> Backend:
    """The concrete backend; ``ranks`` > 1 only with thread ranks (mpirun sets its own)."""
    backend = resolve_backend(config.comm, ranks=config.ranks)
    if backend is not Backend.THREADS and config.ranks != 1:
        raise ConfigError(f"ranks: only --comm threads takes --ranks (found {config.ranks} with {backend.value}); under MPI use mpirun -n")
    return backend


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
    raised, before the exception propagates: under MPI the other ranks would otherwise
    wait in their next collective until the deadline, so the CLI reports the error and
    aborts the job there. (Thread ranks need no help: a failing thread wakes the others.)
    """
    limit = contextlib.nullcontext()
    if comm is None:
        backend = backend_of(config)
        if backend is Backend.THREADS:
            return run_threads(lambda rank_comm: fit_rank(config, rank_comm, callbacks), config.ranks, timeout=config.comm_timeout)[0]
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

