"""Data-parallel Hessian-free training (the paper's Algorithm 2), one phase per function.

Every rank holds the full θ and a shard of the training data. Per outer iteration k:

1. full gradient and loss: local chunked sums, **one** allreduce of [Σ∇ℓ, Σℓ] (with
   ``preconditioner = "martens"`` of [Σ∇ℓ, Σ∇ℓ⊙∇ℓ, Σℓ]: still one collective);
2. curvature batch k: b consecutive global samples from k·b, cycled through the data, each
   rank computing the ones in its shard (b/P each with strided shards); its forward pass
   is computed once and kept for the whole solve;
3. Krylov solve of B·d = −g from x0 = η·δ_{k−1}, where B·v = (reduced Σ products)/b + (λ+μ)v
   (μ the weight decay): **one** allreduce per product; optionally preconditioned by
   Martens' M = (F̂ + λ + μ)^¾, F̂ the mean squared per-sample gradient;
4. direction: CG-backtracking over the stored iterates or Bi-CG-STAB's descent candidates
   (walk back while the full objective decreases), −g when the solver produced nothing;
   with a negative-curvature rule (``negative_curvature`` = scaled or curvilinear, see
   ``hessfree.train.negative``) a direction of negative curvature is scaled from its
   curvature and chosen against the Newton-type candidate by the decrease each predicts,
   or combined with it on the curvilinear path;
5. Armijo backtracking on the full objective, each trial **one** scalar allreduce (a
   negative-curvature step: forward/backward tracking on its own sufficient decrease);
6. Levenberg–Marquardt update of λ from ρ (not after a negative-curvature step when a
   negative-curvature rule is on; with ``damping_rule = "indefinite"`` the solve's λ is
   kept above the most negative curvature of the previous solve).

What the solve saw is measured for free (inner products of vectors every rank holds, no
product, no collective): each vector's undamped curvature dᵀHd = dᵀBd − λ‖d‖² and
Rayleigh quotient, and the extreme Ritz values of CG's and MINRES's Lanczos tridiagonal.

Every branch is decided from reduced values, so all ranks take the same one. θ is never
modified in place: a rejected or non-finite step leaves it exactly as it was. Under model
parallelism (``hessfree.train.layout``) θ and every θ-sized vector are sharded instead;
reductions, inner products and finiteness tests go through the trainer's layout.

The gradient taken along (a compute saving, not a change of the method): a model whose
evaluation and gradient share one pass (``Model.fused_evaluation``) computes, with the
first objective evaluation of step 4, this rank's gradient sums at that trial point too,
and keeps them. When the step accepts exactly that point (the evaluated direction at
α = 1) the next iteration's step 1 only reduces the kept sums: the same collective, the
same numbers bit for bit, one forward pass over the data fewer. Otherwise the extra
backward pass is lost. The gradient is taken along only when the last step accepted its
first trial (``HFState.first_trial_won``): a walk that keeps going back wastes nothing.
Effective epochs count the passes of an uninterrupted run, where a kept gradient costs
none; a run resumed from a checkpoint computes that gradient again, uncharged, so that its
records equal the uninterrupted run's.

Samples (options, off by default): with ``gradient_sample`` steps 1, 4 and 5 run on the
first ⌊s₀·rᵏ⌋ samples (nested, so a kept gradient serves the next one); with
``gradient_batch`` on window k of B consecutive samples, cycled like the curvature
batches (not nested: nothing is taken along), and ρ, λ and the Armijo test are the
window's. The training set's objective and error are then not the line search's: a
sampled iteration leaves them NaN, and a windowed one evaluates them (and the test error)
by a forward pass of its own once per pass over the data and after the run's last
iteration.
"""

from __future__ import annotations

import math
import time
from typing import Callable, ClassVar

import attrs
import numpy as np

from hessfree.comm import Phase
from hessfree.errors import DivergedError
from hessfree.methods import DampingRule, NegativeCurvatureRule, Preconditioner, WarmStart, next_curvature
from hessfree.solvers import CG, CandidateKind, Curvature, KrylovSolver, SolveResult
from hessfree.solvers.fused import scale_add
from hessfree.train import negative
from hessfree.train.batches import contiguous_positions, curvature_window, ends_pass, local_positions, local_prefix, sample_size
from hessfree.train.config import TrainConfig
from hessfree.train.damping import quadratic_model, reduction_ratio, update_damping
from hessfree.train.linesearch import LineSearchResult, armijo, sufficient_decrease
from hessfree.train.records import IterationRecord
from hessfree.train.trainer import Trainer, TrainState


#: Martens' exponent α of the diagonal preconditioner M = (F̂ + λ + μ)^α
PRECONDITIONER_EXPONENT = 0.75


def make_solver(config: TrainConfig) -> KrylovSolver:
    """The Krylov solver of an HF method, as the method table declares it (no true-residual
    recomputation: it would cost a product per solve). When a negative-curvature rule or
    the indefinite damping rule may use them, CG also keeps its search direction of lowest
    Rayleigh quotient (an inner product per step) and its first :data:`RITZ_VECTORS`
    residuals for the Ritz vector of the smallest Ritz value (memory, no product)."""
    spec = config.method.spec
    options = dict(
        max_iter=config.krylov_max_iter,
        rtol=config.cg_rtol,
        progress_tol=config.progress_tol if spec.progress_test else 0.0,
        true_residual=False,
    )
    if spec.solver is CG and (config.nc_rule is not NegativeCurvatureRule.OFF or config.damping_rule is DampingRule.INDEFINITE):
        options.update(keep_lowest=True, ritz_vectors=RITZ_VECTORS)
    return spec.solver(**options)


#: Lanczos vectors (CG residuals, kept by reference) for the Ritz vector of the smallest Ritz
#: value, under a negative-curvature rule or the indefinite damping rule
RITZ_VECTORS = 30


@attrs.frozen(kw_only=True)
class HFState(TrainState):
    """Everything an HF run carries from one outer iteration to the next."""

    #: scalar fields a checkpoint written before them lacks (it resumes with their defaults)
    ADDED_LATER: ClassVar[tuple[str, ...]] = ("first_trial_won", "gradient_kept")

    damping: float
    delta: np.ndarray  # previous Krylov solution (warm start)
    loss: float = math.nan  # objective at theta (nan: not evaluated yet)
    train_error: float = math.nan
    #: the curvature of the last solve and whether it met negative curvature: all a
    #: curvature policy (Hybrid's) needs to choose the next solve's operator
    last_curvature: Curvature | None = attrs.field(default=None, metadata={"enum": Curvature})
    last_negative: bool = False
    #: κ, the length scale of negative-curvature steps (``hessfree.train.negative``)
    nc_scale: float = 1.0
    #: the most negative undamped curvature the last solve met (NaN: none), for the
    #: indefinite damping rule
    curvature_floor: float = math.nan
    #: whether the last step accepted its first trial point: then the next step's first
    #: trial takes the gradient along (a prediction, so a walk that keeps going back
    #: wastes no backward passes)
    first_trial_won: bool = True
    #: whether θ's gradient came with the last step's accepted trial (no pass charged)
    gradient_kept: bool = False


class CurvatureOperator:
    """v ↦ (allreduce Σᵢ products on the curvature batch) / b + (λ + μ)·v.

    ``product`` is the batch's Gv or Hv; each call is one allreduce (``layout.reduce``:
    none under model parallelism). ``products`` counts
    the calls.
    """

    def __init__(self, product: Callable[[np.ndarray], np.ndarray], layout, batch_size: int, shift: float):
        self._product = product
        self._layout = layout
        self._inv_b = 1.0 / batch_size
        self._shift = shift
        self.products = 0

    def __call__(self, v: np.ndarray) -> np.ndarray:
        out = self._product(v)
        self._layout.reduce(out)
        if self._shift:
            scale_add(out, self._inv_b, self._shift, v)  # one pass over the vector
        else:
            out *= self._inv_b
        self.products += 1
        return out


#: CG's Ritz vector of its smallest Ritz value, as a Direction's kind
RITZ_KIND = "ritz_vector"
#: the candidate kinds that are negative-curvature directions of the solver
NC_KINDS = frozenset(k.value for k in (CandidateKind.SEARCH_P, CandidateKind.SEARCH_S, CandidateKind.CG_DIRECTION, CandidateKind.RESIDUAL)) | {RITZ_KIND}


@attrs.frozen
class Direction:
    """A search direction p with its slope gᵀp, damped curvature pᵀBp and, if known, f(θ+p).

    ``kind`` is where p came from (a :class:`CandidateKind` value, "gradient", or for a
    curvilinear step the two kinds joined by "+"); ``flipped``: an iterate turned downhill;
    ``step``: what kind of step p is when that is not read off ``kind`` (a scaled
    negative-curvature step, a curvilinear one). ``undamped`` = pᵀHp = pᵀBp − λ‖p‖² and
    ``norm2`` = ‖p‖² when computed.
    """

    p: np.ndarray
    slope: float
    curvature: float
    kind: str
    value: tuple[float, float] | None = None  # (objective, error) at θ + p, when evaluated
    flipped: bool = False
    step: str = ""
    undamped: float = math.nan
    norm2: float = math.nan

    @property
    def objective(self) -> float:
        """f(θ + p), +∞ when it is not finite (or not evaluated)."""
        return self.value[0] if self.value is not None and math.isfinite(self.value[0]) else math.inf

    @property
    def step_kind(self) -> str:
        """The record's ``direction``: iterate (turned downhill or not: see ``flipped``),
        negative_curvature, curvilinear or gradient."""
        if self.step:
            return self.step
        return "negative_curvature" if self.kind in NC_KINDS else self.kind

    @property
    def rayleigh(self) -> float:
        """pᵀHp / pᵀp (NaN when not computed or p = 0)."""
        return self.undamped / self.norm2 if self.norm2 > 0.0 else math.nan

    def measured(self, shift: float, dot: Callable = np.dot) -> "Direction":
        """This direction with ‖p‖² and its undamped curvature (B = H + shift·I): one
        inner product (``dot``: the layout's)."""
        if math.isfinite(self.norm2):
            return self
        norm2 = float(dot(self.p, self.p))
        return attrs.evolve(self, norm2=norm2, undamped=self.curvature - shift * norm2)

    def downhill(self) -> "Direction":
        """−p when gᵀp > 0 (same curvature), else itself."""
        return attrs.evolve(self, p=-self.p, slope=-self.slope, value=None, flipped=not self.flipped) if self.slope > 0 else self


@attrs.frozen
class KeptGradient:
    """This rank's unreduced gradient sums (Σℓ, Σ∇ℓ, Σ∇ℓ⊙∇ℓ or None) at the point ``theta``
    (the array itself: they serve that object only), computed beside its evaluation, over
    the first ``rows`` rows of this rank's shard (its sample then)."""

    theta: np.ndarray
    sums: tuple
    rows: int


@attrs.frozen
class Sample:
    """The training samples an iteration's gradient and objective run on: this rank's
    rows of them, and how many there are over all ranks; ``whole``: all n of them;
    ``window``: a gradient window (not nested: nothing of the last sample serves it)."""

    rows: object  # the model's batch
    count: int
    whole: bool = True
    window: bool = False


@attrs.frozen
class Choice:
    """The chosen direction, how many objective evaluations choosing it cost, and why."""

    direction: Direction
    evaluations: int
    reason: str = ""


@attrs.frozen
class Survey:
    """What the solve met, undamped: every vector it returned with its curvature, the most
    negative Rayleigh quotient among them, the extreme Ritz values (CG, MINRES), and the
    direction of most negative curvature turned downhill (None: none met)."""

    min_rayleigh: float = math.nan
    ritz_min: float = math.nan
    ritz_max: float = math.nan
    negative: Direction | None = None

    @property
    def floor(self) -> float:
        """The most negative curvature seen (NaN: nothing negative)."""
        values = [v for v in (self.min_rayleigh, self.ritz_min) if v < 0.0]
        return min(values) if values else math.nan


@attrs.frozen
class Outcome:
    """The step an iteration took: the direction p (at α = 1), α, f and what the line
    search spent. ``step`` is θ_new − θ when it is not α·p (the curvilinear path);
    ``predicted`` the model change of the accepted step when it is not the quadratic along
    α·p (NaN: unknown); ``damping_update`` whether the Levenberg–Marquardt rule applies;
    ``nc_scale`` the new κ (None: unchanged)."""

    direction: Direction
    search: LineSearchResult
    evaluations: int
    reason: str
    step: np.ndarray | None = None
    predicted: float | None = None
    damping_update: bool = True
    nc_scale: float | None = None

    @property
    def alpha(self) -> float:
        return self.search.alpha

    @property
    def accepted(self) -> bool:
        return self.search.accepted


class HessianFreeTrainer(Trainer):
    """Composes model, data shard, Krylov solver and communicator into HF training."""

    State = HFState

    #: the gradient taken along (module docstring), per step: whether this step's first
    #: trial takes it, that trial's direction and the sums computed with it; and the sums
    #: kept at the accepted θ for the next step's gradient (None: none)
    take_along: bool = False
    kept_rows: int = 0
    first_trial: np.ndarray | None = None
    trial_gradient: KeptGradient | None = None
    kept_gradient: KeptGradient | None = None

    def __init__(self, model, data, config: TrainConfig, comm=None, solver: KrylovSolver | None = None):
        if not config.method.is_hessian_free:
            raise ValueError(f"HessianFreeTrainer runs HF methods, not {config.method.value}")
        super().__init__(model, data, config, comm)
        self.solver = solver if solver is not None else make_solver(config)
        #: the last curvature batch's forward pass, whose buffers the next one reuses
        #: (memory only: no result depends on it)
        self.workspace = None
        #: whether the model computes an evaluation and its gradient in one pass
        self.fused = bool(getattr(model, "fused_evaluation", False))
        #: the whole training set, and the samples of the iteration running (its gradient
        #: sample: ``gradient_sample``); the whole set between iterations
        self.whole = self.sample = Sample(self.train, self.n_train)
        #: B of the gradient windows, when they are on (fewer than n samples)
        self.window_size = config.window_size
        self.windowed = 0 < self.window_size < self.n_train

    # ------------------------------------------------------------------ state
    def initial_state(self, theta: np.ndarray | None = None) -> HFState:
        theta = self.initial_theta(theta)
        return HFState(theta=theta, damping=self.config.damping, delta=np.zeros_like(theta))

    # ------------------------------------------------------------------ phases
    def objective(self, theta: np.ndarray) -> tuple[float, float]:
        """(f(θ), training error) over all ranks: one scalar allreduce."""
        return self.reduced_objective(theta, *self.model.evaluate(theta, self.sample.rows))

    def reduced_objective(self, theta: np.ndarray, loss: float, wrong: float) -> tuple[float, float]:
        """(f(θ), training error) from this rank's Σℓ and error count: one scalar allreduce."""
        total = self.layout.sum_scalars(loss, wrong)
        count = self.sample.count
        return self.regularised(total[0] / count, theta), total[1] / count

    def local_gradient(self, theta: np.ndarray, squares: bool = False) -> tuple:
        """This rank's (Σℓ, Σ∇ℓ, Σ∇ℓ⊙∇ℓ or None) at θ over the iteration's sample: the sums
        kept from the last step's accepted trial when they were computed at this very θ
        (plus the rows the sample gained since: samples are nested), else a gradient pass."""
        kept, self.kept_gradient = self.kept_gradient, None
        rows = self.sample.rows
        if kept is not None and kept.theta is theta and (kept.sums[2] is not None) == squares and kept.rows <= rows.n:
            head, split = kept.sums, kept.rows
        else:
            # not kept: one pass, or, where the last step's sums were kept over a smaller
            # sample but are gone (a resumed run), the same two sums as the uninterrupted run
            split = self.kept_rows if 0 < self.kept_rows < rows.n else 0
            head = self.sums(theta, rows.rows(0, split), squares) if split else None
        if head is None:
            return self.sums(theta, rows, squares)
        if split == rows.n:
            return head
        added = self.sums(theta, rows.rows(split, rows.n), squares)  # the sample grew: its new rows only
        return tuple(None if a is None else a + b for a, b in zip(head, added))

    def sums(self, theta: np.ndarray, rows, squares: bool) -> tuple:
        """This rank's (Σℓ, Σ∇ℓ, Σ∇ℓ⊙∇ℓ or None) over ``rows``: one gradient pass."""
        if squares:
            return self.model.loss_grad_squares(theta, rows)
        return (*self.model.loss_grad(theta, rows), None)

    def gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """(f(θ), ∇f(θ)): local chunked sums, one allreduce of [Σ∇ℓ, Σℓ]."""
        loss, grad, _ = self.local_gradient(theta)
        return self.reduced_gradient(loss, grad, self.sample.count, theta)

    def objective_with_gradient(self, theta: np.ndarray, p: np.ndarray) -> tuple[float, float]:
        """:meth:`objective` at θ + p, keeping this rank's gradient sums there (one fused
        pass; the same scalar allreduce and the same values as :meth:`objective`)."""
        point = theta + p
        squares = self.config.preconditioner is not Preconditioner.NONE
        loss, wrong, grad, sq = self.model.evaluate_grad(point, self.sample.rows, squares=squares)
        self.trial_gradient = KeptGradient(point, (loss, grad, sq), self.sample.rows.n)
        return self.reduced_objective(point, loss, wrong)

    def trial(self, theta: np.ndarray, d: "Direction", first: bool) -> tuple[float, float]:
        """f(θ + p) and the training error there. The first trial of a step takes the
        gradient along when the model computes both in one pass and the last step's first
        trial was the point accepted (so a walk that keeps going back wastes no passes)."""
        if first:
            self.first_trial = d.p
            if self.take_along:
                return self.objective_with_gradient(theta, d.p)
        return self.objective(theta + d.p)

    def gradient_and_fisher(self, theta: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        """(f(θ), ∇f(θ), F̂): the gradient and the empirical Fisher diagonal
        F̂ = (1/n)·Σᵢ ∇ℓᵢ⊙∇ℓᵢ in one pass, reduced together: **one** allreduce of
        [Σ∇ℓ, Σ∇ℓ⊙∇ℓ, Σℓ]."""
        loss, grad, squares = self.local_gradient(theta, squares=True)
        n = grad.size
        buf = np.empty(2 * n + 1, dtype=self.dtype)
        buf[:n], buf[n:-1], buf[-1] = grad, squares, loss
        self.layout.reduce(buf)
        count = self.sample.count
        g = buf[:n] / count
        if self.config.weight_decay:
            g = g + self.config.weight_decay * theta
        return self.regularised(float(buf[-1]) / count, theta), g, buf[n:-1] / count

    def gradient_phase(self, theta: np.ndarray, shift: float) -> tuple[float, np.ndarray, np.ndarray | None]:
        """(f, g, M⁻¹): the gradient, and the inverse diagonal preconditioner of the solve
        whose damping is ``shift`` (None without one).

        Martens (2010): M = (F̂ + λ + μ)^α with α = ¾. The empirical Fisher diagonal
        approximates the curvature's diagonal scale; the exponent below 1 and the damping
        keep M from over-trusting it where F̂ is tiny or noisy.
        """
        if self.config.preconditioner is Preconditioner.NONE:
            f, g = self.gradient(theta)
            return f, g, None
        f, g, fisher = self.gradient_and_fisher(theta)
        return f, g, (fisher + (shift + self.config.weight_decay)) ** -PRECONDITIONER_EXPONENT

    def gradient_sample(self, iteration: int) -> Sample:
        """Iteration k's gradient sample: the whole set; this rank's rows of the first
        ⌊s₀·rᵏ⌋ global samples, a prefix of the shard (a view; ``batches.local_prefix``);
        or, with gradient windows, of window k."""
        if self.windowed:
            rows = self.window_rows(curvature_window(iteration, self.window_size, self.n_train))
            return Sample(rows, self.window_size, whole=False, window=True)
        size = self.sample_count(iteration)
        if size == self.n_train:
            return self.whole
        return Sample(self.train.rows(0, local_prefix(self.rows, size)), size, whole=False)

    def window_rows(self, window: np.ndarray):
        """This rank's rows of a gradient window (consecutive global samples) as the
        model's batch: a view of the shard unless the window wraps, then a copy."""
        positions = local_positions(self.rows, window)
        span = contiguous_positions(positions)
        return self.train.rows(*span) if span is not None else self.train.take(positions)

    def sample_count(self, iteration: int) -> int:
        """How many samples iteration k's gradient and objective run on (all n: whole)."""
        cfg = self.config
        return sample_size(iteration, cfg.sample_start, cfg.sample_growth, self.n_train)

    def curvature_operator(self, theta: np.ndarray, iteration: int, damping: float, curvature: Curvature) -> CurvatureOperator:
        """The damped curvature of batch ``iteration`` (its forward pass computed here, once)."""
        X, y = self.local_rows(curvature_window(iteration, self.batch_size, self.n_train))
        cache = self.model.forward(theta, X, y, recycle=self.workspace)
        self.workspace = cache
        product = cache.hv if curvature is Curvature.EXACT else cache.gv
        return CurvatureOperator(product, self.layout, self.batch_size, damping + self.config.weight_decay)

    def solve(self, op: CurvatureOperator, g: np.ndarray, state: HFState, precond: np.ndarray | None = None) -> SolveResult:
        """Krylov solve of B·d = −g from the warm start η·δ_{k−1} (``precond``: M⁻¹)."""
        return self.solver.solve(op, -g, self.config.warm_start * state.delta, dot=self.layout.dot, precond=precond)

    def candidates(self, result: SolveResult) -> tuple[list[Direction], list[Direction]]:
        """(walk-back sequence, extra candidates) from the solver's descent candidates.

        The walk-back sequence is the iterates from the last backwards; the solver's
        negative-curvature directions are extra candidates evaluated on their own. A
        candidate that is not a descent direction (gᵀp ≥ 0) is never taken.
        """
        walk, extra = [], []
        for d in self.directions(result):
            (walk if d.kind == CandidateKind.ITERATE.value else extra).append(d)
        walk = [d for d in walk if d.slope < 0]  # gᵀp < 0 implies p ≠ 0
        extra = [d for d in extra if d.slope < 0]
        if not self.config.walk_back:
            walk = walk[:1]
        return walk, extra

    def directions(self, result: SolveResult) -> list[Direction]:
        """The solver's candidates, latest first, as Directions (an iterate turned downhill
        by the solver is marked ``flipped``)."""
        iterates = {it.iteration: it.x for it in result.iterates}
        out = []
        for c in sorted(result.candidates, key=lambda c: -c.iteration):
            p = np.asarray(c.direction)
            flipped = False
            if c.kind is CandidateKind.ITERATE and c.iteration in iterates:
                flipped = bool(self.layout.dot(p, iterates[c.iteration]) < 0.0)
            out.append(Direction(p, float(c.slope), float(c.curvature), c.kind.value, flipped=flipped))
        return out

    def walk_back(self, walk: list[Direction], theta: np.ndarray) -> tuple[Direction | None, int]:
        """CG-backtracking: from the last iterate back while f(θ + p) decreases (a
        non-finite objective counts as +∞, so the walk continues past it)."""
        best: Direction | None = None
        evaluations = 0
        for d in walk:
            d = attrs.evolve(d, value=self.trial(theta, d, first=evaluations == 0))
            evaluations += 1
            if best is not None and math.isfinite(best.objective) and not d.objective < best.objective:
                break
            if best is None or d.objective < best.objective:
                best = d
        return best, evaluations

    def _walk_reason(self) -> str:
        return "walk_back" if self.config.walk_back else "last_iterate"

    def choose_direction(self, result: SolveResult, g: np.ndarray, theta: np.ndarray, op: CurvatureOperator) -> Choice:
        """CG-backtracking: walk back from the last iterate while f(θ + p) decreases.

        A non-finite objective counts as +∞, so the walk continues past it. Only when no
        iterate is a descent direction are the negative-curvature directions tried
        (their length is arbitrary: as rivals of the iterates they win short, poor steps),
        and −g after them. (The rule ``negative_curvature = "off"``.)
        """
        walk, extra = self.candidates(result)
        best, evaluations = self.walk_back(walk, theta)
        reason = self._walk_reason()
        if best is None:
            reason = "no_descent_iterate"
            for d in extra:
                d = attrs.evolve(d, value=self.objective(theta + d.p))
                evaluations += 1
                if best is None or d.objective < best.objective:
                    best = d
        if best is None:  # nothing usable (e.g. negative curvature at the first CG step): −g
            best, reason = self.gradient_direction(g, op), "no_candidate"
        return Choice(best, evaluations, reason)

    def gradient_direction(self, g: np.ndarray, op: CurvatureOperator) -> Direction:
        """−g with its damped curvature (one product)."""
        p = -g
        with self.comm.phase(Phase.CURVATURE):
            curvature = self.layout.dot(p, op(p))
        return Direction(p, self.layout.dot(g, p), curvature, "gradient")

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

    # ------------------------------------------------------------------ negative curvature
    def survey(self, result: SolveResult, g: np.ndarray, shift: float) -> Survey:
        """The undamped curvature of every vector the solve returned (its candidates, its
        negative-curvature direction, CG's lowest search direction and Ritz vector) and the
        Ritz values: local inner products only, the same on every rank."""
        found = self.directions(result)
        known = {(c.kind, c.iteration) for c in result.candidates}
        for nc in (result.negative_curvature, getattr(result, "lowest", None)):
            if nc is None or (nc.kind, nc.iteration) in known:
                continue  # CG's direction is no candidate of its; the others' are
            known.add((nc.kind, nc.iteration))
            p = np.asarray(nc.direction)
            found.append(Direction(p, self.layout.dot(g, p), float(nc.curvature), nc.kind.value))
        ritz = getattr(result, "ritz_vector", None)
        if ritz is not None:
            p = np.asarray(ritz.direction)
            found.append(Direction(p, self.layout.dot(g, p), float(ritz.curvature), RITZ_KIND))
        rayleighs, best = [], None
        for d in found:
            d = d.measured(shift, self.layout.dot)
            r = d.rayleigh
            if not math.isfinite(r):
                continue
            rayleighs.append(r)
            if r < 0.0 and (best is None or r < best.rayleigh):
                best = d
        if best is not None:
            best = attrs.evolve(best.downhill(), value=None)
        ritz = [getattr(result, key, math.nan) - shift for key in ("ritz_min", "ritz_max")]
        return Survey(min_rayleigh=min(rayleighs) if rayleighs else math.nan, ritz_min=ritz[0], ritz_max=ritz[1], negative=best)

    def scaled_negative(self, d: Direction, scale: float) -> Direction:
        """d scaled to the cubic model's length t* (``negative.cubic_length``)."""
        norm = math.sqrt(d.norm2)
        t = negative.cubic_length(d.rayleigh, d.slope / norm, scale)
        f = t / norm
        return attrs.evolve(d, p=f * d.p, slope=f * d.slope, curvature=f * f * d.curvature, undamped=f * f * d.undamped,
                            norm2=t * t, value=None, step="negative_curvature")

    def negative_search(self, theta: np.ndarray, f0: float, d: Direction) -> LineSearchResult:
        """Forward/backward tracking along the scaled negative-curvature step d."""
        cfg = self.config
        return sufficient_decrease(
            lambda a: self.objective(theta + a * d.p),
            f0,
            lambda a: negative.model_change(d.slope, d.undamped, a),
            c=cfg.armijo_c,
            shrink=cfg.armijo_shrink,
            max_trials=cfg.max_line_search,
            grow=negative.GROW,
            max_forward=negative.MAX_FORWARD,
        )

    def negative_curvature_step(self, result: SolveResult, survey: Survey, g: np.ndarray, f0: float, state: HFState,
                                op: CurvatureOperator, shift: float) -> Outcome:
        """The step under the rules ``scaled`` and ``curvilinear`` (module docstring)."""
        cfg, theta = self.config, state.theta
        walk, _ = self.candidates(result)
        newton, evaluations = self.walk_back(walk, theta)
        newton = newton.measured(shift, self.layout.dot) if newton is not None else None
        reason = self._walk_reason()
        if survey.negative is None:  # nothing negative met: the Newton-type step as under "off"
            if newton is None:
                newton, reason = self.gradient_direction(g, op).measured(shift, self.layout.dot), "no_candidate"
            ls = self.line_search(theta, f0, newton)
            return Outcome(newton, ls, evaluations + ls.trials, reason)
        scale = state.nc_scale
        d = self.scaled_negative(survey.negative, scale)
        length = math.sqrt(d.norm2)
        nc_change = negative.cubic_change(d.slope, d.undamped, length, scale)
        newton_change = negative.model_change(newton.slope, newton.undamped) if newton is not None else None
        if not negative.prefer_negative_curvature(newton_change, nc_change):
            ls = self.line_search(theta, f0, newton)
            return Outcome(newton, ls, evaluations + ls.trials, "newton_predicted")
        if cfg.nc_rule is NegativeCurvatureRule.CURVILINEAR and newton is not None:
            s = newton
            ls = sufficient_decrease(
                lambda a: self.objective(theta + ((a * a) * s.p + a * d.p)),
                f0,
                lambda a: negative.curvilinear_change(a, s.slope, d.undamped),
                c=cfg.armijo_c,
                shrink=cfg.armijo_shrink,
                max_trials=cfg.max_line_search,
            )
            a = ls.alpha
            path = Direction(s.p + d.p, s.slope + d.slope, math.nan, f"{s.kind}+{d.kind}", step="curvilinear",
                             undamped=d.undamped, norm2=d.norm2)
            # no model of the path's value (sᵀHd unknown): κ follows the accepted α
            new_scale = negative.clip_scale(scale * a if ls.accepted else scale / negative.FAILED_SHRINK)
            return Outcome(path, ls, evaluations + ls.trials, "curvilinear", step=(a * a) * s.p + a * d.p if ls.accepted else None,
                           predicted=math.nan, damping_update=not ls.accepted, nc_scale=new_scale)
        ls = self.negative_search(theta, f0, d)
        evaluations += ls.trials
        why = "nc_predicted" if newton is not None else "nc_only"
        if ls.accepted:
            return Outcome(d, ls, evaluations, why, damping_update=False, nc_scale=negative.clip_scale(scale * ls.alpha))
        new_scale = negative.clip_scale(scale / negative.FAILED_SHRINK)
        if newton is None:
            return Outcome(d, ls, evaluations, why, nc_scale=new_scale)
        ls = self.line_search(theta, f0, newton)
        return Outcome(newton, ls, evaluations + ls.trials, "nc_failed", nc_scale=new_scale)

    def solve_damping(self, state: HFState) -> float:
        """The λ of this iteration's operator: the state's, or under the indefinite rule at
        least FLOOR_FACTOR × the most negative curvature of the previous solve."""
        if self.config.damping_rule is DampingRule.INDEFINITE:
            return negative.damping_floor(state.damping, state.curvature_floor, self.config.damping_max)
        return state.damping

    def new_damping(self, state: HFState, out: Outcome, f0: float, shift: float | None = None) -> tuple[float, float]:
        """(ρ, λ') from the undamped quadratic model along the accepted step α·p.

        ``shift`` is the λ of the solve (default the state's). ρ is NaN when the model of
        the step is unknown (the curvilinear path: pᵀHd is not known); λ stays when the
        outcome says the Levenberg–Marquardt rule does not apply (negative-curvature
        steps under a negative-curvature rule).
        """
        if not out.accepted:
            return -math.inf, update_damping(state.damping, -math.inf, self.config)
        d, alpha = out.direction, out.alpha
        if out.predicted is None:
            shift = state.damping if shift is None else shift
            undamped = d.curvature - shift * self.layout.dot(d.p, d.p)
            predicted = quadratic_model(alpha * d.slope, alpha * alpha * undamped)
        else:
            predicted = out.predicted
        rho = reduction_ratio(out.search.value, f0, predicted) if math.isfinite(predicted) else math.nan
        if not out.damping_update:
            return rho, state.damping
        return rho, update_damping(state.damping, rho, self.config)

    def unevaluated_test_error(self) -> float | None:
        """The test error of an iteration that does not evaluate it (NaN; None: no test set)."""
        return None if self.test is None or self.n_test == 0 else math.nan

    def test_error(self, theta: np.ndarray) -> float | None:
        if self.test is None or self.n_test == 0:
            return None
        with self.comm.phase(Phase.OTHER):
            _, wrong = self.model.evaluate(theta, self.test) if self.test.n else (0.0, 0)
            return float(self.layout.sum_scalars(wrong)[0]) / self.n_test

    # ------------------------------------------------------------------ one iteration
    def step(self, state: HFState) -> tuple[HFState, IterationRecord]:
        comm, cfg = self.comm, self.config
        counts0 = comm.counts()
        t0 = time.perf_counter()
        shift = self.solve_damping(state)
        sample = self.sample = self.gradient_sample(state.iteration)
        # this rank's rows of the last sample, when θ's gradient sums were kept over it
        self.kept_rows = local_prefix(self.rows, self.sample_count(state.iteration - 1)) if state.gradient_kept and state.iteration else 0
        # samples are nested: it serves the next one; windows are not
        self.take_along = self.fused and state.first_trial_won and not self.windowed
        self.first_trial = self.trial_gradient = None
        with comm.phase(Phase.GRADIENT):
            f0, g, precond = self.gradient_phase(state.theta, shift)
        if not (math.isfinite(f0) and self.layout.all_finite(g)):
            raise DivergedError(f"iteration {state.iteration + 1}: the objective or its gradient is not finite at the current parameters")
        t1 = time.perf_counter()
        curvature = next_curvature(cfg.method, state.last_curvature, state.last_negative)
        with comm.phase(Phase.CURVATURE):
            op = self.curvature_operator(state.theta, state.iteration, shift, curvature)
            result = self.solve(op, g, state, precond)
        t2 = time.perf_counter()
        survey = self.survey(result, g, shift)
        with comm.phase(Phase.LINE_SEARCH):
            if cfg.nc_rule is NegativeCurvatureRule.OFF:
                choice = self.choose_direction(result, g, state.theta, op)
                ls = self.line_search(state.theta, f0, choice.direction)
                out = Outcome(choice.direction, ls, choice.evaluations + ls.trials, choice.reason)
            else:
                out = self.negative_curvature_step(result, survey, g, f0, state, op, shift)
        t3 = time.perf_counter()
        d, ls, evals = out.direction, out.search, out.evaluations
        rho, damping = self.new_damping(state, out, f0, shift)
        nc_scale = out.nc_scale if out.nc_scale is not None else state.nc_scale
        if cfg.nc_rule is not NegativeCurvatureRule.OFF and out.accepted and out.nc_scale is None:
            taken = d.measured(shift, self.layout.dot)  # a Newton-type step: κ from its third-order remainder
            remainder = (ls.value - f0) - negative.model_change(d.slope, taken.undamped, ls.alpha)
            nc_scale = negative.secant_scale(nc_scale, ls.alpha * math.sqrt(taken.norm2), remainder)
        theta, won = self.settle(state.theta, out)
        if ls.accepted:
            loss, train_error, rejected = ls.value, ls.extra, 0
        else:
            loss, train_error, rejected = f0, state.train_error, state.rejected + 1
        sample_loss = math.nan
        if not sample.whole:  # the values of a sample: not the training set's objective or error
            sample_loss, loss, train_error = loss, math.nan, math.nan
        self.sample = self.whole
        # gradient windows: the training set's values once per pass over the data and after
        # the run's last iteration, by a pass of their own
        evaluated = self.windowed and (ends_pass(state.iteration, self.window_size, self.n_train) or state.iteration + 1 >= cfg.iterations)
        if evaluated:
            with comm.phase(Phase.OTHER):
                loss, train_error = self.objective(theta)
        test_error = self.test_error(theta) if evaluated or not self.windowed else self.unevaluated_test_error()
        gradient_samples = sample.count - (self.sample_count(state.iteration - 1) if state.gradient_kept else 0)
        samples = (state.samples + sample.count * evals + gradient_samples + self.batch_size * (1 + op.products)
                   + (self.n_train if evaluated else 0))
        source = cfg.warm_start_source
        delta = result.x if source is WarmStart.ITERATE else (d.p if source is WarmStart.DIRECTION else np.zeros_like(state.theta))
        taken = d.measured(shift, self.layout.dot)
        new = attrs.evolve(
            state,
            theta=theta,
            damping=damping,
            delta=delta,
            iteration=state.iteration + 1,
            rejected=rejected,
            samples=samples,
            time_s=state.time_s + time.perf_counter() - t0,
            comm=state.comm + self.counts_since(counts0),
            loss=loss,
            train_error=train_error if train_error is not None else math.nan,
            last_curvature=curvature,
            last_negative=result.negative_curvature is not None,
            nc_scale=nc_scale,
            curvature_floor=survey.floor,
            first_trial_won=won,
            gradient_kept=won and self.kept_gradient is not None,
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
            gradient_kept=state.gradient_kept,
            gradient_along=self.take_along and self.first_trial is not None,
            damping=state.damping,
            rho=rho,
            step_size=ls.alpha,
            negative_curvature=result.negative_curvature is not None,
            stop_reason=result.reason.value,
            curvature=curvature.value,
            direction=d.step_kind,
            accepted=ls.accepted,
            candidate=d.kind,
            flipped=d.flipped,
            choice=out.reason,
            step_curvature=taken.undamped,
            step_rayleigh=taken.rayleigh,
            min_rayleigh=survey.min_rayleigh,
            ritz_min=survey.ritz_min,
            ritz_max=survey.ritz_max,
            solve_damping=shift,
            nc_scale=new.nc_scale,
            gradient_sample=0 if sample.whole else sample.count,
            sample_loss=sample_loss,
            window=sample.window,
            evaluated=evaluated,
        )
        return new, record

    def settle(self, theta: np.ndarray, out: Outcome) -> tuple[np.ndarray, bool]:
        """(the next θ, whether it is the point of this step's first trial: its direction
        at α = 1). The next θ is θ itself after a rejected step, else θ + the accepted
        step; the first trial's array when that point won and the gradient was taken
        along, whose sums are then kept for the next step. Decided on reduced values
        only: the same on every rank."""
        trial, self.trial_gradient = self.trial_gradient, None
        won = out.accepted and out.step is None and out.alpha == 1.0 and out.direction.p is self.first_trial
        if not out.accepted:
            return theta, won
        if won and trial is not None:
            self.kept_gradient = trial
            return trial.theta, won
        return theta + (out.step if out.step is not None else out.alpha * out.direction.p), won

    def divergence(self, state: HFState, record: IterationRecord) -> str | None:
        if state.rejected >= self.config.max_rejected:
            return f"iteration {state.iteration}: {state.rejected} consecutive steps rejected (λ = {state.damping:.3g}); training diverged"
        return None
