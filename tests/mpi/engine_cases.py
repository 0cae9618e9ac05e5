"""The runs whose metrics were recorded before the engine refactor (tests/data/engine_golden.json):
``hessfree train --method M --dtype float64 --hidden 20 --iterations 3 --epochs 2 --seed 3``, with
``--backtracking`` for the HF methods (every HF method's default then; gn-cg's is now off), and
``--cg-max-iter 250`` for gn-cg (its cap then; now 5)."""

CASES = ("gn-cg", "hess-cg", "bicgstab", "hybrid", "sgd", "msgd")
FIRST_ORDER = ("sgd", "msgd")


def values(method: str, metrics: str, **extra) -> dict:
    pinned = {} if method in FIRST_ORDER else {"backtracking": True}
    if method == "gn-cg":
        pinned["cg_max_iter"] = 250
    return dict(method=method, dtype="float64", hidden="20", iterations=3, epochs=2, seed=3, quiet=True, metrics=metrics,
                **pinned, **extra)
