"""``report DIR``: the Markdown tables and figures of a finished (or partial) experiment.

Each cell is the median over the reported seeds and, in brackets, the range (min–max);
a run that never reached the target counts as +∞ in the median and is left out of the
range; "—" means the median run did not reach it. ``k/n`` says how many seeds did.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from hessfree.errors import DataError

AXIS_NAMES = {
    "iterations": "iterations",
    "epochs": "effective epochs",
    "curvature_products": "curvature products",
    "collectives": "collectives",
    "wall_s": "wall s (here)",
}


def load_summary(directory: str | Path) -> dict:
    path = Path(directory) / "summary.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror}); run the experiment first") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None


def _value(v) -> float:
    return math.inf if v is None else float(v)


def spread(values) -> tuple[float, float, float, int]:
    """(median with unreached = inf, min and max of the reached, how many reached)."""
    values = [_value(v) for v in values]
    reached = [v for v in values if math.isfinite(v)]
    median = statistics.median(values) if values else math.inf
    lo, hi = (min(reached), max(reached)) if reached else (math.inf, math.inf)
    return median, lo, hi, len(reached)


def cell(values) -> str:
    median, lo, hi, _ = spread(values)
    if not math.isfinite(median):
        return "—"
    return f"{_fmt(median)} [{_fmt(lo)}–{_fmt(hi)}]"


def _fmt(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 1:
        return f"{x:.3g}"
    return f"{x:.2g}"


def axis_label(key: str) -> str:
    if key.startswith("sim_"):
        _, nodes, network = key.split("_", 2)
        return f"sim s, {nodes} nodes {network}"
    return AXIS_NAMES.get(key, key)


def target_tables(summary: dict) -> list[str]:
    """One Markdown table per target: a row per method, a column per axis."""
    runs = [r for r in summary["runs"] if r["phase"] == "report"]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    targets = list(runs[0]["targets"]) if runs else []
    out = []
    for target in targets:
        axes = [k for k in runs[0]["targets"][target] if k != "reached"]
        title = f"training error ≤ {float(target):.3g}" if not target.startswith("loss") else f"objective ≤ {target[5:]}"
        lines = [f"**To {title}** (median [range] over seeds)", "",
                 "| method | reached | " + " | ".join(axis_label(a) for a in axes) + " |",
                 "|---|---|" + "---|" * len(axes)]
        for method in methods:
            rows = [r["targets"][target] for r in runs if r["method"] == method]
            reached = sum(bool(r["reached"]) for r in rows)
            lines.append(f"| {method} | {reached}/{len(rows)} | " + " | ".join(cell([r[a] for r in rows]) for a in axes) + " |")
        out.append("\n".join(lines))
    return out


def final_table(summary: dict) -> str:
    runs = [r for r in summary["runs"] if r["phase"] == "report"]
    lines = ["**At the end of the budget** (median [range] over seeds)", "",
             "| method | settings | training error | test error | objective | effective epochs | wall s |", "|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in runs):
        rows = [r for r in runs if r["method"] == method]
        settings = ", ".join(f"{k}={v}" for k, v in rows[0]["settings"].items()) or "defaults"
        f = [r["final"] for r in rows]
        lines.append(
            f"| {method} | {settings} | {cell([x['train_error'] for x in f])} | {cell([x['test_error'] for x in f])} | "
            f"{cell([x['loss'] for x in f])} | {cell([x['epochs'] for x in f])} | {cell([x['wall_s'] for x in f])} |"
        )
    return "\n".join(lines)


def steps_table(summary: dict) -> str | None:
    """How often the HF steps used negative curvature (median [range] over seeds), or None
    when no run recorded it."""
    runs = [r for r in summary["runs"] if r["phase"] == "report" and r.get("steps")]
    if not runs:
        return None
    lines = ["**Steps** (per run, median [range] over seeds: iterations whose step was a negative-curvature or "
             "curvilinear step; whose solve met negative curvature of the undamped curvature; flipped iterates taken)", "",
             "| method | iterations | negative-curvature steps | solves meeting negative curvature | flipped iterates |",
             "|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in runs):
        steps = [r["steps"] for r in runs if r["method"] == method]
        lines.append(f"| {method} | {cell([s['iterations'] for s in steps])} | {cell([s['negative_curvature'] for s in steps])} | "
                     f"{cell([s['indefinite'] for s in steps])} | {cell([s['flipped'] for s in steps])} |")
    return "\n".join(lines)


def tuning_table(summary: dict) -> str:
    lines = ["**Tuning** (rule fixed in advance; criterion per grid point: median over the tuning seeds)", "",
             "| method | grid | chosen | criterion of the chosen point |", "|---|---|---|---|"]
    rule = ""
    for method, record in summary["tuning"].items():
        grid = "; ".join(f"{k} ∈ {v}" for k, v in record["grid"].items()) or "—"
        chosen = ", ".join(f"{k}={v}" for k, v in record["chosen"].items()) or "defaults"
        points = [p for p in record["points"] if p["settings"] == record["chosen"]]
        crit = _fmt(_value(points[0]["median"])) if points and math.isfinite(_value(points[0]["median"])) else "—"
        lines.append(f"| {method} | {grid} | {chosen} | {crit} |")
        rule = record.get("rule", rule) if record["points"] else rule
    if rule:
        lines += ["", f"Rule: {rule}."]
    return "\n".join(lines)


def markdown(summary: dict) -> str:
    exp = summary["experiment"]
    parts = [f"## {exp['name']}: {exp['description']}", "", exp.get("notes", ""), ""]
    if summary.get("complete") is False:
        missing = [m.get("label") or m["method"] for m in exp["methods"]]
        done = summary.get("methods_done", [])
        parts += [f"*Partial: {len(done)} of {len(missing)} methods finished so far ({', '.join(done)}); "
                  "run the same command to continue.*", ""]
    if exp.get("form") == "quick":
        parts += ["*Quick form (fewer samples, iterations and seeds: see the notes); not the committed results.*", ""]
    if "tuning" in summary:
        parts += [tuning_table(summary), ""]
        parts += [final_table(summary), ""]
        steps = steps_table(summary)
        if steps:
            parts += [steps, ""]
        for table in target_tables(summary):
            parts += [table, ""]
    if "scaling" in summary:
        from hessfree.experiments.scaling import scaling_table

        parts += [scaling_table(summary), ""]
    return "\n".join(parts)


def write_report(directory: str | Path) -> list[Path]:
    """``DIR/report.md`` and the figures; the paths written."""
    directory = Path(directory)
    summary = load_summary(directory)
    written = []
    figures = directory / "figures"
    if "tuning" in summary:
        from hessfree.experiments.figures import batch_figure, comparison_figures

        written += comparison_figures(summary, directory / "runs", figures)
        by_batch = batch_figure(summary, figures / f"{summary['experiment']['name']}-batch.png")
        written += [by_batch] if by_batch is not None else []
    if "scaling" in summary:
        from hessfree.experiments.scaling import scaling_figure

        written.append(scaling_figure(summary, figures / f"{summary['experiment']['name']}.png"))
    text = markdown(summary)
    if written:
        text += "\n" + "\n".join(f"![{p.stem}](figures/{p.name})" for p in written) + "\n"
    report = directory / "report.md"
    report.write_text(text, encoding="utf-8")
    return [report, *written]
