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


def batch_series(summary: dict) -> dict[str, list[tuple[int, list[dict]]]]:
    """Methods run at several batches: method → [(batch, its reported runs)], by batch.

    Plans of one method that differ only in ``batch_size`` form a series (Figure 3's
    curvature batches, SGD's mini-batches); methods with a single batch are left out.
    """
    runs = [r for r in summary["runs"] if r["phase"] == "report"]
    series: dict[str, dict[int, list[dict]]] = {}
    for plan in summary["experiment"]["methods"]:
        batch = plan["fixed"].get("batch_size")
        label = plan.get("label") or plan["method"]
        mine = [r for r in runs if r["method"] == label]
        if batch is not None and mine:
            series.setdefault(plan["method"], {})[mine[0]["batch"]] = mine
    return {m: sorted(b.items()) for m, b in series.items() if len(b) > 1}


def batch_figure(summary: dict, path: Path) -> Path | None:
    """Figure 3's view: iterations (epochs for first-order methods) to each target against
    the batch, median over seeds (a point only where most seeds got there), and the
    training error at the end of the budget (median, min–max bar). None without a series."""
    from hessfree.experiments.report import spread

    series = batch_series(summary)
    if not series:
        return None
    first = next(iter(series.values()))[0][1][0]
    targets = [t for t in first["targets"] if not t.startswith("loss")]  # as the runner keyed them
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = ("-", "--", ":", "-.")
    for i, (method, points) in enumerate(series.items()):
        color = f"C{i}"
        batches = [b for b, _ in points]
        for target, style in zip(targets, styles):
            medians = [spread([r["targets"][target]["iterations"] for r in rs])[0] for _, rs in points]
            ys = [m if np.isfinite(m) else np.nan for m in medians]
            left.plot(batches, ys, style, marker="o", color=color, label=f"{method}, ≤ {float(target):.0%}")
        finals = [[r["final"]["train_error"] for r in rs] for _, rs in points]
        med = np.array([np.median(f) for f in finals])
        lo, hi = np.array([min(f) for f in finals]), np.array([max(f) for f in finals])
        right.errorbar(batches, med, yerr=[med - lo, hi - med], marker="o", color=color, capsize=3, label=method)
    left.set_xscale("log")
    left.set_xlabel("batch (curvature batch for HF, mini-batch for SGD)")
    left.set_ylabel("outer iterations (SGD: epochs) to target")
    left.legend(fontsize=7)
    right.set_xscale("log")
    right.set_yscale("symlog", linthresh=1e-3)
    right.set_ylim(bottom=0)
    right.set_xlabel("batch")
    right.set_ylabel("training error at the end of the budget")
    right.legend(fontsize=7)
    fig.suptitle(f"{summary['experiment']['name']}: iterations to target and final error against the batch")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
