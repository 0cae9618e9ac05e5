"""Two-rank network probe, run by ``hessfree cost calibrate`` under mpirun; prints JSON."""

from __future__ import annotations

import json
import statistics
import time

import numpy as np

SIZES = (8, 1024, 65536, 1048576, 4194304)


def ping_pong(comm, nbytes: int, repeats: int) -> float:
    """Median half round trip of ``nbytes`` between ranks 0 and 1."""
    buf = np.zeros(max(1, nbytes // 8))
    times = []
    for k in range(repeats + 2):
        comm.Barrier()
        t0 = time.perf_counter()
        if comm.Get_rank() == 0:
            comm.Send(buf, dest=1)
            comm.Recv(buf, source=1)
        elif comm.Get_rank() == 1:
            comm.Recv(buf, source=0)
            comm.Send(buf, dest=0)
        if k >= 2:
            times.append((time.perf_counter() - t0) / 2)
    return statistics.median(times)


def hessfree_allreduce(hcomm, nbytes: int, repeats: int) -> float:
    buf = np.zeros(max(1, nbytes // 8))
    times = []
    for k in range(repeats + 2):
        hcomm.barrier()
        t0 = time.perf_counter()
        hcomm.allreduce(buf, out=buf)
        if k >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from mpi4py import MPI

    from hessfree.comm import MPIComm
    from hessfree.cost.calibrate import fit_tree_p2

    comm = MPI.COMM_WORLD
    pp = [ping_pong(comm, m, 30 if m < 1 << 20 else 8) for m in SIZES]
    hcomm = MPIComm()
    ar = [hessfree_allreduce(hcomm, m, 30 if m < 1 << 20 else 8) for m in SIZES]
    hcomm.close()
    if comm.Get_rank() == 0:
        alpha = pp[0]
        beta = max(0.0, (pp[-1] - pp[0]) / (SIZES[-1] - SIZES[0]))
        eff = fit_tree_p2(SIZES, ar)
        print(json.dumps(dict(
            latency=alpha, inverse_bandwidth=beta,
            effective_latency=eff.latency, effective_inverse_bandwidth=eff.inverse_bandwidth,
            sizes=list(SIZES), ping_pong=pp, hessfree_allreduce=ar,
        )))


if __name__ == "__main__":
    main()
