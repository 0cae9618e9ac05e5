"""Ranks as MPI processes, through mpi4py's buffer collectives.

mpi4py is imported only when an :class:`MPIComm` is created, so hessfree works without
MPI installed. The communicator works on a ``Dup()`` of ``MPI.COMM_WORLD`` (its traffic
can never match a user's or a library's messages on the world communicator) and uses the
upper-case, buffer-based methods only: arrays are never pickled.

Bitwise-equal results on every rank. MPI does not promise that ``MPI_Allreduce`` of
floating-point data gives every rank the same bits (an implementation may sum in a
different order on different ranks, e.g. in a ring or recursive-halving algorithm). So
an allreduce here is a reduce to rank 0 followed by a broadcast of rank 0's bytes:
every rank ends up with exactly the same array, at the price of a second step. It is
still counted as one logical allreduce. The model-parallel collectives are MPI's own
(``Iallgatherv``, ``Ireduce_scatter``): a gather copies bytes, so every rank receives the
same ones, and each block of a reduce-scatter lives on one rank only.

Deadline. Each collective is started in its non-blocking form (``Ireduce``, ``Ibcast``,
``Ibarrier``) and ``Request.Test()`` is polled until it completes or ``timeout`` seconds
have passed. Open MPI advances a non-blocking collective only while it is polled, so for
the first ``_SPIN_SECONDS`` the loop spins on ``Test()``, yielding the core
(``sched_yield``) between polls so that oversubscribed ranks still run; only a longer
wait backs off to short, growing sleeps (10 µs up to 0.5 ms). Sleeping from the start
made a 2.5 MB allreduce take 220 ms instead of MPI_Allreduce's 1.4 ms. Then CommError names the collective and its phase;
the communicator is unusable afterwards. Launched as
``mpirun -n P python -m mpi4py -m hessfree ...``, the uncaught error (or the CLI's
non-zero exit) makes mpi4py call ``MPI_Abort``, which ends every rank.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from hessfree.comm.base import DEFAULT_TIMEOUT, Communicator
from hessfree.errors import CommError

_SPIN_SECONDS = 1.0
_FIRST_PAUSE = 1e-5
_MAX_PAUSE = 5e-4
_ROOT = 0


def import_mpi() -> Any:
    """``mpi4py.MPI``, or CommError saying how to install it."""
    try:
        from mpi4py import MPI
    except ImportError as error:
        raise CommError(
            "the mpi backend needs mpi4py and an MPI library: pip install 'hessfree[mpi]' "
            f"({error})"
        ) from error
    return MPI


class MPIComm(Communicator):
    """One MPI process of the job. ``comm`` defaults to ``MPI.COMM_WORLD`` (duplicated)."""

    def __init__(self, comm: Any = None, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)
        self._mpi = import_mpi()
        base = self._mpi.COMM_WORLD if comm is None else comm
        self._comm = base.Dup()
        self._rank = self._comm.Get_rank()
        self._size = self._comm.Get_size()
        self._broken: str | None = None
        # requests abandoned at a timeout keep their buffers alive here, so MPI never
        # writes into freed memory
        self._abandoned: list[tuple[Any, tuple[np.ndarray, ...]]] = []

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    @property
    def mpi_comm(self) -> Any:
        """The duplicated mpi4py communicator (for tools that need raw MPI)."""
        return self._comm

    def abort(self, code: int = 1) -> None:
        """``MPI_Abort``: end every process of the job with status ``code``."""
        self._comm.Abort(int(code))

    def close(self) -> None:
        """Free the duplicated communicator (collective; skipped once broken)."""
        if self._broken is None and self._comm != self._mpi.COMM_NULL:
            self._comm.Free()
        self._broken = self._broken or "closed"

    def finalize(self) -> None:
        """End MPI in this process (``MPI_Finalize``, collective: every rank must call it).

        For a job whose ranks all agreed to stop (an error every rank met, reported once):
        a process that exits with a non-zero status after this is not aborted by mpi4py,
        so Open MPI prints no ``MPI_ABORT`` banner and the exit status is the code."""
        if self._mpi.Is_finalized():
            return
        self.close()
        self._mpi.Finalize()

    # -- completion with a deadline --------------------------------------------------
    def _complete(self, request: Any, buffers: tuple[np.ndarray, ...], what: str, deadline: float) -> None:
        pause = _FIRST_PAUSE
        spin_until = time.monotonic() + _SPIN_SECONDS
        while not request.Test():
            now = time.monotonic()
            if now >= deadline:
                self._abandoned.append((request, buffers))
                self._broken = f"{what} timed out"
                raise CommError(
                    f"rank {self._rank}: {what} timed out after {self.timeout:g} s: not every rank "
                    "joined it (a rank exited early, stalled or failed)"
                )
            if now < spin_until:
                os.sched_yield()
                continue
            time.sleep(min(pause, deadline - now))
            pause = min(2 * pause, _MAX_PAUSE)

    def _check_usable(self, what: str) -> float:
        if self._broken is not None:
            raise CommError(f"rank {self._rank}: {what}: the communicator is unusable ({self._broken})")
        return time.monotonic() + self.timeout

    # -- collectives ------------------------------------------------------------------
    def _allreduce(self, send: np.ndarray, out: np.ndarray, what: str) -> None:
        deadline = self._check_usable(what)
        # flat views: 0-d arrays become 1-element buffers; C-contiguous so no copies
        send_flat, out_flat = send.reshape(-1), out.reshape(-1)
        if self._rank == _ROOT:
            source = self._mpi.IN_PLACE if send is out else send_flat
            request = self._comm.Ireduce(source, out_flat, op=self._mpi.SUM, root=_ROOT)
        else:
            request = self._comm.Ireduce(send_flat, None, op=self._mpi.SUM, root=_ROOT)
        self._complete(request, (send, out), what, deadline)
        # every rank receives the root's bytes: bitwise-equal results
        self._complete(self._comm.Ibcast(out_flat, root=_ROOT), (out,), what, deadline)

    def _bcast(self, buf: np.ndarray, root: int, what: str) -> None:
        deadline = self._check_usable(what)
        self._complete(self._comm.Ibcast(buf.reshape(-1), root=root), (buf,), what, deadline)

    def _barrier(self, what: str) -> None:
        deadline = self._check_usable(what)
        self._complete(self._comm.Ibarrier(), (), what, deadline)

    def _allgather(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        deadline = self._check_usable(what)
        displacements = np.concatenate(([0], np.cumsum(counts[:-1]))).astype(int).tolist()
        request = self._comm.Iallgatherv(send, [out, (list(counts), displacements)])
        self._complete(request, (send, out), what, deadline)

    def _reduce_scatter(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        deadline = self._check_usable(what)
        request = self._comm.Ireduce_scatter(send, out, list(counts), op=self._mpi.SUM)
        self._complete(request, (send, out), what, deadline)
