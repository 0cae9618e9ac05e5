"""Simulated clusters: real training on P ranks here, timed as if on the modelled cluster.

``simulated_comm(inner, network, ...)`` wraps a communicator in a
:class:`hessfree.comm.simulated.SimulatedComm` whose collectives are charged by the α–β
model; ``run_simulated(fn, size, ...)`` runs ``fn(comm)`` on ``size`` thread ranks so
wrapped. Each rank's compute is its measured thread CPU time, times
``compute_scale`` = (this machine's FLOP/s) / (the simulated node's FLOP/s).

    from hessfree.cost import Network, run_simulated
    def work(comm):
        session = Session(config, comm)
        for state, record in session.run(session.initial_state(), 5):
            yield_to_user(record, comm.clock)      # simulated seconds so far
    run_simulated(work, 4, Network.from_bandwidth(1.5e-6, 12e9))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from hessfree.comm import Communicator, Op, run_threads
from hessfree.comm.simulated import SimulatedComm
from hessfree.cost.network import Collective, Network

T = TypeVar("T")


def collective_cost(network: Network, collective: Collective = Collective.RING) -> Callable[[Op, int, int], float]:
    """The cost function of a SimulatedComm: allreduces by ``collective``, bcast and
    barrier by the binomial tree, allgather and reduce-scatter by the ring."""
    collective = Collective(collective)

    def cost(op: Op, nbytes: int, size: int) -> float:
        if op in (Op.ALLREDUCE, Op.ALLREDUCE_SCALARS):
            return network.allreduce(size, nbytes, collective)
        if op is Op.BCAST:
            return network.bcast(size, nbytes)
        if op is Op.ALLGATHER:
            return network.allgather(size, nbytes)
        if op is Op.REDUCE_SCATTER:
            return network.reduce_scatter(size, nbytes)
        return network.barrier(size)

    return cost


def simulated_comm(
    inner: Communicator,
    network: Network,
    collective: Collective = Collective.RING,
    *,
    compute_scale: float = 1.0,
    timer: Callable[[], float] | None = None,
) -> SimulatedComm:
    return SimulatedComm(inner, collective_cost(network, collective), compute_scale=compute_scale, timer=timer)


def run_simulated(
    fn: Callable[[SimulatedComm], T],
    size: int,
    network: Network,
    collective: Collective = Collective.RING,
    *,
    compute_scale: float = 1.0,
    timeout: float = 300.0,
) -> list[T]:
    """``fn(comm)`` on ``size`` thread ranks, each comm a SimulatedComm; results in rank order."""
    return run_threads(
        lambda inner: fn(simulated_comm(inner, network, collective, compute_scale=compute_scale)),
        size,
        timeout=timeout,
    )
