"""Leaving a saddle: every Hessian-free method and negative-curvature variant, 5 seeds.

Two problems on the embedded digits (1,347 training images, the curvature batch is all of
them, default damping λ₀ = 1 unless stated):

* ``linear``: a 64-4-10 *linear* network with squared error, started at θ₀ = 10⁻³ × its
  Glorot initialisation. Its saddle is known in closed form: all weights 0 and the output
  bias at the class frequencies p, where the objective is f_s = ½(1 − Σ p_c²) and the
  Hessian's spectrum is ±σᵢ(C) (each h = 4 times), 1 (the output bias) and 0, with
  C = mean[x·(t − p)ᵀ] (checked here against the dense Hessian). The best value of the
  network is f_h, the rank-4 reduced-rank regression (Baldi & Hornik). *Escape*: the first
  iteration with f ≤ f_s − ¼(f_s − f_h).
* ``deep-tanh``: a deep narrow 64-8-8-8-8-10 tanh network with softmax cross-entropy,
  θ₀ = 0.1 × Glorot: every layer's output is ≈ 0, the objective sits on the plateau at the
  class-prior entropy H(p) = −Σ p_c ln p_c (the value of the saddle with all weights 0 and
  the output bias at ln p). *Escape*: the first iteration with f ≤ 0.9·H(p).
* ``deep-tanh-λ0=1e-3``: the same with initial damping 10⁻³ (λ₀ = 1 spends the first
  iterations shrinking λ at ρ ≈ 1 on a problem whose curvature is ~10⁻³).

Writes ``benchmarks/results/saddle.json`` (definitions, per method and seed the iteration
of escape, the loss curve, the step kinds and the counts) and ``saddle.png`` (median loss
and range over seeds against iterations), and prints the escape table.

    python benchmarks/saddle.py [--seeds 5] [--iterations 30] [--problems linear,deep-tanh,...]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import numpy as np

from hessfree.data import load_dataset
from hessfree.models import MLP
from hessfree.train import TrainConfig, fit

RESULTS = Path(__file__).parent / "results"

#: label → (method, options)
VARIANTS = {
    "gn-cg": ("gn-cg", {}),
    "gn-cg-cap250": ("gn-cg", {"cg_max_iter": 250}),  # Martens' cap, gn-cg's default before
    "hess-cg": ("hess-cg", {}),
    "bicgstab": ("bicgstab", {}),
    "hybrid": ("hybrid", {}),
    "newton-mr": ("newton-mr", {}),  # its default: negative_curvature = scaled
    "newton-mr-off": ("newton-mr", {"negative_curvature": "off"}),
    "hess-cg-scaled": ("hess-cg", {"negative_curvature": "scaled"}),
    "hess-cg-curvilinear": ("hess-cg", {"negative_curvature": "curvilinear"}),
    "hess-cg-scaled-indefinite": ("hess-cg", {"negative_curvature": "scaled", "damping_rule": "indefinite"}),
    "bicgstab-scaled": ("bicgstab", {"negative_curvature": "scaled"}),
    "bicgstab-curvilinear": ("bicgstab", {"negative_curvature": "curvilinear"}),
    "bicgstab-scaled-indefinite": ("bicgstab", {"negative_curvature": "scaled", "damping_rule": "indefinite"}),
}


def linear_problem(data) -> dict:
    """The closed-form saddle of the 64-4-10 linear network, checked on the dense Hessian."""
    X, y = data.X_train, data.y_train
    n, h = X.shape[0], 4
    T = np.eye(10)[y]
    p = T.mean(axis=0)
    f_saddle = 0.5 * (1.0 - float(p @ p))
    Xc, Tc = X - X.mean(axis=0), T - p
    fitted = Xc @ np.linalg.lstsq(Xc, Tc, rcond=None)[0]
    sv = np.linalg.svd(fitted, compute_uv=False)
    f_best = 0.5 / n * (float((Tc**2).sum()) - float((sv[:h] ** 2).sum()))
    C = X.T @ Tc / n
    sigma = np.linalg.svd(C, compute_uv=False)
    # the dense Hessian at the saddle (all weights 0, output bias p)
    model = MLP([64, h, 10], activation="linear", loss="squared_error")
    theta = np.zeros(model.n_params)
    theta[-10:] = p
    cache = model.forward(theta, X, y)
    H = np.column_stack([cache.hv(e) for e in np.eye(model.n_params)]) / n
    eig = np.linalg.eigvalsh((H + H.T) / 2)
    f_at_saddle = model.loss(theta, X, y) / n
    return dict(
        layers=[64, h, 10], activation="linear", loss="squared_error", init_scale=1e-3, damping=1.0,
        f_saddle=f_saddle, f_saddle_evaluated=float(f_at_saddle), f_best=f_best,
        threshold=f_saddle - 0.25 * (f_saddle - f_best),
        escape="first iteration with f ≤ f_s − ¼(f_s − f_h)",
        hessian_min_closed_form=-float(sigma[0]), hessian_min_dense=float(eig[0]),
        hessian_max_closed_form=max(float(sigma[0]), 1.0), hessian_max_dense=float(eig[-1]),
        negative_eigenvalues_dense=int((eig < -1e-10).sum()), negative_eigenvalues_closed_form=int(h * (sigma > 1e-10).sum()),
    )


def tanh_problem(data, damping: float) -> dict:
    p = np.bincount(data.y_train, minlength=10) / data.n_train
    entropy = float(-(p[p > 0] * np.log(p[p > 0])).sum())
    return dict(layers=[64, 8, 8, 8, 8, 10], activation="tanh", loss="softmax_cross_entropy", init_scale=0.1, damping=damping,
                f_saddle=entropy, threshold=0.9 * entropy, escape="first iteration with f ≤ 0.9·H(p)")


def run_one(data, problem: dict, method: str, options: dict, seed: int, iterations: int) -> dict:
    model = MLP(problem["layers"], activation=problem["activation"], loss=problem["loss"])
    config = TrainConfig(method=method, iterations=iterations, seed=seed, init_scale=problem["init_scale"],
                         damping=problem["damping"], batch_size=data.n_train, **options)
    start = time.perf_counter()
    history = fit(model, data, config, warm_up=False).history
    seconds = time.perf_counter() - start
    losses = [r.loss for r in history]
    escape = next((r.iteration for r in history if r.loss <= problem["threshold"]), None)
    kinds = {}
    for r in history:
        kinds[r.direction] = kinds.get(r.direction, 0) + 1
    return dict(seed=seed, escape=escape, losses=losses, final=losses[-1], steps=kinds,
                first_nc=next((r.iteration for r in history if r.direction in ("negative_curvature", "curvilinear")), None),
                products=sum(r.curvature_products for r in history), evaluations=sum(r.line_search_evals for r in history),
                min_ritz=min((r.ritz_min for r in history if not math.isnan(r.ritz_min)), default=None),
                seconds=seconds)


def summary(runs: list[dict]) -> dict:
    escapes = [r["escape"] if r["escape"] is not None else math.inf for r in runs]
    reached = [e for e in escapes if math.isfinite(e)]
    median = statistics.median(escapes)
    return dict(escaped=len(reached), seeds=len(runs), median=median if math.isfinite(median) else None,
                min=min(reached) if reached else None, max=max(reached) if reached else None,
                final_median=statistics.median(r["final"] for r in runs),
                nc_steps_median=statistics.median(r["steps"].get("negative_curvature", 0) + r["steps"].get("curvilinear", 0) for r in runs),
                products_median=statistics.median(r["products"] for r in runs),
                evaluations_median=statistics.median(r["evaluations"] for r in runs))


def figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(1, len(names), figsize=(6.2 * len(names), 5.0), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, name in zip(axes[0], names):
        problem = results[name]
        for k, (label, entry) in enumerate(problem["methods"].items()):
            curves = np.array([r["losses"] for r in entry["runs"]])
            x = np.arange(1, curves.shape[1] + 1)
            style = "-" if label in ("gn-cg", "gn-cg-cap250", "hess-cg", "bicgstab", "hybrid", "newton-mr-off") else "--"
            ax.plot(x, np.median(curves, axis=0), style, color=cmap(k), label=f"{label} ({entry['summary']['median'] or '—'})", lw=1.5)
            ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=cmap(k), alpha=0.12)
        ax.axhline(problem["definition"]["threshold"], color="k", lw=0.8, ls=":")
        ax.set_title(f"{name}: median loss, range over seeds")
        ax.set_xlabel("iteration")
        ax.set_ylabel("objective")
        ax.legend(fontsize=7, title="method (median iterations to escape)", title_fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--problems", default="linear,deep-tanh,deep-tanh-λ0=1e-3")
    parser.add_argument("--out", default=str(RESULTS / "saddle.json"))
    args = parser.parse_args()
    data = load_dataset("digits")
    definitions = {"linear": lambda: linear_problem(data), "deep-tanh": lambda: tanh_problem(data, 1.0),
                   "deep-tanh-λ0=1e-3": lambda: tanh_problem(data, 1e-3)}
    started = time.perf_counter()
    results = {}
    for name in args.problems.split(","):
        definition = definitions[name]()
        methods = {}
        for label, (method, options) in VARIANTS.items():
            runs = [run_one(data, definition, method, options, seed, args.iterations) for seed in range(args.seeds)]
            methods[label] = dict(method=method, options=options, runs=runs, summary=summary(runs))
            s = methods[label]["summary"]
            print(f"{name:18s} {label:28s} escape median {s['median']} [{s['min']}–{s['max']}] {s['escaped']}/{s['seeds']}  "
                  f"final {s['final_median']:.4f}  NC steps {s['nc_steps_median']}", flush=True)
        results[name] = dict(definition=definition, methods=methods)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(seeds=args.seeds, iterations=args.iterations, seconds=time.perf_counter() - started,
                note="iterations to escape: median over seeds (a seed that never escapes counts as +∞), range over the seeds that escaped")
    out.write_text(json.dumps(dict(meta=meta, problems=results), indent=1, allow_nan=False, default=float))
    figure(results, out.with_suffix(".png"))
    print(f"\n{meta['seconds']:.0f} s; wrote {out} and {out.with_suffix('.png')}")
    print("\n| method | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for label in VARIANTS:
        cells = []
        for name in results:
            s = results[name]["methods"][label]["summary"]
            cells.append("never" if s["median"] is None and not s["escaped"] else
                         f"{s['median'] if s['median'] is not None else '—'} [{s['min']}–{s['max']}] ({s['escaped']}/{s['seeds']})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
