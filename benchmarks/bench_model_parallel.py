"""Model parallelism measured: per-rank memory at P = 1, 2, 4, and the cost model's time
predictions against model-parallel runs on thread ranks.

1. Memory (MPI processes, ``mpirun -n P``, P = 1, 2, 4; data-parallel at P = 4 for
   contrast): two gn-cg iterations of a 64-1024-1024-10 network (1.13 M parameters,
   float64) on 1,000 synthetic samples (64 features), curvature batch 500, CG ≤ 10. Each rank reports
   the peak of its numpy allocations during training (``tracemalloc``, above what it
   held after building data and model) and an inventory of what it holds at the end of
   the last solve: its θ, one parameter-sized vector, the Krylov solve's vectors
   (solution, stored iterates and candidates: ``SolveResult``), and the curvature
   batch's cached activations (whole, and its own columns).
2. Time (2 thread ranks; MNIST's first ``--samples`` images if present, else synthetic):
   model-parallel SGD (b = 64, one epoch) and gn-cg (b = 2000, CG ≤ 10), measured per
   update / per iteration phase, against ``hessfree.cost.layouts.predict_layout`` on a
   one-group layout of 2 model slices, with this machine's calibrated kernel rates (one
   BLAS thread per rank) and the thread backend's measured layer exchanges; and, as the
   control measured in the same conditions, data-parallel gn-cg against the same model
   on 2 data groups (the thread allreduce's measured α', β').

    python benchmarks/bench_model_parallel.py [--mnist-dir DIR] [--samples 10000]

Writes ``benchmarks/results/model_parallel.json`` and prints the README's tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MEMORY_LAYERS = (64, 1024, 1024, 10)
TIME_LAYERS = (784, 400, 10)
MB = 1e6


# ------------------------------------------------------------------ 1. memory (MPI worker)
def memory_worker(outdir: str, parallel: str) -> None:
    """One rank of the memory run: build, then train two gn-cg iterations under tracemalloc."""
    from hessfree.blas import blas_threads
    from hessfree.comm import MPIComm
    from hessfree.train import make_run_config, make_trainer
    from hessfree.train.run import build

    comm = MPIComm(timeout=900)
    config = make_run_config(dict(dataset="synthetic", samples=1250, hidden="1024,1024", method="gn-cg",
                                  batch_size=500, cg_max_iter=10, iterations=2, parallel=parallel, seed=0))
    with blas_threads(1):
        data, model = build(config, comm)
        model.warm_up()
        trainer = make_trainer(model, data, config.train, comm)
        solves = []
        solve = trainer.solver.solve
        trainer.solver = _Capture(solve, solves)
        state = trainer.initial_state()
        comm.barrier()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        while state.iteration < config.train.iterations:
            state, record = trainer.step(state)
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
    result, cache = solves[-1], trainer.workspace
    vectors = {id(a): a for a in [result.x, *(it.x for it in result.iterates), *(c.direction for c in result.candidates)]}
    whole = sum(a.nbytes for ch in cache.chunks for a in ch.acts[1:])
    own = sum(a.nbytes for ch in cache.chunks for a in getattr(ch, "mine", [None])[1:]) if parallel == "model" else 0
    row = dict(
        parallel=parallel, ranks=comm.size, rank=comm.rank, layers=list(model.layers), n_params_here=int(state.theta.size),
        theta_mb=state.theta.nbytes / MB, krylov_vectors=len(vectors), krylov_mb=sum(a.nbytes for a in vectors.values()) / MB,
        activations_whole_mb=whole / MB, activations_own_mb=own / MB, peak_training_mb=peak / MB,
        loss=record.loss, cg_iterations=record.cg_iterations,
    )
    Path(outdir, f"{parallel}-{comm.size}-rank{comm.rank}.json").write_text(json.dumps(row))
    comm.close()


class _Capture:
    """A solver wrapper keeping every SolveResult (to take its vectors' inventory)."""

    def __init__(self, solve, into: list):
        self._solve, self._into = solve, into

    def solve(self, *args, **kwargs):
        result = self._solve(*args, **kwargs)
        self._into.append(result)
        return result


def memory_runs(outdir: str) -> list[dict]:
    from hessfree.comm.launch import mpi_environment, mpirun_command

    rows = []
    for parallel, ranks in (("model", 1), ("model", 2), ("model", 4), ("data", 4)):
        cmd = mpirun_command(ranks, __file__, "--memory-worker", outdir, "--parallel", parallel)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=mpi_environment())
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-3000:])
        for r in range(ranks):
            rows.append(json.loads(Path(outdir, f"{parallel}-{ranks}-rank{r}.json").read_text()))
    return rows


# ------------------------------------------------------------------ 2. time (threads)
def thread_exchange_network(P: int):
    """Effective α', β' of the thread backend's layer exchanges at P ranks, fitted to the
    ring formula (P−1)α + (P−1)/P·m·β: a forward exchange is the allgather *and* the copy
    of the gathered blocks into the whole activation matrix (``LayerExchange.gather``), a
    backward one the reduce-scatter. One network for both (the mean of the two fits)."""
    from hessfree.comm import run_threads
    from hessfree.cost.network import Network
    from hessfree.models.sharded import LayerExchange
    from hessfree.models.split import UnitSplit

    width, rows_list = 400, (1, 64, 512, 2048, 8192)
    sizes = [rows * width * 8 for rows in rows_list]

    def work(comm):
        exchange = LayerExchange(comm, UnitSplit((1, width), P))
        out = {"gather": [], "reduce_scatter": []}
        for rows in rows_list:
            counts = exchange.split.counts(1, rows)
            local = np.ones((rows, exchange.split.width(1, comm.rank)))
            full, whole = np.empty((rows, width)), np.ones(rows * width)
            for name, fn in (("gather", lambda: exchange.gather(1, local, full)),
                             ("reduce_scatter", lambda: comm.reduce_scatter(whole, local, counts))):
                fn()
                ts = []
                for _ in range(9):
                    comm.barrier()
                    t0 = time.perf_counter()
                    fn()
                    ts.append(time.perf_counter() - t0)
                out[name].append(statistics.median(ts))
        return out

    measured = run_threads(work, P)[0]
    A = np.column_stack([np.ones(len(sizes)), np.asarray(sizes, dtype=float)])
    fits = {}
    for name, times in measured.items():
        (a, b), *_ = np.linalg.lstsq(A, np.asarray(times), rcond=None)
        fits[name] = dict(latency=max(a, 0.0) / (P - 1), inverse_bandwidth=max(b, 0.0) * P / (P - 1))
    net = Network(latency=statistics.mean(f["latency"] for f in fits.values()),
                  inverse_bandwidth=statistics.mean(f["inverse_bandwidth"] for f in fits.values()))
    return net, dict(fits=fits, sizes=sizes, measured=measured)


def time_run(args, method: str, P: int, parallel: str = "model") -> dict:
    """Records of a run on P thread ranks (rank 0's)."""
    from hessfree.comm import run_threads
    from hessfree.train import fit, make_run_config
    from hessfree.train.run import build

    hf = method != "sgd"
    config = make_run_config(dict(
        dataset="mnist" if args.mnist_dir else "synthetic", data_dir=args.mnist_dir, samples=args.samples, hidden="400",
        method=method, parallel=parallel, dtype="float64", seed=0,
        **(dict(iterations=args.iterations, batch_size=2000, cg_max_iter=10) if hf else dict(epochs=1, batch_size=64, lr=0.05)),
    ))

    def rank(comm):
        data, model = build(config, comm, ranks_here=P)
        return dict(records=list(fit(model, data, config.train, comm).history), n_train=data.n_train_global,
                    n_test=data.n_test_global)

    return run_threads(rank, P)[0]


def hf_rows(args, cost, P: int, parallel: str, layout) -> list[dict]:
    """Measured and predicted phases of gn-cg (b = 2000, CG ≤ 10): medians over the
    iterations after the first (which pays page faults)."""
    from hessfree.cost.layouts import predict_layout

    run = time_run(args, "gn-cg", P, parallel)
    records = run["records"][1:] if len(run["records"]) > 2 else run["records"]
    rows = []
    for phase, key in (("gradient", "time_gradient_s"), ("solve", "time_solve_s"), ("line search", "time_line_search_s")):
        measured = statistics.median(getattr(x, key) for x in records)
        predicted = statistics.median(
            getattr(predict_layout(cost, "gn-cg", 2000, layout, krylov_iterations=x.cg_iterations,
                                   curvature_products=x.curvature_products, line_search_evals=x.line_search_evals,
                                   gradient_kept=x.gradient_kept, gradient_along=x.gradient_along), key)
            for x in records)
        rows.append(dict(run=f"gn-cg, b = 2000, {parallel}-parallel threads({P})", phase=phase, measured_s=measured,
                         predicted_s=predicted))
    return rows


def predict_and_compare(args, node, exchange_net, allreduce_net, P: int) -> list[dict]:
    """Model-parallel SGD and gn-cg against the layout model (one group of P slices), and
    data-parallel gn-cg (P groups) as the control measured in the same conditions."""
    from hessfree.cost import Blocks, Collective, CostModel
    from hessfree.cost.layouts import Layout, predict_layout

    sgd = time_run(args, "sgd", P)

    def cost_model(net, collective=Collective.RING):
        return CostModel(layers=TIME_LAYERS, samples=sgd["n_train"], test_samples=sgd["n_test"], node=node, network=net,
                         collective=collective, blocks=Blocks.CHUNK)

    r = sgd["records"][0]
    pred = predict_layout(cost_model(exchange_net), "sgd", 64, Layout(1, P))
    rows = [dict(run=f"sgd, b = 64, model-parallel threads({P})", phase="per update",
                 measured_s=r.time_gradient_s / r.iteration, predicted_s=pred.time_per_iteration_s)]
    rows += hf_rows(args, cost_model(exchange_net), P, "model", Layout(1, P))
    rows += hf_rows(args, cost_model(allreduce_net, Collective.TREE), P, "data", Layout(P, 1))
    for row in rows:
        row["ratio"] = row["predicted_s"] / row["measured_s"]
    return rows


# ------------------------------------------------------------------ report
def memory_table(rows: list[dict]) -> str:
    lines = ["| layout | P | θ per rank (MB) | Krylov vectors per rank (MB) | cached activations, whole + own (MB) | peak during training (MB) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if r["rank"] != 0:
            continue
        lines.append(f"| {r['parallel']} | {r['ranks']} | {r['theta_mb']:.1f} | {r['krylov_mb']:.1f} ({r['krylov_vectors']} vectors) | "
                     f"{r['activations_whole_mb']:.1f} + {r['activations_own_mb']:.1f} | {r['peak_training_mb']:.1f} |")
    return "\n".join(lines)


def time_table(rows: list[dict]) -> str:
    lines = ["| run | phase | measured (s) | predicted (s) | ratio |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['phase']} | {r['measured_s']:.4g} | {r['predicted_s']:.4g} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description="Model parallelism: memory per rank at P = 1, 2, 4; time against the cost model.")
    ap.add_argument("--ranks", type=int, default=2, help="thread ranks of the timed runs")
    ap.add_argument("--mnist-dir", default=os.environ.get("HESSFREE_MNIST_DIR", "/work/shared/data/mnist"))
    ap.add_argument("--samples", type=int, default=10000, help="MNIST images (or synthetic samples) of the timed runs")
    ap.add_argument("--iterations", type=int, default=4, help="gn-cg iterations of the timed runs")
    ap.add_argument("--memory-worker", metavar="OUTDIR")
    ap.add_argument("--parallel", default="model")
    ap.add_argument("--skip-time", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "model_parallel.json"))
    args = ap.parse_args()
    if args.memory_worker:
        memory_worker(args.memory_worker, args.parallel)
        return
    if args.mnist_dir and not Path(args.mnist_dir).is_dir():
        args.mnist_dir = None
    with tempfile.TemporaryDirectory() as outdir:
        memory = memory_runs(outdir)
    report = dict(
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), python=platform.python_version(),
                     load_average=os.getloadavg()),
        memory=dict(layers=MEMORY_LAYERS, samples_train=1000, curvature_batch=500, method="gn-cg", iterations=2, rows=memory),
    )
    print(memory_table(memory))
    if not args.skip_time:
        from hessfree.blas import blas_threads
        from hessfree.cost.calibrate import measure_rates, measure_thread_network, node_from_rates

        rows_per_rank = [64, 256, 1024, 2000, 4096, 8192]
        with blas_threads(1):
            node = node_from_rates(measure_rates(TIME_LAYERS, rows=rows_per_rank, parallel=False), itemsize=8)
        net, probe = thread_exchange_network(args.ranks)
        allreduce_net = measure_thread_network()
        timing = predict_and_compare(args, node, net, allreduce_net, args.ranks)
        report["time"] = dict(layers=TIME_LAYERS, data="mnist" if args.mnist_dir else "synthetic", samples=args.samples,
                              rank_peak_flops=node.flops, exchange=dict(latency=net.latency, bandwidth=net.bandwidth, **probe),
                              allreduce=dict(latency=allreduce_net.latency, bandwidth=allreduce_net.bandwidth),
                              load_average_after=os.getloadavg(), rows=timing)
        print(time_table(timing))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
