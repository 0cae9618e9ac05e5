"""Communicators: serial, threads and MPI behind one metered interface.

The trainer talks to a :class:`Communicator` only::

    from hessfree.comm import Phase, run_threads

    def work(comm):
        g = local_gradient()                       # a numpy array, same shape on every rank
        with comm.phase(Phase.GRADIENT):
            comm.allreduce(g, out=g)               # in-place sum over ranks
            loss, count = comm.allreduce_scalars(loss_sum, n_local)
        return comm.counts()

    per_rank = run_threads(work, 3)                # or make_comm("mpi") under mpirun

See the README's section "Running on several ranks" for the backends, the failure
behaviour and the deadline, and ``hessfree.comm.base`` for the exact metering definitions.
"""

from hessfree.comm.base import (
    DEFAULT_TIMEOUT,
    SUPPORTED_DTYPES,
    CommCounts,
    Communicator,
    Meter,
    Op,
    Phase,
    PhaseCounts,
)
from hessfree.comm.factory import (
    Backend,
    launched_by_mpi,
    make_comm,
    resolve_backend,
    run_ranks,
    warm_numba_cache,
)
from hessfree.comm.mpi import MPIComm
from hessfree.comm.serial import SerialComm
from hessfree.comm.threads import ThreadComm, run_threads

__all__ = [
    "DEFAULT_TIMEOUT",
    "SUPPORTED_DTYPES",
    "Backend",
    "CommCounts",
    "Communicator",
    "MPIComm",
    "Meter",
    "Op",
    "Phase",
    "PhaseCounts",
    "SerialComm",
    "ThreadComm",
    "launched_by_mpi",
    "make_comm",
    "resolve_backend",
    "run_ranks",
    "run_threads",
    "warm_numba_cache",
]
