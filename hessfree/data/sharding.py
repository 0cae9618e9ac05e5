"""Which samples each rank owns, and which of them form each curvature mini-batch.

Everything here is a pure function of *global* sizes (sample count ``n``, rank count
``size``, batch size ``b``), so every rank computes the same answer without talking to
the others, and an impossible layout (fewer samples than ranks) fails identically on
every rank instead of leaving some of them waiting in a collective.

Balanced split: ``n = q·P + r`` with ``0 <= r < P``; ranks ``0..r-1`` get ``q + 1``
samples and the others ``q``. Contiguous shards take consecutive runs of the global
order, strided shards take ``rank, rank + P, rank + 2P, ...``; both have exactly these
sizes, so the two modes are interchangeable for balancing purposes.
"""

from __future__ import annotations

import enum

import attrs

from hessfree.errors import ConfigError, DataError
from hessfree.validate import integer


class ShardMode(enum.Enum):
    """How the global sample order is cut into per-rank shards."""

    #: rank ``p`` owns one consecutive run of samples (reads one slice of a file)
    CONTIGUOUS = "contiguous"
    #: rank ``p`` owns samples ``p, p + P, p + 2P, ...`` (interleaved, e.g. for sorted data)
    STRIDED = "strided"


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int ≥ ``minimum`` (bools refused), or ConfigError naming ``name``."""
    return integer(name, value, minimum)


def balanced_count(n: int, rank: int, size: int) -> int:
    """Number of items rank ``rank`` of ``size`` gets when ``n`` items are split evenly."""
    n = check_int("n", n, 0)
    size = check_int("size", size, 1)
    rank = check_int("rank", rank, 0)
    if rank >= size:
        raise ConfigError(f"rank: expected 0 <= rank < size = {size}, found {rank}")
    q, r = divmod(n, size)
    return q + (1 if rank < r else 0)


def check_shardable(n: int, size: int, what: str = "dataset") -> None:
    """Raise ``DataError`` unless every one of ``size`` ranks can own at least one sample.

    Depends only on global sizes, so all ranks raise (or pass) together.
    """
    n = check_int("n", n, 0)
    size = check_int("size", size, 1)
    if n < size:
        raise DataError(
            f"{what}: samples: expected at least one per rank (>= {size} for {size} ranks), found {n}"
        )


def shard_range(n: int, rank: int, size: int) -> range:
    """Global indices of rank ``rank``'s contiguous shard of ``n`` samples.

    Ranks ``0..r-1`` (``r = n mod size``) own ``⌈n/size⌉`` samples, the rest ``⌊n/size⌋``;
    the shards are disjoint, in rank order, and cover ``range(n)``. Empty shards are
    allowed here (use ``check_shardable`` where they are not).
    """
    count = balanced_count(n, rank, size)
    q, r = divmod(n, size)
    # every rank before this one holds q samples, plus one extra for each of the first r
    start = rank * q + min(rank, r)
    return range(start, start + count)


def strided_range(n: int, rank: int, size: int) -> range:
    """Global indices ``rank, rank + size, ...`` below ``n`` (the same sizes as ``shard_range``)."""
    balanced_count(n, rank, size)  # validates the arguments
    return range(rank, n, size)


def shard_indices(n: int, rank: int, size: int, mode: ShardMode = ShardMode.CONTIGUOUS) -> range:
    """Global indices of a rank's shard in either mode."""
    if not isinstance(mode, ShardMode):
        raise ConfigError(f"shard mode: expected one of {[m.value for m in ShardMode]}, found {mode!r}")
    if mode is ShardMode.CONTIGUOUS:
        return shard_range(n, rank, size)
    return strided_range(n, rank, size)


def restrict(rows: range, lo: int, hi: int) -> range:
    """The elements of the increasing range ``rows`` that lie in ``[lo, hi)``, as a range."""

    def count_below(x: int) -> int:
        if x <= rows.start:
            return 0
        return min(len(rows), -(-(x - rows.start) // rows.step))  # ⌈(x − start) / step⌉

    return rows[count_below(lo):count_below(hi)]


class EvalSplit(enum.Enum):
    """What the evaluation arrays (``X_test``/``y_test``) of a loaded dataset hold."""

    TEST = "test"  # the dataset's own test set
    VALIDATION = "validation"  # the tail of the training set, held out (the test set is not loaded)
    NONE = "none"  # no evaluation data


def _nonneg_int(instance, attribute, value) -> None:
    integer(attribute.name, value, 0)


@attrs.frozen
class ShardInfo:
    """Where a rank's arrays sit in the global dataset.

    ``train_rows``/``test_rows`` are the global indices (within the training and the
    evaluation set) of the rows this rank holds. Sums over local rows are reduced across
    ranks and divided by ``n_train_global``/``n_test_global``.
    """

    rank: int = attrs.field(validator=_nonneg_int)
    size: int = attrs.field(validator=_nonneg_int)
    mode: ShardMode = attrs.field(validator=attrs.validators.instance_of(ShardMode))
    n_train_global: int = attrs.field(validator=_nonneg_int)
    n_test_global: int = attrs.field(validator=_nonneg_int)
    train_rows: range = attrs.field(validator=attrs.validators.instance_of(range))
    test_rows: range = attrs.field(validator=attrs.validators.instance_of(range))
    evaluation: EvalSplit = attrs.field(
        default=EvalSplit.TEST, validator=attrs.validators.instance_of(EvalSplit)
    )

    def __attrs_post_init__(self) -> None:
        if self.size < 1 or self.rank >= self.size:
            raise ConfigError(f"rank/size: expected 0 <= rank < size, found rank {self.rank}, size {self.size}")

    @classmethod
    def whole(cls, n_train: int, n_test: int, evaluation: EvalSplit = EvalSplit.TEST) -> "ShardInfo":
        """The trivial layout: one rank holding everything."""
        return cls(0, 1, ShardMode.CONTIGUOUS, n_train, n_test, range(n_train), range(n_test), evaluation)

    @classmethod
    def for_rank(
        cls,
        n_train: int,
        n_test: int,
        rank: int,
        size: int,
        mode: ShardMode = ShardMode.CONTIGUOUS,
        evaluation: EvalSplit = EvalSplit.TEST,
        what: str = "dataset",
    ) -> "ShardInfo":
        """Shards of the training and evaluation sets for one rank.

        The training set must give every rank at least one sample (``DataError`` on every
        rank otherwise); a small evaluation set may leave some ranks empty-handed, which
        is harmless because evaluation sums are reduced.
        """
        rank, size = check_int("rank", rank, 0), check_int("size", size, 1)
        check_shardable(n_train, size, f"{what} training set")
        return cls(
            rank,
            size,
            mode,
            n_train,
            n_test,
            shard_indices(n_train, rank, size, mode),
            shard_indices(n_test, rank, size, mode),
            evaluation,
        )
