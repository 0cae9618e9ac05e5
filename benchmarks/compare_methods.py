"""Every method on the embedded digits (64-100-10, tanh), same data, seed and communicator.

Writes ``benchmarks/results/methods_digits.json`` and prints a markdown table: final
objective, training and test error, iterations (HF) or epochs (SGD), effective epochs,
collectives, and wall time (after JIT warm-up).

    python benchmarks/compare_methods.py [--iterations 30] [--epochs 30]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hessfree.methods import Method
from hessfree.train import make_run_config
from hessfree.train.run import run as run_config

METHODS = [m.value for m in Method]


def run(method: str, iterations: int, epochs: int) -> dict:
    config = make_run_config(dict(method=method, iterations=iterations, epochs=epochs, seed=0))
    total = config.train.run_length
    records = list(run_config(config).history)
    last = records[-1]
    return dict(method=method, steps=total, loss=last.loss, train_error=last.train_error, test_error=last.test_error,
                epochs=last.epochs, comm_calls=last.comm_calls, comm_bytes=last.comm_bytes, time_s=last.time_s,
                negative_curvature_iterations=sum(r.negative_curvature for r in records),
                curve=[dict(iteration=r.iteration, epochs=r.epochs, loss=r.loss, train_error=r.train_error, comm_calls=r.comm_calls) for r in records])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "methods_digits.json"))
    args = parser.parse_args()
    run("gn-cg", 1, 1)  # compile the kernels outside the timed runs
    rows = [run(m, args.iterations, args.epochs) for m in METHODS]
    Path(args.out).write_text(json.dumps(rows, indent=1))
    print("| method | iterations / epochs | objective | train error | test error | effective epochs | collectives | time (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        unit = "iterations" if Method(r["method"]).is_hessian_free else "epochs"
        print(f"| {r['method']} | {r['steps']} {unit} | {r['loss']:.2e} | {100 * r['train_error']:.2f}% | {100 * r['test_error']:.2f}% | "
              f"{r['epochs']:.0f} | {r['comm_calls']} | {r['time_s']:.1f} |")


if __name__ == "__main__":
    main()
