"""Model-parallel training's metered collectives equal the cost model's model-parallel
counts exactly (serial, threads at P = 2, 3, MPI at P = 2), and relate to the paper's
formulas as the README states; the 2-D layout what-if reduces to the 1-D predictions."""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest

from hessfree.comm import SerialComm, run_threads
from hessfree.cost import CostModel, Network, NodeSpec, interconnect, model_parallel_exact, model_parallel_paper, paper_node
from hessfree.cost.layouts import Layout, layout_table, layouts_of, predict_layout
from hessfree.cost.model import Blocks, Prediction
from hessfree.data import load_dataset
from hessfree.models.sharded import ShardedMLP
from hessfree.train import make_trainer
from hessfree.train.config import TrainConfig

from mpi.launch import run_mpi
from mpi.mp_counts import METHODS, compare, on_ranks


def _assert_equal(pairs):
    assert pairs, "no iterations ran"
    for predicted, metered in pairs:
        assert predicted == metered
        assert metered["gradient"]["allgather"] >= 1 and metered["gradient"]["allreduce"] == 0


@pytest.mark.parametrize("size", [1, 2, 3])
@pytest.mark.parametrize("method", METHODS)
def test_metered_counts_equal_the_cost_model(method, size):
    for pairs in on_ranks(lambda comm: compare(comm, method), size):
        _assert_equal(pairs)


@pytest.mark.parametrize("method", ["gn-cg", "hess-cg", "sgd"])
def test_counts_in_chunks_with_weight_decay(method):
    """Several chunks per pass (each exchanges every layer), and the ‖θ‖² of weight decay."""
    for pairs in run_threads(lambda comm: compare(comm, method, chunk=10, weight_decay=1e-3), 2):
        _assert_equal(pairs)


def test_prediction_differs_from_metering_when_wrong():
    predicted, metered = compare(SerialComm(), "sgd")[0]
    predicted["gradient"]["reduce_scatter"] += 1
    assert predicted != metered
    predicted, metered = compare(SerialComm(), "hess-cg")[0]
    predicted["curvature"]["allgather"] -= 1
    assert predicted != metered


@pytest.mark.mpi
def test_counts_mpi_two_ranks(tmp_path):
    run = run_mpi(2, "mp_counts.py", str(tmp_path), limit=300)
    assert run.returncode == 0, run.output[-3000:]
    for rank in range(2):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert set(results) == set(METHODS) | {"gn-cg-chunked"}
        for pairs in results.values():
            _assert_equal([tuple(p) for p in pairs])


# ------------------------------------------------------------------ the paper's formulas
def test_one_sgd_epoch_against_the_paper_and_the_exact_formula():
    """Digits-sized: n = 1,347 (1,344 = 21·64 used), b = 64, 64-24-10 (L = 2), float64.

    metered allgathers + reduce-scatters of the updates = model_parallel_exact's
    synchronisations, their bytes = its values × 8; plus one scalar allreduce per update
    (the finiteness test). Paper: 2·L·n/b synchronisations (= hessfree's 2L·⌊n/b⌋ when b
    divides n) and 2·n·Σd values (hessfree: n·d_L fewer, no backward exchange at the output).
    """
    layers, n, b, L = (64, 24, 10), 1347, 64, 2
    data = load_dataset("digits")
    assert data.n_train == n

    def epoch(comm):
        model = ShardedMLP(layers, comm=comm)
        trainer = make_trainer(model, data, TrainConfig(method="sgd", epochs=1, batch_size=b), comm)
        trainer.step(trainer.initial_state())
        return comm.counts().gradient

    for g in run_threads(epoch, 2):
        values, syncs = model_parallel_exact(layers, n, b)
        updates = n // b
        assert g.allgather + g.reduce_scatter == syncs == updates * (2 * L - 1)
        assert g.bytes - 8 * g.allreduce_scalars == values * 8
        assert g.allreduce_scalars == updates
        assert g.collectives == updates * 2 * L  # the paper's 2L per mini-batch
        paper_values, paper_syncs = model_parallel_paper(layers, updates * b, b)
        assert g.collectives == paper_syncs
        assert paper_values - values == updates * b * layers[-1]


def test_sgd_mp_prediction_uses_the_metered_counts():
    cost = CostModel(layers=(20, 16, 5), samples=1000, test_samples=200, node=NodeSpec(flops=1e9),
                     network=Network(latency=1e-5, inverse_bandwidth=1e-9))
    for P in (1, 4):
        p = cost.predict("sgd-mp", 100, P)
        epoch = cost.sgd_mp_counts(100, 10, 1).total
        assert p.collectives_per_iteration == 2 * 2 and p.collectives_per_epoch == epoch.collectives
        assert p.bytes_per_iteration == 100 * (2 * 16 + 5) * 8 + 8 and p.bytes_per_epoch == epoch.bytes


# ------------------------------------------------------------------ the 2-D what-if
@pytest.mark.parametrize("blocks", [Blocks.CHUNK, Blocks.BATCH])
@pytest.mark.parametrize("method", ["sgd", "msgd", "gn-cg", "hess-cg", "bicgstab", "hybrid", "newton-mr"])
def test_a_layout_of_data_groups_only_is_the_data_parallel_prediction(method, blocks):
    cost = CostModel(layers=(784, 400, 150, 10), samples=60_000, test_samples=10_000, node=paper_node(8),
                     network=interconnect("omni-path"), blocks=blocks)
    for P in (1, 3, 16):
        layout = predict_layout(cost, method, 1000, Layout(P, 1))
        assert {f.name: getattr(layout, f.name) for f in attrs.fields(Prediction)} == attrs.asdict(cost.predict(method, 1000, P))


def test_layouts_cover_the_factorisations_and_mark_the_cheapest():
    assert [(l.data, l.model) for l in layouts_of(12, 4)] == [(12, 1), (6, 2), (4, 3), (3, 4)]
    assert [l.name for l in layouts_of(4, 10)] == ["data", "2-D", "model"]
    cost = CostModel(layers=(784, 400, 150, 10), samples=60_000, node=paper_node(8), network=interconnect("omni-path"))
    rows = layout_table(cost, ["sgd", "gn-cg"], [64, 5000], [1, 4, 16])
    for key in {(r.method, r.batch, r.nodes) for r in rows}:
        group = [r for r in rows if (r.method, r.batch, r.nodes) == key]
        assert sum(r.best for r in group) >= 1
        best = min(r.time_per_iteration_s for r in group)
        assert all(r.best == (r.time_per_iteration_s == best) for r in group)
        assert {r.data_groups * r.model_slices for r in group} == {key[2]}
    # the paper's argument, in numbers: small-batch SGD gains from splitting the model,
    # HF (few, large reductions of d values) does not
    pick = {(r.method, r.batch, r.nodes): r.layout for r in rows if r.best}
    assert pick["sgd", 64, 4] == "model" and pick["gn-cg", 5000, 16] == "data"


def test_model_slices_beyond_the_narrowest_layer_are_refused():
    cost = CostModel(layers=(20, 16, 5), samples=1000, node=NodeSpec(flops=1e9), network=Network(1e-5, 1e-9))
    with pytest.raises(ValueError, match="model slices"):
        predict_layout(cost, "sgd", 100, Layout(1, 8))
    assert max(l.model for l in layouts_of(16, 5)) == 4


def test_the_cost_cli_prints_the_layout_what_if():
    from click.testing import CliRunner

    from hessfree.cli.main import main

    result = CliRunner().invoke(main, ["cost", "--layers", "784,400,150,10", "--samples", "60000", "--node", "paper",
                                       "--method", "sgd,gn-cg", "--batch", "64", "--nodes", "4", "--layouts"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any("model" in l and "1×4" in l and l.rstrip().endswith("*") for l in lines if l.startswith("sgd"))
    assert any("data" in l and "4×1" in l and l.rstrip().endswith("*") for l in lines if l.startswith("gn-cg"))
    as_json = CliRunner().invoke(main, ["cost", "--layers", "784,400,10", "--node", "paper", "--method", "sgd",
                                        "--batch", "64", "--nodes", "2", "--layouts", "--json"])
    rows = json.loads(as_json.stdout)
    assert {(r["layout"], r["data_groups"], r["model_slices"]) for r in rows} == {("data", 2, 1), ("model", 1, 2)}
    assert np.isfinite([r["time_per_iteration_s"] for r in rows]).all()


def test_a_simulated_cluster_charges_the_block_collectives_by_the_ring():
    from hessfree.cost import simulated_comm

    net = Network(latency=1e-3, inverse_bandwidth=1e-6)

    def work(inner):
        comm = simulated_comm(inner, net, timer=lambda: 0.0)  # no compute: only the network
        comm.allgather(np.ones(5), np.empty(10), [5, 5])  # 80 bytes gathered
        gathered = comm.clock
        comm.reduce_scatter(np.ones(10), np.empty(5), [5, 5])  # 80 bytes reduced
        return gathered, comm.clock, comm.counts().other, inner.counts().other

    for gathered, total, counts, inner in run_threads(work, 2):
        assert gathered == pytest.approx(net.allgather(2, 80)) == pytest.approx(1e-3 + 40e-6)
        assert total - gathered == pytest.approx(net.reduce_scatter(2, 80))
        assert (counts.allgather, counts.reduce_scatter, counts.bytes) == (1, 1, 160)
        assert inner.collectives == 0  # the clock exchange is not metered; the wrapper meters the calls
