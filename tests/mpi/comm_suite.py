"""Run every communicator scenario under mpirun; each rank saves its results.

    mpirun -n P python -m mpi4py tests/mpi/comm_suite.py OUTDIR

Writes ``OUTDIR/rank<r>.npz``. The backend is chosen with ``auto``, so this also checks
that a process started by mpirun detects MPI by itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from comm_scenarios import run_all

from hessfree.comm import MPIComm, make_comm


def main(outdir: str) -> None:
    comm = make_comm("auto", timeout=30)
    if not isinstance(comm, MPIComm):
        raise SystemExit(f"auto chose {type(comm).__name__} under mpirun")
    workdir = Path(outdir)
    results = run_all(comm, workdir)
    np.savez(workdir / f"rank{comm.rank}.npz", **results)
    comm.barrier()
    comm.close()


if __name__ == "__main__":
    main(sys.argv[1])
