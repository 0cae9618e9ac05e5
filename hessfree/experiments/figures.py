"""The figures of an experiment report (matplotlib, the ``plot`` extra).

Curves are drawn by :func:`hessfree.plotting.plot_runs` (median over seeds with a min–max
band). The simulated clock of the reported runs is replayed (``replay.py``) onto the
records as ``sim_time_s`` so it can be an x axis like any recorded one.
"""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np

from hessfree.experiments.replay import Cluster, cost_model, replay
from hessfree.methods import Method
from hessfree.plotting import MissingDependencyError, Run, plot_runs, read_metrics
from hessfree.train.config import TrainConfig


def pyplot():
    """matplotlib.pyplot on the Agg backend, or MissingDependencyError."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError("figures need matplotlib: pip install 'hessfree[plot]'") from None
    return plt


def with_simulated_clock(run: Run, cluster: Cluster) -> Run:
    """``run`` whose records carry the replayed clock of ``cluster`` as ``sim_time_s``."""
    method = Method(run.method)
    n_train, n_test = run.header["data"]["n_train"], run.header["data"]["n_test"]
    batch = min(TrainConfig(method=method, batch_size=run.config["train"].get("batch_size")).global_batch, n_train)
    model = cost_model(cluster, run.header["model"]["layers"], n_train, n_test, np.dtype(run.config["dtype"]).itemsize)
    clocks = replay(run.records, method, batch, model, cluster.nodes)
    return attrs.evolve(run, records=tuple({**r, "sim_time_s": c} for r, c in zip(run.records, clocks)))


def comparison_figures(summary: dict, runs_dir: Path, out: Path) -> list[Path]:
    """Training error of every method (median and range over the reported seeds) against
    effective epochs, collectives, wall seconds here and simulated seconds on the
    experiment's first cluster."""
    exp = summary["experiment"]
    cluster = Cluster(exp["nodes"][0], exp["networks"][0])
    groups: dict[str, list[Run]] = {}
    for r in summary["runs"]:
        if r["phase"] != "report":
            continue
        run = read_metrics(Path(runs_dir) / f"{r['key']}.jsonl", label=r["method"])
        groups.setdefault(r["method"], []).append(with_simulated_clock(run, cluster))
    name = exp["name"]
    written = []
    for x, suffix in (("epochs", "epochs"), ("comm_calls", "collectives"), ("time_s", "wall"), ("sim_time_s", f"sim{cluster.nodes}")):
        title = f"{name}: training error against {suffix if suffix != f'sim{cluster.nodes}' else f'simulated seconds, {cluster.nodes} nodes, {cluster.network}'}"
        written.append(plot_runs(groups, out / f"{name}-{suffix}.png", y=("train_error",), x=x, title=title))
    return written
