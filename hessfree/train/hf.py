"""Data-parallel Hessian-free training (the paper's Algorithm 2), one phase per function.

Every rank holds the full θ and a shard of the training data. Per outer iteration k:

1. full gradient and loss: local chunked sums, **one** allreduce of [Σ∇ℓ, Σℓ];
2. curvature batch k: b consecutive global samples from k·b, cycled through the data, each
   rank computing the ones in its shard (b/P each with strided shards); its forward pass
   is computed once and kept for the whole solve;
3. Krylov solve of B·d = −g from x0 = η·δ_{k−1}, where B·v = (reduced Σ products)/b + (λ+μ)v
   (μ the weight decay): **one** allreduce per product;
4. direction: CG-backtracking over the stored iterates or Bi-CG-STAB's descent candidates
   (walk back while the full objective decreases), −g when the solver produced nothing;
5. Armijo backtracking on the full objective, each trial **one** scalar allreduce;
6. Levenberg–Marquardt update of λ from ρ.

Every branch is decided from reduced values, so all ranks take the same one. θ is never
modified in place: a rejected or non-finite step leaves it exactly as it was.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import attrs
import numpy as np

from hessfree.comm import Phase
from hessfree.errors import DivergedError
from hessfree.methods import next_curvature
from hessfree.solvers import CandidateKind, Curvature, KrylovSolver, SolveResult
from hessfree.train.batches import curvature_window
from hessfree.train.config import TrainConfig
from hessfree.train.damping import quadratic_model, reduction_ratio, update_damping
from hessfree.train.linesearch import LineSearchResult, armijo
from hessfree.train.records import IterationRecord
from hessfree.train.trainer import Trainer, TrainState


def make_solver(config: TrainConfig) -> KrylovSolver:
    """The Krylov solver of an HF method, as the method table declares it (no true-residual
    recomputation: it would cost a product per solve)."""
    spec = config.method.spec
    return spec.solver(
        max_iter=config.krylov_max_iter,
        rtol=config.cg_rtol,
        progress_tol=config.progress_tol if spec.progress_test else 0.0,
        true_residual=False,
    )


@attrs.frozen(kw_only=True)
class HFState(TrainState):
    """Everything an HF run carries from one outer iteration to the next."""

    damping: float
    delta: np.ndarray  # previous Krylov solution (warm start)
    loss: float = math.nan  # objective at theta (nan: not evaluated yet)
    train_error: float = math.nan
    #: the curvature of the last solve and whether it met negative curvature: all a
    #: curvature policy (Hybrid's) needs to choose the next solve's operator
    last_curvature: Curvature | None = attrs.field(default=None, metadata={"enum": Curvature})
    last_negative: bool = False


class CurvatureOperator:
    """v ↦ (allreduce Σᵢ products on the curvature batch) / b + (λ + μ)·v.

    ``product`` is the batch's Gv or Hv; each call is one allreduce. ``products`` counts
    the calls.
    """

    def __init__(self, product: Callable[[np.ndarray], np.ndarray], comm, batch_size: int, shift: float):
        self._product = product
        self._comm = comm
        self._inv_b = 1.0 / batch_size
        self._shift = shift
        self.products = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        out = self._product(v)
        self._comm.allreduce(out, out=out)
        out *= self._inv_b
        if self._shift:
            out += self._shift * v
        self.products += 1
        return out


@attrs.frozen
class Direction:
    """A search direction p with its slope gᵀp, damped curvature pᵀBp and, if known, f(θ+p)."""

    p: np.ndarray
    slope: float
    curvature: float
    kind: str
    value: tuple[float, float] | None = None  # (objective, error) at θ + p, when evaluated

    @property
    def objective(self) -> float:
        """f(θ + p), +∞ when it is not finite (or not evaluated)."""
        return self.value[0] if self.value is not None and math.isfinite(self.value[0]) else math.inf


@attrs.frozen
class Choice:
    """The chosen direction and how many objective evaluations choosing it cost."""

    direction: Direction
    evaluations: int


class HessianFreeTrainer(Trainer):
    """Composes model, data shard, Krylov solver and communicator into HF training."""

    State = HFState

    def __init__(self, model, data, config: TrainConfig, comm=None, solver: KrylovSolver | None = None):
        if not config.method.is_hessian_free:
            raise ValueError(f"HessianFreeTrainer runs HF methods, not {config.method.value}")
        super().__init__(model, data, config, comm)
        self.solver = solver if solver is not None else make_solver(config)
        #: the last curvature batch's forward pass, whose buffers the next one reuses
        #: (memory only: no result depends on it)
        self.workspace = None

    # ------------------------------------------------------------------ state
    def initial_state(self, theta: np.ndarray | None = None) -> HFState:
        theta = self.initial_theta(theta)
        return HFState(theta=theta, damping=self.config.damping, delta=np.zeros_like(theta))

    # ------------------------------------------------------------------ phases
    def objective(self, theta: np.ndarray) -> tuple[float, float]:
        """(f(θ), training error) over all ranks: one scalar allreduce."""
        loss, wrong = self.model.evaluate(theta, self.train)
        total = self.comm.allreduce_scalars(loss, wrong)
        return self.regularised(total[0] / self.n_train, theta), total[1] / self.n_train

    def gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """(f(θ), ∇f(θ)): local chunked sums, one allreduce of [Σ∇ℓ, Σℓ]."""
        loss, grad = self.model.loss_grad(theta, self.train)
        return self.reduced_gradient(loss, grad, self.n_train, theta)

    def curvature_operator(self, theta: np.ndarray, iteration: int, damping: float, curvature: Curvature) -> CurvatureOperator:
        """The damped curvature of batch ``iteration`` (its forward pass computed here, once)."""
        X, y = self.local_rows(curvature_window(iteration, self.batch_size, self.n_train))
        cache = self.model.forward(theta, X, y, recycle=self.workspace)
        self.workspace = cache
        product = cache.hv if curvature is Curvature.EXACT else cache.gv
        return CurvatureOperator(product, self.comm, self.batch_size, damping + self.config.weight_decay)

    def solve(self, op: CurvatureOperator, g: np.ndarray, state: HFState) -> SolveResult:
        """Krylov solve of B·d = −g from the warm start η·δ_{k−1}."""
        return self.solver.solve(op, -g, self.config.warm_start * state.delta)

    def candidates(self, result: SolveResult) -> tuple[list[Direction], list[Direction]]:
        """(walk-back sequence, extra candidates) from the solver's descent candidates.

        The walk-back sequence is the iterates from the last backwards; the solver's
        negative-curvature directions are extra candidates evaluated on their own. A
        candidate that is not a descent direction (gᵀp ≥ 0) is never taken.
        """
        walk, extra = [], []
        for c in sorted(result.candidates, key=lambda c: -c.iteration):
            d = Direction(np.asarray(c.direction), float(c.slope), float(c.curvature), c.kind.value)
            (walk if c.kind is CandidateKind.ITERATE else extra).append(d)
        walk = [d for d in walk if d.slope < 0 and np.any(d.p)]
        extra = [d for d in extra if d.slope < 0]
        if not self.config.backtracking:
            walk = walk[:1]
        return walk, extra

    def choose_direction(self, result: SolveResult, g: np.ndarray, theta: np.ndarray, op: CurvatureOperator) -> Choice:
        """CG-backtracking: walk back from the last iterate while f(θ + p) decreases.

        A non-finite objective counts as +∞, so the walk continues past it. Only when no
        iterate is a descent direction are the negative-curvature directions tried
        (their length is arbitrary: as rivals of the iterates they win short, poor steps),
        and −g after them.
        """
        walk, extra = self.candidates(result)
        best: Direction | None = None
        evaluations = 0
        for d in walk:
            d = attrs.evolve(d, value=self.objective(theta + d.p))
            evaluations += 1
            if best is not None and math.isfinite(best.objective) and not d.objective < best.objective:
                break
            if best is None or d.objective < best.objective:
                best = d
        if best is None:
            for d in extra:
                d = attrs.evolve(d, value=self.objective(theta + d.p))
                evaluations += 1
                if best is None or d.objective < best.objective:
                    best = d
        if best is None:  # nothing usable (e.g. negative curvature at the first CG step): −g
            p = -g
            with self.comm.phase(Phase.CURVATURE):
                curvature = float(p @ op(p))
            best = Direction(p, float(g @ p), curvature, "gradient")
        return Choice(best, evaluations)

    def line_search(self, theta: np.ndarray, f0: float, d: Direction) -> LineSearchResult:
        """Armijo backtracking along d.p from α = 1 (its value reused if already known)."""
        cfg = self.config
        return armijo(
            lambda a: self.objective(theta + a * d.p),
            f0,
            d.slope,
            c=cfg.armijo_c,
            shrink=cfg.armijo_shrink,
            max_trials=cfg.max_line_search,
            first=d.value,
        )

    def new_damping(self, state: HFState, d: Direction, alpha: float, f0: float, f_new: float) -> tuple[float, float]:
        """(ρ, λ') from the undamped quadratic model along the accepted step α·p."""
        if alpha <= 0:
            return -math.inf, update_damping(state.damping, -math.inf, self.config)
        undamped = d.curvature - state.damping * float(d.p @ d.p)
        predicted = quadratic_model(alpha * d.slope, alpha * alpha * undamped)
        rho = reduction_ratio(f_new, f0, predicted)
        return rho, update_damping(state.damping, rho, self.config)

    def test_error(self, theta: np.ndarray) -> float | None:
        if self.test is None or self.n_test == 0:
            return None
        with self.comm.phase(Phase.OTHER):
            _, wrong = self.model.evaluate(theta, self.test) if self.test.n else (0.0, 0)
            return float(self.comm.allreduce_scalars(wrong)[0]) / self.n_test

    # ------------------------------------------------------------------ one iteration
    def step(self, state: HFState) -> tuple[HFState, IterationRecord]:
        comm = self.comm
        counts0 = comm.counts()
        t0 = time.perf_counter()
        with comm.phase(Phase.GRADIENT):
            f0, g = self.gradient(state.theta)
        if not (math.isfinite(f0) and np.all(np.isfinite(g))):
            raise DivergedError(f"iteration {state.iteration + 1}: the objective or its gradient is not finite at the current parameters")
        t1 = time.perf_counter()
        curvature = next_curvature(self.config.method, state.last_curvature, state.last_negative)
        with comm.phase(Phase.CURVATURE):
            op = self.curvature_operator(state.theta, state.iteration, state.damping, curvature)
            result = self.solve(op, g, state)
        t2 = time.perf_counter()
        with comm.phase(Phase.LINE_SEARCH):
            choice = self.choose_direction(result, g, state.theta, op)
            d = choice.direction
            ls = self.line_search(state.theta, f0, d)
            evals = choice.evaluations + ls.trials
        t3 = time.perf_counter()
        rho, damping = self.new_damping(state, d, ls.alpha, f0, ls.value)
        if ls.accepted:
            theta, loss, train_error, rejected = state.theta + ls.alpha * d.p, ls.value, ls.extra, 0
        else:
            theta, loss, train_error, rejected = state.theta, f0, state.train_error, state.rejected + 1
        test_error = self.test_error(theta)
        samples = state.samples + self.n_train * (1 + evals) + self.batch_size * (1 + op.products)
        new = attrs.evolve(
            state,
            theta=theta,
            damping=damping,
            delta=result.x,
            iteration=state.iteration + 1,
            rejected=rejected,
            samples=samples,
            time_s=state.time_s + time.perf_counter() - t0,
            comm=state.comm + self.counts_since(counts0),
            loss=loss,
            train_error=train_error if train_error is not None else math.nan,
            last_curvature=curvature,
            last_negative=result.negative_curvature is not None,
        )
        record = self.record(
            new,
            new.iteration,
            loss=loss,
            train_error=new.train_error,
            test_error=test_error,
            time_gradient_s=t1 - t0,
            time_solve_s=t2 - t1,
            time_line_search_s=t3 - t2,
            cg_iterations=result.iterations,
            curvature_products=op.products,
            line_search_evals=evals,
            damping=state.damping,
            rho=rho,
            step_size=ls.alpha,
            negative_curvature=result.negative_curvature is not None,
            stop_reason=result.reason.value,
            curvature=curvature.value,
            direction=d.kind,
            accepted=ls.accepted,
        )
        return new, record

    def divergence(self, state: HFState, record: IterationRecord) -> str | None:
        if state.rejected >= self.config.max_rejected:
            return f"iteration {state.iteration}: {state.rejected} consecutive steps rejected (λ = {state.damping:.3g}); training diverged"
        return None
