"""Training configuration: the method and every hyper-parameter, frozen and validated."""

from __future__ import annotations

import enum
import math

import attrs

from hessfree.errors import ConfigError


class Method(enum.Enum):
    """Training methods, named as on the command line (see the README's variants table)."""

    GN_CG = "gn-cg"  # Martens: Gauss-Newton curvature + CG
    HESS_CG = "hess-cg"  # exact Hessian + CG, stop on negative curvature
    BICGSTAB = "bicgstab"  # exact Hessian + Bi-CG-STAB with negative-curvature candidates
    HYBRID = "hybrid"  # exact Hessian + CG, Gauss-Newton for one iteration after negative curvature
    SGD = "sgd"  # data-parallel mini-batch SGD
    MSGD = "msgd"  # data-parallel momentum SGD

    @property
    def is_hessian_free(self) -> bool:
        return self not in (Method.SGD, Method.MSGD)


def _enum(kind):
    def convert(value):
        if isinstance(value, kind):
            return value
        try:
            return kind(value)
        except ValueError:
            raise ConfigError(f"{kind.__name__.lower()}: expected one of {', '.join(m.value for m in kind)}, found {value!r}") from None

    return convert


def _finite(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{attribute.name}: expected a finite number, found {value!r}")


def _positive(instance, attribute, value) -> None:
    _finite(instance, attribute, value)
    if value <= 0:
        raise ConfigError(f"{attribute.name}: expected a positive number, found {value!r}")


def _non_negative(instance, attribute, value) -> None:
    _finite(instance, attribute, value)
    if value < 0:
        raise ConfigError(f"{attribute.name}: expected a number ≥ 0, found {value!r}")


def _open_unit(instance, attribute, value) -> None:
    _finite(instance, attribute, value)
    if not 0 < value < 1:
        raise ConfigError(f"{attribute.name}: expected a number in (0, 1), found {value!r}")


def _unit_closed_open(instance, attribute, value) -> None:
    _finite(instance, attribute, value)
    if not 0 <= value < 1:
        raise ConfigError(f"{attribute.name}: expected a number in [0, 1), found {value!r}")


def _count(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{attribute.name}: expected a positive integer, found {value!r}")


def _seed(instance, attribute, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{attribute.name}: expected an integer ≥ 0, found {value!r}")


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Everything that determines a training trajectory (besides model, data and ranks).

    Defaults follow Martens (2010) where the paper is silent (see ``reference.md``):
    damping rule 3/2 and 2/3 at ρ < 1/4 and ρ > 3/4, warm start 0.95·δ, CG-backtracking,
    Armijo with c = 1e-2 and shrink 0.8. The curvature is normalised per sample, so the
    initial damping λ is on the same per-sample scale.
    """

    method: Method = attrs.field(default=Method.BICGSTAB, converter=_enum(Method))
    iterations: int = attrs.field(default=30, validator=_count)  # HF outer iterations
    epochs: int = attrs.field(default=10, validator=_count)  # SGD epochs
    batch_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(_count))  # see global_batch
    cg_max_iter: int | None = attrs.field(default=None, validator=attrs.validators.optional(_count))  # see krylov_max_iter
    cg_rtol: float = attrs.field(default=1e-8, validator=_positive)
    progress_tol: float = attrs.field(default=5e-4, validator=_non_negative)
    damping: float = attrs.field(default=1.0, validator=_positive)
    damping_min: float = attrs.field(default=1e-8, validator=_positive)
    damping_max: float = attrs.field(default=1e8, validator=_positive)
    damping_increase: float = attrs.field(default=1.5, validator=_positive)
    damping_decrease: float = attrs.field(default=2.0 / 3.0, validator=_open_unit)
    rho_low: float = attrs.field(default=0.25, validator=_finite)
    rho_high: float = attrs.field(default=0.75, validator=_finite)
    warm_start: float = attrs.field(default=0.95, validator=_unit_closed_open)
    backtracking: bool = attrs.field(default=True, converter=bool)
    armijo_c: float = attrs.field(default=1e-2, validator=_open_unit)
    armijo_shrink: float = attrs.field(default=0.8, validator=_open_unit)
    max_line_search: int = attrs.field(default=60, validator=_count)
    max_rejected: int = attrs.field(default=10, validator=_count)  # consecutive rejected steps → diverged
    lr: float = attrs.field(default=0.1, validator=_positive)
    momentum: float = attrs.field(default=0.9, validator=_unit_closed_open)
    weight_decay: float = attrs.field(default=0.0, validator=_non_negative)
    seed: int = attrs.field(default=0, validator=_seed)

    #: default global batch: HF curvature batch (Martens-size) and SGD mini-batch (the paper's)
    DEFAULT_BATCH = {True: 1000, False: 64}

    @property
    def global_batch(self) -> int:
        """``batch_size``, or the method's default: 1000 for HF curvature, 64 for SGD."""
        return self.batch_size if self.batch_size is not None else self.DEFAULT_BATCH[self.method.is_hessian_free]

    @property
    def krylov_max_iter(self) -> int:
        """``cg_max_iter``, or the method's default: 250 for CG (Martens), 50 for Bi-CG-STAB
        (a fixed budget of 100 products, as the paper runs it)."""
        if self.cg_max_iter is not None:
            return self.cg_max_iter
        return 50 if self.method is Method.BICGSTAB else 250

    def __attrs_post_init__(self) -> None:
        if self.damping_min > self.damping_max:
            raise ConfigError(f"damping_min: expected ≤ damping_max ({self.damping_max}), found {self.damping_min}")
        if not self.damping_min <= self.damping <= self.damping_max:
            raise ConfigError(f"damping: expected within [{self.damping_min}, {self.damping_max}], found {self.damping}")
        if self.damping_increase <= 1:
            raise ConfigError(f"damping_increase: expected a factor > 1, found {self.damping_increase}")
        if self.rho_low > self.rho_high:
            raise ConfigError(f"rho_low: expected ≤ rho_high ({self.rho_high}), found {self.rho_low}")
