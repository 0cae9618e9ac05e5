"""Time to a target on every axis: iterations, effective epochs, curvature products,
collectives, wall seconds here and simulated seconds on modelled clusters.

A target is reached at the first record whose training error is at or below it (or, for
an objective target, whose loss is). Records are per outer iteration (HF) or per epoch
(first-order methods), so a first-order run reaches a target at the end of an epoch:
its numbers are upper bounds at epoch resolution, stated in the reports.
"""

from __future__ import annotations

import math
from typing import Sequence

#: the axes of a time-to-target row besides the simulated clocks (``sim_<P>_<network>``)
AXES = ("iterations", "epochs", "curvature_products", "collectives", "wall_s")


def cumulative(records: Sequence[dict], key: str) -> list[float]:
    total, out = 0.0, []
    for r in records:
        total += float(r.get(key) or 0)
        out.append(total)
    return out


def axes_per_record(records: Sequence[dict], clocks: dict[str, list[float]], first_order: bool) -> dict[str, list[float]]:
    """Every axis's value after each record."""
    return {
        # outer iterations (HF) or epochs (first-order: one record per epoch)
        "iterations": [float(k + 1) for k in range(len(records))] if first_order else [float(r["iteration"]) for r in records],
        "epochs": [float(r["epochs"]) for r in records],
        "curvature_products": cumulative(records, "curvature_products"),
        "collectives": [float(r["comm_calls"]) for r in records],
        "wall_s": [float(r["time_s"]) for r in records],
        **clocks,
    }


def time_to_target(records: Sequence[dict], axes: dict[str, list[float]], target: float, key: str = "train_error") -> dict:
    """``{"reached": bool, axis: value at the first record meeting the target (inf if never)}``."""
    for k, r in enumerate(records):
        value = r.get(key)
        if value is not None and math.isfinite(value) and value <= target:
            return {"reached": True, **{name: values[k] for name, values in axes.items()}}
    return {"reached": False, **{name: math.inf for name in axes}}
