"""gn-cg's curvature batch on the full MNIST (60,000 images, 784-400-10, float32) by time:
1,000 (the default) against 2,000, to 1% training error, seeds 0-2, every other setting
the default. The study files ``benchmarks/studies/batch-*.toml`` compare the same two on
subsets; this is the size where the trade-off turns. Writes
benchmarks/results/batch_full_mnist.json (about 4 minutes on 2 idle cores).

    python benchmarks/bench_batch_full.py --data-dir ../shared/data/mnist
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench_to_accuracy import measure

HERE = Path(__file__).resolve().parent
BATCHES = (1000, 2000)
SEEDS = (0, 1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", default=str(HERE / "results" / "batch_full_mnist.json"))
    args = parser.parse_args()
    base = dict(dataset="mnist", data_dir=args.data_dir, hidden="400", dtype="float32", quiet=True, iterations=80)
    runs = []
    for seed in SEEDS:  # the two batches alternate, so both see the same machine
        for b in BATCHES:
            r = measure(f"gn-cg b={b} seed={seed}", {**base, "batch_size": b, "seed": seed}, 0.01)
            runs.append({**r, "batch": b, "seed": seed})
    Path(args.out).write_text(json.dumps(runs, indent=1))
    print("| curvature batch | iterations to 1% | effective epochs | wall s |")
    print("|---|---|---|---|")
    for b in BATCHES:
        mine = [r for r in runs if r["batch"] == b]

        def cell(key):
            values = [r[key] for r in mine]
            return f"{statistics.median(values):.3g} [{min(values):.3g}–{max(values):.3g}]"

        print(f"| {b:,} | {cell('iterations')} | {cell('epochs')} | {cell('time_s')} |")


if __name__ == "__main__":
    main()
