"""Simulated cluster time without running the cluster: replay a run's metered counts.

Batches are sets of global indices that do not depend on the number of ranks, so one
serial run follows the trajectory of every P (up to rounding). Its records carry what
each iteration did: gradient passes, curvature products, line-search evaluations (HF), or
updates per epoch (first-order). Replaying those counts through the cost model
(:class:`hessfree.cost.CostModel`) for a node count P and a network gives the seconds
that iteration would take on that cluster; their running sum is the run's simulated
clock at P. The collectives and bytes are the metered ones (the cost model's counts
equal them exactly, see ``tests/test_cost_counts.py``).

The check against a simulated run (``SimulatedComm``: real thread ranks, this machine's
compute, collectives charged by the network model) is in the README's experiments
section.
"""

from __future__ import annotations

from typing import Sequence

import attrs

from hessfree.cost import Blocks, CostModel, NodeSpec, interconnect, paper_node
from hessfree.cost.model import Evaluation
from hessfree.cost.network import Collective, Network
from hessfree.methods import Method


@attrs.frozen
class Cluster:
    """P nodes of one kind on one network (what a simulated axis is named after)."""

    nodes: int
    network: str  # an interconnect preset name
    node: NodeSpec | None = None  # None: the paper's node in the run's dtype
    collective: Collective = Collective.RING

    @property
    def key(self) -> str:
        return f"sim_{self.nodes}_{self.network}"

    def network_model(self) -> Network:
        return interconnect(self.network)


def cost_model(cluster: Cluster, layers: Sequence[int], n_train: int, n_test: int, itemsize: int) -> CostModel:
    node = cluster.node if cluster.node is not None else paper_node(itemsize)
    blocks = Blocks.BATCH if cluster.node is None else Blocks.CHUNK
    return CostModel(
        layers=tuple(layers), samples=n_train, test_samples=n_test, node=node,
        network=cluster.network_model(), collective=cluster.collective, blocks=blocks,
    )


def iteration_seconds(model: CostModel, method: Method, batch: int, nodes: int, record: dict, previous: dict | None = None) -> float:
    """Predicted seconds of one record's work at ``nodes`` nodes.

    HF: one iteration with the record's curvature products, line-search evaluations,
    gradient taken along and gradient sample (the ``previous`` record's: what a kept
    gradient covered already; Hybrid's Gauss-Newton solves charged as Gauss-Newton
    products). First-order: one epoch (its updates and the end-of-epoch evaluation).
    """
    if method.is_hessian_free:
        charged = Method.GN_CG if record.get("curvature") == "gauss_newton" else method
        p = model.predict(
            charged.value, batch, nodes,
            curvature_products=int(record.get("curvature_products") or 0),
            line_search_evals=int(record.get("line_search_evals") or 0),
            gradient_kept=bool(record.get("gradient_kept")),  # absent in records written before it: False
            gradient_along=bool(record.get("gradient_along")),
            gradient_sample=int(record.get("gradient_sample") or 0),  # absent before it: the whole set
            kept_sample=int((previous or {}).get("gradient_sample") or 0),
            evaluation=Evaluation.of(record),
        )
        return p.time_per_iteration_s
    return model.predict(method.value, batch, nodes).time_per_epoch_s


def replay(records: Sequence[dict], method: Method, batch: int, model: CostModel, nodes: int) -> list[float]:
    """The simulated clock after each record (cumulative seconds)."""
    clock, out, previous = 0.0, [], None
    for record in records:
        clock += iteration_seconds(model, method, batch, nodes, record, previous)
        previous = record
        out.append(clock)
    return out
