"""Model-parallel training runs whose metered collectives are compared with the cost
model's model-parallel counts. Imported by tests/test_model_parallel_counts.py; under
mpirun a script writing every rank's pairs as JSON:

    mpirun -n P python -m mpi4py tests/mpi/mp_counts.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from collections import Counter


from hessfree.comm import Communicator
from hessfree.cost import CostModel, Network, NodeSpec
from hessfree.cost.model import Evaluation
from hessfree.data import load_dataset
from hessfree.methods import Method
from hessfree.models.sharded import ShardedMLP
from hessfree.train import make_trainer
from hessfree.train.config import TrainConfig

METHODS = tuple(m.value for m in Method)
LAYERS = (6, 5, 3)


def on_ranks(fn, size: int) -> list:
    """``fn(comm)`` on the serial backend (size 1) or on ``size`` thread ranks; per rank."""
    from hessfree.comm import SerialComm, run_threads

    return [fn(SerialComm())] if size == 1 else run_threads(fn, size, timeout=60)


def setup(comm: Communicator, method: str, chunk: int = 8192, **train):
    """(trainer, cost model, config) of a small model-parallel run on synthetic data."""
    data = load_dataset("synthetic", n_features=6, n_classes=3, samples=90, validation=0.2, seed=1)  # whole on every rank
    model = ShardedMLP(LAYERS, chunk_size=chunk, comm=comm)
    config = TrainConfig(method=method, **{**dict(iterations=3, epochs=2, batch_size=24, cg_max_iter=4, lr=0.05), **train})
    cost = CostModel(layers=LAYERS, samples=data.n_train_global, test_samples=data.n_test_global,
                     node=NodeSpec(flops=1e9, chunk_rows=chunk), network=Network(latency=1e-6, inverse_bandwidth=1e-9))
    return make_trainer(model, data, config, comm), cost, config


def compare(comm: Communicator, method: str, chunk: int = 8192, **train) -> list[tuple[dict, dict]]:
    """(predicted, metered) per epoch (first-order) or iteration (HF), as nested dicts.

    HF: the cost model is given the inner products the trainer took in each phase (counted
    on the layout's ``dot``, not on the meter); everything else it predicts itself.
    """
    trainer, cost, config = setup(comm, method, chunk, **train)
    dots: Counter = Counter()
    dot = trainer.layout.dot

    def counting_dot(a, b):
        dots[comm.meter.phase.value] += 1
        return dot(a, b)

    trainer.layout.dot = counting_dot
    state = trainer.initial_state()
    out = []
    while state.iteration < config.run_length:
        before = comm.counts()
        dots.clear()
        state, record = trainer.step(state)
        metered = comm.counts() - before
        if Method(method).is_hessian_free:
            predicted = cost.hf_mp_counts(config.batch_size, record.curvature_products, record.line_search_evals,
                                          exact=record.curvature == "exact", inner_products=dict(dots),
                                          evaluation=Evaluation.of(record.as_dict()), sample=record.gradient_sample)
        else:
            predicted = cost.sgd_mp_counts(config.batch_size, cost.updates_per_epoch(config.batch_size), 1,
                                           weight_decay=config.weight_decay > 0)
        out.append((predicted.as_dict(), metered.as_dict()))
    return out


if __name__ == "__main__":  # under mpirun: every method on the MPI backend
    from pathlib import Path

    from hessfree.comm import MPIComm

    comm = MPIComm(timeout=120)
    results = {m: compare(comm, m) for m in METHODS}
    results["gn-cg-chunked"] = compare(comm, "gn-cg", chunk=10)
    Path(sys.argv[1], f"rank{comm.rank}.json").write_text(json.dumps(results))
    comm.close()
