"""A communicator wrapper that keeps a bulk-synchronous *simulated* clock per rank.

``SimulatedComm(inner, cost)`` behaves exactly like ``inner`` (same rank, size, results,
failure behaviour) and adds ``clock``: the time this run would have taken on the
simulated cluster. Between two collectives a rank's clock advances by its own measured
compute time (times ``compute_scale``, to stand for faster or slower nodes); at a
collective every rank's clock becomes

    max over ranks of their clocks  +  cost(op, bytes, size)

(bulk-synchronous: nobody leaves a collective before the slowest rank arrived, then the
collective itself takes the network model's time). ``cost`` is any function
``(Op, nbytes, size) -> seconds``; ``hessfree.cost.simulate`` builds it from the α–β
model.

Metering. The wrapper is the communicator the trainer talks to: its own meter counts
the user's collectives exactly as any backend does (one logical call, payload bytes).
The clock exchange (each rank's clock, summed into a P-vector whose max is taken) goes
through ``inner``'s private backend hook, so it is *not* metered anywhere: the counts of
``SimulatedComm`` equal those of an unwrapped run. It costs one extra small reduction of
P float64 per collective in real time, and none in simulated time.

Measuring compute. ``timer`` is a zero-argument clock in seconds; by default the
calling thread's CPU time (``time.thread_time``) under thread ranks — the honest per-rank
measure when ranks share cores — and wall time (``time.perf_counter``) otherwise. Time
spent inside collectives (waiting and copying) is never charged as compute.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from hessfree.comm.base import Communicator, Op, Phase
from hessfree.errors import ConfigError

CostFunction = Callable[[Op, int, int], float]


def default_timer(inner: Communicator) -> Callable[[], float]:
    """Thread CPU time for thread ranks, wall time for processes."""
    return time.thread_time if not inner.allows_parallel_kernels else time.perf_counter


class SimulatedComm(Communicator):
    """``inner`` plus a bulk-synchronous simulated clock (see the module docstring)."""

    def __init__(
        self,
        inner: Communicator,
        cost: CostFunction,
        *,
        compute_scale: float = 1.0,
        timer: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(timeout=inner.timeout)
        if not isinstance(inner, Communicator):
            raise ConfigError(f"SimulatedComm wraps a Communicator, got {type(inner).__name__}")
        scale = float(compute_scale)
        if not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"compute_scale: expected a finite number > 0, found {compute_scale!r}")
        self._inner = inner
        self._cost = cost
        self._scale = scale
        self._timer = timer if timer is not None else default_timer(inner)
        self._clock = 0.0
        self._mark = self._timer()
        self._compute = 0.0  # charged compute time of this rank
        self._wait = 0.0  # time this rank waited for slower ranks
        self._network = {p: 0.0 for p in Phase}  # simulated collective time, per phase
        self._exchange = np.zeros(inner.size, dtype=np.float64)

    # -- identity: the inner communicator's ------------------------------------------
    @property
    def rank(self) -> int:
        return self._inner.rank

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def allows_parallel_kernels(self) -> bool:
        return self._inner.allows_parallel_kernels

    @property
    def inner(self) -> Communicator:
        return self._inner

    def abort(self, code: int = 1) -> None:
        self._inner.abort(code)

    # -- the clock ----------------------------------------------------------------------
    @property
    def clock(self) -> float:
        """Simulated seconds at the last collective plus this rank's compute since then."""
        return self._clock + self._pending()

    def breakdown(self) -> dict[str, float]:
        """Simulated seconds of this rank: compute, waiting for others, network per phase."""
        out = dict(clock=self.clock, compute=self._compute + self._pending(), wait=self._wait)
        out.update({f"network_{p.value}": t for p, t in self._network.items()})
        return out

    def _pending(self) -> float:
        return (self._timer() - self._mark) * self._scale

    def _synchronize(self, op: Op, nbytes: int) -> None:
        """Charge compute since the last collective, then jump to max(clocks) + cost."""
        compute = self._pending()
        self._compute += compute
        mine = self._clock + compute
        self._exchange[:] = 0.0
        self._exchange[self.rank] = mine
        # unmetered: the inner backend's hook, not its public (counting) method
        self._inner._allreduce(self._exchange, self._exchange, f"simulated clock ({op.value})")
        slowest = float(self._exchange.max())
        cost = float(self._cost(op, int(nbytes), self.size))
        self._wait += slowest - mine
        self._network[self.meter.phase] += cost
        self._clock = slowest + cost

    def _restart(self) -> None:
        self._mark = self._timer()

    # -- backend hooks: synchronize clocks, then do the real collective ----------------------
    def _allreduce(self, send: np.ndarray, out: np.ndarray, what: str) -> None:
        op = Op.ALLREDUCE_SCALARS if what.startswith(Op.ALLREDUCE_SCALARS.value) else Op.ALLREDUCE
        self._synchronize(op, send.nbytes)
        self._inner._allreduce(send, out, what)
        self._restart()

    def _bcast(self, buf: np.ndarray, root: int, what: str) -> None:
        self._synchronize(Op.BCAST, buf.nbytes)
        self._inner._bcast(buf, root, what)
        self._restart()

    def _barrier(self, what: str) -> None:
        self._synchronize(Op.BARRIER, 0)
        self._inner._barrier(what)
        self._restart()

    def _allgather(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        self._synchronize(Op.ALLGATHER, out.nbytes)
        self._inner._allgather(send, out, counts, what)
        self._restart()

    def _reduce_scatter(self, send: np.ndarray, out: np.ndarray, counts: tuple[int, ...], what: str) -> None:
        self._synchronize(Op.REDUCE_SCATTER, send.nbytes)
        self._inner._reduce_scatter(send, out, counts, what)
        self._restart()
