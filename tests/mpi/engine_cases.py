"""The runs whose metrics were recorded before the engine refactor (tests/data/engine_golden.json):
``hessfree train --method M --dtype float64 --hidden 20 --iterations 3 --epochs 2 --seed 3``."""

CASES = ("gn-cg", "hess-cg", "bicgstab", "hybrid", "sgd", "msgd")


def values(method: str, metrics: str, **extra) -> dict:
    return dict(method=method, dtype="float64", hidden="20", iterations=3, epochs=2, seed=3, quiet=True, metrics=metrics, **extra)
