"""Ranks as Python threads of one process: ``run_threads(fn, size)``.

numpy's BLAS and the models' ``nogil`` numba kernels release the GIL, so rank threads
compute in parallel; the collectives only add and copy arrays and move references.

Each ``run_threads`` call builds its own :class:`_World` (no module-level state), shared by
its ranks. Every collective is **one** *rendezvous* of all ranks: each rank publishes its
buffers and waits; the rank that completes the collective's work writes every rank's
result and only then wakes the others, which return at once.

``allreduce``
    the sum is built in rank order ``((x₀ + x₁) + x₂) + …`` *while the ranks arrive*:
    whenever the next input in rank order has been published, an arrived rank (one at a
    time) adds it to a running total, so the additions overlap the computation of the
    ranks still to come, and the last arrival usually finds part of the sum done. The
    rank that adds the last input writes that addition straight into the last rank's
    output, copies it into every other output, and wakes everyone. Each element is
    therefore computed once, in a fixed order, by whole-array ``np.add`` calls: every
    rank holds bitwise the same result, equal run to run and to the numpy expression
    ``x₀ + x₁ + …``. Partial sums live in a scratch buffer of the world (one per shape
    and dtype, reused, so nothing is allocated per call), never in a rank's buffer, so
    in place is safe: inputs are only read, and outputs are written only by the last
    addition, after every other input has been consumed, while their ranks wait (the
    last rank's output may be its input: an element-wise add may overwrite an operand).
``bcast``
    the rank that completes the rendezvous copies the root's buffer into every other
    rank's buffer; the root cannot change it meanwhile, it is still waiting.
``barrier``
    the rendezvous alone.
``allgather`` and ``reduce_scatter`` (model parallelism)
    once every rank has arrived, the rank completing the rendezvous copies every rank's
    block into every output (a gather: bytes copied, so bitwise the same everywhere), or
    sums the inputs in rank order into the world's scratch and copies each rank's block
    of the sum into its output (the same order, hence bits, as ``allreduce``).

Why this shape: on a 2-core machine with 16 rank threads, each wake-up of a sleeping
thread and each hand-over of a contended GIL costs tens of microseconds, and threads
woken together queue for the GIL one by one. The former design (two rendezvous per
allreduce on one condition variable, each rank summing and writing a 1/16 slice) paid
~75 context switches and ~500 small GIL-releasing numpy calls per 318k-element
allreduce, about 5x the time numpy needs for the whole sum. Now each waiting rank
sleeps on its own lock and is woken once, when its result is already written, and only
returns (no shared ``notify_all`` making every waiter fight for one lock, and the
launching thread is not woken per collective); the numpy work is a handful of
whole-array calls by one thread. ``benchmarks/bench_threads.py`` measures it. Tried and
measured without a gain on 2 shared cores, hence not used: each rank copying its own
result after the release (more GIL hand-overs, the same time), cutting the sum into
per-core lanes with a woken helper rank, cache-sized blocks. Spinning before sleeping is
no option: a spinning Python thread holds the GIL the others need.

The collective's key (kind, shape, dtype, root) of every arriving rank is compared with
the first one's before anything is added; a mismatch stops the summation and, once all
ranks are there, raises CommError on all of them (it would be a silent wrong answer or a
hang under MPI).

Failure handling: when a rank's function raises, the world is *broken*: every rank
waiting in (or later entering) a rendezvous is woken with a CommError, and
``run_threads`` re-raises the first original exception. A rank whose function returns
while others wait in a collective breaks the world the same way, since that collective
can never complete. A rank that stalls trips the deadline (``timeout`` seconds per
collective) with a CommError naming the collective, its phase and the missing ranks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import numpy as np

from hessfree.blas import blas_threads, threads_per_rank
from hessfree.comm.base import DEFAULT_TIMEOUT, Communicator, check_timeout
from hessfree.comm.serial import aborted_error
from hessfree.errors import CommError, ConfigError

T = TypeVar("T")

# How often the launching thread wakes while waiting for its ranks (keeps Ctrl-C working).
_POLL_SECONDS = 0.2

# Arrays at least this long are added / copied with the world's mutex released, so that
# ranks arriving meanwhile can publish their input (and the summing rank picks it up);
# shorter ones cost less than the extra lock round trip.
_UNLOCKED_ELEMENTS = 4096

# Scratch buffers a world keeps (one per shape and dtype reduced); past this many the
# cache is emptied, bounding the memory of a program reducing ever new shapes.
_MAX_SCRATCH = 8

# What the rank completing a collective does before it wakes the others.
_BARRIER, _SUM, _COPY_ROOT = "barrier", "sum", "copy root"
_GATHER, _SUM_BLOCKS = "gather", "sum blocks"
#: actions done in one go by the rank completing the rendezvous, once all have arrived
_WHEN_ALL_ARRIVED = (_COPY_ROOT, _GATHER, _SUM_BLOCKS)


class _World:
    """The rendezvous state shared by the ranks of one ``run_threads`` call.

    Every field is guarded by ``_mutex``. While ``_working`` is set, one rank runs the
    collective's numpy work, with the mutex released for large arrays, on the published
    buffers and the scratch; nobody else touches those, and the rendezvous cannot be
    released, until it has finished.
    """

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._mutex = threading.Lock()
        self._launcher = threading.Condition(self._mutex)  # run_threads waits here
        # one lock per rank, held while nobody wakes it: a waiting rank blocks on its own
        # lock, so a release wakes exactly the ranks that wait, each once
        self._wakeup = [threading.Lock() for _ in range(size)]
        for lock in self._wakeup:
            lock.acquire()
        self._asleep = [False] * size  # rank r blocks on _wakeup[r] and is owed a release
        self._generation = 0  # completed rendezvous
        self._arrived = 0  # ranks waiting in the current rendezvous
        self._entered = [0] * size  # rendezvous entered, per rank
        self._slots: list[Any] = [None] * size  # what each rank published this rendezvous
        self._keys: list[Hashable] = [None] * size  # what each rank says it is calling
        self._first_key: Hashable = None  # the first arrival's key; all must equal it
        self._agree = True  # every key so far equals _first_key
        self._action = _BARRIER  # what completes the current rendezvous
        self._root = 0  # bcast root of the current rendezvous
        self._working = False  # a rank runs the numpy work (mutex released if large)
        self._summed = 0  # inputs 0.._summed-1 are in _total; == size once outputs are written
        self._total: np.ndarray | None = None
        self._scratch: dict[tuple, np.ndarray] = {}
        self._released: tuple[list[Any], str | None] = ([], None)  # payloads, mismatch
        self._finished: set[int] = set()
        self._broken: str | None = None  # why no rendezvous can complete any more
        self._first_error: tuple[int, BaseException] | None = None

    # -- rendezvous -------------------------------------------------------------
    def rendezvous(self, rank: int, what: str, key: Hashable, payload: Any, deadline: float) -> list[Any]:
        """Wait until all ranks arrive; return every rank's ``payload`` in rank order.

        ``key`` describes the call (kind, shape, dtype, root); all ranks must agree.
        """
        return self._meet(rank, what, key, payload, deadline, _BARRIER)

    def allreduce(self, rank: int, what: str, key: Hashable, send: np.ndarray, out: np.ndarray,
                  deadline: float) -> None:
        """Sum every rank's ``send`` in rank order into every rank's ``out``."""
        self._meet(rank, what, key, (send, out), deadline, _SUM)

    def bcast(self, rank: int, what: str, key: Hashable, buf: np.ndarray, root: int, deadline: float) -> None:
        """Copy rank ``root``'s ``buf`` into every other rank's ``buf``."""
        self._meet(rank, what, key, buf, deadline, _COPY_ROOT, root)

    def blocks(self, rank: int, what: str, key: Hashable, send: np.ndarray, out: np.ndarray,
               counts: tuple[int, ...], deadline: float, summed: bool) -> None:
        """Allgather (``summed`` False) or reduce-scatter (True) of flat blocks of ``counts``."""
        self._meet(rank, what, key, (send, out, counts), deadline, _SUM_BLOCKS if summed else _GATHER)

    def _meet(self, rank: int, what: str, key: Hashable, payload: Any, deadline: float,
              action: str, root: int = 0) -> list[Any]:
        with self._mutex:
            self._raise_if_unusable(rank, what)
            generation = self._generation
            self._entered[rank] += 1
            self._slots[rank] = payload
            self._keys[rank] = key
            if self._arrived == 0:
                self._first_key, self._action, self._root = key, action, root
            elif key != self._first_key:
                self._agree = False  # nothing more is added; all ranks raise once all are in
            self._arrived += 1
            if not self._working:
                self._work(rank)  # may release and retake the mutex
            if self._generation == generation:  # not released while this rank worked
                if self._complete():
                    self._release()
                else:
                    self._wait_for_release(rank, what, generation, deadline)
            payloads, mismatch = self._released
            if mismatch is not None:
                raise CommError(f"rank {rank}: {what}: ranks called different collectives: {mismatch}")
            return payloads

    def _complete(self) -> bool:
        """Whether the current rendezvous may be released (called with the mutex held)."""
        if self._arrived < self.size or self._working or self._broken is not None:
            return False
        if self._agree and self._action != _BARRIER:
            return self._summed == self.size  # the results are written
        return True

    def _work(self, rank: int) -> None:
        """Do what the published buffers allow: extend the running sum by every input
        that is next in rank order, and once all inputs are in (or, for a bcast, all
        ranks), write every rank's result. Called with the mutex held, by one rank at a
        time (``_working``); releases the mutex around large numpy calls."""
        if not self._agree or self._broken is not None or self._action == _BARRIER:
            return
        if self._action in _WHEN_ALL_ARRIVED and self._arrived < self.size:
            return
        self._working = True
        try:
            if self._action == _SUM:
                self._add_arrived()
            elif self._action == _COPY_ROOT:
                self._copy_root()
            else:
                self._combine_blocks()
        except BaseException as error:
            self._break(f"rank {rank} failed while combining the buffers: {error!r}")
            raise
        finally:
            self._working = False

    def _add_arrived(self) -> None:
        while self._agree and self._broken is None and self._summed < self.size:
            k = self._summed
            slot = self._slots[k]
            if slot is None:
                return  # rank k has not arrived; whoever brings its input continues
            send, out = slot
            last = k == self.size - 1
            unlocked = send.size >= _UNLOCKED_ELEMENTS
            if unlocked:
                self._mutex.release()
            try:
                total = self._total
                if k == 0:
                    total = send  # read only: x0 itself while it is the whole sum
                else:
                    # partial sums go to the scratch; the last addition straight into the
                    # last rank's output (its input or free memory), saving one copy
                    dest = out if last and _may_receive(out, send, total) else None
                    if dest is None:
                        dest = total if k > 1 else self._scratch_for(send)
                    np.add(total, send, out=dest)
                    total = dest
                if last:
                    # every rank is waiting, so each output is written while nobody reads
                    # it, and each input has been consumed (outputs may be inputs)
                    for _, other in self._slots:
                        if other is not total:
                            np.copyto(other, total)
            finally:
                if unlocked:
                    self._mutex.acquire()
            self._total = total
            self._summed = k + 1
        if self._summed == self.size:
            self._total = None

    def _copy_root(self) -> None:
        source = self._slots[self._root]
        unlocked = source.size >= _UNLOCKED_ELEMENTS
        if unlocked:
            self._mutex.release()
        try:
            for r, buf in enumerate(self._slots):
                if r != self._root:
                    np.copyto(buf, source)
        finally:
            if unlocked:
                self._mutex.acquire()
        self._summed = self.size

    def _combine_blocks(self) -> None:
        """Every rank's output of an allgather or a reduce-scatter, from the published
        ``(send, out, counts)`` of all ranks (flat arrays; every rank waits meanwhile)."""
        counts = self._slots[0][2]
        bounds = np.concatenate(([0], np.cumsum(counts))).tolist()
        large = bounds[-1] >= _UNLOCKED_ELEMENTS
        if large:
            self._mutex.release()
        try:
            if self._action == _GATHER:
                for _, out, _ in self._slots:
                    for r, (send, _, _) in enumerate(self._slots):
                        out[bounds[r] : bounds[r + 1]] = send
            else:
                total = self._slots[0][0]
                if self.size > 1:
                    total = self._scratch_for(total)
                    np.add(self._slots[0][0], self._slots[1][0], out=total)
                    for send, _, _ in self._slots[2:]:
                        np.add(total, send, out=total)
                for r, (_, out, _) in enumerate(self._slots):
                    np.copyto(out, total[bounds[r] : bounds[r + 1]])
        finally:
            if large:
                self._mutex.acquire()
        self._summed = self.size

    def _scratch_for(self, like: np.ndarray) -> np.ndarray:
        """The world's buffer for partial sums of ``like``'s shape and dtype. Only the
        working rank uses it, and only until the outputs are written, before the release,
        so one buffer serves every collective of that shape."""
        key = (like.shape, like.dtype.str)
        buf = self._scratch.get(key)
        if buf is None:
            if len(self._scratch) >= _MAX_SCRATCH:
                self._scratch.clear()
            buf = self._scratch[key] = np.empty_like(like)
        return buf

    def _release(self) -> None:
        """Called by the rank completing the rendezvous: publish the payloads, wake the others."""
        mismatch = None
        if not self._agree:
            mismatch = "; ".join(f"rank {r}: {k}" for r, k in enumerate(self._keys))
            self._broken = f"ranks called different collectives ({mismatch})"
        self._released = (self._slots, mismatch)
        self._slots = [None] * self.size
        self._arrived = 0
        self._summed = 0
        self._total = None
        self._agree = True
        self._generation += 1
        self._wake_all()

    def _wake_all(self) -> None:
        for r in range(self.size):
            if self._asleep[r]:
                self._asleep[r] = False
                self._wakeup[r].release()

    def _wait_for_release(self, rank: int, what: str, generation: int, deadline: float) -> None:
        wakeup = self._wakeup[rank]
        while self._generation == generation:
            if self._broken is not None:
                self._raise_broken(rank, what)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._break(self._timeout_reason(rank))
                self._raise_broken(rank, what)
            self._asleep[rank] = True
            self._mutex.release()
            try:
                woken = wakeup.acquire(timeout=remaining)
            finally:
                self._mutex.acquire()
            if not woken:
                if self._asleep[rank]:
                    self._asleep[rank] = False  # timed out and nobody owes a release
                else:
                    # released between the timeout and retaking the mutex: re-arm the lock
                    wakeup.acquire(blocking=False)

    def _raise_if_unusable(self, rank: int, what: str) -> None:
        if self._broken is None and self._finished:
            done = sorted(self._finished)
            self._break(f"rank(s) {done} already returned, so no collective can complete")
        if self._broken is not None:
            self._raise_broken(rank, what)

    def _timeout_reason(self, rank: int) -> str:
        missing = [r for r in range(self.size) if self._entered[r] < self._entered[rank]]
        if not missing:
            return f"timed out after {self.timeout:g} s: every rank arrived but the results were not written in time"
        return (
            f"timed out after {self.timeout:g} s waiting for rank(s) {missing} "
            "(not in any collective: still computing, stalled or gone)"
        )

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self._wake_all()
        self._launcher.notify_all()

    def _raise_broken(self, rank: int, what: str) -> None:
        raise CommError(f"rank {rank}: {what} did not complete: {self._broken}")

    # -- lifecycle ----------------------------------------------------------------
    def fail(self, rank: int, error: BaseException) -> None:
        """Record ``rank``'s error (the first one wins) and wake every waiting rank."""
        with self._mutex:
            if self._first_error is None:
                self._first_error = (rank, error)
            self._break(f"rank {rank} failed with {error!r}")

    def finish(self, rank: int) -> None:
        """``rank``'s function has ended; ranks waiting for it can never be released."""
        with self._mutex:
            self._finished.add(rank)
            if self._arrived > 0:
                self._break(f"rank {rank} returned while other ranks wait in a collective")
            self._launcher.notify_all()

    def wait_for_ranks(self, threads: Sequence[threading.Thread]) -> None:
        """Block until every rank finished, or after a failure until the others have
        been woken (at most ``timeout`` more seconds for ranks stuck outside collectives)."""
        with self._launcher:
            while len(self._finished) < self.size and self._first_error is None:
                self._launcher.wait(_POLL_SECONDS)
        if self._first_error is not None:
            grace_end = time.monotonic() + self.timeout
            for thread in threads:
                thread.join(max(0.0, grace_end - time.monotonic()))

    @property
    def first_error(self) -> tuple[int, BaseException] | None:
        return self._first_error


def _may_receive(out: np.ndarray, send: np.ndarray, total: np.ndarray) -> bool:
    """Whether ``np.add(total, send, out=out)`` is safe: ``out`` is ``send`` itself (an
    element-wise add may overwrite its input) or overlaps neither operand (ranks could
    hand in views of one shared array)."""
    if np.may_share_memory(out, total):
        return False
    return out is send or not np.may_share_memory(out, send)


class ThreadComm(Communicator):
    """One rank of a :func:`run_threads` world. Created by ``run_threads`` only."""

    def __init__(self, world: _World, rank: int) -> None:
        super().__init__(timeout=world.timeout)
        self._world = world
        self._rank = rank

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._world.size

    @property
    def allows_parallel_kernels(self) -> bool:
        """False: numba ``parallel=True`` kernels must not be launched from rank threads."""
        return False

    def abort(self, code: int = 1) -> None:
        """Break the world (waking every rank) and raise CommError with ``exit_code == code``."""
        error = aborted_error(self._rank, code)
        self._world.fail(self._rank, error)
        raise error

    def _deadline(self) -> float:
        return time.monotonic() + self._world.timeout

    def _allreduce(self, send: np.ndarray, out: np.ndarray, what: str) -> None:
        key = ("allreduce", send.shape, send.dtype.str)
        self._world.allreduce(self._rank, what, key, send, out, self._deadline())

    def _bcast(self, buf: np.ndarray, root: int, what: str) -> None:
        key = ("bcast", buf.shape, buf.dtype.str, f"root={root}")
        self._world.bcast(self._rank, what, key, buf, root, self._deadline())

    def _barrier(self, what: str) -> None:
        self._world.rendezvous(self._rank, what, ("barrier",), None, self._deadline())

    def _allgather(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        key = ("allgather", counts, send.dtype.str)
        self._world.blocks(self._rank, what, key, send, out, counts, self._deadline(), summed=False)

    def _reduce_scatter(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        key = ("reduce_scatter", counts, send.dtype.str)
        self._world.blocks(self._rank, what, key, send, out, counts, self._deadline(), summed=True)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ConfigError(f"number of thread ranks must be an integer >= 1, got {size!r}")
    return int(size)


def run_threads(
    fn: Callable[[ThreadComm], T],
    size: int,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    blas: int | None = None,
) -> list[T]:
    """Run ``fn(comm)`` on ``size`` rank threads; return the results in rank order.

    If a rank raises, every other rank is woken (its pending or next collective raises
    CommError) and the first original exception is re-raised here, with a note naming
    its rank; a ``BaseException`` that is not an ``Exception`` (``SystemExit``,
    ``KeyboardInterrupt``) is wrapped in CommError. Ranks stuck outside any collective
    are waited for at most ``timeout`` more seconds, then abandoned (daemon threads).

    BLAS pools are limited to ``blas`` threads for the duration (threadpoolctl limits
    are process-wide); by default ``max(1, cores // size)``, so ranks do not
    oversubscribe the cores.
    """
    size = _check_size(size)
    timeout = check_timeout(timeout)
    if blas is None:
        blas = threads_per_rank(size)
    world = _World(size, timeout)
    comms = [ThreadComm(world, rank) for rank in range(size)]
    results: list[Any] = [None] * size

    def rank_main(rank: int) -> None:
        try:
            results[rank] = fn(comms[rank])
        except BaseException as error:  # noqa: BLE001 - every failure must wake the others
            world.fail(rank, error)
        finally:
            world.finish(rank)

    threads = [
        threading.Thread(target=rank_main, args=(rank,), name=f"hessfree-rank-{rank}", daemon=True)
        for rank in range(size)
    ]
    with blas_threads(blas):
        for thread in threads:
            thread.start()
        try:
            world.wait_for_ranks(threads)
        except BaseException as error:  # Ctrl-C in the launching thread: stop the ranks
            world.fail(-1, error)
            raise
    _raise_first_error(world, threads)
    return results


def _raise_first_error(world: _World, threads: Sequence[threading.Thread]) -> None:
    if world.first_error is None:
        return
    rank, error = world.first_error
    stuck = [r for r, t in enumerate(threads) if t.is_alive()]
    where = f"raised on rank {rank} of {world.size} (hessfree.comm.run_threads)"
    if stuck:
        where += f"; rank(s) {stuck} were still running and have been abandoned"
    if isinstance(error, Exception):
        error.add_note(where)
        raise error
    raise CommError(f"rank {rank} raised {error!r}; {where}") from error
