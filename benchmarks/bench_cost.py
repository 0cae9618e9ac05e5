"""Check the cost model against measured HF iterations, and draw the TIMIT speed-up figure.

1. Calibrate on this machine: the 784-400-10 model's kernel rates per row count, with
   the BLAS threads a rank gets (2 serial, 1 per rank with 2 ranks), and the effective
   α', β' of the thread and MPI backends' allreduce.
2. Run bicgstab HF on MNIST (first ``--samples`` training images, 10,000 test) for a few
   iterations serially, on 2 thread ranks and on 2 MPI ranks; predict each iteration's
   gradient / solve / line-search time from its own curvature products and line-search
   evaluations; report measured and predicted medians and their ratio.
3. The paper's TIMIT network on the paper's nodes: speed-up of one bicgstab iteration for
   batches 1024..16384 on 1..64 nodes (``--plot`` PNG, as Figure 2).

    python benchmarks/bench_cost.py [--mnist-dir DIR] [--samples 10000] [--iterations 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path


from hessfree.blas import blas_threads
from hessfree.cost import Blocks, Collective, CostModel, interconnect, network_preset, paper_node
from hessfree.cost.calibrate import measure_mpi_network, measure_rates, measure_thread_network, node_from_rates
from hessfree.cost.network import Network

HERE = Path(__file__).resolve().parent
LAYERS = (784, 400, 10)
PHASES = ("gradient", "solve", "line_search")


def run_config(args) -> dict:
    return dict(dataset="mnist" if args.mnist_dir else "synthetic", data_dir=args.mnist_dir, samples=args.samples,
                hidden="400", method="bicgstab", iterations=args.iterations, batch_size=args.batch,
                cg_max_iter=args.cg_iters, dtype="float64", quiet=True)


def measure(comm, args) -> dict:
    """Per-iteration phase times and counts of a short bicgstab run on this communicator."""
    from hessfree.train import fit, make_run_config
    from hessfree.train.run import build

    config = make_run_config(run_config(args))
    data, model = build(config, comm)
    rows = []
    for r in fit(model, data, config.train, comm).history:
        rows.append(dict(gradient=r.time_gradient_s, solve=r.time_solve_s, line_search=r.time_line_search_s,
                         products=r.curvature_products, ls=r.line_search_evals, cg=r.cg_iterations,
                         kept=r.gradient_kept, along=r.gradient_along))
    return dict(rows=rows, n_train=data.n_train_global, n_test=data.n_test_global)


def predict(run: dict, node, network, P: int, args) -> list[dict]:
    model = CostModel(layers=LAYERS, samples=run["n_train"], test_samples=run["n_test"], node=node,
                      network=network, collective=Collective.TREE, blocks=Blocks.CHUNK)
    out = []
    for r in run["rows"]:
        p = model.predict("bicgstab", args.batch, P, curvature_products=r["products"], line_search_evals=r["ls"],
                          gradient_kept=r["kept"], gradient_along=r["along"])
        out.append(dict(gradient=p.time_gradient_s, solve=p.time_solve_s, line_search=p.time_line_search_s))
    return out


def summarise(name: str, run: dict, predicted: list[dict], args) -> dict:
    skip = 1 if len(run["rows"]) > 2 else 0  # the first iteration pays page faults and caches
    measured = run["rows"][skip:]
    pred = predicted[skip:]
    row = dict(config=name)
    for phase in PHASES:
        m = statistics.median(r[phase] for r in measured)
        p = statistics.median(r[phase] for r in pred)
        row[f"{phase}_measured_s"], row[f"{phase}_predicted_s"], row[f"{phase}_ratio"] = m, p, p / m
    tm = statistics.median(sum(r[ph] for ph in PHASES) for r in measured)
    tp = statistics.median(sum(r[ph] for ph in PHASES) for r in pred)
    row.update(total_measured_s=tm, total_predicted_s=tp, total_ratio=tp / tm)
    return row


def mpi_worker(args) -> None:
    from hessfree.comm import MPIComm

    comm = MPIComm(timeout=600)
    with blas_threads(1):
        run = measure(comm, args)
    comm.close()
    if comm.rank == 0:
        print(json.dumps(run))


def run_mpi(args) -> dict:
    from hessfree.comm.launch import mpi_environment, mpirun_command

    worker = ["--worker", "--samples", str(args.samples), "--iterations", str(args.iterations), "--batch", str(args.batch),
              "--cg-iters", str(args.cg_iters)] + (["--mnist-dir", args.mnist_dir] if args.mnist_dir else [])
    cmd = mpirun_command(2, __file__, *worker)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=mpi_environment())
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def timit_figure(args) -> list[dict]:
    from hessfree.cli.cost_cmd import plot_speedup

    preset = network_preset("timit")
    model = CostModel(layers=preset.layers, samples=preset.samples, test_samples=preset.test_samples,
                      node=paper_node(4), network=interconnect("omni-path"), blocks=Blocks.BATCH)
    rows = model.table(["bicgstab"], [1024, 4096, 16384], [1, 2, 4, 8, 16, 32, 64], krylov_iterations=10, line_search_evals=3)
    if args.plot:
        plot_speedup(rows, args.plot, title="TIMIT 360-512x3-1973, paper nodes (2.65 TFLOP/s), Omni-Path, bicgstab K=10, L=3")
    chunked = CostModel(layers=preset.layers, samples=preset.samples, test_samples=preset.test_samples,
                        node=paper_node(4), network=interconnect("omni-path"), blocks=Blocks.CHUNK)
    rows_chunk = chunked.table(["bicgstab"], [1024, 4096, 16384], [1, 32], krylov_iterations=10, line_search_evals=3)
    return [dict(blocks="batch", **r.as_dict(), solve_share=r.solve_share) for r in rows] + [
        dict(blocks="chunk", **r.as_dict(), solve_share=r.solve_share) for r in rows_chunk]


def markdown(rows) -> str:
    lines = ["| run | gradient meas. / pred. (s) | ratio | solve meas. / pred. (s) | ratio | line search meas. / pred. (s) | ratio | total ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["config"]]
        for ph in PHASES:
            cells += [f"{r[f'{ph}_measured_s']:.3f} / {r[f'{ph}_predicted_s']:.3f}", f"{r[f'{ph}_ratio']:.2f}"]
        cells.append(f"{r['total_ratio']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mnist-dir", default=os.environ.get("HESSFREE_MNIST_DIR", "/work/shared/data/mnist"))
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--batch", type=int, default=2000)
    ap.add_argument("--cg-iters", type=int, default=10)
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "bench_cost.json"))
    ap.add_argument("--plot", default=str(HERE / "results" / "cost_timit_speedup.png"))
    args = ap.parse_args()
    if args.mnist_dir and not Path(args.mnist_dir).is_dir():
        args.mnist_dir = None
    if args.worker:
        mpi_worker(args)
        return
    rows_per_rank = sorted({args.samples // 2, args.batch // 2, args.batch, args.samples, 256, 1024, 4096, 8192})
    rows_per_rank = [r for r in rows_per_rank if r <= 8192]
    with blas_threads(2):
        serial_node = node_from_rates(measure_rates(LAYERS, rows=rows_per_rank, parallel=True), itemsize=8)
    with blas_threads(1):
        rank_node = node_from_rates(measure_rates(LAYERS, rows=rows_per_rank, parallel=False), itemsize=8)
    thread_net = measure_thread_network()
    probe = measure_mpi_network()
    mpi_net = Network(latency=probe["effective_latency"], inverse_bandwidth=probe["effective_inverse_bandwidth"])

    from hessfree.comm import SerialComm, run_threads

    results = []
    serial = measure(SerialComm(), args)
    results.append(summarise("serial", serial, predict(serial, serial_node, thread_net, 1, args), args))
    threads = run_threads(lambda comm: measure(comm, args), 2)[0]
    results.append(summarise("threads(2)", threads, predict(threads, rank_node, thread_net, 2, args), args))
    mpi = run_mpi(args)
    results.append(summarise("mpi(2)", mpi, predict(mpi, rank_node, mpi_net, 2, args), args))
    timit = timit_figure(args)
    report = dict(
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), python=platform.python_version()),
        settings=dict(vars(args), data="mnist" if args.mnist_dir else "synthetic", layers=LAYERS),
        calibration=dict(serial_peak_flops=serial_node.flops, rank_peak_flops=rank_node.flops,
                         threads_effective=dict(latency=thread_net.latency, bandwidth=thread_net.bandwidth),
                         mpi_effective=dict(latency=mpi_net.latency, bandwidth=mpi_net.bandwidth), mpi_probe=probe),
        ratios=results,
        timit=timit,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(markdown(results))
    for r in timit:
        if r["nodes"] in (1, 8, 32, 64):
            print(f"timit blocks={r['blocks']} b={r['batch']} P={r['nodes']}: speed-up {r['speedup']:.2f}, "
                  f"efficiency {r['efficiency']:.2f}, solve share {100 * r['solve_share']:.1f}%")


if __name__ == "__main__":
    main()
