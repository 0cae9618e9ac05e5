"""Small training cases shared by the in-process tests and the MPI script."""

METHODS = ["gn-cg", "hess-cg", "bicgstab", "hybrid", "sgd", "msgd"]


def case_config(method: str, **overrides) -> dict:
    """A few iterations of ``method`` on the embedded digits with a small net (float64)."""
    config = dict(method=method, hidden="24", iterations=3, epochs=2, batch_size=300 if method not in ("sgd", "msgd") else 50,
                  cg_max_iter=30, seed=3, lr=0.2, quiet=True)
    config.update(overrides)
    return config
