"""The experiments' replayed cluster time against real ``SimulatedComm`` runs, on MNIST.

One **serial** run's records, replayed through the cost model for P nodes (what
``hessfree experiment`` does for every run), against runs of P thread ranks under
``SimulatedComm`` (``--simulate``), P = 2, 4, 16: gn-cg (with whole-set gradients and
with gradient windows of a tenth of the data) and momentum SGD on the first ``--samples``
MNIST images (784-400-10, float32). Compute is made free on both sides
(``sim_compute_scale`` 1e-6 against an infinitely fast node), so the comparison is of
what the replay claims to reproduce: the collectives each iteration issues and what the
network charges for them, from counts of a run on another number of ranks. (Compute
against the cost model is fig2's comparison.) Writes ``benchmarks/results/replay_check.json``.

    python benchmarks/replay_check.py --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from hessfree.cost import NodeSpec
from hessfree.experiments import Cluster
from hessfree.experiments.replay import cost_model, replay
from hessfree.experiments.runner import read_run
from hessfree.methods import Method
from hessfree.train import make_run_config
from hessfree.train.run import run

HERE = Path(__file__).resolve().parent
NETWORK = "ethernet-10g"
#: label → settings (with the method); the windows' run passes one evaluation and ends on another
RUNS = {
    "gn-cg": dict(method="gn-cg", iterations=5, batch_size=1000),
    "gn-cg, windows": dict(method="gn-cg", iterations=12, batch_size=1000, gradient_batch=300, damping_min=0.01),
    "msgd": dict(method="msgd", epochs=1, batch_size=128, lr=0.05),
}


def metered(values: dict, path: Path) -> tuple[dict, list[dict]]:
    run(make_run_config({**values, "metrics": str(path), "quiet": True}))
    header, records, _ = read_run(path)
    return header, records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--ranks", default="2,4,16")
    parser.add_argument("--out", default=str(HERE / "results" / "replay_check.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, settings in RUNS.items():
            method = settings["method"]
            base = dict(dataset="mnist", data_dir=args.data_dir, samples=args.samples, hidden="400", dtype="float32",
                        seed=0, **settings)
            name = label.replace(", ", "-")
            header, serial = metered(base, Path(tmp) / f"{name}-serial.jsonl")
            layers, n_train, n_test = header["model"]["layers"], header["data"]["n_train"], header["data"]["n_test"]
            for P in (int(p) for p in args.ranks.split(",")):
                _, simulated = metered({**base, "comm": "threads", "ranks": P, "simulate": NETWORK,
                                        "sim_compute_scale": 1e-6}, Path(tmp) / f"{name}-{P}.jsonl")
                cluster = Cluster(P, NETWORK, node=NodeSpec(flops=1e30, itemsize=4))
                model = cost_model(cluster, layers, n_train, n_test, 4)
                replayed = replay(serial, Method(method), settings["batch_size"], model, P)
                clock = [r["sim_time_s"] for r in simulated]
                worst = max(abs(a - b) / b for a, b in zip(replayed, clock))
                rows.append(dict(method=label, ranks=P, records=len(clock), replayed_s=replayed[-1],
                                 simulated_s=clock[-1], ratio=replayed[-1] / clock[-1], worst_rel_error=worst))
    Path(args.out).write_text(json.dumps(dict(network=NETWORK, samples=args.samples, rows=rows), indent=1))
    print("| method | P | records | replayed s | simulated s | ratio | worst relative error over the records |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['ranks']} | {r['records']} | {r['replayed_s']:.4g} | {r['simulated_s']:.4g} | "
              f"{r['ratio']:.4f} | {r['worst_rel_error']:.1e} |")


if __name__ == "__main__":
    main()
