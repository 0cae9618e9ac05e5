"""Cost of thread-rank collectives (``hessfree.comm.run_threads``) against the numpy floor.

(a) ``allreduce``: for P = 1, 2, 4, 16 thread ranks and n = 318,010 elements (the
    784-400-10 MLP's gradient plus its loss, as one MSGD update reduces), float32 and
    float64, the time per collective (rank 0's wall time over ``--reps`` back-to-back
    reductions into a separate ``out``, so the inputs never change), beside the *sum
    floor*: the time numpy takes to add the P arrays once in one thread
    (``np.add(x0, x1, out=acc)`` then ``np.add(acc, x_r, out=acc)``), measured in the same
    run, interleaved with the collective (``--rounds`` times). ``ratio`` = median
    collective / median floor; ``min ratio`` = best round / best floor, the steadier
    figure when other processes share the cores, like ``cpu ms`` and ``switches``: the
    CPU time (all threads) and the voluntary context switches the process spends per
    allreduce. Also the time of a barrier and of a 3-scalar allreduce, the pure
    synchronisation cost. Every result is checked bitwise against the numpy expression
    ``x0 + x1 + ...`` on every rank.

(b) One momentum-SGD epoch (784-400-10, float32, b = 64) on synthetic data of MNIST
    shape (Gaussian features, random labels; ``--samples`` training rows), serial (the
    faster of all-core and one-thread BLAS) and on 16 thread ranks; ``ratio`` = 16-rank
    epoch / serial epoch. Then the same 16 ranks with every allreduce turned into a no-op:
    what the ranks' own (redundant, GIL-sharing) work costs before any communication,
    the bound no communicator can beat. And one rank's share of the work, timed alone: a
    serial epoch of updates of 64/P rows (one BLAS thread); ``share_bound_ratio`` = P such
    updates spread perfectly over the cores, without contention, against a serial update
    of 64 rows, the bound of data-parallel thread ranks that each update the whole θ.
    Skipped with ``--no-epoch`` or if the trainer cannot be imported.

``--impl PATH`` times the ``run_threads`` of another copy of ``hessfree/comm/threads.py``;
``--baseline PATH`` times a second copy in the same run, alternating with the first
round by round (so both see the same machine load), e.g. the code before a change::

    git show HEAD:hessfree/comm/threads.py > /tmp/threads_before.py
    python benchmarks/bench_threads.py --baseline /tmp/threads_before.py

Results go to ``benchmarks/results/bench_threads.json`` (``--out``) and a table is
printed. About 1-2 minutes on 2 idle cores (longer with a slow baseline or a busy
machine; ``--samples``, ``--rounds`` and ``--reps`` trade time for precision).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

N_ELEMENTS = 318_010  # 784·400 + 400 + 400·10 + 10 parameters, plus the loss
RANKS = (1, 2, 4, 16)
DTYPES = ("float32", "float64")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_threads.json"


def load_run_threads(impl: str | None, name: str):
    """``run_threads`` of the installed package, or of the threads.py file at ``impl``."""
    if impl is None:
        from hessfree.comm import run_threads

        return run_threads
    spec = importlib.util.spec_from_file_location(f"bench_threads_{name}", impl)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_threads


def sum_floor(arrays: list[np.ndarray], acc: np.ndarray, reps: int) -> float:
    """Median seconds numpy takes to add ``arrays`` once, in rank order, into ``acc``."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        if len(arrays) == 1:
            np.copyto(acc, arrays[0])
        else:
            np.add(arrays[0], arrays[1], out=acc)
            for x in arrays[2:]:
                np.add(acc, x, out=acc)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def process_usage() -> tuple[float, float]:
    """CPU seconds (user + system) of every thread of this process, and its voluntary
    context switches (a thread blocking: on a lock, the GIL); zeros where unsupported."""
    try:
        import resource
    except ImportError:
        return 0.0, 0.0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime, float(usage.ru_nvcsw)


def time_collectives(run_threads, arrays: list[np.ndarray], reference: np.ndarray, reps: int) -> dict[str, float]:
    """Seconds per allreduce / barrier / scalar allreduce on ``len(arrays)`` thread ranks."""

    def work(comm):
        x = arrays[comm.rank]
        out = np.empty_like(x)
        for _ in range(3):  # warm: scratch buffers, page faults
            comm.allreduce(x, out=out)
        comm.barrier()
        u0 = process_usage()
        t0 = time.perf_counter()
        for _ in range(reps):
            comm.allreduce(x, out=out)
        t1 = time.perf_counter()
        comm.barrier()
        u1 = process_usage()
        cpu, switches = ((b - a) / reps for a, b in zip(u0, u1))
        t1b = time.perf_counter()
        for _ in range(reps):
            comm.barrier()
        t2 = time.perf_counter()
        for _ in range(reps):
            comm.allreduce_scalars(1.0, 2.0, 3.0)
        t3 = time.perf_counter()
        return dict(allreduce=(t1 - t0) / reps, barrier=(t2 - t1b) / reps, scalars=(t3 - t2) / reps,
                    cpu=cpu, switches=switches, out=out)

    results = run_threads(work, len(arrays), timeout=120)
    if any(r["out"].tobytes() != reference.tobytes() for r in results):
        raise SystemExit("an allreduce result differs from the rank-order numpy sum x0 + x1 + ...")
    return {k: v for k, v in results[0].items() if k != "out"}


def summarize(times: list[dict], floors: list[float]) -> dict:
    row = {f"{key}_ms": 1e3 * statistics.median(t[key] for t in times) for key in ("allreduce", "barrier", "scalars")}
    row["allreduce_min_ms"] = 1e3 * min(t["allreduce"] for t in times)
    # less sensitive to other processes than wall time: what one allreduce costs the
    # process in CPU time (all threads) and in voluntary context switches
    row["allreduce_cpu_ms"] = 1e3 * statistics.median(t["cpu"] for t in times)
    row["allreduce_switches"] = statistics.median(t["switches"] for t in times)
    row["ratio"] = row["allreduce_ms"] / (1e3 * statistics.median(floors))
    row["ratio_min"] = row["allreduce_min_ms"] / (1e3 * min(floors))
    return row


def bench_allreduce(impls: dict, args) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        for size in args.ranks:
            arrays = [rng.standard_normal(args.n).astype(dtype) for _ in range(size)]
            reference = arrays[0].copy()
            for x in arrays[1:]:
                reference = reference + x
            acc = np.empty_like(arrays[0])
            sum_floor(arrays, acc, 3)
            floors: list[float] = []
            times: dict[str, list] = {name: [] for name in impls}
            for _ in range(args.rounds):
                floors.append(sum_floor(arrays, acc, max(5, args.reps // 10)))
                for name, run_threads in impls.items():
                    times[name].append(time_collectives(run_threads, arrays, reference, args.reps))
            row = dict(dtype=dtype, ranks=size, n=args.n, floor_ms=1e3 * statistics.median(floors),
                       floor_min_ms=1e3 * min(floors))
            row.update(summarize(times["impl"], floors))
            if "baseline" in times:
                row["baseline"] = summarize(times["baseline"], floors)
            rows.append(row)
    return rows


def bench_epoch(impls: dict, args) -> dict:
    """Seconds of one MSGD epoch, serial and on ``args.epoch_ranks`` thread ranks."""
    try:
        from hessfree.comm import SerialComm
        from hessfree.data.dataset import Dataset
        from hessfree.data.sharding import EvalSplit, ShardInfo, ShardMode
        from hessfree.models import MLP
        from hessfree.train.config import TrainConfig

        from hessfree.train.fit import make_trainer
        import attrs
    except ImportError as error:  # the trainer is not importable in this tree
        return dict(skipped=f"cannot import the trainer: {error}")
    rng = np.random.default_rng(1)
    n = args.samples
    X = rng.standard_normal((n, 784), dtype=np.float32)
    y = rng.integers(0, 10, n)
    config = TrainConfig(method="msgd", batch_size=64, lr=0.01, momentum=0.9, epochs=1, seed=1)

    def one_epoch(comm, reduce: bool = True, batch_size: int = 64) -> tuple[float, float]:
        if not reduce:
            # the lower bound of the trainer's own work on these ranks: every reduction
            # (this instance's backend hook) becomes a no-op, so ranks never wait for
            # each other; the gradients stay local, the timing is what matters
            comm._allreduce = lambda send, out, what: None
        shard = ShardInfo.for_rank(n, 0, comm.rank, comm.size, ShardMode.STRIDED, EvalSplit.NONE)
        rows = np.asarray(shard.train_rows)
        data = Dataset("synthetic-mnist-shape", X[rows], y[rows], 10, shard=shard)
        trainer = make_trainer(MLP([784, 400, 10], dtype="float32"), data, attrs.evolve(config, batch_size=batch_size), comm)
        state = trainer.initial_state()
        comm.barrier()
        t0 = time.perf_counter()
        state, record = trainer.step(state)
        return time.perf_counter() - t0, record.loss

    one_epoch(SerialComm())  # numba JIT, page faults
    ranks = args.epoch_ranks
    # serial with the BLAS pools as they are (all cores) and with one thread; the faster
    # counts (on a loaded machine a multi-threaded OpenBLAS can be the slower)
    serial_all, serial_one, no_comm, share = [], [], [], []
    threads: dict[str, list] = {name: [] for name in impls}
    losses = set()
    for _ in range(args.epoch_repeats):
        serial_all.append(one_epoch(SerialComm())[0])
        with threadpool_limits(limits=1):
            serial_one.append(one_epoch(SerialComm())[0])
        for name, run_threads in impls.items():
            run = run_threads(one_epoch, ranks, timeout=600)
            threads[name].append(run[0][0])
            losses |= {loss for _, loss in run}
        no_comm.append(max(t for t, _ in impls["impl"](lambda comm: one_epoch(comm, reduce=False), ranks, timeout=600)))
        with threadpool_limits(limits=1):  # one rank's share: an epoch of updates of 64/P rows
            share.append(one_epoch(SerialComm(), batch_size=64 // ranks)[0])
    serial_s = min(min(serial_all), min(serial_one))
    share_update_s = min(share) / (n // (64 // ranks))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = dict(
        samples=n,
        updates=n // 64,
        ranks=ranks,
        serial_s=serial_s,
        serial_blas_default_s=min(serial_all),
        serial_blas_1_s=min(serial_one),
        threads_without_reduction_s=min(no_comm),
        ratio_without_reduction=min(no_comm) / serial_s,
        ranks_and_implementations_agree=len(losses) == 1,  # bitwise the same loss everywhere
        # one rank's share of an update (64/P rows, the whole θ), timed serially with one
        # BLAS thread; P of them spread perfectly over the cores, without contention, is
        # the bound of a P-rank update, here as a ratio to the serial update
        share_update_ms=1e3 * share_update_s,
        share_bound_ratio=ranks * share_update_s / cores / (serial_s / (n // 64)),
    )
    for name, times in threads.items():
        prefix = "" if name == "impl" else "baseline_"
        result[f"{prefix}threads_s"] = min(times)
        result[f"{prefix}ratio"] = min(times) / serial_s
        result[f"{prefix}per_update_ms"] = 1e3 * min(times) / (n // 64)
    return result


def machine() -> dict:
    return dict(
        platform=platform.platform(),
        cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        python=sys.version.split()[0],
        numpy=np.__version__,
        switch_interval_s=sys.getswitchinterval(),
        loadavg_1min=os.getloadavg()[0],  # other processes sharing the cores
    )


def print_table(result: dict) -> None:
    base = any("baseline" in r for r in result["allreduce"])
    load = result["machine"]
    print(f"median of {result['rounds']} rounds of {result['reps']} collectives (min ratio: best round over best "
          f"floor); load average {load['loadavg_1min']:.1f} -> {load['loadavg_1min_end']:.1f}")
    print(f"{'dtype':8} {'P':>3} {'floor ms':>9} {'allreduce ms':>13} {'ratio':>6} {'min ratio':>9} {'cpu ms':>7} "
          f"{'switches':>8} {'barrier ms':>11} {'scalars ms':>11}"
          + ("  | baseline: allreduce ms  ratio  min ratio  cpu ms  switches" if base else ""))
    for r in result["allreduce"]:
        line = (f"{r['dtype']:8} {r['ranks']:3d} {r['floor_ms']:9.3f} {r['allreduce_ms']:13.3f} {r['ratio']:6.1f} "
                f"{r['ratio_min']:9.1f} {r['allreduce_cpu_ms']:7.3f} {r['allreduce_switches']:8.1f} "
                f"{r['barrier_ms']:11.3f} {r['scalars_ms']:11.3f}")
        if "baseline" in r:
            b = r["baseline"]
            line += (f"  | {b['allreduce_ms']:22.3f} {b['ratio']:6.1f} {b['ratio_min']:10.1f} "
                     f"{b['allreduce_cpu_ms']:7.3f} {b['allreduce_switches']:9.1f}")
        print(line)
    epoch = result.get("epoch")
    if epoch is None:
        return
    if "skipped" in epoch:
        print(f"MSGD epoch skipped: {epoch['skipped']}")
        return
    print(f"MSGD epoch, {epoch['samples']} samples ({epoch['updates']} updates): serial {epoch['serial_s']:.2f} s, "
          f"{epoch['ranks']} thread ranks {epoch['threads_s']:.2f} s, ratio {epoch['ratio']:.1f}")
    if "baseline_threads_s" in epoch:
        print(f"  baseline: {epoch['ranks']} thread ranks {epoch['baseline_threads_s']:.2f} s, "
              f"ratio {epoch['baseline_ratio']:.1f}")
    print(f"  the same ranks with every allreduce a no-op (the trainer's own cost): "
          f"{epoch['threads_without_reduction_s']:.2f} s, ratio {epoch['ratio_without_reduction']:.1f}")
    print(f"  one rank's share of an update, serially: {epoch['share_update_ms']:.3f} ms; {epoch['ranks']} of them "
          f"on all cores at best: ratio {epoch['share_bound_ratio']:.1f}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--impl", help="path of a threads.py to time instead of hessfree.comm.threads")
    parser.add_argument("--baseline", help="path of a second threads.py, timed alternately in the same run")
    parser.add_argument("--n", type=int, default=N_ELEMENTS)
    parser.add_argument("--ranks", type=lambda s: [int(p) for p in s.split(",")], default=list(RANKS))
    parser.add_argument("--reps", type=int, default=100, help="collectives per timing")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved floor/collective timings")
    parser.add_argument("--samples", type=int, default=30_000, help="training rows of the MSGD epoch")
    parser.add_argument("--epoch-ranks", type=int, default=16)
    parser.add_argument("--epoch-repeats", type=int, default=2, help="epochs timed per variant (best counts)")
    parser.add_argument("--no-epoch", action="store_true")
    parser.add_argument("--out", default=str(DEFAULT_OUT))
    args = parser.parse_args(argv)

    impls = {"impl": load_run_threads(args.impl, "impl")}
    if args.baseline:
        impls["baseline"] = load_run_threads(args.baseline, "baseline")
    t0 = time.perf_counter()
    result = dict(benchmark="threads", impl=args.impl or "hessfree.comm.threads", baseline=args.baseline,
                  machine=machine(), rounds=args.rounds, reps=args.reps, allreduce=bench_allreduce(impls, args))
    if not args.no_epoch:
        result["epoch"] = bench_epoch(impls, args)
    result["runtime_s"] = time.perf_counter() - t0
    result["machine"]["loadavg_1min_end"] = os.getloadavg()[0]
    print_table(result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
