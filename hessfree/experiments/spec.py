"""Experiments declared as data: a grid of (method, settings, seed) runs and how to judge them.

An :class:`Experiment` is a frozen object; the built-in ones live in
``hessfree.experiments.builtin`` and a user's own come from a TOML file of the same
shape (``Experiment.from_toml``)::

    name = "my-study"
    description = "gn-cg against Adam on digits"
    targets = [0.04, 0.02]          # training errors
    tuning_target = 0.02            # the target the tuning rule looks at
    tuning_axis = "sim_16_omni-path"
    tuning_seeds = [100, 101, 102]  # tuning runs
    seeds = [0, 1, 2, 3, 4]         # reported runs: fresh seeds
    [base]                          # hessfree train keys shared by every run
    dataset = "digits"
    [[methods]]
    method = "gn-cg"
    fixed = { iterations = 20 }
    grid = { damping = [0.1, 1.0, 10.0] }
    [quick]                         # what --quick changes
    base = { samples = 500 }
    tuning_seeds = 1
    seeds = 2
    grid_limit = 2

The tuning rule is fixed before any result is seen: every grid point (the Cartesian
product of the grid's lists) runs on every tuning seed; the chosen point has the
smallest median of ``tuning_axis`` to reach ``tuning_target`` over the tuning seeds (a
run that never reaches it counts as +∞); ties, including "never reached", go to the
smaller median final training error, then the smaller median final objective. The
reported seeds are then run with the chosen point only.
"""

from __future__ import annotations

import enum
import itertools
import os
import tomllib
from typing import Any

import attrs

from hessfree.errors import ConfigError
from hessfree.experiments.replay import Cluster
from hessfree.methods import Method
from hessfree.train.runconfig import make_run_config
from hessfree.validate import choice, integer, real, text


class Kind(enum.Enum):
    COMPARISON = "comparison"  # methods to targets (Figures 1 and 3)
    SCALING = "scaling"  # time per iteration against nodes (Figure 2)


@attrs.frozen(kw_only=True)
class MethodPlan:
    """One method of an experiment: settings always applied and the tuning grid."""

    method: Method
    fixed: dict = attrs.field(factory=dict)
    grid: dict = attrs.field(factory=dict)  # key → list of values
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.method.value

    def points(self) -> list[dict]:
        """The grid's points (Cartesian product), each a settings dict."""
        axes = [[(key, v) for v in values] for key, values in self.grid.items()]
        return [dict(p) for p in itertools.product(*axes)]


@attrs.frozen(kw_only=True)
class Quick:
    """What ``--quick`` changes: base overrides, fewer seeds, a trimmed grid."""

    base: dict = attrs.field(factory=dict)
    tuning_seeds: int = 1
    seeds: int = 2
    grid_limit: int = 2
    batches: tuple[int, ...] = ()  # scaling experiments: smaller batches for fewer samples


@attrs.frozen(kw_only=True)
class Experiment:
    name: str
    description: str
    methods: tuple[MethodPlan, ...]
    base: dict = attrs.field(factory=dict)
    kind: Kind = Kind.COMPARISON
    targets: tuple[float, ...] = (0.04, 0.02, 0.01, 0.001)
    loss_targets: tuple[float, ...] = ()
    tuning_target: float = 0.01
    tuning_axis: str = "sim_16_omni-path"
    tuning_seeds: tuple[int, ...] = (100, 101, 102)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    nodes: tuple[int, ...] = (16, 32)
    networks: tuple[str, ...] = ("omni-path", "ethernet-10g")
    needs_data_dir: bool = False
    quick: Quick = attrs.field(factory=Quick)
    notes: str = ""  # budget and subsets, stated beside the results
    form: str = "full"  # "quick" after quick_form()
    overrides: dict = attrs.field(factory=dict)  # applied over every run's settings (quick forms)
    # scaling experiments (Figure 2)
    batches: tuple[int, ...] = ()
    measured_ranks: tuple[int, ...] = (1, 2)
    model_nodes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)

    def __attrs_post_init__(self) -> None:
        if set(self.tuning_seeds) & set(self.seeds):
            raise ConfigError(f"{self.name}: seeds: the reported seeds must be fresh (not tuning seeds); both have {sorted(set(self.tuning_seeds) & set(self.seeds))}")
        names = [m.name for m in self.methods]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.name}: methods: each method (or label) once, found {names}")
        axes = {"iterations", "epochs", "curvature_products", "collectives", "wall_s"} | {c.key for c in self.clusters()}
        if self.kind is Kind.COMPARISON and self.tuning_axis not in axes:
            raise ConfigError(f"{self.name}: tuning_axis: expected one of {', '.join(sorted(axes))}, found {self.tuning_axis!r}")
        for plan in self.methods:  # every run's settings must make a valid hessfree train config
            for point in plan.points():
                try:
                    make_run_config({**self.base, **plan.fixed, **point, "method": plan.method.value})
                except ConfigError as exc:
                    raise ConfigError(f"{self.name}: method {plan.name}: {exc}") from None

    def clusters(self) -> list[Cluster]:
        return [Cluster(p, net) for net in self.networks for p in self.nodes]

    def quick_form(self) -> "Experiment":
        q = self.quick
        return attrs.evolve(
            self,
            form="quick",
            overrides={**self.overrides, **q.base},  # over the methods' fixed settings too
            tuning_seeds=self.tuning_seeds[: q.tuning_seeds],
            seeds=self.seeds[: q.seeds],
            methods=tuple(attrs.evolve(m, grid={k: _trim(v, q.grid_limit) for k, v in m.grid.items()}) for m in self.methods),
            batches=q.batches or self.batches,
        )

    def with_seeds(self, n: int) -> "Experiment":
        """``n`` reported seeds (fresh ones beyond the declared list, never tuning seeds)."""
        seeds = list(self.seeds[:n])
        candidate = max(self.seeds + self.tuning_seeds, default=-1) + 1
        while len(seeds) < n:
            seeds.append(candidate)
            candidate += 1
        return attrs.evolve(self, seeds=tuple(seeds))

    # ------------------------------------------------------------------ from data
    @classmethod
    def from_mapping(cls, data: dict, where: str = "experiment") -> "Experiment":
        """An experiment from a TOML-shaped mapping; ConfigError names the first bad key."""
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{where}: {unknown[0]}: unknown key; known keys: {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for key, value in data.items():
            values[key] = _parse(key, value, where)
        for key in ("name", "description", "methods"):
            if key not in values:
                raise ConfigError(f"{where}: {key}: missing")
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "Experiment":
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc})") from None
        return cls.from_mapping(data, where=str(path))


def _trim(values, limit: int):
    """The first ``limit`` − 1 values and the last (the range's ends survive a trim)."""
    values = list(values)
    if len(values) <= limit:
        return values
    return values[:1] if limit == 1 else values[: limit - 1] + values[-1:]


def _table(key: str, value, where: str) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key}: expected a table, found {value!r}")
    return dict(value)


def _numbers(key: str, value, where: str, **bounds) -> tuple[float, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: {key}: expected a list of numbers, found {value!r}")
    return tuple(real(f"{where}: {key}", v, **bounds) for v in value)


def _ints(key: str, value, where: str, minimum: int = 0) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: {key}: expected a list of integers, found {value!r}")
    return tuple(integer(f"{where}: {key}", v, minimum) for v in value)


def _method(entry, where: str) -> MethodPlan:
    entry = _table("methods", entry, where)
    unknown = sorted(set(entry) - {"method", "fixed", "grid", "label"})
    if unknown:
        raise ConfigError(f"{where}: methods.{unknown[0]}: unknown key; known keys: fixed, grid, label, method")
    if "method" not in entry:
        raise ConfigError(f"{where}: methods.method: missing")
    grid = _table("methods.grid", entry.get("grid", {}), where)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: methods.grid.{key}: expected a non-empty list of values, found {values!r}")
    return MethodPlan(
        method=choice(f"{where}: methods.method", Method, entry["method"]),
        fixed=_table("methods.fixed", entry.get("fixed", {}), where),
        grid=grid,
        label=text(f"{where}: methods.label", entry.get("label", "")),
    )


def _parse(key: str, value, where: str):
    if key in ("form", "overrides"):
        raise ConfigError(f"{where}: {key}: set by --quick, not in a file")
    if key in ("name", "description", "tuning_axis", "notes"):
        return text(f"{where}: {key}", value)
    if key == "kind":
        return choice(f"{where}: kind", Kind, value)
    if key == "base":
        return _table(key, value, where)
    if key == "methods":
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where}: methods: expected a non-empty list of [[methods]] tables")
        return tuple(_method(entry, where) for entry in value)
    if key in ("targets", "loss_targets"):
        return _numbers(key, value, where, low=0)
    if key == "tuning_target":
        return real(f"{where}: {key}", value, low=0)
    if key in ("tuning_seeds", "seeds"):
        return _ints(key, value, where)
    if key in ("nodes", "batches", "measured_ranks", "model_nodes"):
        return _ints(key, value, where, minimum=1)
    if key == "networks":
        from hessfree.cost import INTERCONNECTS

        if not isinstance(value, list):
            raise ConfigError(f"{where}: networks: expected a list of names, found {value!r}")
        for name in value:
            if name not in INTERCONNECTS:
                raise ConfigError(f"{where}: networks: expected names from {', '.join(INTERCONNECTS)}, found {name!r}")
        return tuple(value)
    if key == "needs_data_dir":
        from hessfree.validate import boolean

        return boolean(f"{where}: {key}", value)
    if key == "quick":
        q = _table(key, value, where)
        unknown = sorted(set(q) - {f.name for f in attrs.fields(Quick)})
        if unknown:
            raise ConfigError(f"{where}: quick.{unknown[0]}: unknown key; known keys: base, batches, grid_limit, seeds, tuning_seeds")
        return Quick(
            base=_table("quick.base", q.get("base", {}), where),
            tuning_seeds=integer(f"{where}: quick.tuning_seeds", q.get("tuning_seeds", 1), 1),
            seeds=integer(f"{where}: quick.seeds", q.get("seeds", 2), 1),
            grid_limit=integer(f"{where}: quick.grid_limit", q.get("grid_limit", 2), 1),
            batches=_ints("quick.batches", q.get("batches", []), where, minimum=1),
        )
    raise ConfigError(f"{where}: {key}: unknown key")  # pragma: no cover - from_mapping filters
