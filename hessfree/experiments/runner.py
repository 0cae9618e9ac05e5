"""Running an experiment: tune, run the reported seeds, measure every run on every axis.

Every run goes through the library's training entry point (``hessfree.train.run.run``)
and writes one metrics file, ``OUT/runs/<method>-<settings hash>-s<seed>.jsonl``. A run
whose file ends with its result line is complete and is never run again, so an
interrupted experiment continues where it stopped (a half-written run starts over).
``OUT/summary.json`` holds the experiment as run, the tuning record (every grid point's
criterion on every tuning seed, and the choice) and, per run, its final numbers and its
time-to-target rows.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from pathlib import Path
from typing import Callable

import attrs
import numpy as np

from hessfree.errors import DataError
from hessfree.experiments.replay import cost_model, replay
from hessfree.experiments.spec import Experiment, Kind, MethodPlan
from hessfree.experiments.targets import axes_per_record, time_to_target
from hessfree.methods import Method
from hessfree.train.config import TrainConfig
from hessfree.train.run import run
from hessfree.train.runconfig import make_run_config

SUMMARY = "summary.json"


@attrs.frozen
class RunSpec:
    """One run of an experiment: a method, a grid point and a seed."""

    plan: MethodPlan
    settings: dict
    seed: int
    phase: str  # "tuning" or "report"
    overrides: dict = attrs.field(factory=dict)  # the experiment's (quick form) overrides

    @property
    def key(self) -> str:
        what = [self.plan.fixed, self.settings] + ([self.overrides] if self.overrides else [])
        digest = hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.plan.name}-{digest}-s{self.seed}"

    def values(self, experiment: Experiment, data_dir: str | None, metrics: Path) -> dict:
        values = {**experiment.base, **self.plan.fixed, **self.settings, **experiment.overrides}
        values.update(method=self.plan.method.value, seed=self.seed, metrics=str(metrics), quiet=True)
        if data_dir is not None:
            values["data_dir"] = data_dir
        return values


@attrs.frozen
class RunEvent:
    """What the runner reports to its caller (the CLI prints it)."""

    index: int
    total: int
    spec: RunSpec
    skipped: bool
    seconds: float = 0.0


def read_run(path: Path) -> tuple[dict, list[dict], dict | None]:
    """(header, iteration records, result line or None) of a metrics file."""
    header, records, result = None, [], None
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # a line cut short by an interruption
                break
            raise DataError(f"{path}:{number}: not a JSON line") from None
        kind = entry.get("kind") if isinstance(entry, dict) else None
        if kind == "config":
            header = entry
        elif kind == "iteration":
            records.append(entry)
        elif kind == "result":
            result = entry
    if header is None:
        raise DataError(f"{path}: no config line: not a hessfree metrics file")
    return header, records, result


def complete(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        return read_run(path)[2] is not None
    except DataError:
        return False


class Runner:
    """Runs one experiment into ``out`` (see the module docstring)."""

    def __init__(self, experiment: Experiment, out: str | Path, *, data_dir: str | None = None,
                 on_run: Callable[[RunEvent], None] | None = None):
        if experiment.needs_data_dir and data_dir is None:
            raise DataError(f"{experiment.name}: needs --data-dir (the directory of the dataset's files)")
        self.experiment = experiment
        self.out = Path(out)
        self.runs_dir = self.out / "runs"
        self.data_dir = data_dir
        self.on_run = on_run or (lambda event: None)
        self._count = 0

    def path(self, spec: RunSpec) -> Path:
        return self.runs_dir / f"{spec.key}.jsonl"

    def total_runs(self) -> int:
        exp = self.experiment
        tuning = sum(len(p.points()) * len(exp.tuning_seeds) for p in exp.methods if len(p.points()) > 1)
        return tuning + len(exp.methods) * len(exp.seeds)

    def execute(self, spec: RunSpec) -> dict:
        """Run ``spec`` unless complete; its analysis."""
        path = self.path(spec)
        self._count += 1
        skipped = complete(path)
        seconds = 0.0
        if not skipped:
            import time

            path.parent.mkdir(parents=True, exist_ok=True)
            start = time.perf_counter()
            run(make_run_config(spec.values(self.experiment, self.data_dir, path)))
            seconds = time.perf_counter() - start
        self.on_run(RunEvent(self._count, self.total_runs(), spec, skipped, seconds))
        return analyse(self.experiment, spec, *read_run(path))

    def tune(self, plan: MethodPlan) -> tuple[dict, dict]:
        """(chosen settings, tuning record) by the experiment's fixed rule."""
        exp = self.experiment
        points = plan.points()
        if len(points) == 1:
            return points[0], dict(grid=plan.grid, points=[], chosen=points[0], rule="no grid: nothing to tune")
        rows = []
        for settings in points:
            runs = [self.execute(RunSpec(plan, settings, seed, "tuning", exp.overrides)) for seed in exp.tuning_seeds]
            values = [r["targets"][_target_key(exp.tuning_target)][exp.tuning_axis] for r in runs]
            rows.append(dict(
                settings=settings, seeds=list(exp.tuning_seeds), criterion=values,
                median=_median(values), final_train_error=_median([r["final"]["train_error"] for r in runs]),
                final_loss=_median([r["final"]["loss"] for r in runs]),
            ))
        best = min(rows, key=lambda r: (r["median"], r["final_train_error"], r["final_loss"]))
        rule = (f"smallest median {exp.tuning_axis} to training error {exp.tuning_target:g} over seeds "
                f"{list(exp.tuning_seeds)} (never reached = inf); ties: median final training error, then loss")
        return best["settings"], dict(grid=plan.grid, points=rows, chosen=best["settings"], rule=rule)

    def run_all(self) -> dict:
        """Tune every method, run the reported seeds, write and return the summary."""
        exp = self.experiment
        if exp.kind is not Kind.COMPARISON:
            raise DataError(f"{exp.name}: a {exp.kind.value} experiment is run by hessfree.experiments.scaling")
        tuning, results = {}, []
        summary = {}
        for k, plan in enumerate(exp.methods, start=1):
            chosen, tuning[plan.name] = self.tune(plan)
            results += [self.execute(RunSpec(plan, chosen, seed, "report", exp.overrides)) for seed in exp.seeds]
            # written after every method: an interrupted experiment can be reported as far as it got
            summary = dict(experiment=describe(exp), tuning=tuning, runs=results,
                           complete=k == len(exp.methods), methods_done=[p.name for p in exp.methods[:k]])
            write_json(self.out / SUMMARY, summary)
        return summary


def _target_key(target: float) -> str:
    return f"{target:g}"


def _median(values) -> float:
    return statistics.median(values) if values else math.inf


def analyse(experiment: Experiment, spec: RunSpec, header: dict, records: list[dict], result: dict | None) -> dict:
    """Final numbers and time-to-target rows of one run (simulated clocks by replay)."""
    method = spec.plan.method
    config = header["config"]
    train = config["train"]
    n_train, n_test = header["data"]["n_train"], header["data"]["n_test"]
    batch = min(TrainConfig(method=method, batch_size=train.get("batch_size")).global_batch, n_train)
    itemsize = np.dtype(config["dtype"]).itemsize
    clocks = {}
    for cluster in experiment.clusters():
        model = cost_model(cluster, header["model"]["layers"], n_train, n_test, itemsize)
        clocks[cluster.key] = replay(records, method, batch, model, cluster.nodes)
    axes = axes_per_record(records, clocks, not method.is_hessian_free)
    targets = {_target_key(t): time_to_target(records, axes, t) for t in experiment.targets}
    targets.update({f"loss {t:g}": time_to_target(records, axes, t, key="loss") for t in experiment.loss_targets})
    last = records[-1] if records else {}
    return dict(
        key=spec.key, method=spec.plan.name, settings=spec.settings, seed=spec.seed, phase=spec.phase,
        batch=batch, status=(result or {}).get("status"),
        final=dict(loss=last.get("loss", math.inf), train_error=last.get("train_error", math.inf),
                   test_error=last.get("test_error"), **{k: v[-1] if v else None for k, v in axes.items()}),
        targets=targets,
        steps=step_counts(records) if method.is_hessian_free else None,
    )


def step_counts(records: list[dict]) -> dict:
    """How the HF steps of a run were taken: iterations per step kind (``direction``),
    the negative-curvature and curvilinear steps together (``negative_curvature``), the
    iterations whose solve met negative curvature of the undamped curvature (a Rayleigh
    quotient or Ritz value below 0: ``indefinite``) and the flipped iterates taken."""
    kinds: dict[str, int] = {}
    for r in records:
        kinds[r.get("direction") or "?"] = kinds.get(r.get("direction") or "?", 0) + 1
    below = lambda r, key: r.get(key) is not None and r[key] < 0  # noqa: E731
    return dict(
        iterations=len(records), kinds=kinds,
        negative_curvature=kinds.get("negative_curvature", 0) + kinds.get("curvilinear", 0),
        indefinite=sum(1 for r in records if below(r, "min_rayleigh") or below(r, "ritz_min")),
        flipped=sum(1 for r in records if r.get("flipped")),
    )


def describe(experiment: Experiment) -> dict:
    """The experiment as plain data (enums by value), for the summary."""

    def plain(value):
        if isinstance(value, Method) or hasattr(value, "value") and not isinstance(value, (int, float, str)):
            return value.value
        if attrs.has(type(value)):
            return {k: plain(v) for k, v in attrs.asdict(value, recurse=False).items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(experiment)


def write_json(path: Path, data: dict) -> None:
    from hessfree.atomic import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(_finite(data), indent=1, default=_json_default, allow_nan=False).encode())


def _finite(value):
    """Non-finite floats become null (strict JSON): "never reached" reads back as None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
