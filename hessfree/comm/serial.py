"""A communicator of one rank: collectives are identities, but still validated and counted."""

from __future__ import annotations

import numpy as np

from hessfree.comm.base import DEFAULT_TIMEOUT, Communicator
from hessfree.errors import CommError


def aborted_error(rank: int, code: int) -> CommError:
    """The error ``abort(code)`` raises where ranks live in this process (serial, threads).

    Its ``exit_code`` is ``code``, so a CLI that maps errors to exit statuses ends with
    the status the caller asked for; the library itself never exits the process.
    """
    error = CommError(f"rank {rank} aborted the communicator with code {code}")
    error.exit_code = int(code)
    return error


class SerialComm(Communicator):
    """``size == 1``. The sum over one rank is the array itself."""

    def __init__(self, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        super().__init__(timeout=timeout)

    @property
    def rank(self) -> int:
        return 0

    @property
    def size(self) -> int:
        return 1

    def abort(self, code: int = 1) -> None:
        """Raise CommError with ``exit_code == code``."""
        raise aborted_error(0, code)

    def _allreduce(self, send: np.ndarray, out: np.ndarray, what: str) -> None:
        if send is not out:
            np.copyto(out, send)

    def _bcast(self, buf: np.ndarray, root: int, what: str) -> None:
        pass

    def _barrier(self, what: str) -> None:
        pass

    def _allgather(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        np.copyto(out, send)

    def _reduce_scatter(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        np.copyto(out, send)
