"""Training curves from metrics files (``hessfree train --metrics``): read, group, plot.

The reading, grouping and statistics need only numpy; matplotlib is imported by
:func:`plot_runs` alone (the ``plot`` extra: ``pip install 'hessfree[plot]'``), which
draws on its own Agg canvas (no pyplot, no global backend switch) and writes a file.

A metrics file is JSON lines: one ``config`` line, one ``iteration`` line per record,
and a ``result`` line. A resumed run appends another config line and replays records
from its checkpoint on: a record whose iteration is not after the last one kept
replaces the kept records from that iteration on. Lines of other kinds are ignored
(room for newer writers); blank lines are skipped.

Runs of one group (several seeds of a method) are summarised by the median curve and a
min-max band over the runs (:func:`median_band`):

* ``alignment == "index"``: every run has the same x values (iteration, and epochs of
  first-order methods): the statistics are taken record by record over the step index.
* ``alignment == "interpolated"``: x values differ between runs (HF epochs, collectives,
  time): each run is interpolated linearly in x onto the union of all runs' x values.

Both keep only the x range every run covers (the shortest run for "index", the overlap
of the x ranges for "interpolated"), so every point is a statistic over all the runs.
The library never prints; errors are typed (:mod:`hessfree.errors`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from hessfree.errors import ConfigError, DataError, HessfreeError

#: quantities that can be drawn on the y axis (error fractions are shown in percent)
Y_CHOICES = ("loss", "train_error", "test_error")
#: quantities that can be drawn on the x axis
X_CHOICES = ("iteration", "epochs", "comm_calls", "time_s", "sim_time_s")
#: what runs are grouped by
GROUP_CHOICES = ("method", "label", "file")
#: fields every iteration line carries (others may be absent and read as null)
REQUIRED_FIELDS = ("iteration", "epochs", "loss", "train_error", "time_s")

ERROR_QUANTITIES = ("train_error", "test_error")

LABELS = {
    "loss": "loss",
    "train_error": "training error (%)",
    "test_error": "test error (%)",
    "iteration": "iteration (updates for first-order methods)",
    "epochs": "epochs (passes over the training data)",
    "comm_calls": "collectives per rank",
    "time_s": "wall-clock time (s)",
    "sim_time_s": "simulated cluster time (s)",
}

_WHY_MISSING = {
    "sim_time_s": "it was trained without --simulate",
    "test_error": "it has no test set",
}

#: settings that may differ between the runs of one group without making them different experiments
_INCIDENTAL_SETTINGS = frozenset(
    {"metrics", "checkpoint_dir", "checkpoint_every", "resume", "quiet", "comm_timeout", "train.seed", "seed"}
)


class MissingDependencyError(HessfreeError, ImportError):
    """An optional dependency (here matplotlib, the ``plot`` extra) is not installed."""


@attrs.frozen(kw_only=True)
class Run:
    """One metrics file.

    ``config`` holds the resolved settings (the config line's ``config``), ``header`` the
    whole (last) config line (model, data, environment, trajectory hash), ``records`` the
    iteration lines in order (raw dicts), ``result`` the last result line or None if the
    run has not finished. ``label`` is the caller's name for the run, if any.
    """

    path: Path
    config: dict
    header: dict
    records: tuple[dict, ...]
    result: dict | None = None
    label: str | None = None

    @property
    def method(self) -> str:
        train = self.config.get("train")
        method = train.get("method") if isinstance(train, dict) else None
        method = method if method is not None else self.config.get("method")
        return str(method) if method is not None else "unknown"

    @property
    def seed(self) -> int | None:
        train = self.config.get("train")
        seed = train.get("seed") if isinstance(train, dict) else None
        return seed if seed is not None else self.config.get("seed")

    @property
    def name(self) -> str:
        """The label, else the path as given."""
        return self.label if self.label is not None else str(self.path)

    def values(self, field: str) -> np.ndarray:
        """One float per record; NaN where the record has null (or lacks the field)."""
        return np.array([_float(r.get(field)) for r in self.records], dtype=float)

    def series(self, x: str, y: str) -> tuple[np.ndarray, np.ndarray]:
        """The records' (x, y) points where both are recorded. Raises :class:`ConfigError`
        if the run records neither quantity at all, :class:`DataError` if it has no records."""
        if not self.records:
            raise DataError(f"{self.path}: no iteration records (the run stopped before its first iteration)")
        xs, ys = self.values(x), self.values(y)
        for name, values in ((x, xs), (y, ys)):
            if np.isnan(values).all():
                why = _WHY_MISSING.get(name, "the field is null or absent in every record")
                raise ConfigError(f"{self.path}: no {name} recorded ({why})")
        keep = ~(np.isnan(xs) | np.isnan(ys))
        if not keep.any():
            raise ConfigError(f"{self.path}: no record has both {x} and {y}")
        return xs[keep], ys[keep]


@attrs.frozen(kw_only=True, eq=False)
class Band:
    """The median curve of a group of runs and its min-max band, in recorded units
    (error fractions, not percent). ``alignment`` is "index" or "interpolated"."""

    x: np.ndarray
    median: np.ndarray
    low: np.ndarray
    high: np.ndarray
    alignment: str
    n_runs: int


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_metrics(path: str | os.PathLike, label: str | None = None) -> Run:
    """Read one metrics file. Raises :class:`DataError` naming the file (and the line)
    if it is missing, unreadable, malformed, or not a hessfree metrics file."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not a metrics file") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a hessfree metrics file (not UTF-8 text)") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None

    header: dict | None = None
    records: list[dict] = []
    result: dict | None = None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            what = "not a hessfree metrics file: " if header is None else ""
            raise DataError(f"{where}: {what}not valid JSON ({exc.msg})") from None
        kind = obj.get("kind") if isinstance(obj, dict) else None
        if not isinstance(kind, str):
            raise DataError(f"{where}: not a hessfree metrics line (a JSON object with a 'kind' is expected)")
        if header is None and kind != "config":
            raise DataError(f"{where}: not a hessfree metrics file (the first line must be the config line, found {kind!r})")
        if kind == "config":
            if not isinstance(obj.get("config"), dict):
                raise DataError(f"{where}: config line without a 'config' object")
            header = obj
        elif kind == "iteration":
            for field in REQUIRED_FIELDS:
                if field not in obj:
                    raise DataError(f"{where}: iteration line without {field!r}")
            for field in (*X_CHOICES, *Y_CHOICES):
                value = obj.get(field)
                if value is not None and not (_is_number(value) and math.isfinite(value)):
                    raise DataError(f"{where}: {field} is {value!r}, expected a finite number or null")
            if obj["iteration"] is None:
                raise DataError(f"{where}: iteration is null")
            while records and records[-1]["iteration"] >= obj["iteration"]:
                records.pop()  # replayed after a resume from an earlier checkpoint
            records.append(obj)
        elif kind == "result":
            result = obj
        # other kinds: ignored (forward compatible)
    if header is None:
        raise DataError(f"{path}: not a hessfree metrics file (empty)")
    return Run(path=path, config=header["config"], header=header, records=tuple(records), result=result, label=label)


def group_key(run: Run, by: str) -> str:
    """The name of ``run``'s group: its method, its label (else its method), or its file."""
    if by == "method":
        return run.method
    if by == "label":
        return run.label if run.label is not None else run.method
    if by == "file":
        return run.name
    raise ConfigError(f"group: expected one of {', '.join(GROUP_CHOICES)}, found {by!r}")


def group_runs(runs: Sequence[Run], by: str = "method") -> dict[str, list[Run]]:
    """Runs by group name (see :func:`group_key`), groups in order of first appearance."""
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(group_key(run, by), []).append(run)
    return groups


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def differing_settings(runs: Sequence[Run]) -> list[str]:
    """Settings (dotted names) that differ between ``runs``, apart from the seed and
    incidental ones (paths, verbosity): non-empty means a group mixes experiments."""
    flat = [_flatten(run.config) for run in runs]
    names = sorted(set.intersection(*(set(f) for f in flat))) if flat else []  # settings older writers lack: not compared
    return [
        name for name in names
        if name not in _INCIDENTAL_SETTINGS and len({json.dumps(f.get(name), sort_keys=True) for f in flat}) > 1
    ]


def _check_names(x: str, ys: Sequence[str]) -> None:
    if x not in X_CHOICES:
        raise ConfigError(f"x: expected one of {', '.join(X_CHOICES)}, found {x!r}")
    for y in ys:
        if y not in Y_CHOICES:
            raise ConfigError(f"y: expected one of {', '.join(Y_CHOICES)}, found {y!r}")


def median_band(runs: Sequence[Run], x: str = "epochs", y: str = "train_error") -> Band:
    """Median and min-max of ``y`` over ``runs`` against ``x`` (see the module docstring
    for the alignment). With an even number of runs the median is the mean of the middle
    two. Raises :class:`ConfigError` if a run does not record ``x`` or ``y``,
    :class:`DataError` if a run has no records or the runs' x ranges do not overlap."""
    _check_names(x, [y])
    if not runs:
        raise ConfigError("median_band: no runs")
    series = [run.series(x, y) for run in runs]
    length = min(len(xs) for xs, _ in series)
    first = series[0][0][:length]
    if all(np.allclose(xs[:length], first, rtol=1e-9, atol=0.0) for xs, _ in series):
        grid, stack, alignment = first.copy(), np.stack([ys[:length] for _, ys in series]), "index"
    else:
        ordered = []
        for xs, ys in series:
            order = np.argsort(xs, kind="stable")
            ordered.append((xs[order], ys[order]))
        lo, hi = max(xs[0] for xs, _ in ordered), min(xs[-1] for xs, _ in ordered)
        if lo > hi:
            names = ", ".join(str(run.path) for run in runs)
            raise DataError(f"the {x} ranges of {names} do not overlap: no common {x} to compare them at")
        union = np.unique(np.concatenate([xs for xs, _ in ordered]))
        grid = union[(union >= lo) & (union <= hi)]
        stack = np.stack([np.interp(grid, xs, ys) for xs, ys in ordered])
        alignment = "interpolated"
    return Band(
        x=grid,
        median=np.median(stack, axis=0),
        low=stack.min(axis=0),
        high=stack.max(axis=0),
        alignment=alignment,
        n_runs=len(runs),
    )


def default_title(runs: Sequence[Run]) -> str:
    """"data, layers" when every run trained the same network on the same data, else ""."""
    described = set()
    for run in runs:
        data = run.header.get("data") or {}
        model = run.header.get("model") or {}
        layers = model.get("layers") if isinstance(model, dict) else None
        name = data.get("name") if isinstance(data, dict) else None
        described.add((name, "-".join(map(str, layers)) if isinstance(layers, list) else None))
    if len(described) != 1:
        return ""
    name, layers = described.pop()
    return ", ".join(p for p in (name, f"layers {layers}" if layers else None) if p)


def _import_matplotlib():
    try:
        from matplotlib import ticker
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise MissingDependencyError("plotting needs matplotlib: pip install 'hessfree[plot]'") from None
    return Figure, FigureCanvasAgg, ticker


def _plain_log_formatter(ticker):
    """LogFormatter's choice of which ticks get a label (minor ones on short ranges),
    printed as plain numbers (0.3, 20) rather than 3e-01 or 2×10¹."""

    class PlainLogFormatter(ticker.LogFormatter):
        def __call__(self, value, pos=None):
            return f"{value:g}" if super().__call__(value, pos) else ""

    return PlainLogFormatter


def plot_runs(
    runs: Sequence[Run] | Mapping[str, Sequence[Run]],
    path: str | os.PathLike,
    *,
    y: str | Sequence[str] = ("train_error",),
    x: str = "epochs",
    group: str = "method",
    log_y: bool = True,
    title: str | None = None,
    dpi: int = 110,
) -> Path:
    """Draw ``y`` (one subplot each) against ``x`` and write the figure to ``path``.

    ``runs`` is a sequence of runs, grouped with :func:`group_runs` by ``group``, or a
    mapping of group name to runs (already grouped; ``group`` is then unused). Every
    group is one curve, its median over the runs with a min-max band when it has more
    than one run. Error fractions are drawn in percent. ``log_y`` puts every y axis on a
    log scale (symmetric-log with a linear part below the smallest positive value when a
    curve reaches 0). ``title`` None means :func:`default_title`, "" none. The format
    follows the file suffix (png, pdf, svg); missing directories are created, and the
    file is written to a temporary name and renamed. Returns the path.

    Raises :class:`ConfigError` (unknown names, a quantity some run does not record),
    :class:`DataError` (a run without records, runs that do not overlap),
    :class:`MissingDependencyError` (no matplotlib), :class:`OSError` (cannot write).
    """
    ys = [y] if isinstance(y, str) else list(y)
    if not ys:
        raise ConfigError("y: at least one quantity to plot")
    _check_names(x, ys)
    groups = dict(runs) if isinstance(runs, Mapping) else group_runs(list(runs), group)
    groups = {name: list(members) for name, members in groups.items() if members}
    if not groups:
        raise ConfigError("nothing to plot: no runs")
    bands = {q: {name: median_band(members, x, q) for name, members in groups.items()} for q in ys}
    Figure, FigureCanvasAgg, ticker = _import_matplotlib()

    fig = Figure(figsize=(5.0 * len(ys) + 0.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(ys), squeeze=False)[0]
    colors = [f"C{i % 10}" for i in range(len(groups))]
    for ax, q in zip(axes, ys):
        scale = 100.0 if q in ERROR_QUANTITIES else 1.0
        smallest = math.inf
        any_nonpositive = False
        for color, (name, band) in zip(colors, bands[q].items()):
            med, low, high = band.median * scale, band.low * scale, band.high * scale
            legend = name if band.n_runs == 1 else f"{name} (median of {band.n_runs}, min-max)"
            ax.plot(band.x, med, color=color, lw=1.6, label=legend, marker="o" if len(band.x) == 1 else None)
            if band.n_runs > 1:
                ax.fill_between(band.x, low, high, color=color, alpha=0.2, lw=0)
            positive = low[low > 0]
            if positive.size:
                smallest = min(smallest, float(positive.min()))
            any_nonpositive |= bool((low <= 0).any())
        if log_y:
            if any_nonpositive:
                linthresh = smallest if math.isfinite(smallest) else 1e-3
                ax.set_yscale("symlog", linthresh=linthresh, linscale=0.5)
                ax.yaxis.set_major_locator(ticker.SymmetricalLogLocator(base=10, linthresh=linthresh, subs=(1, 2, 5)))
                ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
            else:
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(_plain_log_formatter(ticker)())
                ax.yaxis.set_minor_formatter(_plain_log_formatter(ticker)(labelOnlyBase=False))
        if x in ("iteration", "comm_calls"):
            ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        ax.set_xlabel(LABELS[x])
        ax.set_ylabel(LABELS[q])
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    title = default_title([r for members in groups.values() for r in members]) if title is None else title
    if title:
        fig.suptitle(title, fontsize=10)

    from hessfree.atomic import atomic_file

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ConfigError(f"{path}: cannot write a .{fmt} figure (formats: {', '.join(sorted(supported))})")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as fh:
        fig.savefig(fh, format=fmt, dpi=dpi)
    return path
