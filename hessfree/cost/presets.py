"""Named networks, nodes and interconnects for what-if runs (numbers documented here).

Networks (the paper's experiments):

=============  =========================  ===========  ==========  ======
name           layers                     train        test        dtype
=============  =========================  ===========  ==========  ======
``mnist``      784-400-10                 60,000       10,000      float32
``mnist-deep`` 784-400-150-10             60,000       10,000      float32
``timit``      360-512-512-512-1973       709,765      304,185     float32
=============  =========================  ===========  ==========  ======

(TIMIT: 1,013,950 samples split 70/30, as in the paper.)

``paper`` node: 2.65 TFLOP/s sustained single precision per node (the paper's figure),
float32 values; an efficiency curve r/(r + 32) in the GEMM row count r (half speed at 32
rows, 80 % at 128, 99 % at 4096: an *assumption* standing for MKL SGEMM on a many-core
node, not a measurement); 400 GB/s memory bandwidth (MCDRAM-class); full-data passes
blocked by the batch (``Blocks.BATCH``), as the paper's implementation runs them
mini-batch by mini-batch.

``omni-path`` network: α = 1.5 µs, 12 GB/s (β ≈ 83 ps/byte), a 100 Gb/s
Omni-Path / EDR InfiniBand link; ``ethernet-10g``: α = 25 µs, 1.1 GB/s.
"""

from __future__ import annotations

from types import MappingProxyType

import attrs

from hessfree.cost.compute import EfficiencyCurve, NodeSpec
from hessfree.cost.network import Network
from hessfree.errors import ConfigError


@attrs.frozen
class NetworkPreset:
    layers: tuple[int, ...]
    samples: int
    test_samples: int
    itemsize: int


NETWORK_PRESETS = MappingProxyType(
    {
        "mnist": NetworkPreset((784, 400, 10), 60_000, 10_000, 4),
        "mnist-deep": NetworkPreset((784, 400, 150, 10), 60_000, 10_000, 4),
        "timit": NetworkPreset((360, 512, 512, 512, 1973), 709_765, 304_185, 4),
    }
)

PAPER_NODE_FLOPS = 2.65e12
PAPER_HALF_ROWS = 32.0
PAPER_MEMORY_BANDWIDTH = 400e9


def paper_node(itemsize: int = 4) -> NodeSpec:
    """The paper's node: 2.65 TFLOP/s, efficiency r/(r+32), 400 GB/s."""
    return NodeSpec(
        flops=PAPER_NODE_FLOPS,
        efficiency=EfficiencyCurve.saturating(PAPER_HALF_ROWS),
        memory_bandwidth=PAPER_MEMORY_BANDWIDTH,
        itemsize=itemsize,
    )


INTERCONNECTS = MappingProxyType(
    {
        "omni-path": Network.from_bandwidth(1.5e-6, 12e9),
        "ethernet-10g": Network.from_bandwidth(25e-6, 1.1e9),
    }
)


def network_preset(name: str) -> NetworkPreset:
    try:
        return NETWORK_PRESETS[name]
    except KeyError:
        raise ConfigError(f"preset: expected one of {', '.join(NETWORK_PRESETS)}, found {name!r}") from None


def interconnect(name: str) -> Network:
    try:
        return INTERCONNECTS[name]
    except KeyError:
        raise ConfigError(f"interconnect: expected one of {', '.join(INTERCONNECTS)}, found {name!r}") from None
