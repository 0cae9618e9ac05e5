"""What one training iteration reports (the library never prints: the CLI renders these)."""

from __future__ import annotations

import math

import attrs


@attrs.frozen(kw_only=True)
class IterationRecord:
    """One outer HF iteration (or one SGD epoch, with ``iteration`` counting updates).

    ``epochs`` counts effective passes over the training data: every sample pushed
    through the network by the gradient, the curvature batch's forward pass and each of
    its products, and every objective evaluation of the backtracking and line search.
    ``comm_calls``/``comm_bytes`` are cumulative collectives and bytes sent per rank
    (metering layer). Losses include weight decay; errors are fractions in [0, 1].
    """

    iteration: int
    epochs: float
    comm_calls: int
    comm_bytes: int
    loss: float
    train_error: float
    test_error: float | None
    time_s: float
    time_gradient_s: float = 0.0
    time_solve_s: float = 0.0
    time_line_search_s: float = 0.0
    cg_iterations: int = 0
    curvature_products: int = 0
    line_search_evals: int = 0
    damping: float = math.nan
    rho: float = math.nan
    step_size: float = math.nan
    negative_curvature: bool = False
    stop_reason: str = ""
    curvature: str = ""
    direction: str = ""
    accepted: bool = True
    comm_phases: dict = attrs.field(factory=dict)
    sim_time_s: float | None = None  # simulated cluster seconds (``--simulate``), else None

    def as_dict(self) -> dict:
        """JSON-ready mapping (non-finite floats become None)."""
        out = {}
        for key, value in attrs.asdict(self).items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out[key] = value
        return out


PHASES = ("gradient", "curvature", "line_search", "other")


def zero_counts() -> dict:
    """Per-phase collectives and bytes, all zero: ``{phase: {"calls": 0, "bytes": 0}}``."""
    return {p: {"calls": 0, "bytes": 0} for p in PHASES}


def add_counts(base: dict, delta) -> dict:
    """``base`` plus a ``CommCounts`` difference (the collectives of one step)."""
    return {p: {"calls": base[p]["calls"] + delta[p].collectives, "bytes": base[p]["bytes"] + delta[p].bytes} for p in PHASES}


def total_calls(counts: dict) -> int:
    return sum(c["calls"] for c in counts.values())


def total_bytes(counts: dict) -> int:
    return sum(c["bytes"] for c in counts.values())
