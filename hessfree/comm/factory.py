"""Choosing a backend by name, running a function on every rank, warming numba's cache."""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Mapping
from typing import TypeVar

from hessfree.blas import available_cores
from hessfree.comm.base import DEFAULT_TIMEOUT, Communicator, check_timeout
from hessfree.comm.mpi import MPIComm
from hessfree.comm.serial import SerialComm
from hessfree.comm.threads import run_threads
from hessfree.errors import ConfigError

T = TypeVar("T")

#: Environment variables MPI launchers set in every rank they start: Open MPI, PMIx
#: launchers (Open MPI 5, Slurm), Hydra/PMI (MPICH, Intel MPI, Slurm), MVAPICH.
MPI_LAUNCH_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")
#: this process's rank and the job's size, as the same launchers announce them
MPI_RANK_VARIABLES = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK", "MV2_COMM_WORLD_RANK")
MPI_SIZE_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE")


class Backend(enum.Enum):
    """Where the ranks live. ``AUTO`` is MPI when launched by mpirun, else threads when
    several ranks are asked for, else serial."""

    SERIAL = "serial"
    THREADS = "threads"
    MPI = "mpi"
    AUTO = "auto"


def launched_by_mpi(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process looks like a rank started by an MPI launcher."""
    env = os.environ if environ is None else environ
    return any(env.get(name) for name in MPI_LAUNCH_VARIABLES)


def _first_int(env: Mapping[str, str], names) -> int | None:
    for name in names:
        try:
            return int(env[name])
        except (KeyError, ValueError):
            continue
    return None


def launcher_rank(environ: Mapping[str, str] | None = None) -> int | None:
    """This process's rank as an MPI launcher announced it (None when not launched so).
    Known before MPI is initialised: errors every rank meets before any communication
    are printed by rank 0 only."""
    env = os.environ if environ is None else environ
    return _first_int(env, MPI_RANK_VARIABLES) if launched_by_mpi(env) else None


def launcher_size(environ: Mapping[str, str] | None = None) -> int | None:
    """The number of ranks an MPI launcher started (None when unknown or not launched)."""
    env = os.environ if environ is None else environ
    return _first_int(env, MPI_SIZE_VARIABLES) if launched_by_mpi(env) else None


def check_launcher(backend: Backend | str, environ: Mapping[str, str] | None = None) -> None:
    """ConfigError when ``backend`` contradicts how this process was launched: ``serial``
    or ``threads`` in one of several processes that an MPI launcher started would run the
    whole training once per process, all writing the same files."""
    chosen = Backend(backend)
    if chosen not in (Backend.SERIAL, Backend.THREADS):
        return
    rank, size = launcher_rank(environ), launcher_size(environ)
    if (size is not None and size > 1) or (rank is not None and rank > 0):
        of = f" of {size}" if size is not None else ""
        raise ConfigError(
            f"comm: {chosen.value} contradicts the launcher: this process is rank {rank}{of} started by mpirun, "
            f"and each would run the whole training on its own, writing the same files; under mpirun use "
            f"--comm mpi (or auto), or run --comm {chosen.value} without mpirun"
        )


def resolve_backend(backend: Backend | str, environ: Mapping[str, str] | None = None, ranks: int = 1) -> Backend:
    """The concrete backend for a name or enum; ``auto`` becomes ``mpi`` under an MPI
    launcher, else ``threads`` for ``ranks`` > 1, else ``serial``."""
    try:
        chosen = Backend(backend)
    except ValueError:
        names = [b.value for b in Backend]
        raise ConfigError(f"unknown communicator backend {backend!r}; choose from {names}") from None
    if chosen is Backend.AUTO:
        if launched_by_mpi(environ):
            return Backend.MPI
        return Backend.THREADS if ranks > 1 else Backend.SERIAL
    return chosen


def make_comm(backend: Backend | str = Backend.AUTO, *, timeout: float = DEFAULT_TIMEOUT) -> Communicator:
    """A communicator for this process: ``serial``, ``mpi`` or ``auto``.

    Thread ranks cannot be made one at a time; use :func:`run_threads` or
    :func:`run_ranks` for ``threads``.
    """
    chosen = resolve_backend(backend)
    timeout = check_timeout(timeout)
    if chosen is Backend.SERIAL:
        return SerialComm(timeout=timeout)
    if chosen is Backend.MPI:
        return MPIComm(timeout=timeout)
    raise ConfigError("thread ranks are started by run_threads(fn, size) or run_ranks('threads', fn, ranks=...)")


def run_ranks(
    backend: Backend | str,
    fn: Callable[[Communicator], T],
    *,
    ranks: int | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[T]:
    """Run ``fn(comm)`` on every rank that lives in this process; results in rank order.

    ``serial``: one rank, ``[fn(comm)]``. ``threads``: ``ranks`` threads (default: one
    per core), all results. ``mpi``: this process's rank only, ``[fn(comm)]``; the
    number of ranks is mpirun's ``-n`` and ``ranks``, if given, must equal it.
    """
    chosen = resolve_backend(backend, ranks=1 if ranks is None else ranks)
    if chosen is Backend.THREADS:
        return run_threads(fn, available_cores() if ranks is None else ranks, timeout=timeout)
    comm = make_comm(chosen, timeout=timeout)
    if ranks is not None and ranks != comm.size:
        raise ConfigError(f"{chosen.value} backend has {comm.size} rank(s), but {ranks} were requested")
    result = fn(comm)
    if isinstance(comm, MPIComm):
        comm.close()
    return [result]


def warm_numba_cache(comm: Communicator, fn: Callable[[], T]) -> T:
    """Run ``fn`` (which triggers numba compilation) on rank 0 first, then on the others.

    numba's ``cache=True`` writes compiled code to disk; several MPI processes compiling
    the same function at once can race on those files. Here rank 0 compiles and writes
    the cache, a barrier (counted under the current phase) follows, and only then the
    other ranks run ``fn``, loading the finished cache instead of compiling. Call it once,
    before the first use of the model, e.g. with a tiny forward/backward pass.
    """
    result = fn() if comm.rank == 0 else None
    comm.barrier()
    if comm.rank != 0:
        result = fn()
    return result  # type: ignore[return-value]
