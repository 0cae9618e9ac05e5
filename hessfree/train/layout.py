"""How the ranks share training: data-parallel or model-parallel, behind one small interface.

The trainers never ask which layout they run on; they ask the layout to

* ``reduce(buf)``: make a vector of this rank's sums global (data-parallel: one
  allreduce; model-parallel: nothing, every rank saw all the data and its shard is
  already complete);
* ``sum_scalars(*values)``: the same for a few scalars (data-parallel: one scalar
  allreduce; model-parallel: nothing, the values are already equal on every rank);
* ``dot(a, b)`` / ``all_finite(v)`` / ``none_nonfinite(count)``: an inner product, a
  finiteness test of θ-shaped vectors, or of this rank's count of non-finite elements
  (data-parallel: local, every rank holds the whole vector; model-parallel: the
  rank's partial result and **one** scalar allreduce, metered, so the answer is equal on
  every rank and every branch taken on it is the same everywhere);
* ``whole(v)`` / ``part(v)``: the whole θ-shaped vector (model-parallel: one allgather)
  and this rank's part of a whole one, for checkpoints and model files, which hold whole
  vectors whatever the layout (a checkpoint of either layout resumes in the other).

The model decides the layout: a :class:`~hessfree.models.sharded.ShardedMLP` is
model-parallel, any other model data-parallel.
"""

from __future__ import annotations

import enum

import numpy as np

from hessfree.comm import Communicator
from hessfree.models.base import Model
from hessfree.models.sharded import ShardedMLP


class Parallel(enum.Enum):
    """How ranks share the work (``--parallel``)."""

    #: every rank holds the whole θ and a shard of the data (the paper's Algorithm 2)
    DATA = "data"
    #: every rank holds all the data and a slice of every layer's units: θ, gradients and
    #: Krylov vectors are sharded (``hessfree.models.sharded``)
    MODEL = "model"


class DataParallel:
    """Whole vectors on every rank, data shards: sums are reduced, inner products local."""

    parallel = Parallel.DATA

    def __init__(self, comm: Communicator, model: Model):
        self.comm = comm
        self.model = model

    @property
    def n_params(self) -> int:
        """Length of the whole θ."""
        return self.model.n_params

    @property
    def whole_model(self) -> Model:
        """The model of whole vectors (what a model file stores)."""
        return self.model

    def reduce(self, buf: np.ndarray) -> np.ndarray:
        return self.comm.allreduce(buf, out=buf)

    def sum_scalars(self, *values: float) -> np.ndarray:
        return self.comm.allreduce_scalars(*values)

    def dot(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b))

    def all_finite(self, v: np.ndarray) -> bool:
        return bool(np.all(np.isfinite(v)))

    def none_nonfinite(self, count: int) -> bool:
        """True when this rank's count of non-finite elements is 0 (every rank's is the same)."""
        return count == 0

    def whole(self, v: np.ndarray) -> np.ndarray:
        return v

    def whole_like(self, v: np.ndarray) -> np.ndarray:
        """An uninitialised whole vector of ``v``'s dtype (no collective)."""
        return np.empty_like(v)

    def part(self, v: np.ndarray) -> np.ndarray:
        return np.array(v, dtype=self.model.dtype)


class ModelParallel(DataParallel):
    """Sharded vectors, whole data on every rank (``hessfree.models.sharded``)."""

    parallel = Parallel.MODEL
    model: ShardedMLP

    @property
    def n_params(self) -> int:
        return self.model.n_params_total

    @property
    def whole_model(self) -> Model:
        return self.model.full

    def reduce(self, buf: np.ndarray) -> np.ndarray:
        return buf

    def sum_scalars(self, *values: float) -> np.ndarray:
        return np.array([float(v) for v in values], dtype=np.float64)

    def dot(self, a: np.ndarray, b: np.ndarray) -> float:
        return float(self.comm.allreduce_scalars(float(np.dot(a, b)))[0])

    def all_finite(self, v: np.ndarray) -> bool:
        return self.none_nonfinite(np.count_nonzero(~np.isfinite(v)))

    def none_nonfinite(self, count: int) -> bool:
        """True when no rank's shard has a non-finite element (one scalar allreduce)."""
        return float(self.comm.allreduce_scalars(count)[0]) == 0.0

    def whole(self, v: np.ndarray) -> np.ndarray:
        return self.model.gather_vector(v)

    def whole_like(self, v: np.ndarray) -> np.ndarray:
        return np.empty(self.n_params, dtype=v.dtype)

    def part(self, v: np.ndarray) -> np.ndarray:
        return self.model.shard_vector(np.asarray(v, dtype=self.model.dtype))


def layout_of(model: Model, comm: Communicator) -> DataParallel:
    """The layout a model trains in on ``comm``."""
    return ModelParallel(comm, model) if isinstance(model, ShardedMLP) else DataParallel(comm, model)


def bind(model: Model, comm: Communicator) -> Model:
    """``model`` issuing its collectives (if any) on ``comm``: a sharded model built on a
    communicator that ``fit`` then wrapped (a simulated clock) is rebuilt on the wrapper,
    so that its collectives are metered and timed with the trainer's."""
    if isinstance(model, ShardedMLP) and model.comm is not comm:
        import attrs

        return attrs.evolve(model, comm=comm)
    return model
