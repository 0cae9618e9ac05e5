"""Which samples each rank uses: batches are sets of *global* indices, the same for any P.

A batch never depends on the number of ranks, so serial, threads and MPI runs follow the
same trajectory (up to the rounding of sums reduced in a different order). Each rank
computes the part of a batch that lies in its shard; with strided shards (rank r owns
r, r+P, r+2P, ...) a window of consecutive global indices splits across ranks in parts
that differ by at most one sample (two when the window wraps past the end of the data
and P does not divide n): the paper's b/P per rank.
"""

from __future__ import annotations

import math

import numpy as np


def curvature_window(iteration: int, batch_size: int, n: int) -> np.ndarray:
    """Global indices of curvature batch k: b consecutive samples from k·b, wrapping (Martens)."""
    start = (iteration * batch_size) % n  # Python ints: no overflow however large k grows
    return (start + np.arange(batch_size, dtype=np.int64)) % n


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The global sample order of an SGD epoch (``SeedSequence([seed, epoch])``, any P)."""
    return np.random.default_rng(np.random.SeedSequence([seed, epoch])).permutation(n)


def local_positions(rows: range, indices: np.ndarray) -> np.ndarray:
    """Positions within this rank's shard of the given global indices it owns (in batch order).

    ``rows`` is the rank's shard as a range of global indices (contiguous or strided).
    """
    idx = np.asarray(indices, dtype=np.int64)
    inside = (idx >= rows.start) & (idx < rows.stop) & ((idx - rows.start) % rows.step == 0)
    return (idx[inside] - rows.start) // rows.step



def sample_size(iteration: int, first: int, growth: float, n: int) -> int:
    """Samples in iteration k's gradient sample: ⌊s₀·rᵏ⌋, at most n (``first`` = s₀ = 0
    or ≥ n: the whole training set every iteration).

    A geometric schedule (Friedlander & Schmidt 2012): while the gradient's sampling error
    shrinks at least as fast as the full-gradient method's progress, the iteration keeps
    that method's rate, and early iterations, far from a minimum, cost a fraction of a pass.
    """
    if first <= 0 or first >= n:
        return n
    if growth <= 1.0:
        return first
    if iteration * math.log(growth) >= math.log(n / first):  # r^k ≥ n/s₀, without overflowing
        return n
    return min(n, int(first * growth**iteration))


def local_prefix(rows: range, size: int) -> int:
    """How many of the first ``size`` global samples live in this rank's shard (``rows``,
    contiguous or strided): with either, they are the shard's first rows. Iteration k's
    gradient sample is the first :func:`sample_size` samples of the training set, nested
    (each holds the last), so the sums a step computed over its sample at the new point
    serve the next sample as they are, with only the added rows to compute; like the
    curvature windows, this assumes the data in random order (MNIST's and the embedded
    digits' are)."""
    return len(range(rows.start, max(rows.start, min(size, rows.stop)), rows.step))


def ends_pass(iteration: int, size: int, n: int) -> bool:
    """Whether gradient window k (``size`` samples from k·size, cycled like the curvature
    windows) completes a pass over the n training samples: ⌊(k+1)·B/n⌋ > ⌊k·B/n⌋. The
    training set and the test set are evaluated after such an iteration's step, once per
    pass, as the first-order methods evaluate once per epoch."""
    return (iteration + 1) * size // n > iteration * size // n


def contiguous_positions(positions: np.ndarray) -> tuple[int, int] | None:
    """(start, stop) when ``positions`` are consecutive rows of the shard (a window that
    does not wrap, on a contiguous or strided shard: a view serves it), else None.
    ``positions`` ascend within each piece of a window (``local_positions``), so the span
    equals the count exactly when they are consecutive; a wrapped window's span does not."""
    if positions.size and positions[-1] - positions[0] + 1 == positions.size:
        return int(positions[0]), int(positions[-1]) + 1
    return None
