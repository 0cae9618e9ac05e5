"""The α–β network model and the standard costs of collective algorithms.

A message of m bytes between two nodes takes α + m·β seconds (α the latency, β the
inverse bandwidth, seconds per byte). For P ranks each holding m bytes
(Thakur, Rabenseifner & Gropp 2005):

=====================  =================================================
ring allreduce         2(P−1)·α + 2·((P−1)/P)·m·β   (reduce-scatter + allgather)
recursive doubling     ⌈log₂P⌉·(α + m·β)            (every round ships the whole vector)
tree (reduce + bcast)  2⌈log₂P⌉·(α + m·β)           (binomial reduce to a root, then bcast)
ring allgather         (P−1)·α + ((P−1)/P)·m·β      (m the gathered bytes)
ring reduce-scatter    (P−1)·α + ((P−1)/P)·m·β      (m the reduced bytes)
=====================  =================================================

A single rank communicates nothing: every formula is 0 at P = 1. At P = 2 ring and
recursive doubling move the same m·β (ring: half the vector each way in each of its two
steps); ring pays one extra latency, 2α + m·β against α + m·β, so the two agree exactly
when α = 0 and differ by exactly α otherwise. ``hessfree``'s MPI backend implements an allreduce as reduce + bcast,
i.e. the tree formula.
"""

from __future__ import annotations

import enum
import math

import attrs

from hessfree.cost._checks import count, finite_number, non_negative, real


class Collective(enum.Enum):
    """Which allreduce algorithm the network model charges."""

    RING = "ring"
    RECURSIVE_DOUBLING = "recursive-doubling"
    TREE = "tree"


def log2_ceil(size: int) -> int:
    """⌈log₂ P⌉ for P ≥ 1 (exact for integers, no floating-point rounding)."""
    return (int(size) - 1).bit_length()


@attrs.frozen
class Network:
    """Latency α (s) and inverse bandwidth β (s/byte) between any pair of nodes."""

    latency: float = attrs.field(converter=real("latency"), validator=non_negative)
    inverse_bandwidth: float = attrs.field(converter=real("inverse_bandwidth"), validator=non_negative)

    @classmethod
    def from_bandwidth(cls, latency: float, bandwidth: float) -> "Network":
        """A network of ``latency`` seconds and ``bandwidth`` bytes/s (β = 1/bandwidth)."""
        bandwidth = finite_number("bandwidth", bandwidth)
        if bandwidth <= 0:
            raise_config("bandwidth", bandwidth, "> 0 bytes/s")
        return cls(latency=finite_number("latency", latency), inverse_bandwidth=1.0 / bandwidth)

    @property
    def bandwidth(self) -> float:
        """Bytes per second (inf for β = 0)."""
        return math.inf if self.inverse_bandwidth == 0 else 1.0 / self.inverse_bandwidth

    def point_to_point(self, nbytes: float) -> float:
        """α + m·β: one message of ``nbytes``."""
        return self.latency + _bytes(nbytes) * self.inverse_bandwidth

    def allreduce(self, size: int, nbytes: float, collective: Collective = Collective.RING) -> float:
        """Seconds for a sum-allreduce of ``nbytes`` per rank over ``size`` ranks."""
        P, m = count("nodes", size), _bytes(nbytes)
        if P == 1:
            return 0.0
        a, b = self.latency, self.inverse_bandwidth
        collective = Collective(collective)
        if collective is Collective.RING:
            return 2 * (P - 1) * a + 2 * (P - 1) / P * m * b
        if collective is Collective.RECURSIVE_DOUBLING:
            return log2_ceil(P) * (a + m * b)
        return 2 * log2_ceil(P) * (a + m * b)

    def bcast(self, size: int, nbytes: float) -> float:
        """Binomial-tree broadcast: ⌈log₂P⌉·(α + m·β)."""
        P, m = count("nodes", size), _bytes(nbytes)
        return log2_ceil(P) * (self.latency + m * self.inverse_bandwidth)

    def barrier(self, size: int) -> float:
        """Dissemination barrier: ⌈log₂P⌉·α."""
        return log2_ceil(count("nodes", size)) * self.latency

    def allgather(self, size: int, nbytes_total: float) -> float:
        """Ring allgather of ``nbytes_total`` bytes (each rank owns 1/P): (P−1)α + ((P−1)/P)·m·β."""
        P, m = count("nodes", size), _bytes(nbytes_total)
        if P == 1:
            return 0.0
        return (P - 1) * self.latency + (P - 1) / P * m * self.inverse_bandwidth

    def reduce_scatter(self, size: int, nbytes_total: float) -> float:
        """Ring reduce-scatter of ``nbytes_total`` bytes (each rank keeps the sum of 1/P):
        (P−1)α + ((P−1)/P)·m·β, the first half of a ring allreduce."""
        return self.allgather(size, nbytes_total)


def _bytes(nbytes: float) -> float:
    m = finite_number("bytes", nbytes)
    if m < 0:
        raise_config("bytes", nbytes, "≥ 0")
    return m


def raise_config(name: str, value: object, expected: str) -> None:
    from hessfree.errors import ConfigError

    raise ConfigError(f"{name}: expected a number {expected}, found {value!r}")
