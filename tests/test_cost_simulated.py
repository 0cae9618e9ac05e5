"""SimulatedComm: bulk-synchronous clock, unchanged metering, real training under it."""

from __future__ import annotations

import numpy as np
import pytest

from hessfree.comm import Op, Phase, SerialComm, run_threads
from hessfree.comm.simulated import SimulatedComm
from hessfree.cost import Collective, Network, run_simulated, simulated_comm
from hessfree.errors import ConfigError

NET = Network(latency=1.0, inverse_bandwidth=0.01)


class FakeTimer:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_clock_is_max_plus_collective_cost():
    compute = {0: [1.0, 0.5], 1: [3.0, 0.25], 2: [2.0, 2.0]}

    def work(inner):
        timer = FakeTimer()
        comm = simulated_comm(inner, NET, Collective.RING, timer=timer)
        buf = np.ones(100)  # 800 bytes
        timer.now += compute[comm.rank][0]
        with comm.phase(Phase.GRADIENT):
            comm.allreduce(buf, out=buf)
        first = comm.clock
        timer.now += compute[comm.rank][1]
        comm.allreduce_scalars(1.0, 2.0)  # 16 bytes
        return first, comm.clock, comm.breakdown(), comm.counts(), buf

    results = run_threads(work, 3)
    ring = lambda m: NET.allreduce(3, m, Collective.RING)
    t1 = 3.0 + ring(800)
    t2 = t1 + 2.0 + ring(16)
    for rank, (first, second, br, counts, buf) in enumerate(results):
        assert first == pytest.approx(t1) and second == pytest.approx(t2)
        assert br["compute"] == pytest.approx(sum(compute[rank]))
        assert br["network_gradient"] == pytest.approx(ring(800))
        assert br["network_other"] == pytest.approx(ring(16))
        assert br["wait"] == pytest.approx(t2 - sum(compute[rank]) - ring(800) - ring(16))
        # metering counts only the user's collectives
        assert counts.total.collectives == 2 and counts.gradient.allreduce == 1
        assert counts.total.bytes == 800 + 16
        assert np.all(buf == 3.0)


def test_serial_clock_has_no_network_cost():
    timer = FakeTimer()
    comm = simulated_comm(SerialComm(), NET, timer=timer, compute_scale=0.5)
    timer.now = 4.0
    comm.barrier()
    comm.bcast(np.zeros(3))
    assert comm.clock == pytest.approx(2.0)
    assert comm.counts().other.barrier == 1 and comm.counts().other.bcast == 1


def test_bad_scale_rejected():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            SimulatedComm(SerialComm(), lambda op, m, p: 0.0, compute_scale=bad)


def test_training_under_the_simulated_clock_meters_the_same():
    from hessfree.data import load_dataset
    from hessfree.models import MLP
    from hessfree.train.config import TrainConfig
    from hessfree.train import make_trainer

    def train(comm):
        data = load_dataset("synthetic", n_features=6, n_classes=3, samples=60, rank=comm.rank, size=comm.size, seed=2)
        trainer = make_trainer(MLP([6, 4, 3]), data, TrainConfig(method="bicgstab", iterations=2, batch_size=20, cg_max_iter=3), comm)
        records = [r for _, r in trainer.run(trainer.initial_state(), 2)]
        return comm.counts(), records[-1].loss, getattr(comm, "clock", None)

    plain = run_threads(train, 2)
    sim = run_simulated(train, 2, Network.from_bandwidth(1e-3, 1e6))
    assert [c for c, _, _ in sim] == [c for c, _, _ in plain]
    assert [l for _, l, _ in sim] == [l for _, l, _ in plain]  # same trajectory, bitwise
    clocks = [t for _, _, t in sim]
    n_coll = sim[0][0].total.collectives
    assert clocks[0] == pytest.approx(clocks[1], rel=0.5)
    assert clocks[0] >= n_coll * 2e-3  # every collective costs ≥ 2α on the ring at P = 2


def test_cost_function_by_op():
    from hessfree.cost import collective_cost

    cost = collective_cost(NET, Collective.TREE)
    assert cost(Op.ALLREDUCE, 800, 4) == pytest.approx(NET.allreduce(4, 800, Collective.TREE))
    assert cost(Op.BCAST, 800, 4) == pytest.approx(NET.bcast(4, 800))
    assert cost(Op.BARRIER, 0, 4) == pytest.approx(2 * NET.latency)
    assert cost(Op.ALLREDUCE, 800, 1) == 0.0
