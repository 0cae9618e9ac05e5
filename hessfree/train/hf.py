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
from typing import Callable, Iterator

import attrs
import numpy as np

from hessfree.comm import Phase, SerialComm
from hessfree.data.dataset import Dataset
from hessfree.errors import DivergedError
from hessfree.models.base import Model
from hessfree.solvers import BiCGStab, CG, Curvature, Hybrid, KrylovSolver, SolveResult
from hessfree.train.batches import curvature_window, local_positions
from hessfree.train.config import Method, TrainConfig
from hessfree.train.damping import quadratic_model, reduction_ratio, update_damping
from hessfree.train.linesearch import armijo
from hessfree.train.records import IterationRecord, add_counts, total_bytes, total_calls, zero_counts

#: which curvature each HF method multiplies by (Hybrid chooses per solve)
_METHOD_CURVATURE = {
    Method.GN_CG: Curvature.GAUSS_NEWTON,
    Method.HESS_CG: Curvature.EXACT,
    Method.BICGSTAB: Curvature.EXACT,
    Method.HYBRID: Curvature.EXACT,
}


def make_solver(config: TrainConfig) -> KrylovSolver:
    """The Krylov solver of an HF method (no true-residual recomputation: it costs a product).

    Bi-CG-STAB runs a fixed budget, as in the paper: Martens' relative-progress test assumes
    CG's monotone decrease of q, which Bi-CG-STAB on an indefinite Hessian does not have
    (measured on MNIST: it stopped after ~15 steps and the run stalled).
    """
    common = dict(max_iter=config.krylov_max_iter, rtol=config.cg_rtol, progress_tol=config.progress_tol, true_residual=False)
    if config.method is Method.BICGSTAB:
        return BiCGStab(**{**common, "progress_tol": 0.0})
    if config.method is Method.HYBRID:
        return Hybrid(**common)
    return CG(**common)


@attrs.frozen(kw_only=True)
class HFState:
    """Everything an HF run carries from one outer iteration to the next."""

    theta: np.ndarray
    damping: float
    delta: np.ndarray  # previous Krylov solution (warm start)
    iteration: int = 0  # outer iterations completed
    rejected: int = 0  # consecutive rejected steps
    samples: int = 0  # samples pushed through the network so far (for epochs)
    comm: dict = attrs.field(factory=zero_counts)  # cumulative collectives/bytes per phase (steps only)
    time_s: float = 0.0
    loss: float = math.nan  # objective at theta (nan: not evaluated yet)
    train_error: float = math.nan
    previous: SolveResult | None = None  # last solve (Hybrid's policy reads it)


class CurvatureOperator:
    """v ↦ (allreduce Σᵢ products on the curvature batch) / b + (λ + μ)·v.

    Callable with the method's default curvature; ``exact`` and ``gauss_newton`` give the
    two operators explicitly (Hybrid-CG picks between them). Each call is one allreduce.
    """

    def __init__(self, cache, comm, batch_size: int, shift: float, default: Curvature):
        self._cache = cache
        self._comm = comm
        self._inv_b = 1.0 / batch_size
        self._shift = shift
        self._default = default
        self.products = 0

    def _apply(self, product: Callable, v: np.ndarray) -> np.ndarray:
        out = product(v)
        self._comm.allreduce(out, out=out)
        out *= self._inv_b
        if self._shift:
            out += self._shift * v
        self.products += 1
        return out

    def exact(self, v: np.ndarray) -> np.ndarray:
        return self._apply(self._cache.hv, v)

    def gauss_newton(self, v: np.ndarray) -> np.ndarray:
        return self._apply(self._cache.gv, v)

    def __call__(self, v: np.ndarray) -> np.ndarray:
        return self.exact(v) if self._default is Curvature.EXACT else self.gauss_newton(v)


@attrs.frozen
class _Direction:
    """A search direction p with its slope gᵀp, damped curvature pᵀBp and, if known, f(θ+p)."""

    p: np.ndarray
    slope: float
    curvature: float
    kind: str
    value: tuple[float, float] | None = None  # (objective, error) at θ + p, when evaluated


# ---------------------------------------------------------------------- checkpoints
_HF_SCALARS = ("damping", "iteration", "rejected", "samples", "comm", "time_s", "loss", "train_error")


def hf_state_payload(state: HFState) -> tuple[dict, dict]:
    """(arrays, scalars) of an HF state; the last solve is kept as far as Hybrid needs it."""
    arrays = dict(theta=state.theta, delta=state.delta)
    scalars = {key: getattr(state, key) for key in _HF_SCALARS}
    prev = state.previous
    if prev is not None:
        scalars["previous"] = dict(reason=prev.reason.value, curvature=prev.curvature.value, solver=prev.solver)
        nc = prev.negative_curvature
        if nc is not None:
            arrays["previous_negative_direction"] = nc.direction
            scalars["previous"]["negative"] = dict(curvature=nc.curvature, rayleigh=nc.rayleigh, iteration=nc.iteration, kind=nc.kind.value)
    return arrays, scalars


def hf_state_from_payload(arrays: dict, scalars: dict) -> HFState:
    from hessfree.solvers import CandidateKind, NegativeCurvature, StopReason

    previous = None
    info = scalars.get("previous")
    if info is not None:
        nc = None
        if "negative" in info:
            n = info["negative"]
            nc = NegativeCurvature(arrays["previous_negative_direction"], n["curvature"], n["rayleigh"], n["iteration"], CandidateKind(n["kind"]))
        previous = SolveResult(
            x=arrays["delta"], reason=StopReason(info["reason"]), iterations=0, matvecs=0, q=math.nan, q_history=(),
            residual_norms=(), rhs_norm=math.nan, true_residual_norm=None, iterates=(), negative_curvature=nc,
            candidates=(), curvature=Curvature(info["curvature"]), solver=info["solver"],
        )
    values = {key: scalars[key] for key in _HF_SCALARS}
    return HFState(theta=arrays["theta"].copy(), delta=arrays["delta"].copy(), previous=previous, **values)



def _value(d: _Direction) -> float:
    """The objective at θ + d.p, +∞ when it is not finite."""
    return d.value[0] if math.isfinite(d.value[0]) else math.inf


class HessianFreeTrainer:
    """Composes model, data shard, Krylov solver and communicator into HF training.

    ``step(state) -> (state, record)`` runs one outer iteration; ``run`` iterates it.
    """

    state_payload = staticmethod(hf_state_payload)
    state_from_payload = staticmethod(hf_state_from_payload)

    def __init__(self, model: Model, data: Dataset, config: TrainConfig, comm=None, solver: KrylovSolver | None = None):
        if not config.method.is_hessian_free:
            raise ValueError(f"HessianFreeTrainer runs HF methods, not {config.method.value}")
        self.model = model
        self.config = config
        self.comm = comm if comm is not None else SerialComm()
        self.solver = solver if solver is not None else make_solver(config)
        self.train = model.batch(data.X_train, data.y_train)
        self.test = model.batch(data.X_test, data.y_test) if data.has_test else None
        self.n_train = data.n_train_global
        self.n_test = data.n_test_global
        self.rows = data.shard.train_rows if data.shard is not None else range(data.n_train)
        self.batch_size = min(config.global_batch, self.n_train)
        self.dtype = np.dtype(getattr(model, "dtype", np.float64))
        self._last_cache = None
        self._gbuf = np.empty(model.n_params + 1, dtype=np.float64 if self.dtype == np.float64 else self.dtype)

    # ------------------------------------------------------------------ state
    def initial_state(self, theta: np.ndarray | None = None) -> HFState:
        theta = self.model.init_params(self.config.seed) if theta is None else np.array(theta, dtype=self.dtype)
        return HFState(theta=theta, damping=self.config.damping, delta=np.zeros_like(theta))

    # ------------------------------------------------------------------ phases
    def objective(self, theta: np.ndarray) -> tuple[float, float]:
        """(f(θ), training error) over all ranks: one scalar allreduce."""
        loss, wrong = self.model.evaluate(theta, self.train)
        total = self.comm.allreduce_scalars(loss, wrong)
        return self._regularised(total[0] / self.n_train, theta), total[1] / self.n_train

    def _regularised(self, mean_loss: float, theta: np.ndarray) -> float:
        mu = self.config.weight_decay
        return float(mean_loss + 0.5 * mu * float(theta @ theta)) if mu else float(mean_loss)

    def gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """(f(θ), ∇f(θ)): local chunked sums, one allreduce of [Σ∇ℓ, Σℓ]."""
        loss, grad = self.model.loss_grad(theta, self.train)
        buf = self._gbuf
        buf[:-1] = grad
        buf[-1] = loss
        self.comm.allreduce(buf, out=buf)
        g = (buf[:-1] / self.n_train).astype(self.dtype, copy=False)
        if self.config.weight_decay:
            g = g + self.config.weight_decay * theta
        return self._regularised(float(buf[-1]) / self.n_train, theta), g

    def curvature_operator(self, theta: np.ndarray, iteration: int, damping: float) -> CurvatureOperator:
        """The damped curvature of batch ``iteration`` (its forward pass computed here, once)."""
        rows = local_positions(self.rows, curvature_window(iteration, self.batch_size, self.n_train))
        X = self.train.X[rows]
        y = self.train.labels[rows] if self.train.labels is not None else self.train.targets[rows]
        cache = self.model.forward(theta, X, y, recycle=self._last_cache)
        self._last_cache = cache  # its buffers serve the next iteration's forward pass
        default = _METHOD_CURVATURE[self.config.method]
        return CurvatureOperator(cache, self.comm, self.batch_size, damping + self.config.weight_decay, default)

    def solve(self, op: CurvatureOperator, g: np.ndarray, state: HFState) -> SolveResult:
        """Krylov solve of B·d = −g from the warm start η·δ_{k−1}."""
        x0 = self.config.warm_start * state.delta
        return self.solver.solve(op, -g, x0, previous=state.previous)

    def candidates(self, result: SolveResult, g: np.ndarray) -> tuple[list[_Direction], list[_Direction]]:
        """(walk-back sequence, extra candidates) from a solve, each with slope and curvature.

        The walk-back sequence runs from the last stored iterate backwards; Bi-CG-STAB's
        negative-curvature directions are extra candidates evaluated on their own.
        """
        walk, extra = [], []
        if result.candidates:
            for c in sorted(result.candidates, key=lambda c: -c.iteration):
                d = _Direction(np.asarray(c.direction), float(c.slope), float(c.curvature), c.kind.value)
                (walk if c.kind.value == "iterate" else extra).append(d)
        else:
            # iterate 0 is the warm start itself, not a solver step: when CG meets negative
            # curvature at once, the paper's rule is −g (below), not x0
            for it in sorted((it for it in result.iterates if it.iteration > 0), key=lambda it: -it.iteration):
                slope = float(g @ it.x)
                # q(x) = ½xᵀBx + gᵀx, so xᵀBx = 2(q − gᵀx): no extra product needed
                walk.append(_Direction(np.asarray(it.x), slope, 2.0 * (it.q - slope), "iterate"))
        walk = [d for d in walk if d.slope < 0 and np.any(d.p)]
        extra = [d for d in extra if d.slope < 0]
        if not self.config.backtracking:
            walk = walk[:1]
        return walk, extra

    def choose_direction(self, result: SolveResult, g: np.ndarray, theta: np.ndarray, op: CurvatureOperator) -> _Direction:
        """CG-backtracking: walk back from the last iterate while f(θ + p) decreases.

        The candidates are the solver's iterates x_j (for Bi-CG-STAB turned downhill,
        d̃ = −sign(gᵀx_j)·x_j, as in the paper; their curvature may be negative). A
        non-finite objective counts as +∞, so the walk continues past it. Only when no
        iterate is a descent direction are the negative-curvature search directions tried
        (their length is arbitrary: as rivals of the iterates they win short, poor steps),
        and −g after them.
        """
        walk, extra = self.candidates(result, g)
        best: _Direction | None = None
        for d in walk:
            d = attrs.evolve(d, value=self.objective(theta + d.p))
            if best is not None and math.isfinite(_value(best)) and not _value(d) < _value(best):
                break
            if best is None or _value(d) < _value(best):
                best = d
        if best is None:
            for d in extra:
                d = attrs.evolve(d, value=self.objective(theta + d.p))
                if best is None or _value(d) < _value(best):
                    best = d
        if best is None:  # nothing usable (e.g. negative curvature at the first CG step): −g
            p = -g
            with self.comm.phase(Phase.CURVATURE):
                curvature = float(p @ op(p))
            best = _Direction(p, float(g @ p), curvature, "gradient")
        return best

    def line_search(self, theta: np.ndarray, f0: float, d: _Direction):
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

    def new_damping(self, state: HFState, d: _Direction, alpha: float, f0: float, f_new: float) -> tuple[float, float]:
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
        with comm.phase(Phase.CURVATURE):
            op = self.curvature_operator(state.theta, state.iteration, state.damping)
            result = self.solve(op, g, state)
        t2 = time.perf_counter()
        with comm.phase(Phase.LINE_SEARCH):
            evals0 = comm.counts().line_search.collectives
            d = self.choose_direction(result, g, state.theta, op)
            ls = self.line_search(state.theta, f0, d)
            evals = comm.counts().line_search.collectives - evals0
        t3 = time.perf_counter()
        rho, damping = self.new_damping(state, d, ls.alpha, f0, ls.value)
        if ls.accepted:
            theta, loss, train_error, rejected = state.theta + ls.alpha * d.p, ls.value, ls.extra, 0
        else:
            theta, loss, train_error, rejected = state.theta, f0, state.train_error, state.rejected + 1
        test_error = self.test_error(theta)
        b = self.batch_size
        samples = state.samples + self.n_train * (1 + evals) + b * (1 + op.products)
        elapsed = time.perf_counter() - t0
        new_state = attrs.evolve(
            state,
            theta=theta,
            damping=damping,
            delta=result.x,
            iteration=state.iteration + 1,
            rejected=rejected,
            samples=samples,
            time_s=state.time_s + elapsed,
            comm=add_counts(state.comm, comm.counts() - counts0),
            loss=loss,
            train_error=train_error if train_error is not None else math.nan,
            previous=result,
        )
        record = IterationRecord(
            iteration=new_state.iteration,
            epochs=samples / self.n_train,
            comm_calls=total_calls(new_state.comm),
            comm_bytes=total_bytes(new_state.comm),
            loss=loss,
            train_error=new_state.train_error,
            test_error=test_error,
            time_s=new_state.time_s,
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
            curvature=result.curvature.value,
            direction=d.kind,
            accepted=ls.accepted,
            comm_phases=new_state.comm,
        )
        return new_state, record

    def run(self, state: HFState, iterations: int) -> Iterator[tuple[HFState, IterationRecord]]:
        """Steps until ``state.iteration == iterations`` (the total, so resuming continues the count).

        Raises DivergedError after ``max_rejected`` consecutive rejected steps.
        """
        while state.iteration < iterations:
            state, record = self.step(state)
            yield state, record
            if state.rejected >= self.config.max_rejected:
                raise DivergedError(
                    f"iteration {state.iteration}: {state.rejected} consecutive steps rejected (λ = {state.damping:.3g}); training diverged"
                )

