"""Compute cost: the GEMMs of each product, FLOPs per sample, and a node's speed.

For a dense network d_0, …, d_L (L weight layers) every product is a list of GEMMs whose
row count is the number of samples n; each GEMM of shape (m×k)·(k×c) costs 2·m·k·c
FLOPs. The lists (:func:`gemm_plan`) follow the MLP's kernels exactly:

=================  =====================================  ====================
work               GEMMs                                  count
=================  =====================================  ====================
``forward``        z_l = a_{l−1}·W_l                      L
``gradient``       forward, a_{l−1}ᵀ·δ_l, δ_l·W_lᵀ        L + L + (L−1)
``deltas``         δ_l·W_lᵀ (once per batch, for H·v)     L−1
``gv``             R-forward (2L−1), weight grads (L),    (2L−1) + L + (L−1)
                   linear backward (L−1)
``hv``             R-forward, a_{l−1}ᵀ·R(δ_l),            (2L−1) + (2L−1)
                   R(a_{l−1})ᵀ·δ_l, δ_l·W_lᵀ, δ_l·V_lᵀ    + 2(L−1)
``gv+fwd``         forward + ``gv`` (no reuse)
``hv+fwd``         forward + ``deltas`` + ``hv`` (no reuse)
=================  =====================================  ====================

All of them are linear in n, so FLOPs per sample is the plan at n = 1.

A node (one rank) runs a GEMM of m rows at ``flops · efficiency(m)`` FLOP/s, where the
efficiency curve (≤ 1) captures the loss of BLAS efficiency when a rank's share of a
batch is small, interpolated linearly in log(rows) between calibrated points and held
constant beyond them. Where moving the operands costs more than the arithmetic (tiny
row counts against large weight matrices), the time is the memory time instead
(a roofline): ``max(FLOPs / rate, bytes / memory_bandwidth)`` per GEMM.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence

import attrs
import numpy as np

from hessfree.cost._checks import count, positive, positive_or_inf, real
from hessfree.errors import ConfigError

#: (rows × inner) · (inner × cols), left operand stored transposed
Gemm = tuple[tuple[int, int], tuple[int, int], bool]


class Work(enum.Enum):
    """A unit of per-sample work whose time the model predicts."""

    FORWARD = "forward"
    GRADIENT = "gradient"
    DELTAS = "deltas"
    GV = "gv"
    HV = "hv"
    GV_FWD = "gv+fwd"
    HV_FWD = "hv+fwd"


def check_layers(layers: Sequence[int]) -> tuple[int, ...]:
    """Layer widths d_0, …, d_L as a tuple of ≥ 2 positive ints, or ConfigError."""
    try:
        widths = tuple(layers)
    except TypeError:
        raise ConfigError(f"layers: expected a list of widths, found {layers!r}") from None
    if len(widths) < 2:
        raise ConfigError(f"layers: expected at least an input and an output width, found {layers!r}")
    return tuple(count("layers", w) for w in widths)


def n_params(layers: Sequence[int]) -> int:
    """Weights and biases of the dense network: Σ (d_{l−1} + 1)·d_l."""
    d = check_layers(layers)
    return sum((d[l - 1] + 1) * d[l] for l in range(1, len(d)))


def gemm_plan(layers: Sequence[int], n: int, kind: Work | str) -> list[Gemm]:
    """The GEMMs of one product on ``n`` rows as ((rows, inner), (inner, cols), transposed)."""
    d = check_layers(layers)
    kind = Work(kind)
    L = len(d) - 1
    fwd = [((n, d[l - 1]), (d[l - 1], d[l]), False) for l in range(1, L + 1)]
    grad_w = [((d[l - 1], n), (n, d[l]), True) for l in range(1, L + 1)]  # a_{l−1}ᵀ·δ_l
    prop = [((n, d[l]), (d[l], d[l - 1]), False) for l in range(2, L + 1)]  # δ_l·W_lᵀ
    # R-forward: a_0·V_1, then a_{l−1}·V_l and R(a_{l−1})·W_l for every later layer
    r_fwd = [((n, d[0]), (d[0], d[1]), False)] + [
        ((n, d[l - 1]), (d[l - 1], d[l]), False) for l in range(2, L + 1) for _ in range(2)
    ]
    if kind is Work.FORWARD:
        return fwd
    if kind is Work.GRADIENT:
        return fwd + grad_w + prop
    if kind is Work.DELTAS:
        return prop
    if kind is Work.GV:
        return r_fwd + grad_w + prop
    if kind is Work.HV:
        extra_w = [((d[l - 1], n), (n, d[l]), True) for l in range(2, L + 1)]  # R(a_{l−1})ᵀ·δ_l
        return r_fwd + grad_w + extra_w + prop + prop
    if kind is Work.GV_FWD:
        return fwd + gemm_plan(d, n, Work.GV)
    return fwd + prop + gemm_plan(d, n, Work.HV)


def gemm_flops(plan: Sequence[Gemm]) -> int:
    """2·m·k·c summed over the plan."""
    return sum(2 * a[0] * a[1] * b[1] for a, b, _ in plan)


def flops_per_sample(layers: Sequence[int], kind: Work | str) -> int:
    """FLOPs one sample costs in ``kind`` (every product is linear in the rows)."""
    return gemm_flops(gemm_plan(layers, 1, kind))


def _points(value) -> tuple[tuple[float, float], ...]:
    try:
        pts = tuple((float(r), float(e)) for r, e in value)
    except (TypeError, ValueError):
        raise ConfigError(f"efficiency: expected (rows, efficiency) pairs, found {value!r}") from None
    return tuple(sorted(pts))


def _check_points(instance, attribute, pts) -> None:
    if not pts:
        raise ConfigError("efficiency: needs at least one (rows, efficiency) point")
    for rows, eff in pts:
        if not (math.isfinite(rows) and rows >= 1):
            raise ConfigError(f"efficiency: rows must be finite and ≥ 1, found {rows!r}")
        if not (math.isfinite(eff) and 0 < eff <= 1):
            raise ConfigError(f"efficiency: values must be in (0, 1], found {eff!r}")
    if len({r for r, _ in pts}) != len(pts):
        raise ConfigError("efficiency: duplicate row counts")


@attrs.frozen
class EfficiencyCurve:
    """Fraction of the peak rate a GEMM of ``rows`` rows reaches; log-rows interpolation."""

    points: tuple[tuple[float, float], ...] = attrs.field(converter=_points, validator=_check_points)

    @classmethod
    def constant(cls, value: float = 1.0) -> "EfficiencyCurve":
        return cls([(1.0, value)])

    @classmethod
    def saturating(cls, half_rows: float) -> "EfficiencyCurve":
        """r / (r + r½): half the peak at ``half_rows`` rows (a generic BLAS shape)."""
        if not (isinstance(half_rows, (int, float)) and math.isfinite(half_rows) and half_rows > 0):
            raise ConfigError(f"half_rows: expected a finite number > 0, found {half_rows!r}")
        rows = [2.0**k for k in range(0, 25)]
        return cls([(r, r / (r + half_rows)) for r in rows])

    def __call__(self, rows: float) -> float:
        if rows <= 0:
            return self.points[0][1]
        xs = np.log([r for r, _ in self.points])
        ys = [e for _, e in self.points]
        return float(np.interp(math.log(max(rows, 1.0)), xs, ys))

    def as_list(self) -> list[list[float]]:
        return [[r, e] for r, e in self.points]


def _curves(value) -> Mapping[Work, EfficiencyCurve]:
    if isinstance(value, EfficiencyCurve):
        return {None: value}
    out = {}
    for key, curve in dict(value).items():
        work = None if key in (None, "default") else Work(key)
        out[work] = curve if isinstance(curve, EfficiencyCurve) else EfficiencyCurve(curve)
    if None not in out:
        raise ConfigError("efficiency: a per-work mapping needs a 'default' curve")
    return out


@attrs.frozen
class NodeSpec:
    """One rank's speed: peak sustained FLOP/s, efficiency per row count, memory bandwidth.

    ``efficiency`` is one :class:`EfficiencyCurve` or a mapping ``Work → curve`` with a
    ``"default"`` entry (a calibration measures each product of the model separately).
    ``memory_bandwidth`` (bytes/s, inf to ignore) bounds GEMMs that are memory-bound.
    ``chunk_rows`` is how many rows a pass over a large data set processes at once
    (hessfree's models: ``chunk_size`` = 8192).
    """

    flops: float = attrs.field(converter=real("flops"), validator=positive)
    efficiency: Mapping = attrs.field(factory=lambda: EfficiencyCurve.constant(), converter=_curves)
    memory_bandwidth: float = attrs.field(default=math.inf, converter=real("memory_bandwidth"), validator=positive_or_inf)
    itemsize: int = attrs.field(default=8)
    chunk_rows: int = attrs.field(default=8192)

    def __attrs_post_init__(self) -> None:
        if self.itemsize not in (4, 8):
            raise ConfigError(f"itemsize: expected 4 (float32) or 8 (float64), found {self.itemsize!r}")
        count("chunk_rows", self.chunk_rows)

    def curve(self, kind: Work) -> EfficiencyCurve:
        return self.efficiency.get(Work(kind), self.efficiency[None])

    def gemm_time(self, gemm: Gemm, rows: float, kind: Work) -> float:
        """Roofline time of one GEMM in a product of ``kind`` running on ``rows`` rows."""
        (m, k), (_, c), _ = gemm
        flops = 2.0 * m * k * c
        compute = flops / (self.flops * self.curve(kind)(rows))
        memory = self.itemsize * (m * k + k * c + m * c) / self.memory_bandwidth
        return max(compute, memory)

    def block_time(self, layers: Sequence[int], rows: int, kind: Work) -> float:
        """Seconds for one product of ``kind`` on one block of ``rows`` rows."""
        if rows <= 0:
            return 0.0
        return sum(self.gemm_time(g, rows, kind) for g in gemm_plan(layers, int(rows), kind))

    def time(self, layers: Sequence[int], rows: int, kind: Work | str, block_rows: int | None = None) -> float:
        """Seconds for ``kind`` on ``rows`` rows, processed in blocks of ``block_rows``
        (default ``chunk_rows``): ⌊rows/c⌋ full blocks and one partial block."""
        kind = Work(kind)
        c = self.chunk_rows if block_rows is None else max(1, int(block_rows))
        full, rest = divmod(int(rows), c)
        return full * self.block_time(layers, c, kind) + self.block_time(layers, rest, kind)

    def as_dict(self) -> dict:
        return dict(
            flops=self.flops,
            efficiency={("default" if k is None else k.value): v.as_list() for k, v in self.efficiency.items()},
            memory_bandwidth=None if math.isinf(self.memory_bandwidth) else self.memory_bandwidth,
            itemsize=self.itemsize,
            chunk_rows=self.chunk_rows,
        )

    @classmethod
    def from_dict(cls, data: Mapping) -> "NodeSpec":
        mb = data.get("memory_bandwidth")
        return cls(
            flops=data["flops"],
            efficiency=data.get("efficiency", {"default": [[1, 1.0]]}),
            memory_bandwidth=math.inf if mb is None else mb,
            itemsize=int(data.get("itemsize", 8)),
            chunk_rows=int(data.get("chunk_rows", 8192)),
        )
