"""The abstract communicator, its metering, and the checks every backend shares.

A :class:`Communicator` offers the handful of collectives data-parallel Hessian-free
training needs (paper, Algorithm 2): a sum-allreduce of the gradient and of every
curvature product, one small allreduce of a few scalars per line-search trial, a
broadcast of the initial parameters, a barrier, and ``abort``; and the two that
model-parallel training adds (``hessfree.models.sharded``): an allgather of each layer's
activations and a reduce-scatter of each back-propagated error.

The public methods live here, once: they validate their arguments, count the call in
the :class:`Meter` and hand plain C-contiguous buffers to a backend's private
``_allreduce`` / ``_bcast`` / ``_barrier`` / ``_allgather`` / ``_reduce_scatter``. Every backend is therefore metered and
validated identically, and a backend cannot forget to count.

Metering semantics (exact and independent of the collective algorithm, so a cost model
can predict the same numbers):

* one *logical collective* is one call of ``allreduce``, ``allreduce_scalars``,
  ``bcast``, ``barrier``, ``allgather`` or ``reduce_scatter``, whatever the backend does
  underneath (``MPIComm`` implements one allreduce as a reduce plus a broadcast; it
  still counts once);
* the *bytes* of a call are the size of the whole array the collective works on, the
  same on every rank: ``arr.nbytes`` for ``allreduce`` and ``bcast`` (root included) and
  for ``reduce_scatter`` (the array every rank contributes in full), ``out.nbytes`` for
  ``allgather`` (the gathered array: every rank's block), ``8·k`` for
  ``allreduce_scalars`` of ``k`` values (sent as float64), 0 for ``barrier``. For the
  two model-parallel collectives this is the paper's count of values exchanged per layer
  (b·d_l), whatever the split;
* a call is counted when it is issued, under the phase current at that moment
  (``Phase.OTHER`` unless inside ``with comm.phase(...)``).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager

import attrs
import numpy as np

from hessfree.errors import ConfigError, InputError
from hessfree.validate import integer, real

#: Seconds a rank waits in one blocking collective before giving up with a CommError.
#: Generous enough for a slow rank computing a full-data gradient, short enough that a
#: dead rank ends the job within minutes rather than hanging it.
DEFAULT_TIMEOUT = 300.0

#: dtypes a collective accepts: what the models and trainer exchange, and what every MPI
#: implementation sums natively.
SUPPORTED_DTYPES = (
    np.dtype(np.float32),
    np.dtype(np.float64),
    np.dtype(np.int32),
    np.dtype(np.int64),
)


class Phase(enum.Enum):
    """What a collective is for; the metering key."""

    GRADIENT = "gradient"
    CURVATURE = "curvature"
    LINE_SEARCH = "line_search"
    OTHER = "other"


class Op(enum.Enum):
    """The kinds of logical collective."""

    ALLREDUCE = "allreduce"
    ALLREDUCE_SCALARS = "allreduce_scalars"
    BCAST = "bcast"
    BARRIER = "barrier"
    ALLGATHER = "allgather"
    REDUCE_SCATTER = "reduce_scatter"


#: the longest deadline a collective may be given (the clocks' waits overflow far above it)
MAX_TIMEOUT = 1e7


def check_timeout(timeout: float) -> float:
    """Return ``timeout`` as a float, or raise ConfigError unless in (0, MAX_TIMEOUT] seconds."""
    return real("comm timeout (seconds)", timeout, low=0, high=MAX_TIMEOUT, low_open=True)


# ---------------------------------------------------------------------------- metering

_count = attrs.field(default=0, validator=[attrs.validators.instance_of(int), attrs.validators.ge(0)])


@attrs.frozen
class PhaseCounts:
    """Logical collectives issued in one phase, by kind, and the bytes each rank sent."""

    allreduce: int = _count
    allreduce_scalars: int = _count
    bcast: int = _count
    barrier: int = _count
    allgather: int = _count
    reduce_scatter: int = _count
    bytes: int = _count

    @property
    def collectives(self) -> int:
        """All logical collectives of the phase."""
        return sum(getattr(self, op.value) for op in Op)

    def __add__(self, other: PhaseCounts) -> PhaseCounts:
        return PhaseCounts(**{f: getattr(self, f) + getattr(other, f) for f in _PHASE_FIELDS})

    def __sub__(self, other: PhaseCounts) -> PhaseCounts:
        """Counts issued between two snapshots (``later - earlier``)."""
        diff = {f: getattr(self, f) - getattr(other, f) for f in _PHASE_FIELDS}
        if min(diff.values()) < 0:
            raise InputError("subtracting a later count from an earlier one")
        return PhaseCounts(**diff)

    def as_dict(self) -> dict[str, int]:
        """Plain ints, JSON-ready, with the derived ``collectives`` total."""
        return {**attrs.asdict(self), "collectives": self.collectives}


_PHASE_FIELDS = tuple(f.name for f in attrs.fields(PhaseCounts))
_zero = attrs.field(factory=PhaseCounts, validator=attrs.validators.instance_of(PhaseCounts))


@attrs.frozen
class CommCounts:
    """Frozen snapshot of a communicator's meter: one :class:`PhaseCounts` per phase."""

    gradient: PhaseCounts = _zero
    curvature: PhaseCounts = _zero
    line_search: PhaseCounts = _zero
    other: PhaseCounts = _zero

    def __getitem__(self, phase: Phase) -> PhaseCounts:
        return getattr(self, Phase(phase).value)

    @property
    def total(self) -> PhaseCounts:
        """Sum over all phases."""
        result = PhaseCounts()
        for phase in Phase:
            result = result + self[phase]
        return result

    def __sub__(self, other: CommCounts) -> CommCounts:
        """Counts issued between two snapshots (``later - earlier``)."""
        return CommCounts(**{p.value: self[p] - other[p] for p in Phase})

    def __add__(self, other: CommCounts) -> CommCounts:
        return CommCounts(**{p.value: self[p] + other[p] for p in Phase})

    def summary(self) -> dict[str, dict[str, int]]:
        """``{phase: {"calls": collectives, "bytes": n}}``: what training records report."""
        return {p.value: {"calls": self[p].collectives, "bytes": self[p].bytes} for p in Phase}

    @classmethod
    def from_dict(cls, data: dict) -> CommCounts:
        """The inverse of :meth:`as_dict` (the derived ``collectives`` totals are ignored;
        kinds added later, :data:`LATER_KINDS`, count 0 where absent)."""
        return cls(**{p.value: PhaseCounts(**{f: _stored(data[p.value], f) for f in _PHASE_FIELDS}) for p in Phase})

    def as_dict(self) -> dict[str, dict[str, int]]:
        """Nested plain dict ``{phase: {kind: count, "bytes": n, "collectives": n}}``."""
        return {p.value: self[p].as_dict() for p in Phase}


#: collective kinds added after counts were first stored (checkpoints, metrics): a stored
#: count without them predates them, so it holds none
LATER_KINDS = (Op.ALLGATHER.value, Op.REDUCE_SCATTER.value)


def _stored(row: dict, field: str) -> int:
    return row.get(field, 0) if field in LATER_KINDS else row[field]


def with_later_kinds(counts: dict) -> dict:
    """A stored ``CommCounts.as_dict()`` with :data:`LATER_KINDS` filled in as 0 where it
    predates them (a checkpoint written before model parallelism); other keys as they are."""
    return {phase: {**{k: 0 for k in LATER_KINDS}, **row} if isinstance(row, dict) else row for phase, row in counts.items()}


class Meter:
    """Mutable per-communicator counters (one per rank; never shared between ranks)."""

    def __init__(self) -> None:
        self._phase = Phase.OTHER
        self._calls = {(p, op): 0 for p in Phase for op in Op}
        self._bytes = {p: 0 for p in Phase}

    @property
    def phase(self) -> Phase:
        """The phase new collectives are counted under."""
        return self._phase

    @contextmanager
    def phase_scope(self, phase: Phase) -> Iterator[Phase]:
        """Count collectives under ``phase`` inside the block; restore the outer phase."""
        try:
            phase = Phase(phase)
        except ValueError:
            raise InputError(f"unknown phase {phase!r}; choose from {[p.value for p in Phase]}") from None
        outer, self._phase = self._phase, phase
        try:
            yield phase
        finally:
            self._phase = outer

    def record(self, op: Op, nbytes: int) -> None:
        """Count one logical collective of kind ``op`` carrying ``nbytes`` per rank."""
        self._calls[self._phase, op] += 1
        self._bytes[self._phase] += int(nbytes)

    def snapshot(self) -> CommCounts:
        """The counts so far, frozen."""
        return CommCounts(
            **{
                p.value: PhaseCounts(**{op.value: self._calls[p, op] for op in Op}, bytes=self._bytes[p])
                for p in Phase
            }
        )

    def reset(self) -> None:
        """Zero every counter (the current phase is kept)."""
        for key in self._calls:
            self._calls[key] = 0
        for key in self._bytes:
            self._bytes[key] = 0


# ---------------------------------------------------------------------- communicator


def _check_array(arr: object, name: str) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise InputError(f"{name} must be a numpy array, got {type(arr).__name__}")
    if arr.dtype not in SUPPORTED_DTYPES:
        raise InputError(
            f"{name} has dtype {arr.dtype}; collectives support {[str(d) for d in SUPPORTED_DTYPES]}"
        )
    return arr


def _check_writable_buffer(arr: np.ndarray, name: str) -> None:
    if not arr.flags.c_contiguous:
        raise InputError(f"{name} must be C-contiguous to be used as a receive buffer")
    if not arr.flags.writeable:
        raise InputError(f"{name} is read-only and cannot receive a collective's result")


def _send_buffer(arr: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The buffer to send: ``out`` itself when reducing in place, else a contiguous input
    that does not overlap ``out`` (MPI forbids aliased send and receive buffers)."""
    same_memory = arr.flags.c_contiguous and arr.ctypes.data == out.ctypes.data
    if out is arr or same_memory:
        return out
    if np.may_share_memory(arr, out):
        return arr.copy(order="C")
    # not np.ascontiguousarray, which turns a 0-d array into shape (1,)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")


class Communicator(ABC):
    """One rank's view of a group of ``size`` ranks running the same program.

    Every rank must issue the same collectives in the same order with the same shapes
    and dtypes (the trainer guarantees this by branching only on reduced values).
    After a collective raises :class:`~hessfree.errors.CommError` the communicator is
    broken: every later collective raises too, and the caller should stop (the CLI exits
    non-zero, which under ``python -m mpi4py`` aborts the whole MPI job).
    """

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._timeout = check_timeout(timeout)
        self._meter = Meter()

    # -- identity --------------------------------------------------------------
    @property
    @abstractmethod
    def rank(self) -> int:
        """This rank's index, 0 ≤ rank < size."""

    @property
    @abstractmethod
    def size(self) -> int:
        """Number of ranks."""

    @property
    def timeout(self) -> float:
        """Seconds a blocking collective waits for the other ranks before raising CommError."""
        return self._timeout

    @property
    def allows_parallel_kernels(self) -> bool:
        """Whether numba ``parallel=True`` kernels may be launched from this rank.

        False when ranks are threads of one process (numba's default threading layer
        aborts when parallel kernels are launched from several threads at once).
        """
        return True

    # -- metering --------------------------------------------------------------
    @property
    def meter(self) -> Meter:
        """This rank's mutable counters."""
        return self._meter

    def counts(self) -> CommCounts:
        """Frozen snapshot of the collectives issued so far, per phase."""
        return self._meter.snapshot()

    def phase(self, phase: Phase) -> AbstractContextManager[Phase]:
        """``with comm.phase(Phase.GRADIENT): ...`` counts the block's collectives there."""
        return self._meter.phase_scope(phase)

    def _describe(self, op: Op) -> str:
        return f"{op.value} (phase {self._meter.phase.value})"

    # -- collectives -----------------------------------------------------------
    def allreduce(self, arr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Sum ``arr`` over all ranks into ``out`` and return ``out``.

        ``out`` defaults to a new array; pass ``out=arr`` to reduce in place. Every rank
        receives bitwise the same result. ``arr`` and ``out`` need the same shape and
        dtype; ``out`` must be C-contiguous and writable.
        """
        arr = _check_array(arr, "allreduce input")
        if out is None:
            out = np.empty_like(arr, order="C")
        else:
            _check_array(out, "allreduce out")
            if out.shape != arr.shape or out.dtype != arr.dtype:
                raise InputError(
                    f"allreduce out has shape {out.shape} dtype {out.dtype}, "
                    f"input has shape {arr.shape} dtype {arr.dtype}"
                )
            _check_writable_buffer(out, "allreduce out")
        send = _send_buffer(arr, out)
        self._meter.record(Op.ALLREDUCE, arr.nbytes)
        self._allreduce(send, out, self._describe(Op.ALLREDUCE))
        return out

    def allreduce_scalars(self, *values: float) -> np.ndarray:
        """Sum a few scalars over all ranks in one collective; return them as float64.

        Non-finite values are summed like any other (a NaN loss must reach every rank so
        that all of them reject the step together).
        """
        if not values:
            raise InputError("allreduce_scalars needs at least one value")
        try:
            buf = np.array([float(v) for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"allreduce_scalars takes real numbers, got {values!r}") from None
        self._meter.record(Op.ALLREDUCE_SCALARS, buf.nbytes)
        self._allreduce(buf, buf, self._describe(Op.ALLREDUCE_SCALARS))
        return buf

    def bcast(self, arr: np.ndarray, root: int = 0) -> np.ndarray:
        """Copy ``arr`` of rank ``root`` into ``arr`` on every other rank, in place; return it."""
        arr = _check_array(arr, "bcast buffer")
        _check_writable_buffer(arr, "bcast buffer")
        try:
            root = integer("bcast root", root, 0, self.size - 1)
        except ConfigError as exc:
            raise InputError(str(exc)) from None
        self._meter.record(Op.BCAST, arr.nbytes)
        self._bcast(arr, int(root), self._describe(Op.BCAST))
        return arr

    def allgather(self, block: np.ndarray, out: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """Every rank's ``block``, flattened and in rank order, into ``out`` on every rank.

        ``counts[r]`` is the number of elements rank r contributes (the same sequence on
        every rank; ranks may contribute different counts, e.g. uneven layer splits):
        ``block.size == counts[rank]`` and ``out.size == sum(counts)``, one dtype, ``out``
        C-contiguous, writable and not overlapping ``block``. Rank r's elements land at
        ``out.flat[sum(counts[:r]) : sum(counts[:r + 1])]``; every rank receives bitwise the
        same array. Returns ``out``.
        """
        send, flat, counts = self._check_blocks("allgather", block, out, counts, block_is_input=True)
        self._meter.record(Op.ALLGATHER, out.nbytes)
        self._allgather(send, flat, counts, self._describe(Op.ALLGATHER))
        return out

    def reduce_scatter(self, arr: np.ndarray, out: np.ndarray, counts: Sequence[int]) -> np.ndarray:
        """Sum ``arr`` over ranks; rank r receives block r of the flattened sum in ``out``.

        ``counts[r]`` is the length of rank r's block (the same sequence on every rank):
        ``arr.size == sum(counts)`` and ``out.size == counts[rank]``, one dtype, ``out``
        C-contiguous, writable and not overlapping ``arr``. Each block is the sum of the
        ranks' arrays in the backend's order (rank order for serial and threads). Returns
        ``out``.
        """
        send, flat, counts = self._check_blocks("reduce_scatter", out, arr, counts, block_is_input=False)
        self._meter.record(Op.REDUCE_SCATTER, arr.nbytes)
        self._reduce_scatter(send, flat, counts, self._describe(Op.REDUCE_SCATTER))
        return out

    def _check_blocks(self, name: str, block: object, whole: object, counts, *, block_is_input: bool):
        """(send, receive, counts) of a block collective: the flat C-contiguous input, the
        flat output view and the counts as a tuple of ints, after every check."""
        block = _check_array(block, f"{name} {'input' if block_is_input else 'out'}")
        whole = _check_array(whole, f"{name} {'out' if block_is_input else 'input'}")
        if block.dtype != whole.dtype:
            raise InputError(f"{name}: the block has dtype {block.dtype}, the whole array {whole.dtype}")
        try:
            counts = tuple(int(c) for c in counts)
        except (TypeError, ValueError):
            raise InputError(f"{name} counts must be a sequence of {self.size} element counts, got {counts!r}") from None
        if len(counts) != self.size or min(counts, default=0) < 0:
            raise InputError(f"{name} counts must be {self.size} non-negative element counts (one per rank), got {list(counts)}")
        if block.size != counts[self.rank] or whole.size != sum(counts):
            raise InputError(
                f"{name}: rank {self.rank}'s block has {block.size} elements (counts say {counts[self.rank]}) and the "
                f"whole array {whole.size} (counts sum to {sum(counts)})"
            )
        out, send = (whole, block) if block_is_input else (block, whole)
        _check_writable_buffer(out, f"{name} out")
        if np.may_share_memory(send, out) or not send.flags.c_contiguous:
            send = send.copy(order="C")
        return send.reshape(-1), out.reshape(-1), counts

    def barrier(self) -> None:
        """Return once every rank has called ``barrier``."""
        self._meter.record(Op.BARRIER, 0)
        self._barrier(self._describe(Op.BARRIER))

    @abstractmethod
    def abort(self, code: int = 1) -> None:
        """End every rank with exit status ``code`` (best effort, does not return normally)."""

    # -- backend hooks: buffers are validated, C-contiguous, same shape and dtype -------
    @abstractmethod
    def _allreduce(self, send: np.ndarray, out: np.ndarray, what: str) -> None:
        """Sum ``send`` over ranks into ``out`` (``send is out`` for in place)."""

    @abstractmethod
    def _bcast(self, buf: np.ndarray, root: int, what: str) -> None:
        """Broadcast ``buf`` from ``root`` in place."""

    @abstractmethod
    def _barrier(self, what: str) -> None:
        """Synchronize all ranks."""

    @abstractmethod
    def _allgather(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        """Concatenate every rank's flat ``send`` (``counts[r]`` elements) into the flat ``out``."""

    @abstractmethod
    def _reduce_scatter(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        """Sum the flat ``send`` over ranks; block ``rank`` of the sum into the flat ``out``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, size={self.size}, timeout={self.timeout})"
