"""Small training cases shared by the in-process tests and the MPI script."""

from hessfree.methods import Method

METHODS = [m.value for m in Method]


def case_config(method: str, **overrides) -> dict:
    """A few iterations of ``method`` on the embedded digits with a small net (float64)."""
    # Bi-CG-STAB amplifies the rounding of sums reduced in another order: with P ranks its
    # trajectory matches serial to ~1e-16 for ≤ 10 iterations per solve, ~1e-12 at 15, and
    # separates by 30 (measured); CG stays within 1e-10 at 30
    config = dict(method=method, hidden="24", iterations=3, epochs=2, batch_size=300 if Method(method).is_hessian_free else 50,
                  cg_max_iter=10 if method == "bicgstab" else 30, seed=3, lr=0.2, quiet=True)
    config.update(overrides)
    return config
