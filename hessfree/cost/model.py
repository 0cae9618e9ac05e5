"""Predicted time, collectives and bytes per iteration and per epoch, per method.

Data-parallel HF, one outer iteration on P ranks (d parameters, s bytes per value,
n training samples, curvature batch b, K Krylov iterations of 1 or 2 products, L
objective evaluations in backtracking + line search; ⌈·⌉ because the slowest rank sets
the pace):

=============  ==============================================  =====================
phase          compute on each rank                            collectives (bytes)
=============  ==============================================  =====================
gradient       gradient on ⌈n/P⌉ rows                          1 allreduce ((d+1)·s)
solve          forward of ⌈b/P⌉ rows (+ δ_l once for H·v),     K·q allreduces (d·s)
               K·q products on ⌈b/P⌉ rows                      q = 2 for Bi-CG-STAB
line search    L forward passes on ⌈n/P⌉ rows                  L scalar allreduces (16)
other          test-set forward on ⌈n_test/P⌉ rows             1 scalar allreduce (8),
                                                               only with a test set
=============  ==============================================  =====================

The compute column is the paper's Algorithm 2. The trainer's gradient taken along
(``hessfree.train.hf``) moves work between phases; an iteration's record says where, and
the predictions take it (``gradient_kept``, ``gradient_along``): a kept gradient costs
its allreduce only (its pass was the last step's first trial), and a first trial that
took the gradient along is a gradient pass instead of a forward pass. The collectives are
unchanged. Without the two flags (the defaults) the prediction is Algorithm 2's.

Data-parallel SGD: an update is a gradient on ⌈b/P⌉ rows and 1 allreduce of (d+1)·s
bytes; an epoch is ⌊n/b⌋ updates plus one evaluation (train and test forward passes,
1 scalar allreduce of 24 bytes). These are exactly the collectives the trainers issue,
so :meth:`CostModel.hf_counts` / :meth:`CostModel.sgd_counts` equal the metering
layer's counts of real runs (tested for every method, backend and P ∈ {1, 2, 3}).

Model-parallel SGD (the weights of each layer split by output unit over P nodes; every
node sees the whole mini-batch; ``hessfree train --parallel model``): per mini-batch the
forward pass all-gathers each layer's activations, b·d_i values for i = 1..L (the output
too: the softmax needs whole rows), and the backward pass sums the partial products
δ_l·W_lᵀ over nodes with a reduce-scatter, b·d_i values for i = 1..L−1 (δ_L is computed
from the gathered outputs, so nothing is exchanged for it). Exactly, per epoch of ⌊n/b⌋
mini-batches: ⌊n/b⌋·b·(2·Σ_{i<L} d_i + d_L) values and ⌊n/b⌋·(2L − 1) synchronizations
(:func:`model_parallel_exact`). The trainer adds one scalar allreduce per mini-batch
(whether the sharded gradient is finite, so that every node skips a bad update alike):
2L collectives per mini-batch, which :meth:`CostModel.sgd_mp_counts` counts by kind and
phase together with the end-of-epoch evaluation (L allgathers per chunk of rows), and
which equal the metered counts of real runs. The paper prints ≈ 2·n·Σ_{i≤L} d_i values
and 2·L·n/b synchronizations (:func:`model_parallel_paper`): it also counts a backward
exchange at the output layer (n·d_L values and n/b synchronizations more), has no
finiteness test, and does not round n/b down; its synchronizations equal hessfree's
2L·⌊n/b⌋ whenever b divides n.

Model-parallel HF (:meth:`CostModel.hf_mp_counts`): no gradient or product allreduce;
every pass over rows exchanges as above (a gradient pass L allgathers and L − 1
reduce-scatters per chunk, a forward pass L allgathers, a curvature product L and L − 1,
the exact Hessian's δ_l once per solve L − 1), and every inner product of the Krylov
solver and of the step's bookkeeping is one scalar allreduce (the vectors are sharded).
The 2-D what-if (data groups × model slices) is :mod:`hessfree.cost.layouts`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Sequence

import attrs

from hessfree.comm.base import CommCounts, Phase, PhaseCounts
from hessfree.cost._checks import count
from hessfree.cost.compute import NodeSpec, Work, check_layers, n_params
from hessfree.cost.network import Collective, Network
from hessfree.methods import Method
from hessfree.solvers import Curvature
from hessfree.validate import choice


class _CostMethodBase(enum.Enum):
    """Methods the model predicts: every method of the method table (``hessfree.methods``),
    plus model-parallel SGD, which is a layout the trainer does not run."""

    @property
    def spec(self):
        return None if self is CostMethod.SGD_MODEL_PARALLEL else Method(self.value).spec

    @property
    def is_hessian_free(self) -> bool:
        return self.spec is not None and self.spec.is_hessian_free

    @property
    def products_per_step(self) -> int:
        """Curvature products per Krylov iteration (the method table's count)."""
        return self.spec.products_per_krylov_step if self.is_hessian_free else 0

    @property
    def product(self) -> Work:
        """The product the method's solves multiply by (hybrid: its usual, exact, one)."""
        return Work.GV if self.spec.curvature is Curvature.GAUSS_NEWTON else Work.HV


CostMethod = _CostMethodBase(
    "CostMethod", [(m.name, m.value) for m in Method] + [("SGD_MODEL_PARALLEL", "sgd-mp")], module=__name__
)


class Blocks(enum.Enum):
    """How a pass over a rank's whole shard (gradient, line search) is blocked.

    ``chunk``: in blocks of the node's ``chunk_rows`` (hessfree's models);
    ``batch``: in blocks of the rank's share b/P of the batch (the paper's implementation,
    where the full-data passes run mini-batch by mini-batch).
    """

    CHUNK = "chunk"
    BATCH = "batch"


def _enum(kind):
    return lambda value: choice(kind.__name__.lower(), kind, value)


def _count_field(instance, attribute, value) -> None:
    count(attribute.name, value)


def _count0_field(instance, attribute, value) -> None:
    count(attribute.name, value, minimum=0)


@attrs.frozen(kw_only=True)
class Prediction:
    """One (method, batch, nodes) row of a what-if table. Times in seconds.

    An *iteration* is one HF outer iteration or one SGD update. ``epochs_per_iteration``
    counts samples pushed through the network, as the trainer's records do (HF:
    (n·(1+L) + b·(1+products)) / n; SGD: b / n), and the per-epoch numbers divide by it
    (SGD's epoch adds its evaluation pass).
    """

    method: str
    batch: int
    nodes: int
    time_gradient_s: float
    time_solve_s: float
    time_line_search_s: float
    time_other_s: float
    time_per_iteration_s: float
    compute_s: float
    communication_s: float
    collectives_per_iteration: int
    bytes_per_iteration: int
    epochs_per_iteration: float
    time_per_epoch_s: float
    collectives_per_epoch: float
    bytes_per_epoch: float
    krylov_iterations: int = 0
    curvature_products: int = 0
    line_search_evals: int = 0
    speedup: float = math.nan
    efficiency: float = math.nan

    def as_dict(self) -> dict:
        out = attrs.asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out

    @property
    def solve_share(self) -> float:
        return self.time_solve_s / self.time_per_iteration_s if self.time_per_iteration_s else 0.0


class Evaluation(enum.Enum):
    """What an HF iteration evaluates beside its step (a record's ``window`` and
    ``evaluated``). ``step``: the training objective comes from the line search, the test
    set is evaluated (every iteration without gradient windows); ``whole``: a gradient
    window's iteration that evaluates the training set by a forward pass of its own (one
    scalar allreduce of the loss and error) and the test set; ``none``: one that
    evaluates neither."""

    STEP = "step"
    WHOLE = "whole"
    NONE = "none"

    @classmethod
    def of(cls, record: dict) -> "Evaluation":
        """A record's (as a dict; fields absent in records written before windows: step)."""
        if not record.get("window"):
            return cls.STEP
        return cls.WHOLE if record.get("evaluated") else cls.NONE

    @property
    def test(self) -> bool:
        return self is not Evaluation.NONE


@attrs.frozen
class TakenAlong:
    """Where an HF iteration's gradient work went (module docstring): ``kept``, its
    gradient came with the last step's first trial; ``first_trial``, this step's first
    trial computed the gradient at its point too."""

    kept: bool = False
    first_trial: bool = False


def hf_epochs(n: int, b: int, products: int, evaluations: int, kept: bool, sample: int = 0, kept_sample: int = 0,
              evaluation: Evaluation = Evaluation.STEP) -> float:
    """Effective epochs of one HF iteration, as the trainer counts them: the gradient pass
    (when kept, only the samples the last step's did not cover), the curvature batch's
    forward pass and products, the evaluations (and a gradient window's pass over the
    training set, ``evaluation`` whole). ``sample``: the iteration's gradient sample and
    ``kept_sample`` the last one's (0: the whole set, n)."""
    m = sample_rows(n, sample)
    gradient = m - min(m, sample_rows(n, kept_sample)) if kept else m
    whole = n if evaluation is Evaluation.WHOLE else 0
    return (m * evaluations + gradient + b * (1 + products) + whole) / n


def sample_rows(n: int, sample: int) -> int:
    """The samples a gradient sample of this size covers (0, or n and more: all n)."""
    return n if sample <= 0 else min(int(sample), n)


def model_parallel_exact(layers: Sequence[int], samples: int, batch: int) -> tuple[int, int]:
    """(values exchanged, synchronizations) per epoch of model-parallel SGD, exactly."""
    d = check_layers(layers)
    n, b = count("samples", samples), count("batch", batch)
    updates = max(1, n // min(b, n))
    b = min(b, n)
    L = len(d) - 1
    per_batch = b * (2 * sum(d[1:L]) + d[L])
    return updates * per_batch, updates * (2 * L - 1)


def model_parallel_paper(layers: Sequence[int], samples: int, batch: int) -> tuple[float, float]:
    """The paper's approximation: 2·(n/b)·b·Σ_{i=1..L} d_i values, 2·L·n/b synchronizations."""
    d = check_layers(layers)
    n, b = count("samples", samples), count("batch", batch)
    L = len(d) - 1
    return 2.0 * (n / b) * b * sum(d[1:]), 2.0 * L * n / b


@attrs.frozen(kw_only=True)
class CostModel:
    """The network d_0..d_L on ``samples`` training (and ``test_samples`` test) samples,
    run on nodes of ``node`` speed connected by ``network`` with ``collective`` allreduces."""

    layers: tuple[int, ...] = attrs.field(converter=check_layers)
    samples: int = attrs.field(validator=_count_field)
    node: NodeSpec = attrs.field(validator=attrs.validators.instance_of(NodeSpec))
    network: Network = attrs.field(validator=attrs.validators.instance_of(Network))
    collective: Collective = attrs.field(default=Collective.RING, converter=_enum(Collective))
    test_samples: int = attrs.field(default=0, validator=_count0_field)
    blocks: Blocks = attrs.field(default=Blocks.CHUNK, converter=_enum(Blocks))

    @property
    def n_params(self) -> int:
        return n_params(self.layers)

    @property
    def itemsize(self) -> int:
        return self.node.itemsize

    # ------------------------------------------------------------------ counts
    def hf_counts(self, curvature_products: int, line_search_evals: int, evaluation: Evaluation = Evaluation.STEP) -> CommCounts:
        """The collectives of one HF iteration that did these products and evaluations."""
        q, L = count("curvature_products", curvature_products, 0), count("line_search_evals", line_search_evals, 0)
        d, s = self.n_params, self.itemsize
        test = bool(self.test_samples) and evaluation.test  # the test error: one scalar
        whole = evaluation is Evaluation.WHOLE  # the training set's loss and error: two
        other = PhaseCounts(allreduce_scalars=test + whole, bytes=8 * test + 16 * whole)
        return CommCounts(
            gradient=PhaseCounts(allreduce=1, bytes=(d + 1) * s),
            curvature=PhaseCounts(allreduce=q, bytes=q * d * s),
            line_search=PhaseCounts(allreduce_scalars=L, bytes=16 * L),
            other=other,
        )

    def sgd_counts(self, updates: int, evaluations: int = 0) -> CommCounts:
        """The collectives of ``updates`` data-parallel SGD updates and ``evaluations``
        end-of-epoch evaluations (one per epoch)."""
        u, e = count("updates", updates, 0), count("evaluations", evaluations, 0)
        d, s = self.n_params, self.itemsize
        return CommCounts(
            gradient=PhaseCounts(allreduce=u, bytes=u * (d + 1) * s),
            other=PhaseCounts(allreduce_scalars=e, bytes=24 * e),
        )

    # ------------------------------------------------------------------ model-parallel counts
    def chunks(self, rows: int) -> int:
        """Chunks a model pass over ``rows`` rows runs in (the node's ``chunk_rows``, the
        model's ``chunk_size``): each one exchanges every layer once."""
        return -(-max(0, int(rows)) // self.node.chunk_rows)

    def _exchange(self, rows: int, gathers: bool = True, scatters: bool = True, times: int = 1) -> PhaseCounts:
        """``times`` model-parallel passes over ``rows`` rows: per chunk L allgathers (b·d_l
        values each, l = 1..L) and, for a backward pass, L − 1 reduce-scatters (l < L)."""
        d, s, c = self.layers, self.itemsize, times * self.chunks(rows)
        L = len(d) - 1
        g = PhaseCounts(allgather=c * L, bytes=times * rows * sum(d[1:]) * s) if gathers else PhaseCounts()
        r = PhaseCounts(reduce_scatter=c * (L - 1), bytes=times * rows * sum(d[1:L]) * s) if scatters else PhaseCounts()
        return g + r

    @staticmethod
    def _scalars(k: int) -> PhaseCounts:
        return PhaseCounts(allreduce_scalars=k, bytes=8 * k)

    def sgd_mp_counts(self, batch: int, updates: int, evaluations: int = 0, *, weight_decay: bool = False) -> CommCounts:
        """The collectives of ``updates`` model-parallel SGD updates on mini-batches of
        ``batch`` rows (gradient phase: a forward and backward exchange and one scalar
        finiteness test each) and of ``evaluations`` end-of-epoch evaluations (phase other:
        forward exchanges over the training and test rows, and with ``weight_decay`` the
        objective's ‖θ‖², one scalar allreduce)."""
        b = min(count("batch", batch), self.samples)
        u, e = count("updates", updates, 0), count("evaluations", evaluations, 0)
        gradient = self._exchange(b, times=u) + self._scalars(u)
        other = self._exchange(self.samples, scatters=False, times=e) + self._exchange(self.test_samples, scatters=False, times=e)
        other = other + self._scalars(e if weight_decay else 0)
        return CommCounts(gradient=gradient, other=other)

    def hf_mp_counts(self, batch: int, curvature_products: int, line_search_evals: int, *, exact: bool,
                     inner_products: dict | None = None, evaluation: Evaluation = Evaluation.STEP,
                     sample: int = 0) -> CommCounts:
        """The collectives of one model-parallel HF iteration with this curvature batch,
        products (of the exact Hessian when ``exact``) and objective evaluations.

        ``inner_products`` maps phase names to the inner products taken there (each one
        scalar allreduce: the solver's, the step's bookkeeping; see
        ``hessfree.cost.layouts.INNER_PRODUCTS_PER_STEP`` for the solvers' rates). The finiteness test of the
        gradient is one more scalar allreduce (phase other). ``sample``: the rows the
        gradient pass and the evaluations run on (a record's ``gradient_sample``; 0: all);
        ``evaluation``: what the iteration evaluates beside its step (:class:`Evaluation`).
        """
        b = min(count("batch", batch), self.samples)
        q, L = count("curvature_products", curvature_products, 0), count("line_search_evals", line_search_evals, 0)
        m = sample_rows(self.samples, count("sample", sample, 0))  # the gradient's and evaluations' rows
        dots = {p.value: 0 for p in Phase}
        dots.update(inner_products or {})
        curvature = self._exchange(b, scatters=False) + self._exchange(b, times=q)
        if exact and q:
            curvature = curvature + self._exchange(b, gathers=False)
        return CommCounts(
            gradient=self._exchange(m) + self._scalars(dots["gradient"]),
            curvature=curvature + self._scalars(dots["curvature"]),
            line_search=self._exchange(m, scatters=False, times=L) + self._scalars(dots["line_search"]),
            other=(self._exchange(self.test_samples, scatters=False, times=int(evaluation.test))
                   + self._exchange(self.samples, scatters=False, times=int(evaluation is Evaluation.WHOLE))
                   + self._scalars(1 + dots["other"])),
        )

    def updates_per_epoch(self, batch: int) -> int:
        return max(1, self.samples // min(count("batch", batch), self.samples))

    # ------------------------------------------------------------------ time pieces
    def _allreduce(self, nodes: int, nbytes: float) -> float:
        return self.network.allreduce(nodes, nbytes, self.collective)

    def _share(self, rows: int, nodes: int) -> int:
        return -(-rows // nodes)

    def _full_pass(self, kind: Work, batch: int, nodes: int, rows: int) -> float:
        block = self._share(batch, nodes) if self.blocks is Blocks.BATCH else None
        return self.node.time(self.layers, self._share(rows, nodes), kind, block)

    # ------------------------------------------------------------------ predictions
    def predict(
        self,
        method: CostMethod | str,
        batch: int,
        nodes: int,
        *,
        krylov_iterations: int = 10,
        line_search_evals: int = 3,
        curvature_products: int | None = None,
        gradient_kept: bool = False,
        gradient_along: bool = False,
        gradient_sample: int = 0,
        kept_sample: int = 0,
        evaluation: Evaluation | str = Evaluation.STEP,
    ) -> Prediction:
        """Time, collectives and bytes of one iteration of ``method`` at this batch and P.

        HF does ``krylov_iterations`` × (1 or 2) curvature products, unless
        ``curvature_products`` gives the number directly (e.g. a real run's record);
        ``gradient_kept``/``gradient_along`` as in the module docstring (a record's).
        ``gradient_sample`` (a record's; 0: the whole set): the samples the gradient and the
        evaluations run on; a kept gradient then computes only the samples the last
        iteration's (``kept_sample``, 0: whole) did not cover. ``evaluation``: what the
        iteration evaluates beside its step (:class:`Evaluation`; a record's, for gradient
        windows)."""
        method = _enum(CostMethod)(method)
        batch, nodes = count("batch", batch), count("nodes", nodes)
        batch = min(batch, self.samples)
        if method.is_hessian_free:
            K = count("krylov_iterations", krylov_iterations, 0)
            q = K * method.products_per_step if curvature_products is None else count("curvature_products", curvature_products, 0)
            L = count("line_search_evals", line_search_evals, 0)
            rows = (sample_rows(self.samples, count("gradient_sample", gradient_sample, 0)),
                    sample_rows(self.samples, count("kept_sample", kept_sample, 0)))
            along = TakenAlong(gradient_kept, gradient_along and L > 0)
            return self._predict_hf(method, batch, nodes, K, q, L, along, rows, _enum(Evaluation)(evaluation))
        if method is CostMethod.SGD_MODEL_PARALLEL:
            return self._predict_model_parallel(batch, nodes)
        return self._predict_sgd(method, batch, nodes)

    def _predict_hf(self, method: CostMethod, b: int, P: int, K: int, q: int, L: int, along: "TakenAlong",
                    rows: tuple[int, int], evaluation: Evaluation) -> Prediction:
        d, s, n = self.n_params, self.itemsize, self.samples
        m, m_kept = rows  # the gradient sample's rows, the last one's (all n: the whole set)
        b_local = self._share(b, P)
        computed = m - min(m, m_kept) if along.kept else m
        grad_compute = self._full_pass(Work.GRADIENT, b, P, computed) if computed else 0.0
        grad_comm = self._allreduce(P, (d + 1) * s)
        solve_compute = self.node.time(self.layers, b_local, Work.FORWARD)
        if method.product is Work.HV:
            solve_compute += self.node.time(self.layers, b_local, Work.DELTAS)
        solve_compute += q * self.node.time(self.layers, b_local, method.product)
        solve_comm = q * self._allreduce(P, d * s)
        ls_compute = L * self._full_pass(Work.FORWARD, b, P, m)
        if along.first_trial:
            ls_compute += self._full_pass(Work.GRADIENT, b, P, m) - self._full_pass(Work.FORWARD, b, P, m)
        ls_comm = L * self._allreduce(P, 16)
        test = bool(self.test_samples) and evaluation.test
        other_compute = self._full_pass(Work.FORWARD, b, P, self.test_samples) if test else 0.0
        other_comm = self._allreduce(P, 8) if test else 0.0
        if evaluation is Evaluation.WHOLE:  # a gradient window's pass over the training set
            other_compute += self._full_pass(Work.FORWARD, b, P, n)
            other_comm += self._allreduce(P, 16)
        counts = self.hf_counts(q, L, evaluation).total
        compute = grad_compute + solve_compute + ls_compute + other_compute
        comm = grad_comm + solve_comm + ls_comm + other_comm
        total = compute + comm
        epochs = hf_epochs(n, b, q, L, along.kept, m, m_kept, evaluation)
        return Prediction(
            method=method.value, batch=b, nodes=P,
            time_gradient_s=grad_compute + grad_comm, time_solve_s=solve_compute + solve_comm,
            time_line_search_s=ls_compute + ls_comm, time_other_s=other_compute + other_comm,
            time_per_iteration_s=total, compute_s=compute, communication_s=comm,
            collectives_per_iteration=counts.collectives, bytes_per_iteration=counts.bytes,
            epochs_per_iteration=epochs, time_per_epoch_s=total / epochs,
            collectives_per_epoch=counts.collectives / epochs, bytes_per_epoch=counts.bytes / epochs,
            krylov_iterations=K, curvature_products=q, line_search_evals=L,
        )

    def _epoch_evaluation(self, P: int) -> tuple[float, float]:
        compute = self.node.time(self.layers, self._share(self.samples, P), Work.FORWARD)
        if self.test_samples:
            compute += self.node.time(self.layers, self._share(self.test_samples, P), Work.FORWARD)
        return compute, self._allreduce(P, 24)

    def _predict_sgd(self, method: CostMethod, b: int, P: int) -> Prediction:
        d, s, n = self.n_params, self.itemsize, self.samples
        compute = self.node.time(self.layers, self._share(b, P), Work.GRADIENT)
        comm = self._allreduce(P, (d + 1) * s)
        U = self.updates_per_epoch(b)
        eval_compute, eval_comm = self._epoch_evaluation(P)
        epoch = self.sgd_counts(U, 1).total
        per = self.sgd_counts(1).total
        total = compute + comm
        return Prediction(
            method=method.value, batch=b, nodes=P,
            time_gradient_s=total, time_solve_s=0.0, time_line_search_s=0.0, time_other_s=0.0,
            time_per_iteration_s=total, compute_s=compute, communication_s=comm,
            collectives_per_iteration=per.collectives, bytes_per_iteration=per.bytes,
            epochs_per_iteration=b / n, time_per_epoch_s=U * total + eval_compute + eval_comm,
            collectives_per_epoch=epoch.collectives, bytes_per_epoch=epoch.bytes,
        )

    def _predict_model_parallel(self, b: int, P: int) -> Prediction:
        """SGD on one group of P model slices (:mod:`hessfree.cost.layouts`)."""
        from hessfree.cost.layouts import Layout, predict_layout

        return predict_layout(self, CostMethod.SGD_MODEL_PARALLEL, b, Layout(data=1, model=P))

    def table(
        self,
        methods: Iterable[CostMethod | str],
        batches: Iterable[int],
        nodes: Iterable[int],
        *,
        krylov_iterations: int = 10,
        line_search_evals: int = 3,
    ) -> list[Prediction]:
        """Predictions for every (method, batch, nodes), with speed-up T(1)/T(P) and
        parallel efficiency speed-up/P (P = 1 is computed for the baseline if absent)."""
        rows = []
        for method in methods:
            for b in batches:
                kw = dict(krylov_iterations=krylov_iterations, line_search_evals=line_search_evals)
                base = self.predict(method, b, 1, **kw).time_per_iteration_s
                for P in nodes:
                    p = self.predict(method, b, P, **kw)
                    speedup = base / p.time_per_iteration_s if p.time_per_iteration_s > 0 else math.nan
                    rows.append(attrs.evolve(p, speedup=speedup, efficiency=speedup / P))
        return rows
