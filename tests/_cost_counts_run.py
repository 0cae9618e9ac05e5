"""Real training runs whose per-iteration metered collectives are compared with the cost
model's prediction. Imported by tests/test_cost_counts.py; run under mpirun as a script."""

from __future__ import annotations

import json
import sys

import numpy as np

from hessfree.comm import Communicator
from hessfree.cost import CostModel, Network, NodeSpec
from hessfree.cost.model import Evaluation
from hessfree.data import load_dataset
from hessfree.models import MLP
from hessfree.train.config import TrainConfig
from hessfree.methods import Method
from hessfree.train import make_trainer

METHODS = tuple(m.value for m in Method)


def compare(comm: Communicator, method: str, dtype: str = "float64", test: bool = True, **train) -> list[tuple[dict, dict]]:
    """(predicted, metered) per iteration (per epoch for SGD), as nested dicts; ``train``
    overrides settings of the run (and ``iterations``, its length)."""
    data = load_dataset("synthetic", n_features=6, n_classes=3, samples=90, rank=comm.rank, size=comm.size,
                        dtype=np.dtype(dtype), validation=0.2 if test else 0.0, seed=1)
    if not test:
        data = load_dataset("synthetic", n_features=6, n_classes=3, samples=90, rank=comm.rank, size=comm.size,
                            dtype=np.dtype(dtype), seed=1)
    model = MLP([6, 5, 3], dtype=dtype)
    config = TrainConfig(method=method, **{**dict(iterations=3, epochs=2, batch_size=24, cg_max_iter=4, lr=0.05), **train})
    trainer = make_trainer(model, data, config, comm)
    cost = CostModel(layers=model.layers, samples=data.n_train_global, test_samples=data.n_test_global if data.has_test else 0,
                     node=NodeSpec(flops=1e9, itemsize=np.dtype(dtype).itemsize), network=Network(latency=1e-6, inverse_bandwidth=1e-9))
    state = trainer.initial_state()
    out = []
    hessian_free = Method(method).is_hessian_free
    total = config.run_length
    while state.iteration < total:
        before = comm.counts()
        state, record = trainer.step(state)
        metered = comm.counts() - before
        if not hessian_free:
            predicted = cost.sgd_counts(cost.updates_per_epoch(config.batch_size), 1)
        else:
            evaluation = Evaluation.of(record.as_dict())
            predicted = cost.hf_counts(record.curvature_products, record.line_search_evals, evaluation)
            # and the what-if prediction with the same K, L gives the same totals
            per_step = Method(method).spec.products_per_krylov_step
            if method != "hybrid" and record.curvature_products % per_step == 0:
                k = record.curvature_products // per_step
                p = cost.predict(method, config.batch_size, comm.size, krylov_iterations=k, line_search_evals=record.line_search_evals,
                                 evaluation=evaluation)
                assert p.collectives_per_iteration == predicted.total.collectives
                assert p.bytes_per_iteration == predicted.total.bytes
        out.append((predicted.as_dict(), metered.as_dict()))
    return out


if __name__ == "__main__":  # under mpirun: every method on the MPI backend
    from hessfree.comm import MPIComm

    comm = MPIComm(timeout=120)
    results = {m: compare(comm, m) for m in METHODS}
    results["bicgstab-float32"] = compare(comm, "bicgstab", "float32")
    comm.close()
    if comm.rank == 0:
        print(json.dumps(results))
    sys.stdout.flush()
