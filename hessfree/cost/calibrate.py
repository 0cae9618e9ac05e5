"""Calibration from this machine: the model's kernel speed and the network's α and β.

Compute: each product of the model (forward, gradient, G·v, H·v) is timed on several
row counts (median of a few repeats, after a warm-up); its rate is GEMM FLOPs / time.
The peak is the best rate seen; each product's efficiency curve is its rate / peak per
row count. So the "sustained FLOP rate" includes everything the kernels really do
(the fused elementwise work too), not just BLAS.

Network: ``mpirun -n 2 python -m hessfree.cost._netprobe`` measures a ping-pong between
two ranks (α = half round trip of 8 bytes; β = slope of the half round trip between the
smallest and largest message) and hessfree's own MPI allreduce (reduce + bcast) at
several sizes, least-squares fitted as t = 2(α' + m·β') — the tree formula at P = 2 —
giving the *effective* α', β' the MPI backend reaches (including its polling). Thread
ranks' allreduce is fitted the same way in-process.

Saved as JSON (``Calibration.save``), by default ``$XDG_CACHE_HOME/hessfree/calibration.json``
(``~/.cache/hessfree/calibration.json``).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs
import numpy as np

from hessfree.cost.compute import EfficiencyCurve, NodeSpec, Work, check_layers, flops_per_sample
from hessfree.cost.network import Network
from hessfree.atomic import atomic_write
from hessfree.comm.launch import mpi_environment, mpirun_command
from hessfree.errors import CommError, ConfigError, DataError

DEFAULT_ROWS = (16, 64, 256, 1024, 4096)
CALIBRATED_WORK = (Work.FORWARD, Work.GRADIENT, Work.GV, Work.HV)


def default_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "hessfree" / "calibration.json"


def median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_rates(
    layers: Sequence[int],
    *,
    dtype: str = "float64",
    rows: Sequence[int] = DEFAULT_ROWS,
    repeats: int = 5,
    parallel: bool = False,
    seed: int = 0,
) -> dict[Work, list[tuple[int, float]]]:
    """Measured FLOP/s of each product of the MLP ``layers`` at each row count."""
    from hessfree.models import MLP

    layers = check_layers(layers)
    model = MLP(list(layers), dtype=dtype, parallel=parallel)
    rng = np.random.default_rng(seed)
    theta = model.init_params(seed)
    v = rng.standard_normal(model.n_params).astype(dtype)
    out = np.empty(model.n_params, dtype=dtype)
    rates: dict[Work, list[tuple[int, float]]] = {w: [] for w in CALIBRATED_WORK}
    for n in sorted({int(r) for r in rows}):
        X = rng.standard_normal((n, layers[0])).astype(dtype)
        y = rng.integers(0, layers[-1], n)
        batch = model.batch(X, y)
        cache = model.forward(theta, batch)
        cache.hv(v, out=out)  # the δ_l, computed once per batch as in a solve
        cases = {
            Work.FORWARD: lambda: model.evaluate(theta, batch),
            Work.GRADIENT: lambda: model.loss_grad(theta, batch),
            Work.GV: lambda: cache.gv(v, out=out),
            Work.HV: lambda: cache.hv(v, out=out),
        }
        for work, fn in cases.items():
            t = median_time(fn, repeats)
            rates[work].append((n, flops_per_sample(layers, work) * n / t))
    return rates


def node_from_rates(rates: Mapping[Work, Sequence[tuple[int, float]]], *, itemsize: int, chunk_rows: int = 8192) -> NodeSpec:
    """NodeSpec with peak = best rate and per-product efficiency = rate / peak."""
    peak = max(rate for points in rates.values() for _, rate in points)
    curves = {w.value: EfficiencyCurve([(n, min(1.0, r / peak)) for n, r in pts]) for w, pts in rates.items()}
    curves["default"] = curves[Work.GRADIENT.value]
    return NodeSpec(flops=peak, efficiency=curves, itemsize=itemsize, chunk_rows=chunk_rows)


def fit_tree_p2(sizes: Sequence[int], times: Sequence[float]) -> Network:
    """Least-squares t = a + b·m, read as the P = 2 tree formula 2(α + m·β)."""
    A = np.column_stack([np.ones(len(sizes)), np.asarray(sizes, dtype=float)])
    (a, b), *_ = np.linalg.lstsq(A, np.asarray(times, dtype=float), rcond=None)
    return Network(latency=max(a, 0.0) / 2, inverse_bandwidth=max(b, 0.0) / 2)


def measure_thread_network(sizes: Sequence[int] = (8, 8192, 262144, 2097152), repeats: int = 20) -> Network:
    """Effective α', β' of the thread backend's allreduce at 2 ranks."""
    from hessfree.comm import run_threads

    def work(comm):
        medians = []
        for m in sizes:
            buf = np.ones(max(1, m // 8))
            comm.allreduce(buf, out=buf)
            ts = []
            for _ in range(repeats):
                comm.barrier()
                t0 = time.perf_counter()
                comm.allreduce(buf, out=buf)
                ts.append(time.perf_counter() - t0)
            medians.append(statistics.median(ts))
        return medians

    times = run_threads(work, 2)[0]
    return fit_tree_p2(sizes, times)


def measure_mpi_network(*, mpirun: str | None = None, timeout: float = 180.0) -> dict:
    """Run the two-rank network probe under mpirun; its JSON result (α, β and fits)."""
    cmd = mpirun_command(2, "-m", "hessfree.cost._netprobe", mpirun=mpirun)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_environment())
    except FileNotFoundError:
        raise CommError(f"cannot run {cmd[0]!r}: install the mpi extra (pip install 'hessfree[mpi]')") from None
    except subprocess.TimeoutExpired:
        raise CommError(f"the MPI network probe did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise CommError(f"the MPI network probe failed (exit {proc.returncode}): {' | '.join(tail)}")
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (json.JSONDecodeError, IndexError):
        raise CommError(f"the MPI network probe printed no result: {proc.stdout[-200:]!r}") from None


@attrs.frozen(kw_only=True)
class Calibration:
    """What ``hessfree cost calibrate`` measured: a node, networks, and how."""

    node: NodeSpec
    network: Network | None = None  # MPI ping-pong α, β
    mpi_effective: Network | None = None  # hessfree MPI allreduce, tree P=2 fit
    threads_effective: Network | None = None  # hessfree thread allreduce, tree P=2 fit
    info: dict = attrs.field(factory=dict)

    def as_dict(self) -> dict:
        def net(n):
            return None if n is None else dict(latency=n.latency, inverse_bandwidth=n.inverse_bandwidth)

        return dict(
            format=1,
            node=self.node.as_dict(),
            network=net(self.network),
            mpi_effective=net(self.mpi_effective),
            threads_effective=net(self.threads_effective),
            info=self.info,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Atomic write (temporary file, fsync, replace)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, json.dumps(self.as_dict(), indent=1, allow_nan=False).encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Calibration":
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except OSError as exc:
            raise DataError(f"calibration {path}: cannot read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise DataError(f"calibration {path}: not valid JSON ({exc})") from None

        def net(d):
            return None if d is None else Network(latency=d["latency"], inverse_bandwidth=d["inverse_bandwidth"])

        try:
            return cls(
                node=NodeSpec.from_dict(data["node"]),
                network=net(data.get("network")),
                mpi_effective=net(data.get("mpi_effective")),
                threads_effective=net(data.get("threads_effective")),
                info=dict(data.get("info", {})),
            )
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise DataError(f"calibration {path}: malformed ({exc})") from None


def calibrate(
    layers: Sequence[int],
    *,
    dtype: str = "float64",
    rows: Sequence[int] = DEFAULT_ROWS,
    repeats: int = 5,
    blas_threads: int | None = None,
    parallel: bool = False,
    mpi: bool = True,
    threads: bool = True,
) -> Calibration:
    """Measure this machine: kernel rates for ``layers`` and, optionally, the networks."""
    from hessfree.blas import blas_threads as limit_blas

    itemsize = np.dtype(dtype).itemsize
    if blas_threads is not None:
        with limit_blas(blas_threads):
            rates = measure_rates(layers, dtype=dtype, rows=rows, repeats=repeats, parallel=parallel)
    else:
        rates = measure_rates(layers, dtype=dtype, rows=rows, repeats=repeats, parallel=parallel)
    node = node_from_rates(rates, itemsize=itemsize)
    network = mpi_eff = None
    probe = {}
    if mpi:
        probe = measure_mpi_network()
        network = Network(latency=probe["latency"], inverse_bandwidth=probe["inverse_bandwidth"])
        mpi_eff = Network(latency=probe["effective_latency"], inverse_bandwidth=probe["effective_inverse_bandwidth"])
    thr = measure_thread_network() if threads else None
    info = dict(layers=list(check_layers(layers)), dtype=np.dtype(dtype).name, rows=list(rows),
                blas_threads=blas_threads, parallel=parallel, probe=probe,
                rates={w.value: [[n, r] for n, r in pts] for w, pts in rates.items()})
    return Calibration(node=node, network=network, mpi_effective=mpi_eff, threads_effective=thr, info=info)
