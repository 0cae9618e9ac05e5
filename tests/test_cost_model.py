"""Cost model formulas against hand-computed cases, invariants and validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hessfree.cost import (
    Blocks, Collective, CostModel, EfficiencyCurve, Evaluation, Layout, Network, NodeSpec, Work, flops_per_sample, gemm_plan,
    model_parallel_exact, model_parallel_paper, n_params, paper_node, predict_layout,
)
from hessfree.cost.network import log2_ceil
from hessfree.errors import ConfigError

ALL = list(Collective)


# ----------------------------------------------------------------------------- network
@pytest.mark.parametrize("collective", ALL)
def test_one_rank_communicates_nothing(collective):
    net = Network(latency=3e-6, inverse_bandwidth=1e-9)
    assert net.allreduce(1, 10**9, collective) == 0.0
    assert net.bcast(1, 10**6) == 0.0 and net.barrier(1) == 0.0 and net.allgather(1, 10**6) == 0.0


def test_hand_computed_collectives():
    net = Network(latency=1.0, inverse_bandwidth=0.5)
    m = 8.0
    assert net.allreduce(4, m, Collective.RING) == pytest.approx(2 * 3 * 1 + 2 * 0.75 * 8 * 0.5)  # 12
    assert net.allreduce(4, m, Collective.RECURSIVE_DOUBLING) == pytest.approx(2 * (1 + 4))  # 10
    assert net.allreduce(4, m, Collective.TREE) == pytest.approx(4 * (1 + 4))  # 20
    assert net.allreduce(3, m, Collective.TREE) == pytest.approx(4 * (1 + 4))  # ⌈log₂3⌉ = 2
    assert net.allreduce(5, m, Collective.RECURSIVE_DOUBLING) == pytest.approx(3 * 5)
    assert [log2_ceil(p) for p in (1, 2, 3, 4, 5, 8, 9)] == [0, 1, 2, 2, 3, 3, 4]


def test_ring_and_recursive_doubling_at_two_ranks():
    bandwidth_only = Network(latency=0.0, inverse_bandwidth=1e-9)
    for m in (8, 4096, 10**7):
        assert bandwidth_only.allreduce(2, m, Collective.RING) == pytest.approx(
            bandwidth_only.allreduce(2, m, Collective.RECURSIVE_DOUBLING), rel=1e-12)
    net = Network(latency=2e-6, inverse_bandwidth=1e-9)
    diff = net.allreduce(2, 1000, Collective.RING) - net.allreduce(2, 1000, Collective.RECURSIVE_DOUBLING)
    assert diff == pytest.approx(2e-6)


positive = st.floats(1e-9, 1e-3)


@settings(deadline=None, max_examples=60)
@given(alpha=positive, beta=st.floats(1e-12, 1e-8), m=st.integers(1, 10**8), p=st.integers(1, 200),
       collective=st.sampled_from(ALL), factor=st.floats(1.01, 10))
def test_monotone_in_nodes_latency_and_bandwidth(alpha, beta, m, p, collective, factor):
    net = Network(latency=alpha, inverse_bandwidth=beta)
    t = net.allreduce(p, m, collective)
    assert net.allreduce(p + 1, m, collective) >= t
    assert net.allreduce(2 * p, m, collective) >= t
    if p > 1:
        assert Network(latency=alpha * factor, inverse_bandwidth=beta).allreduce(p, m, collective) > t
        assert Network(latency=alpha, inverse_bandwidth=beta * factor).allreduce(p, m, collective) > t
        assert net.allreduce(p, m + 1000, collective) > t


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1e-6, "1", True, None])
def test_bad_network_parameters_rejected(bad):
    with pytest.raises((ConfigError, TypeError, ValueError)):
        Network(latency=bad, inverse_bandwidth=1e-9)
    with pytest.raises((ConfigError, TypeError, ValueError)):
        Network(latency=1e-6, inverse_bandwidth=bad)


@pytest.mark.parametrize("bad", [0.0, -5.0, math.nan, math.inf])
def test_bad_bandwidth_rejected(bad):
    with pytest.raises(ConfigError):
        Network.from_bandwidth(1e-6, bad)


def test_bad_bytes_and_nodes_rejected():
    net = Network(latency=1e-6, inverse_bandwidth=1e-9)
    for call in (lambda: net.allreduce(0, 8), lambda: net.allreduce(2, -1), lambda: net.allreduce(2, math.nan),
                 lambda: net.allreduce(2.5, 8)):
        with pytest.raises(ConfigError):
            call()


# ----------------------------------------------------------------------------- compute
def test_flops_per_sample_hand_computed():
    layers = (3, 4, 2)
    assert n_params(layers) == (3 + 1) * 4 + (4 + 1) * 2
    fwd = 2 * (3 * 4 + 4 * 2)  # 40
    grad_w = fwd  # a_{l−1}ᵀ·δ_l has the same shapes
    prop = 2 * (2 * 4)  # δ_2·W_2ᵀ
    r_fwd = 2 * (3 * 4) + 2 * 2 * (4 * 2)  # a0·V1, then a1·V2 and R(a1)·W2
    assert flops_per_sample(layers, Work.FORWARD) == fwd
    assert flops_per_sample(layers, Work.GRADIENT) == fwd + grad_w + prop
    assert flops_per_sample(layers, Work.DELTAS) == prop
    assert flops_per_sample(layers, Work.GV) == r_fwd + grad_w + prop
    assert flops_per_sample(layers, Work.HV) == r_fwd + grad_w + 2 * (4 * 2) + 2 * prop
    assert flops_per_sample(layers, Work.GV_FWD) == fwd + flops_per_sample(layers, Work.GV)
    assert flops_per_sample(layers, Work.HV_FWD) == fwd + prop + flops_per_sample(layers, Work.HV)


@pytest.mark.parametrize("layers", [(5, 3), (7, 6, 5, 4)])
def test_gemm_counts_per_product(layers):
    L = len(layers) - 1
    counts = {w: len(gemm_plan(layers, 10, w)) for w in Work}
    assert counts[Work.FORWARD] == L
    assert counts[Work.GRADIENT] == 3 * L - 1
    assert counts[Work.GV] == (2 * L - 1) + L + (L - 1)
    assert counts[Work.HV] == (2 * L - 1) + (2 * L - 1) + 2 * (L - 1)
    # every product is linear in the rows
    for w in Work:
        from hessfree.cost import gemm_flops
        assert gemm_flops(gemm_plan(layers, 10, w)) == 10 * flops_per_sample(layers, w)


def test_efficiency_curve_interpolates_in_log_rows_and_clamps():
    curve = EfficiencyCurve([(10, 0.2), (1000, 0.8)])
    assert curve(100) == pytest.approx(0.5)  # halfway in log10
    assert curve(1) == pytest.approx(0.2) and curve(10**6) == pytest.approx(0.8)
    sat = EfficiencyCurve.saturating(32)
    assert sat(32) == pytest.approx(0.5) and sat(4096) > 0.99


@pytest.mark.parametrize("points", [[(10, 0.0)], [(10, 1.5)], [(0.5, 0.5)], [(10, math.nan)], []])
def test_bad_efficiency_rejected(points):
    with pytest.raises(ConfigError):
        EfficiencyCurve(points)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_bad_flops_rejected(bad):
    with pytest.raises(ConfigError):
        NodeSpec(flops=bad)


def test_node_time_is_flops_over_rate_and_chunked():
    node = NodeSpec(flops=1e9, chunk_rows=100)
    layers = (3, 4, 2)
    assert node.time(layers, 250, Work.GRADIENT) == pytest.approx(250 * 96 / 1e9)
    slow_small = NodeSpec(flops=1e9, efficiency=EfficiencyCurve([(1, 0.1), (100, 1.0)]), chunk_rows=100)
    assert slow_small.time(layers, 200, Work.FORWARD, block_rows=1) == pytest.approx(10 * slow_small.time(layers, 200, Work.FORWARD))
    memory_bound = NodeSpec(flops=1e15, memory_bandwidth=1e6, itemsize=8)
    (m, k), (_, c), _ = gemm_plan(layers, 1, Work.FORWARD)[0]
    assert memory_bound.gemm_time(gemm_plan(layers, 1, Work.FORWARD)[0], 1, Work.FORWARD) == pytest.approx(8 * (m * k + k * c + m * c) / 1e6)


# ----------------------------------------------------------------------------- model
def small_model(**kw):
    defaults = dict(layers=(20, 16, 5), samples=1000, test_samples=200, node=NodeSpec(flops=1e9),
                    network=Network(latency=1e-5, inverse_bandwidth=1e-9))
    return CostModel(**{**defaults, **kw})


@pytest.mark.parametrize("method", ["sgd", "msgd", "sgd-mp", "gn-cg", "hess-cg", "bicgstab", "hybrid"])
def test_single_node_has_no_communication_time(method):
    p = small_model().predict(method, 100, 1)
    assert p.communication_s == 0.0
    assert p.time_per_iteration_s == pytest.approx(p.compute_s)


def test_hf_iteration_hand_computed():
    model = small_model(collective="tree")
    d, s = model.n_params, 8
    p = model.predict("bicgstab", 100, 2, krylov_iterations=3, line_search_evals=2)
    assert p.curvature_products == 6
    assert p.collectives_per_iteration == 1 + 6 + 2 + 1
    assert p.bytes_per_iteration == (d + 1) * s + 6 * d * s + 2 * 16 + 8
    net, layers = model.network, model.layers
    f = lambda w: flops_per_sample(layers, w) / 1e9
    expected_solve = 50 * (f(Work.FORWARD) + f(Work.DELTAS) + 6 * f(Work.HV)) + 6 * net.allreduce(2, d * s, "tree")
    assert p.time_solve_s == pytest.approx(expected_solve)
    assert p.time_gradient_s == pytest.approx(500 * f(Work.GRADIENT) + net.allreduce(2, (d + 1) * s, "tree"))
    assert p.time_line_search_s == pytest.approx(2 * (500 * f(Work.FORWARD) + net.allreduce(2, 16, "tree")))
    assert p.epochs_per_iteration == pytest.approx((1000 * 3 + 100 * 7) / 1000)
    gn = model.predict("gn-cg", 100, 2, krylov_iterations=3, line_search_evals=2)
    assert gn.curvature_products == 3


def test_the_gradient_taken_along_moves_its_pass_between_phases():
    """A kept gradient costs its allreduce only; a first trial that took the gradient along
    is a gradient pass instead of a forward pass; the collectives do not change."""
    model = small_model(collective="tree")
    d, s = model.n_params, 8
    net, layers = model.network, model.layers
    f = lambda w: flops_per_sample(layers, w) / 1e9  # noqa: E731
    plain = model.predict("gn-cg", 100, 2, krylov_iterations=3, line_search_evals=2)
    kept = model.predict("gn-cg", 100, 2, krylov_iterations=3, line_search_evals=2, gradient_kept=True, gradient_along=True)
    assert kept.time_gradient_s == pytest.approx(net.allreduce(2, (d + 1) * s, "tree"))
    assert kept.time_line_search_s == pytest.approx(500 * (f(Work.GRADIENT) + f(Work.FORWARD)) + 2 * net.allreduce(2, 16, "tree"))
    assert kept.time_solve_s == plain.time_solve_s
    assert (kept.collectives_per_iteration, kept.bytes_per_iteration) == (plain.collectives_per_iteration, plain.bytes_per_iteration)
    assert kept.epochs_per_iteration == pytest.approx((1000 * 2 + 100 * 4) / 1000)
    assert plain.epochs_per_iteration == pytest.approx((1000 * 3 + 100 * 4) / 1000)
    # no trial, nothing taken along
    none = model.predict("gn-cg", 100, 2, krylov_iterations=3, line_search_evals=0, gradient_along=True)
    assert none.time_line_search_s == 0.0
    # a gradient sample of 300 of the 1,000 samples, grown from 250: its new 50 rows computed
    sampled = model.predict("gn-cg", 100, 2, krylov_iterations=3, line_search_evals=2, gradient_kept=True, gradient_along=True,
                            gradient_sample=300, kept_sample=250)
    assert sampled.time_gradient_s == pytest.approx(25 * f(Work.GRADIENT) + net.allreduce(2, (d + 1) * s, "tree"))
    assert sampled.time_line_search_s == pytest.approx(150 * (f(Work.GRADIENT) + f(Work.FORWARD)) + 2 * net.allreduce(2, 16, "tree"))
    assert sampled.epochs_per_iteration == pytest.approx((300 * 2 + 50 + 100 * 4) / 1000)
    assert model.predict("gn-cg", 100, 2, gradient_sample=5000).time_per_iteration_s == model.predict("gn-cg", 100, 2).time_per_iteration_s
    # the layout prediction on one model slice agrees
    for flags in (dict(), dict(gradient_kept=True), dict(gradient_along=True), dict(gradient_kept=True, gradient_along=True),
                  dict(gradient_kept=True, gradient_along=True, gradient_sample=300, kept_sample=250), dict(gradient_sample=300),
                  dict(gradient_sample=300, evaluation="whole"), dict(gradient_sample=300, evaluation="none")):
        one = model.predict("gn-cg", 100, 2, krylov_iterations=3, line_search_evals=2, **flags)
        lay = predict_layout(model, "gn-cg", 100, Layout(data=2, model=1), krylov_iterations=3, line_search_evals=2, **flags)
        for key in ("time_gradient_s", "time_line_search_s", "time_per_iteration_s", "epochs_per_iteration"):
            assert getattr(lay, key) == pytest.approx(getattr(one, key)), (flags, key)


def test_a_gradient_windows_evaluation_is_charged_only_when_it_happens():
    """A window's iteration evaluates the training set (a forward pass, one scalar
    allreduce of 16 bytes) and the test set only when its record says ``evaluated``."""
    model = small_model(collective="tree")
    net, layers = model.network, model.layers
    f = lambda w: flops_per_sample(layers, w) / 1e9  # noqa: E731
    args = dict(krylov_iterations=3, line_search_evals=2, gradient_sample=300)
    step, whole, none = (model.predict("gn-cg", 100, 2, evaluation=e, **args) for e in ("step", "whole", "none"))
    test = model.test_samples / 2 * f(Work.FORWARD) + net.allreduce(2, 8, "tree")
    assert step.time_other_s == pytest.approx(test)
    assert whole.time_other_s == pytest.approx(test + 500 * f(Work.FORWARD) + net.allreduce(2, 16, "tree"))
    assert none.time_other_s == 0.0
    assert whole.epochs_per_iteration - step.epochs_per_iteration == pytest.approx(1.0)
    assert none.epochs_per_iteration == step.epochs_per_iteration
    assert (whole.collectives_per_iteration, none.collectives_per_iteration) == (step.collectives_per_iteration + 1,
                                                                                step.collectives_per_iteration - 1)
    assert Evaluation.of({}) is Evaluation.STEP and Evaluation.of({"window": True}) is Evaluation.NONE
    assert Evaluation.of({"window": True, "evaluated": True}) is Evaluation.WHOLE


def test_predicted_epochs_equal_a_real_runs_records():
    """Replaying a run's records (products, evaluations, gradient kept) gives the epochs
    the trainer counted, iteration by iteration."""
    from hessfree.data import load_digits
    from hessfree.models import MLP
    from hessfree.train import TrainConfig, fit

    data = load_digits()
    model = MLP([64, 20, 10])
    history = fit(model, data, TrainConfig(iterations=8, batch_size=300, cg_max_iter=20)).history
    assert any(r.gradient_kept for r in history) and any(r.gradient_along for r in history)
    cost = CostModel(layers=(64, 20, 10), samples=data.n_train, node=NodeSpec(flops=1e9), network=Network(latency=0.0, inverse_bandwidth=0.0))
    previous = 0.0
    for r in history:
        p = cost.predict("gn-cg", 300, 1, curvature_products=r.curvature_products, line_search_evals=r.line_search_evals,
                         gradient_kept=r.gradient_kept, gradient_along=r.gradient_along)
        assert r.epochs - previous == pytest.approx(p.epochs_per_iteration)
        previous = r.epochs


def test_sgd_epoch_counts():
    model = small_model()
    p = model.predict("sgd", 300, 4)
    assert p.collectives_per_iteration == 1 and p.bytes_per_iteration == (model.n_params + 1) * 8
    assert p.collectives_per_epoch == 1000 // 300 + 1
    assert p.bytes_per_epoch == 3 * (model.n_params + 1) * 8 + 24


def test_monotone_time_in_network_and_solve_share_grows():
    model = CostModel(layers=(360, 512, 512, 512, 1973), samples=709_765, node=paper_node(),
                      network=Network.from_bandwidth(1.5e-6, 12e9), blocks=Blocks.BATCH)
    rows = model.table(["bicgstab"], [4096], [1, 2, 4, 8, 16, 32])
    shares = [r.solve_share for r in rows]
    assert shares == sorted(shares) and shares[-1] > shares[0]
    assert all(a.time_per_iteration_s > b.time_per_iteration_s for a, b in zip(rows, rows[1:]))
    slower = CostModel(layers=model.layers, samples=model.samples, node=paper_node(),
                       network=Network.from_bandwidth(1.5e-5, 1.2e9), blocks=Blocks.BATCH)
    for P in (2, 8, 32):
        assert slower.predict("bicgstab", 4096, P).time_per_iteration_s > model.predict("bicgstab", 4096, P).time_per_iteration_s


def test_paper_figure2_shape():
    """Near-linear at large batches, clearly sub-linear at small ones (paper's nodes)."""
    model = CostModel(layers=(360, 512, 512, 512, 1973), samples=709_765, node=paper_node(),
                      network=Network.from_bandwidth(1.5e-6, 12e9), blocks=Blocks.BATCH)
    eff = {b: model.table(["bicgstab"], [b], [32])[0].efficiency for b in (1024, 4096, 16384)}
    assert eff[16384] > 0.8 and eff[4096] > 0.65 and eff[1024] < 0.55
    assert eff[1024] < eff[4096] < eff[16384]


def test_model_parallel_paper_formula_versus_exact():
    layers, n, b = (10, 8, 6, 4), 1200, 100
    values, syncs = model_parallel_exact(layers, n, b)
    L = 3
    assert values == (n // b) * b * (2 * (8 + 6) + 4)
    assert syncs == (n // b) * (2 * L - 1)
    paper_values, paper_syncs = model_parallel_paper(layers, n, b)
    # the paper also counts a backward exchange at the output layer: n·d_L values, n/b syncs
    assert paper_values - values == n * 4
    assert paper_syncs - syncs == n // b
    # and does not round n/b down
    v2, s2 = model_parallel_exact(layers, 1250, b)
    assert v2 == values and s2 == syncs
    assert model_parallel_paper(layers, 1250, b)[1] == pytest.approx(2 * L * 12.5)


def test_model_parallel_prediction_uses_exact_counts():
    """What a model-parallel run issues (tests/test_model_parallel_counts.py meters it):
    per update the exact exchange plus one scalar finiteness test; per epoch also the
    evaluation's forward exchanges (L allgathers per chunk of the training and test rows)."""
    model = small_model()
    p = model.predict("sgd-mp", 100, 4)
    values, syncs = model_parallel_exact(model.layers, model.samples, 100)
    updates, evaluation = 1000 // 100, 2 * 2  # 2 layers, one chunk of train and of test rows
    assert p.collectives_per_epoch == syncs + updates + evaluation
    assert p.bytes_per_epoch == values * 8 + 8 * updates + (1000 + 200) * (16 + 5) * 8
    assert p.collectives_per_iteration == 2 * 2 - 1 + 1


@pytest.mark.parametrize("kw", [dict(samples=0), dict(samples=-5), dict(test_samples=-1), dict(layers=(5,)),
                                dict(layers=(5, 0, 3)), dict(collective="star"), dict(blocks="rows")])
def test_bad_model_rejected(kw):
    with pytest.raises(ConfigError):
        small_model(**kw)


def test_bad_prediction_arguments_rejected():
    model = small_model()
    for call in (lambda: model.predict("lbfgs", 10, 1), lambda: model.predict("sgd", 0, 1),
                 lambda: model.predict("sgd", 10, 0), lambda: model.predict("bicgstab", 10, 2, krylov_iterations=-1)):
        with pytest.raises(ConfigError):
            call()
