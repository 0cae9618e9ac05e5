"""Training configuration: the method and every hyper-parameter, frozen and validated."""

from __future__ import annotations

import enum
from types import MappingProxyType

import attrs

from hessfree.errors import ConfigError
from hessfree.methods import DampingRule, Method, NegativeCurvatureRule, Preconditioner, WarmStart
from hessfree.validate import bool_field, config, enum_field, int_field, real_field

#: per-method defaults that changed after checkpoints had recorded None for them: the
#: setting, and the methods whose default moved. gn-cg's CG-backtracking went off
#: (benchmarks/studies/backtracking-*) and its Krylov cap from Martens' 250 to 5
#: (benchmarks/studies/cgcap-*)
DEFAULTS_CHANGED = MappingProxyType({"backtracking": frozenset({Method.GN_CG}), "cg_max_iter": frozenset({Method.GN_CG})})

__all__ = ["DEFAULTS_CHANGED", "DampingRule", "Method", "NegativeCurvatureRule", "Preconditioner", "TrainConfig", "WarmStart"]


@config
class TrainConfig:
    """Everything that determines a training trajectory (besides model, data and ranks).

    Defaults follow Martens (2010) where the paper is silent (see the README's method
    section): damping rule 3/2 and 2/3 at ρ < 1/4 and ρ > 3/4, warm start 0.95·δ,
    Armijo with c = 1e-2 and shrink 0.8. ``backtracking`` (CG-backtracking) defaults to the
    method's: off for gn-cg (measured, see the README's "Speed to accuracy"), on for the
    others, as Martens. The curvature is normalised per
    sample, so the initial damping λ is on the same per-sample scale. ``batch_size`` and
    ``cg_max_iter`` default to the method's own values in the method table. Adam's β₁, β₂
    and ε default to Kingma & Ba's (2015). ``weight_decay`` μ is L2 in the objective
    (μθ in the gradient) for every method except ``adamw``, where it is decoupled:
    θ ← θ·(1 − η·μ) before each Adam step (PyTorch's AdamW).

    The paper's open choices and the negative-curvature options (README, "Negative
    curvature"): ``negative_curvature`` (off, scaled, curvilinear; default: the method's,
    ``off`` except for newton-mr), ``damping_rule`` (lm, or indefinite: λ kept above the
    most negative curvature of the previous solve), ``warm_start_source`` (the raw last
    iterate as Martens, the chosen direction as the paper's Algorithm 2, or zero) and
    ``init_scale`` s (θ₀ = s × the model's initial parameters, for saddle studies).
    ``preconditioner`` (none, or martens: the diagonal (F̂ + λ + μ)^¾ of Martens (2010),
    F̂ the empirical Fisher diagonal from the gradient pass; README, "Speed to accuracy").
    ``gradient_sample`` s₀ and ``sample_growth`` r (HF): iteration k takes its gradient and
    its line search on the first ⌊s₀·rᵏ⌋ training samples (at most all n; default: the
    method's, 0 = all n), see ``hessfree.train.batches.sample_size``.
    """

    method: Method = enum_field(Method, Method.GN_CG)  # the best HF method in the fig1 experiment
    iterations: int = int_field(30)  # HF outer iterations
    epochs: int = int_field(10)  # first-order epochs
    batch_size: int | None = int_field(None, optional=True)  # see global_batch
    cg_max_iter: int | None = int_field(None, optional=True)  # see krylov_max_iter
    cg_rtol: float = real_field(1e-8, low=0, low_open=True)
    progress_tol: float = real_field(5e-4, low=0)
    damping: float = real_field(1.0, low=0, low_open=True)
    damping_min: float = real_field(1e-8, low=0, low_open=True)
    damping_max: float = real_field(1e8, low=0, low_open=True)
    damping_increase: float = real_field(1.5, low=1, low_open=True)
    damping_decrease: float = real_field(2.0 / 3.0, low=0, high=1, low_open=True, high_open=True)
    rho_low: float = real_field(0.25)
    rho_high: float = real_field(0.75)
    warm_start: float = real_field(0.95, low=0, high=1, high_open=True)
    warm_start_source: WarmStart = enum_field(WarmStart, WarmStart.ITERATE)
    negative_curvature: NegativeCurvatureRule | None = enum_field(NegativeCurvatureRule, None, optional=True)
    damping_rule: DampingRule = enum_field(DampingRule, DampingRule.LM)
    backtracking: bool | None = bool_field(None, optional=True)
    armijo_c: float = real_field(1e-2, low=0, high=1, low_open=True, high_open=True)
    armijo_shrink: float = real_field(0.8, low=0, high=1, low_open=True, high_open=True)
    max_line_search: int = int_field(60)
    max_rejected: int = int_field(10)  # consecutive rejected steps → diverged
    lr: float = real_field(0.1, low=0, low_open=True)
    momentum: float = real_field(0.9, low=0, high=1, high_open=True)
    beta1: float = real_field(0.9, low=0, high=1, low_open=True, high_open=True)  # Adam(W) β₁
    beta2: float = real_field(0.999, low=0, high=1, low_open=True, high_open=True)  # Adam(W) β₂
    adam_eps: float = real_field(1e-8, low=0, low_open=True)  # Adam(W) ε, added to √v̂
    weight_decay: float = real_field(0.0, low=0)
    seed: int = int_field(0, minimum=0)
    init_scale: float = real_field(1.0, low=0)  # θ₀ = init_scale × the model's initial parameters
    preconditioner: Preconditioner = enum_field(Preconditioner, Preconditioner.NONE)
    #: s₀, the first iteration's gradient sample (see ``sample_start``; 0: the whole set)
    gradient_sample: int | None = int_field(None, optional=True, minimum=0)
    sample_growth: float = real_field(1.1, low=1)  # r: sample k has ⌊s₀·rᵏ⌋ samples, at most n
    #: B, the gradient windows' size (see ``window_size``; 0: every gradient whole)
    gradient_batch: int | None = int_field(None, optional=True, minimum=0)

    @property
    def global_batch(self) -> int:
        """``batch_size``, or the method's default (HF curvature batch, SGD mini-batch)."""
        return self.batch_size if self.batch_size is not None else self.method.spec.default_batch

    @property
    def sample_start(self) -> int:
        """``gradient_sample``, or the method's default (0: every iteration's gradient and
        objective on the whole training set)."""
        return self.gradient_sample if self.gradient_sample is not None else self.method.spec.gradient_sample

    @property
    def window_size(self) -> int:
        """``gradient_batch``, or the method's default (0: no gradient windows)."""
        return self.gradient_batch if self.gradient_batch is not None else self.method.spec.gradient_batch

    @property
    def krylov_max_iter(self) -> int:
        """``cg_max_iter``, or the method's default Krylov cap."""
        return self.cg_max_iter if self.cg_max_iter is not None else self.method.spec.krylov_max_iter

    def identity(self) -> dict:
        """The settings as a checkpoint identifies its trajectory (JSON-ready, enums by
        value): all but the run length and the divergence limit. A setting left to the
        method's default is recorded as None, except where that default changed
        (:data:`DEFAULTS_CHANGED`): there it is recorded resolved, so that a checkpoint
        written under the old default (None) is refused by name instead of continuing
        another trajectory, while every other method's identity stays as it was."""
        train = {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in attrs.asdict(self).items()}
        for key in ("iterations", "epochs", "max_rejected"):
            train.pop(key)
        resolved = {"backtracking": self.walk_back, "cg_max_iter": self.krylov_max_iter}
        for key, methods in DEFAULTS_CHANGED.items():
            if train[key] is None and self.method in methods:
                train[key] = resolved[key]
        if self.sample_start:  # resolved; absent when every gradient is whole (old identities stay valid)
            train["gradient_sample"] = self.sample_start
        else:
            del train["gradient_sample"], train["sample_growth"]
        if self.window_size:  # likewise: absent when there are no windows
            train["gradient_batch"] = self.window_size
        else:
            del train["gradient_batch"]
        return train

    @property
    def nc_rule(self) -> NegativeCurvatureRule:
        """``negative_curvature``, or the method's default (``off`` but for newton-mr)."""
        return self.negative_curvature if self.negative_curvature is not None else self.method.spec.negative_curvature

    @property
    def walk_back(self) -> bool:
        """``backtracking``, or the method's default (off for gn-cg, on for the others)."""
        return self.backtracking if self.backtracking is not None else self.method.spec.backtracking

    @property
    def run_length(self) -> int:
        """Outer iterations for HF methods, epochs for first-order ones."""
        return self.iterations if self.method.is_hessian_free else self.epochs

    def __attrs_post_init__(self) -> None:
        if self.damping_min > self.damping_max:
            raise ConfigError(f"damping_min: expected ≤ damping_max ({self.damping_max}), found {self.damping_min}")
        if not self.damping_min <= self.damping <= self.damping_max:
            raise ConfigError(f"damping: expected within [{self.damping_min}, {self.damping_max}], found {self.damping}")
        if self.sample_start and self.window_size:
            raise ConfigError(f"gradient_batch: expected 0 with a gradient sample (gradient_sample {self.sample_start}): "
                              f"a gradient runs on a growing sample or on windows, not both; found {self.window_size}")
        if self.rho_low > self.rho_high:
            raise ConfigError(f"rho_low: expected ≤ rho_high ({self.rho_high}), found {self.rho_low}")
