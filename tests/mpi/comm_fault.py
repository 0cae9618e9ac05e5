"""One rank misbehaves while the others wait in a collective.

    mpirun -n P python -m mpi4py tests/mpi/comm_fault.py MODE TIMEOUT

MODE is ``raise`` (rank 1 raises), ``exit`` (rank 1 calls ``sys.exit(0)``) or ``sleep``
(rank 1 sleeps far longer than the test allows). The other ranks enter an allreduce in
the curvature phase; the job must end non-zero, either by mpi4py's abort on the
uncaught error or by the communicator's deadline of TIMEOUT seconds.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from hessfree.comm import Phase, make_comm


def main(mode: str, timeout: float) -> None:
    comm = make_comm("mpi", timeout=timeout)
    comm.barrier()  # everyone is up: the failure happens mid-run
    if comm.rank == 1:
        if mode == "raise":
            raise RuntimeError("injected failure on rank 1")
        if mode == "exit":
            sys.exit(0)
        if mode == "sleep":
            time.sleep(3600)
    v = np.ones(1000)
    with comm.phase(Phase.CURVATURE):
        comm.allreduce(v, out=v)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
