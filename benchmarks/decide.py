"""Apply a pre-registered two-arm decision rule to finished study results.

A study (``benchmarks/studies/*.toml``) runs a baseline and a candidate on several seeds;
its header states the rule. This script checks the three parts the cap and batch studies
use, per problem and target, from each study's ``summary.json``:

1. the candidate reaches every target the baseline reaches, in at least as many seeds;
2. its median effective epochs to every target reached by both is no larger;
3. its median wall seconds to every such target is at most ``--wall-tolerance`` times the
   baseline's (1.0: strictly no slower).

Usage::

    python benchmarks/decide.py benchmarks/results/cgcap-* --baseline cap250 --candidate cap5 \\
        --wall-tolerance 1.05

Prints one line per problem and target, and the verdict; exits 0 if the candidate passes
everywhere, 1 if not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def target_values(summary: dict, label: str, target: str) -> tuple[int, list[float], list[float]]:
    """Seeds that reached ``target``, and their effective epochs and wall seconds."""
    reached = [run["targets"][target] for run in summary["runs"]
               if run["method"] == label and run["phase"] == "report" and run["targets"][target]["reached"]]
    return len(reached), [r["epochs"] for r in reached], [r["wall_s"] for r in reached]


def check(summary: dict, baseline: str, candidate: str, tolerance: float) -> tuple[bool, list[str]]:
    ok, lines = True, []
    name = summary["experiment"]["name"]
    for target in summary["runs"][0]["targets"]:
        n_base, epochs_base, wall_base = target_values(summary, baseline, target)
        n_cand, epochs_cand, wall_cand = target_values(summary, candidate, target)
        parts = [f"{name} to {target}: reached {n_base} / {n_cand}"]
        passed = n_cand >= n_base
        if n_base and n_cand:
            e_b, e_c = statistics.median(epochs_base), statistics.median(epochs_cand)
            w_b, w_c = statistics.median(wall_base), statistics.median(wall_cand)
            passed = passed and e_c <= e_b and w_c <= tolerance * w_b
            parts.append(f"epochs {e_b:.1f} / {e_c:.1f} ({e_c / e_b:.2f}x)")
            parts.append(f"wall s {w_b:.2f} / {w_c:.2f} ({w_c / w_b:.2f}x)")
        ok = ok and passed
        lines.append(" · ".join(parts) + ("" if passed else "  FAILS"))
    return ok, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="study result directories (each with summary.json)")
    parser.add_argument("--baseline", required=True, help="the baseline arm's label")
    parser.add_argument("--candidate", required=True, help="the candidate arm's label")
    parser.add_argument("--wall-tolerance", type=float, default=1.0)
    args = parser.parse_args()
    passed = True
    for directory in args.results:
        summary = json.loads((Path(directory) / "summary.json").read_text())
        ok, lines = check(summary, args.baseline, args.candidate, args.wall_tolerance)
        passed = passed and ok
        print("\n".join(lines))
    print(f"verdict: {args.candidate} {'passes' if passed else 'fails'} (baseline {args.baseline}, "
          f"wall tolerance {args.wall_tolerance:g}x)")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
