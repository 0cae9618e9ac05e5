"""Ranks as Python threads of one process: ``run_threads(fn, size)``.

numpy's BLAS and the models' ``nogil`` numba kernels release the GIL, so rank threads
compute in parallel; the collectives only move references and add arrays.

Each ``run_threads`` call builds its own :class:`_World` (no module-level state), shared by
its ranks. A collective is one or two *rendezvous* of all ranks:

``allreduce``
    rendezvous 1 publishes every rank's input and output buffers; rank ``r`` then sums
    the element slice ``[n·r/P, n·(r+1)/P)`` of all inputs **in rank order**
    ``((x₀ + x₁) + x₂) + …`` and writes that slice into every rank's output; rendezvous
    2 waits until all slices are written. Each element is computed once, by one rank,
    in a fixed order, so every rank holds bitwise the same result, equal run to run and
    to the numpy expression ``x₀ + x₁ + …``. In place is safe: a rank writes only its
    own slice, which no other rank reads.
``bcast``
    rendezvous 1 publishes the root's buffer, the others copy it, rendezvous 2 keeps the
    root from changing it before everyone has copied.
``barrier``
    one rendezvous.

The rank that completes a rendezvous also checks that every rank called the same
collective with the same shape, dtype and root; a mismatch raises CommError on all
ranks (it would be a silent wrong answer or a hang under MPI).

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


class _World:
    """The rendezvous state shared by the ranks of one ``run_threads`` call."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self._cond = threading.Condition()
        self._generation = 0  # completed rendezvous
        self._arrived = 0  # ranks waiting in the current rendezvous
        self._entered = [0] * size  # rendezvous entered, per rank
        self._slots: list[Any] = [None] * size  # what each rank published this rendezvous
        self._keys: list[Hashable] = [None] * size  # what each rank says it is calling
        self._released: tuple[list[Any], str | None] = ([], None)  # payloads, mismatch
        self._finished: set[int] = set()
        self._broken: str | None = None  # why no rendezvous can complete any more
        self._first_error: tuple[int, BaseException] | None = None

    # -- rendezvous -------------------------------------------------------------
    def rendezvous(self, rank: int, what: str, key: Hashable, payload: Any, deadline: float) -> list[Any]:
        """Wait until all ranks arrive; return every rank's ``payload`` in rank order.

        ``key`` describes the call (kind, shape, dtype, root); all ranks must agree.
        """
        with self._cond:
            self._raise_if_unusable(rank, what)
            generation = self._generation
            self._entered[rank] += 1
            self._slots[rank] = payload
            self._keys[rank] = key
            self._arrived += 1
            if self._arrived == self.size:
                self._release()
            else:
                self._wait_for_release(rank, what, generation, deadline)
            payloads, mismatch = self._released
            if mismatch is not None:
                raise CommError(f"rank {rank}: {what}: ranks called different collectives: {mismatch}")
            return payloads

    def _release(self) -> None:
        """Called by the last rank to arrive: publish the payloads, wake the others."""
        mismatch = None
        if any(k != self._keys[0] for k in self._keys):
            mismatch = "; ".join(f"rank {r}: {k}" for r, k in enumerate(self._keys))
            self._broken = f"ranks called different collectives ({mismatch})"
        self._released = (list(self._slots), mismatch)
        self._slots = [None] * self.size
        self._arrived = 0
        self._generation += 1
        self._cond.notify_all()

    def _wait_for_release(self, rank: int, what: str, generation: int, deadline: float) -> None:
        while self._generation == generation:
            if self._broken is not None:
                self._raise_broken(rank, what)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._break(self._timeout_reason(rank))
                self._raise_broken(rank, what)
            self._cond.wait(remaining)

    def _raise_if_unusable(self, rank: int, what: str) -> None:
        if self._broken is None and self._finished:
            done = sorted(self._finished)
            self._break(f"rank(s) {done} already returned, so no collective can complete")
        if self._broken is not None:
            self._raise_broken(rank, what)

    def _timeout_reason(self, rank: int) -> str:
        missing = [r for r in range(self.size) if self._entered[r] < self._entered[rank]]
        return (
            f"timed out after {self.timeout:g} s waiting for rank(s) {missing} "
            "(not in any collective: still computing, stalled or gone)"
        )

    def _break(self, reason: str) -> None:
        if self._broken is None:
            self._broken = reason
        self._cond.notify_all()

    def _raise_broken(self, rank: int, what: str) -> None:
        raise CommError(f"rank {rank}: {what} did not complete: {self._broken}")

    # -- lifecycle ----------------------------------------------------------------
    def fail(self, rank: int, error: BaseException) -> None:
        """Record ``rank``'s error (the first one wins) and wake every waiting rank."""
        with self._cond:
            if self._first_error is None:
                self._first_error = (rank, error)
            self._break(f"rank {rank} failed with {error!r}")

    def finish(self, rank: int) -> None:
        """``rank``'s function has ended; ranks waiting for it can never be released."""
        with self._cond:
            self._finished.add(rank)
            if self._arrived > 0:
                self._break(f"rank {rank} returned while other ranks wait in a collective")
            self._cond.notify_all()

    def wait_for_ranks(self, threads: Sequence[threading.Thread]) -> None:
        """Block until every rank finished, or after a failure until the others have
        been woken (at most ``timeout`` more seconds for ranks stuck outside collectives)."""
        with self._cond:
            while len(self._finished) < self.size and self._first_error is None:
                self._cond.wait(_POLL_SECONDS)
        if self._first_error is not None:
            grace_end = time.monotonic() + self.timeout
            for thread in threads:
                thread.join(max(0.0, grace_end - time.monotonic()))

    @property
    def first_error(self) -> tuple[int, BaseException] | None:
        return self._first_error


def _slice_of(n: int, size: int, rank: int) -> slice:
    """Rank ``rank``'s share of ``n`` elements: contiguous, balanced, covering 0..n."""
    return slice(n * rank // size, n * (rank + 1) // size)


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
        deadline = self._deadline()
        key = ("allreduce", send.shape, send.dtype.str)
        buffers = self._world.rendezvous(self._rank, what, key, (send, out), deadline)
        mine = _slice_of(send.size, self.size, self._rank)
        if mine.stop > mine.start:
            # fixed rank order: ((x0 + x1) + x2) + ...; copied first because x_r may be out_r
            total = buffers[0][0].reshape(-1)[mine].copy()
            for rank_send, _ in buffers[1:]:
                np.add(total, rank_send.reshape(-1)[mine], out=total)
            for _, rank_out in buffers:
                rank_out.reshape(-1)[mine] = total
        self._world.rendezvous(self._rank, what, "allreduce written", None, deadline)

    def _bcast(self, buf: np.ndarray, root: int, what: str) -> None:
        deadline = self._deadline()
        key = ("bcast", buf.shape, buf.dtype.str, f"root={root}")
        buffers = self._world.rendezvous(self._rank, what, key, buf, deadline)
        if self._rank != root:
            np.copyto(buf, buffers[root])
        self._world.rendezvous(self._rank, what, "bcast copied", None, deadline)

    def _barrier(self, what: str) -> None:
        self._world.rendezvous(self._rank, what, ("barrier",), None, self._deadline())


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
