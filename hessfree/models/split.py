"""How model-parallel ranks split a dense network: every layer's units in P contiguous blocks.

Rank r owns the units ``units(l, r)`` of every layer l = 1..L (``numpy.array_split``
sizes: the first d_l mod P blocks are one unit wider), i.e. the columns W_l[:, units]
and the biases b_l[units]. Its shard of θ stores, layer after layer, W_l[:, units]
row-major, then b_l[units]: exactly the entries ``θ[shard_index(r)]`` of the serial θ.
So the same seed gives every rank the slice of the same initial weights, and the shards
gathered in rank order and put back through ``gather_order()`` are the serial θ.

An activation matrix (n rows × d_l) is exchanged in *rank blocks*: block r is the
n × w_l(r) matrix of rank r's columns, row-major, and the blocks follow each other in
rank order (``counts(l, n)`` elements each): the layout of a flat allgather or
reduce-scatter buffer.
"""

from __future__ import annotations

import attrs
import numpy as np

from hessfree.errors import ConfigError


def _bounds(width: int, parts: int) -> tuple[int, ...]:
    """The P + 1 boundaries of ``numpy.array_split(range(width), parts)``."""
    small, extra = divmod(width, parts)
    sizes = [small + 1] * extra + [small] * (parts - extra)
    return tuple(int(b) for b in np.concatenate(([0], np.cumsum(sizes))))


@attrs.frozen
class UnitSplit:
    """The unit blocks of ``layers`` (d_0, ..., d_L) over ``parts`` ranks.

    More ranks than units in some layer is a :class:`~hessfree.errors.ConfigError` naming
    the layer: a rank would own nothing of it.
    """

    layers: tuple[int, ...] = attrs.field(converter=tuple)
    parts: int = attrs.field()
    _bounds: tuple[tuple[int, ...], ...] = attrs.field(init=False, repr=False)

    @parts.validator
    def _check_parts(self, attribute, value) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"ranks: model parallelism needs a whole number of ranks ≥ 1, found {value!r}")
        narrow = [(l, d) for l, d in enumerate(self.layers[1:], start=1) if d < value]
        if narrow:
            l, d = narrow[0]
            raise ConfigError(
                f"ranks: model parallelism splits the units of every layer over the {value} ranks, but layer {l} of "
                f"{list(self.layers)} has only {d} unit{'s' if d != 1 else ''}; use at most {min(self.layers[1:])} "
                "ranks, or --parallel data"
            )

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_bounds", (None,) + tuple(_bounds(d, self.parts) for d in self.layers[1:]))

    @property
    def n_layers(self) -> int:
        return len(self.layers) - 1

    def units(self, layer: int, rank: int) -> slice:
        """The units (columns) of ``layer`` (1..L) that ``rank`` owns."""
        b = self._bounds[layer]
        return slice(b[rank], b[rank + 1])

    def width(self, layer: int, rank: int) -> int:
        b = self._bounds[layer]
        return b[rank + 1] - b[rank]

    def counts(self, layer: int, rows: int) -> tuple[int, ...]:
        """Elements of each rank's block of a (rows × d_layer) matrix."""
        return tuple(rows * self.width(layer, r) for r in range(self.parts))

    def from_blocks(self, layer: int, flat: np.ndarray, full: np.ndarray) -> None:
        """``full`` (n × d_layer) ← the matrix whose rank blocks ``flat`` holds."""
        n, start = full.shape[0], 0
        for r in range(self.parts):
            cols = self.units(layer, r)
            width = cols.stop - cols.start
            full[:, cols] = flat[start : start + n * width].reshape(n, width)
            start += n * width

    # ------------------------------------------------------------------ parameter shards
    def shard_index(self, rank: int) -> np.ndarray:
        """Positions in the serial θ of the entries of ``rank``'s shard, in shard order."""
        parts, start = [], 0
        for l, (d_in, d_out) in enumerate(zip(self.layers[:-1], self.layers[1:]), start=1):
            cols = np.arange(d_out)[self.units(l, rank)]
            parts.append((start + np.arange(d_in)[:, None] * d_out + cols[None, :]).reshape(-1))
            parts.append(start + d_in * d_out + cols)
            start += (d_in + 1) * d_out
        return np.concatenate(parts).astype(np.int64)

    def shard_size(self, rank: int) -> int:
        return sum((d_in + 1) * self.width(l, rank) for l, d_in in enumerate(self.layers[:-1], start=1))

    def shard_sizes(self) -> tuple[int, ...]:
        return tuple(self.shard_size(r) for r in range(self.parts))

    def gather_order(self) -> np.ndarray:
        """Positions in the serial θ of the shards concatenated in rank order."""
        return np.concatenate([self.shard_index(r) for r in range(self.parts)])

    def shard_views(self, shard: np.ndarray, rank: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Views ``(W_l[:, units], b_l[units])`` into a shard vector (writing them writes it)."""
        views, start = [], 0
        for l, d_in in enumerate(self.layers[:-1], start=1):
            w = self.width(l, rank)
            views.append((shard[start : start + d_in * w].reshape(d_in, w), shard[start + d_in * w : start + (d_in + 1) * w]))
            start += (d_in + 1) * w
        return views
