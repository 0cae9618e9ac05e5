"""Scaling experiments (the paper's Figure 2): time per HF iteration and its split
(gradient, Krylov solve, line search) against the number of nodes, per batch size.

Three sources in one summary, all on **this machine's** compute so they can be compared:

* **measured**: real runs under ``mpirun -n P`` (P = 1 runs serially) for the experiment's
  ``measured_ranks``, per-phase times from the metrics (median over iterations, the first
  excluded);
* **simulated**: thread ranks wrapped in ``SimulatedComm`` at the larger node counts:
  each rank's measured compute, collectives charged by the Omni-Path model (``sim_time_s``
  per iteration: the total only);
* **model**: the cost model with a node calibrated here (``hessfree.cost.calibrate``) and
  the Omni-Path network for every node count, from the measured run's own counts (its
  median curvature products and line-search evaluations per iteration).
"""

from __future__ import annotations

import math
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

from hessfree.comm.launch import mpi_environment, mpirun_command
from hessfree.cost import CostModel, interconnect
from hessfree.errors import CommError
from hessfree.experiments.runner import RunEvent, RunSpec, complete, describe, read_run, write_json
from hessfree.experiments.spec import Experiment, Kind
from hessfree.train.run import run
from hessfree.train.runconfig import make_run_config

PHASES = ("gradient", "solve", "line_search")
NETWORK = "omni-path"


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(path: Path, values: dict) -> Path:
    """A ``hessfree train --config`` file of flat settings."""
    path.write_text("".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items()), encoding="utf-8")
    return path


def phase_medians(records: list[dict]) -> dict[str, float]:
    """Median seconds per iteration of each phase and in all (the first iteration is left
    out when there are more: it pays for page faults and cold caches)."""
    rows = records[1:] if len(records) > 1 else records
    out = {p: statistics.median(r[f"time_{p}_s"] for r in rows) for p in PHASES}
    out["total"] = sum(out.values())
    return out


def simulated_medians(records: list[dict]) -> dict[str, float]:
    clocks = [0.0] + [r["sim_time_s"] for r in records]
    steps = [b - a for a, b in zip(clocks, clocks[1:])]
    steps = steps[1:] if len(steps) > 1 else steps
    return {"total": statistics.median(steps)}


class ScalingRunner:
    """Runs a scaling experiment into ``out`` (resumable like the comparison runner)."""

    def __init__(self, experiment: Experiment, out: str | Path, *, data_dir: str | None = None,
                 on_run: Callable[[RunEvent], None] | None = None, calibration=None):
        if experiment.kind is not Kind.SCALING:
            raise ValueError(f"{experiment.name} is not a scaling experiment")
        self.experiment, self.out, self.data_dir = experiment, Path(out), data_dir
        self.on_run = on_run or (lambda event: None)
        self.calibration = calibration
        self._count = 0

    def _values(self, batch: int, path: Path, **extra) -> dict:
        exp, plan = self.experiment, self.experiment.methods[0]
        values = {**exp.base, **plan.fixed, **exp.overrides, "method": plan.method.value, "batch_size": batch,
                  "seed": exp.seeds[0], "metrics": str(path), "quiet": True, **extra}
        if self.data_dir is not None:
            values["data_dir"] = self.data_dir
        return values

    def _run(self, name: str, batch: int, ranks: int, how: str) -> list[dict]:
        exp = self.experiment
        path = self.out / "runs" / f"{name}.jsonl"
        self._count += 1
        total = len(exp.batches) * len(exp.model_nodes)
        spec = RunSpec(exp.methods[0], {"batch_size": batch, "ranks": ranks, "how": how}, exp.seeds[0], how)
        skipped = complete(path)
        start = time.perf_counter()
        if not skipped:
            path.parent.mkdir(parents=True, exist_ok=True)
            if how == "measured" and ranks > 1:
                self._mpirun(ranks, self._values(batch, path), path)
            elif how == "measured":
                run(make_run_config(self._values(batch, path)))
            else:
                run(make_run_config(self._values(batch, path, comm="threads", ranks=ranks, simulate=NETWORK)))
        self.on_run(RunEvent(self._count, total, spec, skipped, time.perf_counter() - start))
        return read_run(path)[1]

    def _mpirun(self, ranks: int, values: dict, path: Path) -> None:
        config = write_config(path.with_suffix(".toml"), values)
        cmd = mpirun_command(ranks, "-m", "hessfree", "train", "--config", str(config))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=mpi_environment(), timeout=3600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise CommError(f"mpirun -n {ranks} hessfree train failed (exit {proc.returncode}): {' | '.join(tail)}")

    def _calibration(self, layers):
        if self.calibration is None:
            from hessfree.cost import calibrate

            self.calibration = calibrate(layers, dtype=self.experiment.base.get("dtype", "float64"), mpi=True, threads=False)
        return self.calibration

    def run_all(self) -> dict:
        exp = self.experiment
        plan = exp.methods[0]
        largest_measured = max(exp.measured_ranks)
        results = {}
        for batch in exp.batches:
            measured = {}
            for P in exp.measured_ranks:
                records = self._run(f"{plan.name}-b{batch}-p{P}-measured", batch, P, "measured")
                measured[P] = phase_medians(records)
                if P == 1:
                    base_records = records
            simulated = {}
            for P in (p for p in exp.model_nodes if p > largest_measured):
                simulated[P] = simulated_medians(self._run(f"{plan.name}-b{batch}-p{P}-simulated", batch, P, "simulated"))
            header = read_run(self.out / "runs" / f"{plan.name}-b{batch}-p1-measured.jsonl")[0]
            layers, n_train, n_test = header["model"]["layers"], header["data"]["n_train"], header["data"]["n_test"]
            calibration = self._calibration(layers)
            rows = base_records[1:] if len(base_records) > 1 else base_records
            products = statistics.median(r["curvature_products"] for r in rows)
            evals = statistics.median(r["line_search_evals"] for r in rows)
            model = {}
            for name, network in (("omni-path", interconnect(NETWORK)), ("this machine's MPI", calibration.network)):
                if network is None:
                    continue
                cost = CostModel(layers=tuple(layers), samples=n_train, test_samples=n_test, node=calibration.node, network=network)
                nodes = exp.model_nodes if name == "omni-path" else tuple(p for p in exp.model_nodes if p <= largest_measured)
                model[name] = {
                    P: _split(cost.predict(plan.method.value, min(batch, n_train), P,
                                           curvature_products=int(round(products)), line_search_evals=int(round(evals))))
                    for P in nodes
                }
            results[str(batch)] = dict(batch=min(batch, n_train), products=products, line_search_evals=evals,
                                       measured=measured, simulated=simulated, model=model)
        summary = dict(experiment=describe(exp), scaling=results,
                       calibration=dict(node_flops=self.calibration.node.flops if self.calibration else None))
        write_json(self.out / "summary.json", summary)
        return summary


def _split(prediction) -> dict[str, float]:
    return dict(gradient=prediction.time_gradient_s, solve=prediction.time_solve_s,
                line_search=prediction.time_line_search_s, total=prediction.time_per_iteration_s)


def scaling_table(summary: dict) -> str:
    lines = ["**Seconds per HF iteration** (measured: median over iterations; model: this machine's node, "
             "Omni-Path network)", "",
             "| batch | nodes | measured total | measured gradient / solve / line search | simulated total | model total | model gradient / solve / line search | model speed-up | efficiency |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, row in summary["scaling"].items():
        model = row["model"].get("omni-path", {})
        base = model.get("1", {}).get("total")
        for P in sorted({int(p) for p in list(model) + list(row["measured"]) + list(row["simulated"])}):
            m = row["measured"].get(str(P))
            s = row["simulated"].get(str(P))
            c = model.get(str(P))
            speed = base / c["total"] if c and base else math.nan
            lines.append(
                f"| {row['batch']} | {P} | {_s(m and m['total'])} | {_split_cell(m)} | {_s(s and s['total'])} | "
                f"{_s(c and c['total'])} | {_split_cell(c)} | {_s(speed, 'x')} | {_s(speed / P * 100 if speed == speed else None, '%')} |"
            )
    return "\n".join(lines)


def _s(value, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.3g}{unit}"


def _split_cell(row) -> str:
    return "—" if not row else " / ".join(f"{row[p]:.3g}" for p in PHASES)


def scaling_figure(summary: dict, path: Path) -> Path:
    from hessfree.experiments.figures import pyplot

    plt = pyplot()
    batches = list(summary["scaling"].values())
    fig, axes = plt.subplots(1, len(batches), figsize=(5 * len(batches), 4.2), squeeze=False)
    for ax, row in zip(axes[0], batches):
        model = row["model"].get("omni-path", {})
        nodes = sorted(int(p) for p in model)
        for phase, color in zip(PHASES, ("tab:blue", "tab:orange", "tab:green")):
            ax.plot(nodes, [model[str(p)][phase] for p in nodes], color=color, ls="--", label=f"model: {phase.replace('_', ' ')}")
        ax.plot(nodes, [model[str(p)]["total"] for p in nodes], color="black", ls="--", label="model: total")
        measured = sorted(int(p) for p in row["measured"])
        ax.plot(measured, [row["measured"][str(p)]["total"] for p in measured], "ko", label="measured (MPI, this machine)")
        for phase, color in zip(PHASES, ("tab:blue", "tab:orange", "tab:green")):
            ax.plot(measured, [row["measured"][str(p)][phase] for p in measured], "o", color=color, mfc="none")
        simulated = sorted(int(p) for p in row["simulated"])
        ax.plot(simulated, [row["simulated"][str(p)]["total"] for p in simulated], "ks", mfc="none",
                label="simulated (thread ranks + Omni-Path model)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("nodes")
        ax.set_title(f"batch {row['batch']}")
    axes[0][0].set_ylabel("seconds per iteration")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
