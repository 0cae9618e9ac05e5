"""newton-mr: MINRES on the exact Hessian (Liu & Roosta's Newton-MR) in the method table,
the cost model and the trainer. MINRES itself is tested against SciPy in
tests/test_solvers_minres.py; serial = threads = MPI for newton-mr in tests/test_train.py
(every method of the table) and tests/test_negative_curvature.py."""

from __future__ import annotations

import numpy as np
import pytest

from hessfree.comm import SerialComm
from hessfree.cost import CostModel, NodeSpec, Network
from hessfree.cost.model import CostMethod
from hessfree.methods import Method, NegativeCurvatureRule
from hessfree.solvers import MINRES, Curvature
from hessfree.train import TrainConfig
from hessfree.train.hf import make_solver
from test_negative_curvature import strict_saddle, train


def test_the_method_table_declares_newton_mr():
    spec = Method("newton-mr").spec
    assert spec.is_hessian_free and spec.solver is MINRES and spec.curvature is Curvature.EXACT
    assert spec.products_per_krylov_step == 1 and spec.krylov_max_iter == 250
    assert spec.negative_curvature is NegativeCurvatureRule.SCALED  # its certificate is a step of its own
    solver = make_solver(TrainConfig(method="newton-mr"))
    assert isinstance(solver, MINRES) and solver.detect_npc and not solver.true_residual
    assert solver.progress_tol == TrainConfig().progress_tol


def test_the_cost_model_counts_one_exact_hessian_product_per_step():
    method = CostMethod("newton-mr")
    assert method.is_hessian_free and method.products_per_step == 1
    assert method.product.name == "HV"
    cost = CostModel(layers=(64, 20, 10), samples=1000, node=NodeSpec(flops=1e9), network=Network(latency=1e-6, inverse_bandwidth=1e-9))
    mr = cost.predict("newton-mr", 200, 4, krylov_iterations=10, line_search_evals=3)
    cg = cost.predict("hess-cg", 200, 4, krylov_iterations=10, line_search_evals=3)
    bi = cost.predict("bicgstab", 200, 4, krylov_iterations=10, line_search_evals=3)
    assert mr.collectives_per_iteration == cg.collectives_per_iteration < bi.collectives_per_iteration
    assert mr.curvature_products == 10 and bi.curvature_products == 20


def test_the_certificate_is_taken_on_a_strict_saddle():
    """φ = ½x² − ½y² + ¼y⁴ at (1, 0.3), λ = 10⁻³: MINRES meets non-positive curvature at
    its second step and returns the residual r₁ as the certificate; newton-mr takes it,
    scaled, and reaches the minimum −¼; the Ritz values are the Hessian's, diag(1, −0.73)."""
    model, data, _ = strict_saddle([1.0, 0.3])
    records, _ = train(model, data, method="newton-mr", iterations=4, damping=1e-3)
    first = records[0]
    assert first.stop_reason == "negative_curvature" and first.cg_iterations == 1 and first.curvature_products == 2
    assert first.direction == "negative_curvature" and first.candidate == "residual" and first.step_curvature < 0
    assert first.ritz_min == pytest.approx(-0.73, abs=1e-9) and first.ritz_max == pytest.approx(1.0, abs=1e-9)
    assert records[-1].loss < -0.2499
    # the rule off: the truncated MINRES iterate x₀ … x₁ alone (here, for one step, the
    # larger decrease: the certificate's cubic model was the more optimistic)
    off, _ = train(model, data, method="newton-mr", negative_curvature="off", iterations=1, damping=1e-3)
    assert off[0].direction == "iterate" and off[0].choice == "walk_back"


def test_newton_mr_learns_digits():
    from test_negative_curvature import _run

    records, _, _ = _run(dict(method="newton-mr", hidden="24", iterations=8, seed=3, batch_size=300, quiet=True))
    assert records[-1].loss < 0.3 * records[0].loss and records[-1].train_error < 0.1
    for r in records:
        warm = 0 if r.iteration == 1 else 1
        assert r.curvature_products - warm in (r.cg_iterations, r.cg_iterations + 1)  # + the NPC product
        assert np.isfinite(r.ritz_min) and r.ritz_min <= r.ritz_max
        assert r.solve_damping == r.damping


def test_newton_mr_on_one_rank_is_the_serial_run():
    from hessfree.comm import run_threads
    from test_negative_curvature import _run

    config = dict(method="newton-mr", hidden="12", iterations=3, seed=1, batch_size=300, quiet=True)
    serial = [r.loss for r in _run(config)[0]]
    (threads,) = run_threads(lambda comm: [r.loss for r in _run(config, comm)[0]], 1)
    assert threads == serial
    assert SerialComm().size == 1
