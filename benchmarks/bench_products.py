"""Time the model's products against the bare GEMMs of the same shapes.

For each network, dtype and BLAS thread count this measures the median time of

* ``gradient``        loss + gradient on the gradient batch (default 50,000 rows),
* ``gv`` / ``hv``     one Gauss-Newton / exact Hessian product on a cached forward pass of
                      the curvature batch (default 5,000 rows), as inside a Krylov solve,
* ``gv+fwd`` / ``hv+fwd``  the same product including a new forward pass (and, for hv,
                      the δ_l), on the recycled buffers of the previous one,

and the median time of exactly the matrix multiplications those products perform (same
shapes, same transpositions, preallocated outputs): the floor no dense-layer
implementation can beat. ``ratio`` = product time / GEMM floor; GFLOP/s counts GEMM FLOPs.

Networks: the MNIST classifiers (tanh, softmax cross-entropy; float32 and float64) and
the MNIST deep autoencoder 784-1000-500-250-30-250-500-1000-784 (2.8M parameters;
sigmoid ×3, a linear 30-unit code layer, sigmoid ×3; logistic cross-entropy against the
input itself; float32 only), whose gradient runs on ``--ae-rows`` rows (default the
60,000 MNIST training images) with ``--ae-repeats`` repeats. Its GEMM floor runs the plan
chunk by chunk (``--chunk`` rows at once, as the product does): the whole-batch GEMM
operands would take 6 GB. MNIST is read from ``--mnist-dir`` when it is there, else the
data are random of MNIST's shape (pixels uniform in [0, 1), random labels).

    python benchmarks/bench_products.py [--mnist-dir DIR] [--repeats 7] [--out FILE]
    python benchmarks/bench_products.py --networks autoencoder --threads 2   # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numba
import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from hessfree.cost.compute import gemm_flops, gemm_plan
from hessfree.models import MLP

NETWORKS = [(784, 400, 10), (784, 400, 150, 10)]
#: the deep autoencoder of Hinton & Salakhutdinov (2006) and Martens (2010), float32 only
AUTOENCODER = dict(
    layers=(784, 1000, 500, 250, 30, 250, 500, 1000, 784),
    activation=["sigmoid"] * 3 + ["linear"] + ["sigmoid"] * 3,
    loss="logistic_cross_entropy",
    dtypes=("float32",),
)


def gemm_runner(plan, dtype, rng):
    """A function running exactly the GEMMs of ``plan`` into preallocated outputs."""
    ops = []
    for (m, k), (k2, n), transposed in plan:
        a = rng.standard_normal((k, m) if transposed else (m, k)).astype(dtype)
        b = rng.standard_normal((k2, n)).astype(dtype)
        ops.append((a.T if transposed else a, b, np.empty((m, n), dtype=dtype)))

    def run():
        for a, b, out in ops:
            np.matmul(a, b, out=out)

    return run


def chunked_gemm_runner(layers, n: int, kind: str, chunk: int, dtype, rng):
    """The GEMMs of ``kind`` on n rows as the chunked product performs them: the plan of
    ``chunk`` rows once per full chunk, then on the remaining rows (views of the same
    operands: the row count is the outer dimension of every operand that has it)."""
    plan = gemm_plan(layers, min(n, chunk), kind)
    ops = []
    for (m, k), (k2, c), transposed in plan:
        a = rng.standard_normal((k, m) if transposed else (m, k), dtype=np.float32).astype(dtype, copy=False)
        b = rng.standard_normal((k2, c), dtype=np.float32).astype(dtype, copy=False)
        ops.append((a, b, np.empty((m, c), dtype=dtype), transposed))
    sizes = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])

    def run():
        for r in sizes:
            for a, b, out, transposed in ops:
                if transposed:  # (m, r)·(r, c): r is the inner dimension
                    np.matmul(a[:r].T, b[:r], out=out)
                else:  # (r, k)·(k, c)
                    np.matmul(a[:r], b, out=out[:r])

    return run


def chunked_plan(layers, n: int, kind: str, chunk: int) -> list:
    """Every GEMM of the chunked product (for the FLOP count)."""
    sizes = [chunk] * (n // chunk) + ([n % chunk] if n % chunk else [])
    return [g for r in sizes for g in gemm_plan(layers, r, kind)]


def paired_medians(fn, floor, repeats: int) -> tuple[float, float]:
    """Median times of ``fn`` and ``floor``, run alternately so drifts in machine load hit both."""
    fn(), floor()  # warm: JIT, page faults, BLAS buffers
    a, b = [], []
    for _ in range(repeats):
        for f, times in ((fn, a), (floor, b)):
            t0 = time.perf_counter()
            f()
            times.append(time.perf_counter() - t0)
    return statistics.median(a), statistics.median(b)


def load_mnist(directory: str | None, n: int, dtype):
    if not directory:
        return None
    try:
        from hessfree.data import load_dataset
    except ImportError:
        return None
    data = load_dataset("mnist", data_dir=directory, dtype=dtype)
    reps = -(-n // data.n_train)
    X = np.concatenate([data.X_train] * reps)[:n]
    y = np.concatenate([data.y_train] * reps)[:n]
    return X, y


def bench_one(layers, dtype, threads, args, rng, autoencoder=None) -> list[dict]:
    """One network at one dtype and thread count; ``autoencoder`` is :data:`AUTOENCODER` for it."""
    numba.set_num_threads(threads)
    if autoencoder is None:
        model = MLP(list(layers), activation="tanh", dtype=dtype, chunk_size=args.chunk, parallel=True)
        grad_rows, repeats = args.grad_rows, args.repeats
    else:
        model = MLP(
            list(layers), activation=autoencoder["activation"], loss=autoencoder["loss"], dtype=dtype, chunk_size=args.chunk, parallel=True
        )
        grad_rows, repeats = args.ae_rows, args.ae_repeats
    theta = model.init_params(0)
    real = load_mnist(args.mnist_dir, grad_rows, dtype)
    if real is None:
        X = rng.random((grad_rows, layers[0])).astype(dtype)
        y = rng.integers(0, layers[-1], grad_rows)
    else:
        X, y = real
    if autoencoder is not None:
        y = X  # reconstruction targets: the input itself (stored once by model.batch)
    big = model.batch(X, y)
    small = model.batch(X[: args.curv_rows], y[: args.curv_rows])
    v = rng.standard_normal(model.n_params).astype(dtype)
    out = np.empty(model.n_params, dtype=dtype)
    cache = model.forward(theta, small)
    cache.hv(v, out=out)  # computes the cached δ_l once, as a solve's first product does
    caches = [model.forward(theta, small)]

    def fresh():
        """A new forward pass, on the buffers of the previous one (as the trainer does)."""
        caches.append(model.forward(theta, small, recycle=caches.pop()))
        return caches[-1]

    cases = {
        "gradient": (grad_rows, lambda: model.loss_grad(theta, big)),
        "gv": (args.curv_rows, lambda: cache.gv(v, out=out)),
        "hv": (args.curv_rows, lambda: cache.hv(v, out=out)),
        "gv+fwd": (args.curv_rows, lambda: fresh().gv(v, out=out)),
        "hv+fwd": (args.curv_rows, lambda: fresh().hv(v, out=out)),
    }
    rows = []
    for kind, (n, fn) in cases.items():
        if autoencoder is None:
            plan = gemm_plan(layers, n, kind)
            runner = gemm_runner(plan, dtype, rng)
        else:
            plan = chunked_plan(layers, n, kind, args.chunk)
            runner = chunked_gemm_runner(layers, n, kind, args.chunk, dtype, rng)
        t, floor = paired_medians(fn, runner, repeats)
        del runner
        flops = gemm_flops(plan)
        rows.append(
            dict(
                network="-".join(map(str, layers)) + (" autoencoder" if autoencoder is not None else ""),
                dtype=np.dtype(dtype).name,
                blas_threads=threads,
                product=kind,
                rows=n,
                gemms=len(plan),
                time_s=t,
                gemm_floor_s=floor,
                ratio=t / floor,
                gflops=flops / t / 1e9,
                floor_gflops=flops / floor / 1e9,
            )
        )
    return rows


def markdown(rows) -> str:
    lines = [
        "| network | dtype | BLAS threads | product | rows | time (ms) | GEMM floor (ms) | ratio | GFLOP/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['network']} | {r['dtype']} | {r['blas_threads']} | {r['product']} | {r['rows']} | "
            f"{1e3 * r['time_s']:.1f} | {1e3 * r['gemm_floor_s']:.1f} | {r['ratio']:.2f} | {r['gflops']:.1f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mnist-dir", default=os.environ.get("HESSFREE_MNIST_DIR", "../shared/data/mnist"))
    parser.add_argument("--grad-rows", type=int, default=50_000)
    parser.add_argument("--curv-rows", type=int, default=5_000)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--dtypes", default="float32,float64", help="dtypes of the classifiers")
    parser.add_argument("--networks", default="classifiers,autoencoder", help="which of: classifiers, autoencoder")
    parser.add_argument("--ae-rows", type=int, default=60_000, help="gradient rows of the autoencoder")
    parser.add_argument("--ae-repeats", type=int, default=3, help="repeats of the autoencoder's timings")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "products.json"))
    args = parser.parse_args(argv)
    if args.mnist_dir and not Path(args.mnist_dir).is_dir():
        args.mnist_dir = None
    networks = {n.strip() for n in args.networks.split(",")}
    if not networks <= {"classifiers", "autoencoder"}:
        parser.error(f"--networks: expected classifiers and/or autoencoder, found {args.networks!r}")
    rng = np.random.default_rng(0)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        with threadpool_limits(limits=threads):
            runs = []
            if "classifiers" in networks:
                runs += [(layers, dtype, None) for dtype in args.dtypes.split(",") for layers in NETWORKS]
            if "autoencoder" in networks:
                runs += [(AUTOENCODER["layers"], dtype, AUTOENCODER) for dtype in AUTOENCODER["dtypes"]]
            for layers, dtype, autoencoder in runs:
                rows.extend(bench_one(layers, np.dtype(dtype), threads, args, rng, autoencoder))
                print("\n".join(markdown(rows[-5:]).splitlines()[2:]), file=sys.stderr, flush=True)
    result = dict(
        benchmark="products",
        data="mnist" if args.mnist_dir else "random",
        machine=dict(platform=platform.platform(), cpus=os.cpu_count(), python=sys.version.split()[0], numpy=np.__version__),
        blas=[{k: p.get(k) for k in ("internal_api", "version", "num_threads")} for p in threadpool_info()],
        rows=rows,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
