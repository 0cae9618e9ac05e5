"""What-if: data-, model- or a 2-D split of P nodes, per iteration of SGD and of HF.

A layout puts P = P_d × P_m nodes in P_d *data groups* of P_m *model slices*: each group
takes 1/P_d of every batch (and of the training data), and inside a group every node owns
a slice of every layer's units (``hessfree.models.sharded``). P_m = 1 is data
parallelism (the paper's Algorithm 2: :meth:`CostModel.predict` exactly), P_d = 1 is
model parallelism (what ``hessfree train --parallel model`` runs), anything between a 2-D
split (modelled, not run). Per node and iteration, with n_g = ⌈rows/P_d⌉ rows per group,
d parameters and s bytes per value:

=============  ========================================================================
compute        the same GEMMs on n_g rows, narrowed by P_m (each node computes its
               columns): ``node.time(layers, n_g, work) / P_m``
model          per chunk of a pass over n_g rows, inside the group: L allgathers of
exchange       n_g·d_l values (forward), and L − 1 reduce-scatters of n_g·d_l (backward,
               l < L); ring costs ``Network.allgather`` / ``reduce_scatter`` over P_m
data           what data parallelism reduces, across the P_d groups, on the shard of d/P_m
reduction      values: the gradient (+ loss) and every curvature product
               (``Network.allreduce`` over P_d); line-search and test scalars likewise
inner          HF with P_m > 1: each inner product of the Krylov recurrences (and of the
products       step's bookkeeping) is a scalar allreduce over P_m
               (:data:`INNER_PRODUCTS_PER_STEP` per Krylov iteration, measured by counting
               the solvers' ``dot`` calls, plus :data:`STEP_INNER_PRODUCTS`); the
               gradient's finiteness test is one more (SGD too, per update)
=============  ========================================================================

``hessfree cost --layouts`` prints, for every method, batch and node count, each
factorisation P_d × P_m with P_m ≤ the narrowest layer, the cheapest marked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import attrs

from hessfree.cost._checks import count
from hessfree.cost.compute import Work
from hessfree.cost.model import Blocks, CostMethod, CostModel, Evaluation, Prediction, TakenAlong, hf_epochs, sample_rows

#: inner products per Krylov iteration (each a scalar allreduce under model parallelism),
#: counted on the solvers' ``dot`` calls over 40 iterations: CG 5.1 (6.2 keeping its
#: lowest direction for a negative-curvature rule), Bi-CG-STAB 11.1, MINRES 5.1
INNER_PRODUCTS_PER_STEP = {"cg": 5, "bicgstab": 11, "minres": 5}
#: inner products of one HF iteration outside the Krylov steps (the solver's start, the
#: candidates' slopes and curvatures, the survey): about 20 in the digits runs
STEP_INNER_PRODUCTS = 20


@attrs.frozen
class Layout:
    """``data`` groups of ``model`` slices: P = data × model nodes."""

    data: int = attrs.field(converter=lambda v: count("data groups", v))
    model: int = attrs.field(converter=lambda v: count("model slices", v))

    @property
    def nodes(self) -> int:
        return self.data * self.model

    @property
    def name(self) -> str:
        if self.nodes == 1:
            return "single"
        return "data" if self.model == 1 else "model" if self.data == 1 else "2-D"


@attrs.frozen(kw_only=True)
class LayoutPrediction(Prediction):
    """A :class:`Prediction` of one layout; ``best`` marks the cheapest of its node count."""

    layout: str
    data_groups: int
    model_slices: int
    best: bool = False


def layouts_of(nodes: int, narrowest: int) -> list[Layout]:
    """Every P_d × P_m = ``nodes`` with P_m ≤ ``narrowest`` (each slice owns ≥ 1 unit of every layer)."""
    P = count("nodes", nodes)
    return [Layout(P // m, m) for m in range(1, P + 1) if P % m == 0 and m <= narrowest]


class _Pieces:
    """The time pieces of one layout on one cost model (module docstring)."""

    def __init__(self, cost: CostModel, batch: int, layout: Layout):
        self.cost, self.layout = cost, layout
        self.Pd, self.Pm = layout.data, layout.model
        self.block = -(-batch // self.Pd) if cost.blocks is Blocks.BATCH else None
        self.shard = cost.n_params / self.Pm

    def rows(self, rows: int) -> int:
        return -(-rows // self.Pd)

    def compute(self, work: Work, rows: int, full_pass: bool = False) -> float:
        return self.cost.node.time(self.cost.layers, rows, work, self.block if full_pass else None) / self.Pm

    def exchange(self, rows: int, *, gathers: bool = True, scatters: bool = True) -> float:
        """The model exchange of one pass over ``rows`` rows, in chunks (blocks): the
        forward's allgathers, the backward's reduce-scatters."""
        if self.Pm == 1 or rows <= 0:
            return 0.0
        net, d, s = self.cost.network, self.cost.layers, self.cost.itemsize
        chunks = -(-rows // (self.block or self.cost.node.chunk_rows))
        per_chunk = rows / chunks
        L = len(d) - 1
        seconds = sum(net.allgather(self.Pm, per_chunk * d[l] * s) for l in range(1, L + 1)) if gathers else 0.0
        if scatters:
            seconds += sum(net.reduce_scatter(self.Pm, per_chunk * d[l] * s) for l in range(1, L))
        return chunks * seconds

    def across_groups(self, nbytes: float) -> float:
        return self.cost.network.allreduce(self.Pd, nbytes, self.cost.collective)

    def in_group_scalar(self) -> float:
        return self.cost.network.allreduce(self.Pm, 8, self.cost.collective)


def predict_layout(
    cost: CostModel,
    method: CostMethod | str,
    batch: int,
    layout: Layout,
    *,
    krylov_iterations: int = 10,
    line_search_evals: int = 3,
    curvature_products: int | None = None,
    gradient_kept: bool = False,
    gradient_along: bool = False,
    gradient_sample: int = 0,
    kept_sample: int = 0,
    evaluation: Evaluation | str = Evaluation.STEP,
) -> LayoutPrediction:
    """Time per iteration of ``method`` on ``layout`` (P_m = 1: :meth:`CostModel.predict`'s
    numbers); HF does ``krylov_iterations`` × (1 or 2) products unless
    ``curvature_products`` gives their number (e.g. a real run's record);
    ``gradient_kept``/``gradient_along``/``gradient_sample``/``kept_sample``/``evaluation`` as in
    :meth:`CostModel.predict`."""
    method = CostMethod(method)
    b = min(count("batch", batch), cost.samples)
    if layout.model > min(cost.layers[1:]):
        raise ValueError(f"{layout.model} model slices: a layer of {list(cost.layers)} has fewer units")
    x = _Pieces(cost, b, layout)
    if method.is_hessian_free:
        K = count("krylov_iterations", krylov_iterations, 0)
        L = count("line_search_evals", line_search_evals, 0)
        q = K * method.products_per_step if curvature_products is None else count("curvature_products", curvature_products, 0)
        rows = (sample_rows(cost.samples, count("gradient_sample", gradient_sample, 0)),
                sample_rows(cost.samples, count("kept_sample", kept_sample, 0)))
        along = TakenAlong(gradient_kept, gradient_along and L > 0)
        return _hf(cost, method, b, x, K, q, L, along, rows, Evaluation(evaluation))
    # sgd-mp counts what a model-parallel run issues even on one node
    return _sgd(cost, method, b, x, sharded=layout.model > 1 or method is CostMethod.SGD_MODEL_PARALLEL)


def _row(cost: CostModel, method: CostMethod, b: int, x: _Pieces, times: dict, compute: float, comm: float,
         counts: tuple[int, int], epochs: float, per_epoch: tuple[float, float, float], **extra) -> LayoutPrediction:
    total = compute + comm
    return LayoutPrediction(
        method=method.value, batch=b, nodes=x.layout.nodes, layout=x.layout.name, data_groups=x.Pd, model_slices=x.Pm,
        time_per_iteration_s=total, compute_s=compute, communication_s=comm,
        collectives_per_iteration=counts[0], bytes_per_iteration=counts[1], epochs_per_iteration=epochs,
        time_per_epoch_s=per_epoch[0], collectives_per_epoch=per_epoch[1], bytes_per_epoch=per_epoch[2],
        **times, **extra,
    )


def _hf(cost: CostModel, method: CostMethod, b: int, x: _Pieces, K: int, q: int, L: int, along: TakenAlong,
        rows: tuple[int, int], evaluation: Evaluation) -> LayoutPrediction:
    n, t, s = cost.samples, cost.test_samples, cost.itemsize
    m, m_kept = rows  # the gradient sample's rows and the last one's (all n: the whole set)
    hv = method.product is Work.HV
    computed = m - min(m, m_kept) if along.kept else m
    grad_c = x.compute(Work.GRADIENT, x.rows(computed), True) if computed else 0.0
    grad_m = x.exchange(x.rows(m)) + x.across_groups((x.shard + 1) * s)
    solve_c = x.compute(Work.FORWARD, x.rows(b)) + (x.compute(Work.DELTAS, x.rows(b)) if hv else 0.0)
    solve_c += q * x.compute(method.product, x.rows(b))
    dots = K * INNER_PRODUCTS_PER_STEP[method.spec.solver.name] + STEP_INNER_PRODUCTS if x.Pm > 1 else 0
    solve_m = x.exchange(x.rows(b), scatters=False) + (x.exchange(x.rows(b), gathers=False) if hv else 0.0)
    solve_m += q * (x.exchange(x.rows(b)) + x.across_groups(x.shard * s)) + dots * x.in_group_scalar()
    ls_c = L * x.compute(Work.FORWARD, x.rows(m), True)
    if along.first_trial:
        ls_c += x.compute(Work.GRADIENT, x.rows(m), True) - x.compute(Work.FORWARD, x.rows(m), True)
    ls_m = L * (x.exchange(x.rows(m), scatters=False) + x.across_groups(16))
    test = t if evaluation.test else 0
    other_c = x.compute(Work.FORWARD, x.rows(test), True) if test else 0.0
    other_m = (x.exchange(x.rows(test), scatters=False) + x.across_groups(8) if test else 0.0) + x.in_group_scalar()
    if evaluation is Evaluation.WHOLE:  # a gradient window's pass over the training set
        other_c += x.compute(Work.FORWARD, x.rows(n), True)
        other_m += x.exchange(x.rows(n), scatters=False) + x.across_groups(16)
    total = cost.hf_counts(q, L, evaluation).total
    if x.Pm > 1:
        mp = cost.hf_mp_counts(b, q, L, exact=hv, inner_products={"curvature": dots}, evaluation=evaluation,
                               sample=m).total
        total = mp + total if x.Pd > 1 else mp
    counts = (total.collectives, total.bytes)
    compute, comm = grad_c + solve_c + ls_c + other_c, grad_m + solve_m + ls_m + other_m
    epochs = hf_epochs(n, b, q, L, along.kept, m, m_kept, evaluation)
    total = compute + comm
    times = dict(time_gradient_s=grad_c + grad_m, time_solve_s=solve_c + solve_m, time_line_search_s=ls_c + ls_m,
                 time_other_s=other_c + other_m)
    return _row(cost, method, b, x, times, compute, comm, counts, epochs,
                (total / epochs, counts[0] / epochs, counts[1] / epochs), krylov_iterations=K, curvature_products=q,
                line_search_evals=L)


def _sgd(cost: CostModel, method: CostMethod, b: int, x: _Pieces, sharded: bool) -> LayoutPrediction:
    n, t, s = cost.samples, cost.test_samples, cost.itemsize
    compute = x.compute(Work.GRADIENT, x.rows(b))
    comm = x.exchange(x.rows(b)) + x.across_groups((x.shard + 1) * s) + x.in_group_scalar()
    U = cost.updates_per_epoch(b)
    eval_c = x.compute(Work.FORWARD, x.rows(n)) + (x.compute(Work.FORWARD, x.rows(t)) if t else 0.0)
    eval_m = x.exchange(x.rows(n), scatters=False) + x.exchange(x.rows(t), scatters=False) + x.across_groups(24)
    if not sharded:
        per, epoch = cost.sgd_counts(1).total, cost.sgd_counts(U, 1).total
    else:
        per, epoch = cost.sgd_mp_counts(b, 1).total, cost.sgd_mp_counts(b, U, 1).total
        if x.Pd > 1:
            per, epoch = per + cost.sgd_counts(1).total, epoch + cost.sgd_counts(U, 1).total
    total = compute + comm
    times = dict(time_gradient_s=total, time_solve_s=0.0, time_line_search_s=0.0, time_other_s=0.0)
    return _row(cost, method, b, x, times, compute, comm, (per.collectives, per.bytes), b / n,
                (U * total + eval_c + eval_m, epoch.collectives, epoch.bytes))


def layout_table(
    cost: CostModel,
    methods: Iterable[CostMethod | str],
    batches: Iterable[int],
    nodes: Iterable[int],
    *,
    krylov_iterations: int = 10,
    line_search_evals: int = 3,
) -> list[LayoutPrediction]:
    """Every layout of every (method, batch, nodes), with speed-up against one node and
    ``best`` on the cheapest layout per iteration of each (method, batch, nodes)."""
    rows = []
    narrowest = min(cost.layers[1:])
    kw = dict(krylov_iterations=krylov_iterations, line_search_evals=line_search_evals)
    for method in methods:
        for b in batches:
            base = predict_layout(cost, method, b, Layout(1, 1), **kw).time_per_iteration_s
            for P in nodes:
                group = [predict_layout(cost, method, b, layout, **kw) for layout in layouts_of(P, narrowest)]
                fastest = min(p.time_per_iteration_s for p in group)
                for p in group:
                    speedup = base / p.time_per_iteration_s if p.time_per_iteration_s > 0 else math.nan
                    rows.append(attrs.evolve(p, speedup=speedup, efficiency=speedup / P, best=p.time_per_iteration_s == fastest))
    return rows
