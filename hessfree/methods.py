"""The method table: every training method declared once.

Each member of :class:`Method` carries a :class:`MethodSpec` with everything the rest of
the package needs to know about it: its family (Hessian-free or first-order), the
curvature its Krylov solves multiply by and the policy that may switch it, the solver
class and its defaults (iteration cap, whether Martens' progress test applies), the
default global batch, how many curvature products one Krylov iteration costs (the cost
model's count), and, for first-order methods, the update rule.

The trainer, :class:`~hessfree.train.config.TrainConfig`, the cost model and the CLI's
choices all read this table. Adding a method is one entry here (plus, for a new solver or
update rule, one class); see the README's development section.
"""

from __future__ import annotations

import enum

import attrs

from hessfree.solvers import MINRES, BiCGStab, CG, Curvature, KrylovSolver


class Family(enum.Enum):
    HESSIAN_FREE = "hessian-free"
    FIRST_ORDER = "first-order"


class CurvaturePolicy(enum.Enum):
    """Which curvature each solve of an HF method uses."""

    FIXED = "fixed"  # always ``MethodSpec.curvature``
    #: the paper's Hybrid: the exact Hessian, except for the one solve right after a solve
    #: that met negative curvature on it, which uses the Gauss-Newton matrix (PSD, so that
    #: solve is guaranteed a Newton-type descent step); then the exact Hessian again
    GAUSS_NEWTON_AFTER_NEGATIVE = "gauss-newton-after-negative"


class NegativeCurvatureRule(enum.Enum):
    """What an HF step does with a direction d of negative curvature dᵀHd < 0 that the
    solve met (``hessfree.train.negative``)."""

    #: the solver's descent candidates as they are: CG-backtracking over the iterates
    #: (Bi-CG-STAB: turned downhill), its negative-curvature directions only when no
    #: iterate is a descent direction, Armijo from α = 1 (the paper as first built)
    OFF = "off"
    #: d turned downhill, its length from its curvature (the minimiser of the cubic model
    #: t·gᵀu + ½t²·uᵀHu + t³/(6κ), Curtis & Robinson; κ adapted by the line search), taken
    #: instead of the Newton-type candidate when the quadratic model predicts a larger
    #: decrease for it (Gould, Lucidi, Roma & Toint), with a forward/backward-tracking
    #: search on f(θ+αd) ≤ f + c·(α·gᵀd + ½α²·dᵀHd) (Liu & Roosta)
    SCALED = "scaled"
    #: as ``scaled``, but when d is preferred, the curvilinear path θ + α²s + αd of the
    #: Newton-type step s and the scaled d, backtracking on f ≤ f + c·α²·(gᵀs + ½dᵀHd)
    #: (Moré & Sorensen; Olivares, Moguerza & Prieto, the paper's reference)
    CURVILINEAR = "curvilinear"


class DampingRule(enum.Enum):
    """How the damping λ of the Krylov system B = H + λI is set."""

    #: Levenberg–Marquardt from the reduction ratio ρ (Martens)
    LM = "lm"
    #: Levenberg–Marquardt, but never below 1.5× the most negative curvature (Rayleigh
    #: quotient or Ritz value) of the previous solve: B stays positive definite where the
    #: previous solve saw H, and negative curvature is left to the negative-curvature
    #: step; λ is not raised by the ρ of a negative-curvature step
    INDEFINITE = "indefinite"


class WarmStart(enum.Enum):
    """Where the Krylov solve starts from (times ``warm_start`` η)."""

    ITERATE = "iterate"  # the previous solve's last iterate, raw (Martens)
    DIRECTION = "direction"  # the previous chosen direction δ_{k−1} (the paper's Algorithm 2)
    ZERO = "zero"  # always 0


class Preconditioner(enum.Enum):
    """The Krylov solve's preconditioner (HF methods)."""

    NONE = "none"
    #: Martens (2010): M = (diag F̂ + λ + μ)^¾ with F̂ the empirical Fisher matrix (the mean of
    #: the per-sample squared gradients), computed in the gradient pass
    MARTENS = "martens"


class Update(enum.Enum):
    """First-order update rules (see ``hessfree.train.firstorder``)."""

    SGD = "sgd"  # θ ← θ − η·g
    MOMENTUM = "momentum"  # v ← μ·v − η·g, θ ← θ + v
    #: Kingma & Ba (2015), weight decay coupled: g includes μθ (L2 in the objective)
    ADAM = "adam"  # m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ − η·m̂/(√v̂ + ε)
    #: Loshchilov & Hutter (2019), weight decay decoupled as PyTorch's AdamW: g without μθ,
    #: θ ← θ·(1 − ημ), then the Adam step
    ADAMW = "adamw"


@attrs.frozen(kw_only=True)
class MethodSpec:
    """What one method is (see the module docstring)."""

    family: Family
    summary: str
    default_batch: int
    # Hessian-free methods
    curvature: Curvature | None = None
    policy: CurvaturePolicy = CurvaturePolicy.FIXED
    solver: type[KrylovSolver] | None = None
    krylov_max_iter: int = 0
    #: Martens' relative-progress stop; off for Bi-CG-STAB, whose q is not monotone on an
    #: indefinite Hessian (measured on MNIST: it stopped after ~15 steps and stalled)
    progress_test: bool = True
    products_per_krylov_step: int = 1
    #: what the step does with negative curvature unless the config says otherwise
    negative_curvature: NegativeCurvatureRule = NegativeCurvatureRule.OFF
    #: CG-backtracking (walk back over the solver's iterates while the objective
    #: decreases) unless the config says otherwise; off: the last iterate
    backtracking: bool = True
    #: s₀ of the geometric gradient sample (``TrainConfig.gradient_sample``); 0: every
    #: gradient and objective on the whole training set
    gradient_sample: int = 0
    #: B of the gradient windows (``TrainConfig.gradient_batch``); 0: none
    gradient_batch: int = 0
    # first-order methods
    update: Update | None = None

    @property
    def is_hessian_free(self) -> bool:
        return self.family is Family.HESSIAN_FREE


def _hf(summary: str, curvature: Curvature, solver: type[KrylovSolver], **options) -> MethodSpec:
    # 1000 samples: Martens-size curvature batch; 250 Krylov iterations: Martens' CG cap
    options = {"krylov_max_iter": 250, **options}
    return MethodSpec(family=Family.HESSIAN_FREE, summary=summary, default_batch=1000, curvature=curvature, solver=solver, **options)


def _first_order(summary: str, update: Update) -> MethodSpec:
    # 64 samples: the paper's SGD mini-batch
    return MethodSpec(family=Family.FIRST_ORDER, summary=summary, default_batch=64, update=update)


class Method(enum.Enum):
    """Training methods, named as on the command line; ``Method.X.spec`` says what each is."""

    GN_CG = "gn-cg", _hf(
        "Gauss-Newton curvature + CG (Martens)",
        Curvature.GAUSS_NEWTON,
        CG,
        # the last iterate: on digits, MNIST 784-400-10 and 784-400-150-10 and a deep
        # autoencoder it reached every target in the same (±1) iterations as walking
        # back, with 0.64-0.90x the effective epochs (benchmarks/studies/backtracking-*)
        backtracking=False,
        # at most 5 CG steps per solve, not Martens' 250: on a curvature batch of 1,000
        # the longer solve fits the batch, not the data (ρ falls, λ rises); the warm start
        # carries the Krylov progress over to the next solve. On seven problems, 3 seeds
        # each, it reached every target with 0.49-0.85x the wall time and 0.32-0.81x the
        # effective epochs (benchmarks/studies/cgcap-*, rule fixed before the runs)
        krylov_max_iter=5,
    )
    HESS_CG = "hess-cg", _hf("exact Hessian + CG, stops on negative curvature", Curvature.EXACT, CG)
    BICGSTAB = "bicgstab", _hf(
        "exact Hessian + Bi-CG-STAB with negative-curvature candidates (the paper)",
        Curvature.EXACT,
        BiCGStab,
        # a fixed budget of 50 iterations (100 products), as the paper runs it
        krylov_max_iter=50,
        progress_test=False,
        products_per_krylov_step=2,
    )
    HYBRID = "hybrid", _hf(
        "exact Hessian + CG, Gauss-Newton for the solve after negative curvature",
        Curvature.EXACT,
        CG,
        policy=CurvaturePolicy.GAUSS_NEWTON_AFTER_NEGATIVE,
    )
    NEWTON_MR = "newton-mr", _hf(
        "exact Hessian + MINRES; its non-positive-curvature certificate as a scaled step (Liu & Roosta's Newton-MR)",
        Curvature.EXACT,
        MINRES,
        negative_curvature=NegativeCurvatureRule.SCALED,
    )
    SGD = "sgd", _first_order("data-parallel mini-batch SGD", Update.SGD)
    MSGD = "msgd", _first_order("data-parallel momentum SGD", Update.MOMENTUM)
    ADAM = "adam", _first_order("data-parallel Adam (weight decay as L2 in the gradient)", Update.ADAM)
    ADAMW = "adamw", _first_order("data-parallel AdamW (decoupled weight decay)", Update.ADAMW)

    def __new__(cls, value: str, spec: MethodSpec):
        member = object.__new__(cls)
        member._value_ = value
        member.spec = spec
        return member

    @property
    def is_hessian_free(self) -> bool:
        return self.spec.is_hessian_free


def next_curvature(method: Method, last_curvature: Curvature | None, last_negative: bool) -> Curvature:
    """The curvature of the next solve, from the previous solve's curvature and whether it
    met negative curvature (the HF state carries both)."""
    spec = method.spec
    if spec.policy is CurvaturePolicy.GAUSS_NEWTON_AFTER_NEGATIVE:
        if last_negative and last_curvature is not Curvature.GAUSS_NEWTON:
            return Curvature.GAUSS_NEWTON
    return spec.curvature
