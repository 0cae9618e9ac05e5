"""Thread counts of the BLAS / OpenMP pools loaded in this process.

A process that imports numba (hence SciPy) carries two OpenBLAS copies, numpy's and
SciPy's, each with its own thread pool, and idle OpenBLAS workers busy-wait for a while
after each call. When ranks are threads of one process, every rank's GEMM would start a
full pool and the ranks would fight over the cores. threadpoolctl sets every loaded
pool at once; its limits are process-wide, so they are set once around the whole run
(see ``hessfree.comm.run_threads``), not per rank thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import threadpool_info, threadpool_limits

from hessfree.validate import integer


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_rank(ranks: int, cores: int | None = None) -> int:
    """BLAS threads for each of ``ranks`` ranks sharing ``cores``: ``max(1, cores // ranks)``."""
    ranks = integer("ranks", ranks, 1)
    cores = available_cores() if cores is None else cores
    return max(1, cores // ranks)


#: launcher variables giving the number of ranks on this node (Open MPI, MPICH/Hydra, Slurm)
LOCAL_SIZE_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS_PER_NODE")


def local_ranks(environ=None) -> int:
    """Ranks sharing this node, from the MPI launcher's environment (1 when unknown)."""
    env = os.environ if environ is None else environ
    for name in LOCAL_SIZE_VARIABLES:
        try:
            value = int(env.get(name, ""))
        except ValueError:
            continue
        if value >= 1:
            return value
    return 1


def blas_thread_counts() -> dict[str, int]:
    """Current thread count of every loaded pool, keyed by ``"<internal_api>:<filepath>"``."""
    return {f"{p['internal_api']}:{p['filepath']}": int(p["num_threads"]) for p in threadpool_info()}


@contextmanager
def blas_threads(n: int) -> Iterator[int]:
    """Limit every loaded BLAS and OpenMP pool to ``n`` threads inside the block.

    Process-wide; the previous counts are restored on exit.
    """
    n = integer("BLAS thread count", n, 1)
    with threadpool_limits(limits=n):
        yield n
