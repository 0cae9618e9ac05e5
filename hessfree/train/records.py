"""What one training iteration reports (the library never prints: the CLI renders these)."""

from __future__ import annotations

import math

import attrs

from hessfree.comm import CommCounts


@attrs.frozen(kw_only=True)
class IterationRecord:
    """One outer HF iteration (or one first-order epoch, with ``iteration`` counting updates).

    ``epochs`` counts effective passes over the training data: every sample pushed
    through the network by the gradient, the curvature batch's forward pass and each of
    its products, and every objective evaluation of the backtracking and line search (an
    evaluation that brought the next iteration's gradient along counts once, and that
    gradient nothing).
    ``comm_phases`` holds the cumulative collectives and bytes sent per rank, per phase;
    ``comm_calls``/``comm_bytes`` are their totals. Losses include weight decay; errors
    are fractions in [0, 1].
    """

    iteration: int
    epochs: float
    loss: float
    train_error: float
    test_error: float | None
    time_s: float
    comm_phases: CommCounts = attrs.field(factory=CommCounts)
    time_gradient_s: float = 0.0
    time_solve_s: float = 0.0
    time_line_search_s: float = 0.0
    cg_iterations: int = 0
    curvature_products: int = 0
    line_search_evals: int = 0
    #: the gradient taken along (``hessfree.train.hf``): this iteration's gradient came
    #: with the last step's accepted trial (no pass of its own), and this step's first
    #: trial computed the gradient at its point too (a backward pass more in that trial)
    gradient_kept: bool = False
    gradient_along: bool = False
    #: the samples this iteration's gradient and objective ran on when not all the training
    #: data (``TrainConfig.gradient_sample``; 0: all of it). Then ``loss`` and
    #: ``train_error`` are NaN (not evaluated on the training set) and ``sample_loss`` is
    #: the objective on the sample after the step
    gradient_sample: int = 0
    sample_loss: float = math.nan
    #: gradient windows (``TrainConfig.gradient_batch``): the sample was window k of the
    #: data (``gradient_sample`` its size; not nested, never kept); ``evaluated``: the
    #: training set's ``loss`` and ``train_error`` and the ``test_error`` after the step
    #: come from a pass of their own (at the window that completes a pass over the data,
    #: and at the run's last iteration; NaN on the other windowed iterations)
    window: bool = False
    evaluated: bool = False
    damping: float = math.nan
    rho: float = math.nan
    step_size: float = math.nan
    negative_curvature: bool = False
    stop_reason: str = ""
    curvature: str = ""
    direction: str = ""  # the step's kind: iterate, negative_curvature, curvilinear, gradient
    accepted: bool = True
    # what the step was and what the solve saw (README, "Negative curvature"); curvatures
    # are undamped (of the objective's H, or G for Gauss-Newton: the operator minus λI)
    candidate: str = ""  # where the step came from: a solver candidate kind, "gradient", or "s+d" kinds
    flipped: bool = False  # an iterate the solver turned downhill (d̃ = −x: gᵀx > 0)
    choice: str = ""  # why it was taken (walk_back, newton_predicted, nc_predicted, curvilinear, …)
    step_curvature: float = math.nan  # pᵀHp of the direction p (α = 1; curvilinear: of its d)
    step_rayleigh: float = math.nan  # pᵀHp / pᵀp
    min_rayleigh: float = math.nan  # the most negative Rayleigh quotient among the solve's vectors
    ritz_min: float = math.nan  # extreme Ritz values of the solve's Lanczos tridiagonal (CG, MINRES)
    ritz_max: float = math.nan
    solve_damping: float = math.nan  # the λ of the solve's operator (≠ damping under the indefinite rule)
    nc_scale: float = math.nan  # κ, the length scale of negative-curvature steps, after the step
    sim_time_s: float | None = None  # simulated cluster seconds (``simulate``), else None

    @property
    def comm_calls(self) -> int:
        return self.comm_phases.total.collectives

    @property
    def comm_bytes(self) -> int:
        return self.comm_phases.total.bytes

    def as_dict(self) -> dict:
        """JSON-ready mapping (non-finite floats become None)."""
        out = {}
        for key, value in attrs.asdict(self, recurse=False).items():
            if isinstance(value, float) and not math.isfinite(value):
                value = None
            out[key] = value
        out["comm_phases"] = self.comm_phases.summary()
        out["comm_calls"], out["comm_bytes"] = self.comm_calls, self.comm_bytes
        return out
