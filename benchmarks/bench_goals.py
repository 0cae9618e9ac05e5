"""The speed goals of "faster to accuracy", measured in one run on this machine and printed as
ratios against their targets. Writes benchmarks/results/goals.json.

1. Time to 1% training error on MNIST 784-400-10 (float32), as ``hessfree train`` runs it
   with the default method and settings (``bench_to_accuracy.measure``), against momentum
   SGD and Adam at the learning rates fig1's tuning chose (each run three times, the
   fastest counting): wall-time ratios (goal ≤ 2) and the HF run's effective epochs (goal
   ≤ 60). Also, not a goal (the goals are the defaults'): gradient windows, the option
   that meets the time goal (``bench_to_accuracy.WINDOWS``), against the same runs.
2. The curvature products against the bare-GEMM floor of the same shapes (784-400-10,
   float32, 1 and 2 BLAS threads; ``bench_products.bench_one``): the largest ratio (goal
   ≤ 1.10).
3. 16 thread ranks against serial: one momentum-SGD epoch (``bench_threads.bench_epoch``,
   MNIST-shaped synthetic data; goal ≤ 3) and one HF iteration of the default method on
   MNIST (median of iterations 2 to ``--hf-iterations``, serial and threaded runs
   alternating; goal ≤ 1.5).

Usage (about 5 minutes on 2 idle cores; run it alone, it measures time)::

    python benchmarks/bench_goals.py --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_products  # noqa: E402
import bench_threads  # noqa: E402
from bench_to_accuracy import WINDOWS, fastest_first_order, measure  # noqa: E402

from hessfree.comm import run_threads  # noqa: E402
from hessfree.train import Callback, TrainConfig, make_run_config  # noqa: E402
from hessfree.train.run import run  # noqa: E402

#: the goals: name → the largest value that meets it
GOALS = {
    "HF wall / momentum SGD wall": 2.0,
    "HF wall / Adam wall": 2.0,
    "HF effective epochs": 60.0,
    "products / GEMM floor (largest)": 1.10,
    "16 thread ranks / serial: MSGD epoch": 3.0,
    "16 thread ranks / serial: HF iteration": 1.5,
}


def to_accuracy(data_dir: str, target: float, repeats: int) -> dict:
    """The default HF run once (its time varies little), each first-order run ``repeats``
    times, the fastest counting."""
    base = dict(dataset="mnist", data_dir=data_dir, hidden="400", dtype="float32", seed=0, quiet=True)
    method = TrainConfig().method.value
    hf = measure(f"{method} (defaults)", {**base, "iterations": 80}, target)
    windows = measure(f"{method} (gradient windows, an option)", {**base, **WINDOWS}, target)
    first = fastest_first_order(base, target, repeats)

    def ratios(run: dict) -> dict:
        return {m: run["time_s"] / r["time_s"] if run["time_s"] and r["time_s"] else None for m, r in first.items()}

    return dict(hf=hf, first_order=first, ratio=ratios(hf), windows=windows, windows_ratio=ratios(windows))


def products(data_dir: str) -> list[dict]:
    args = argparse.Namespace(mnist_dir=data_dir, grad_rows=50_000, curv_rows=5_000, chunk=8192, repeats=9)
    rows = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads):
            rows += bench_products.bench_one((784, 400, 10), np.dtype("float32"), threads, args, np.random.default_rng(0))
    return rows


class IterationTimes(Callback):
    def __init__(self):
        self.times = []

    def on_iteration(self, record, state):
        self.times.append(record.time_s)
        return False


def hf_iteration_seconds(data_dir: str, ranks: int, iterations: int) -> float:
    """Median seconds of HF iterations 2..``iterations`` (the first pays one-off costs)."""
    values = dict(dataset="mnist", data_dir=data_dir, hidden="400", dtype="float32", seed=0, quiet=True,
                  iterations=iterations)
    if ranks > 1:
        values.update(comm="threads", ranks=ranks)
    hook = IterationTimes()
    run(make_run_config(values), [hook])
    return statistics.median(np.diff(hook.times))


def thread_ranks(data_dir: str, hf_iterations: int, rounds: int) -> dict:
    args = argparse.Namespace(samples=30_000, epoch_ranks=16, epoch_repeats=2)
    epoch = bench_threads.bench_epoch({"impl": run_threads}, args)
    serial, threaded = [], []
    for _ in range(rounds):  # alternating, so both see the same machine
        serial.append(hf_iteration_seconds(data_dir, 1, hf_iterations))
        threaded.append(hf_iteration_seconds(data_dir, 16, hf_iterations))
    hf = dict(serial_s=min(serial), threads_s=min(threaded), ratio=min(threaded) / min(serial),
              serial_rounds=serial, threads_rounds=threaded)
    return dict(msgd_epoch=epoch, hf_iteration=hf)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--target", type=float, default=0.01)
    parser.add_argument("--hf-iterations", type=int, default=4, help="HF iterations per thread-rank timing")
    parser.add_argument("--rounds", type=int, default=2, help="alternating serial/threaded HF timings")
    parser.add_argument("--first-order-repeats", type=int, default=3, help="runs of each first-order method (fastest counts)")
    parser.add_argument("--out", default=str(HERE / "results" / "goals.json"))
    args = parser.parse_args()
    accuracy = to_accuracy(args.data_dir, args.target, args.first_order_repeats)
    product_rows = products(args.data_dir)
    threads = thread_ranks(args.data_dir, args.hf_iterations, args.rounds)
    measured = {
        "HF wall / momentum SGD wall": accuracy["ratio"].get("msgd"),
        "HF wall / Adam wall": accuracy["ratio"].get("adam"),
        "HF effective epochs": accuracy["hf"]["epochs"],
        "products / GEMM floor (largest)": max(r["ratio"] for r in product_rows),
        "16 thread ranks / serial: MSGD epoch": threads["msgd_epoch"].get("ratio"),
        "16 thread ranks / serial: HF iteration": threads["hf_iteration"]["ratio"],
    }
    measured = {name: None if value is None else float(value) for name, value in measured.items()}
    goals = {name: dict(target=target, measured=measured[name],
                        met=measured[name] is not None and measured[name] <= target) for name, target in GOALS.items()}
    out = dict(benchmark="goals", target_error=args.target, goals=goals, to_accuracy=accuracy,
               products=product_rows, thread_ranks=threads, machine=bench_threads.machine())
    Path(args.out).write_text(json.dumps(out, indent=1, default=lambda o: o.item() if hasattr(o, "item") else str(o)))
    print("| goal | target | measured | met |")
    print("|---|---|---|---|")
    for name, g in goals.items():
        value = "—" if g["measured"] is None else f"{g['measured']:.2f}"
        print(f"| {name} | ≤ {g['target']:g} | {value} | {'yes' if g['met'] else 'no'} |")
    hf = accuracy["hf"]
    print(f"HF: {hf['time_s']:.1f} s, {hf['epochs']:.0f} effective epochs, "
          + ", ".join(f"{m}: {r['time_s']:.1f} s (runs: {', '.join(f'{t:.1f}' for t in r['time_s_runs'] if t)})"
                      for m, r in accuracy["first_order"].items() if r["time_s"]))
    w = accuracy["windows"]
    if w["time_s"]:
        print(f"not a goal: gradient windows (an option) {w['time_s']:.1f} s, {w['epochs']:.0f} effective epochs; "
              + ", ".join(f"/ {m}: {r:.2f}" for m, r in accuracy["windows_ratio"].items() if r))


if __name__ == "__main__":
    main()
