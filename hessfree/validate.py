"""One validation vocabulary for every package: integers, reals, booleans, choices.

The rules, the same everywhere (configs, solvers, cost model, data, communicators):

* an **integer** is anything ``operator.index`` accepts (``int``, numpy integers), never a
  ``bool`` (``True`` is not a count);
* a **real** is a ``numbers.Real`` (``int``, ``float``, numpy floating and integer
  scalars), never a ``bool`` or a string, and finite unless infinity is explicitly allowed;
* a **boolean** is ``True`` or ``False`` (or a numpy bool), never a string or a number, so
  ``quiet = "false"`` in a TOML file is refused instead of meaning "quiet";
* a **choice** is a member of an ``Enum`` or one of its values.

Each check returns the normalised value (``int``, ``float``, ``bool``, the enum member)
or raises :class:`~hessfree.errors.ConfigError` naming the setting, what was expected and
what was found. The attrs helpers (``int_field`` …) wrap the same checks as converters,
so a frozen config holds only normalised values.
"""

from __future__ import annotations

import enum
import math
import operator
from numbers import Real
from typing import Any, TypeVar

import attrs
import numpy as np

from hessfree.errors import ConfigError

E = TypeVar("E", bound=enum.Enum)


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within [minimum, maximum], or ConfigError naming ``name``."""
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name}: expected an integer, found {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise ConfigError(f"{name}: expected an integer, found {value!r}") from None
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}: expected an integer ≥ {minimum}, found {number}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{name}: expected an integer ≤ {maximum}, found {number}")
    return int(number)


def real(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_inf: bool = False,
) -> float:
    """``value`` as a float in the interval [low, high] (ends opened by ``*_open``).

    NaN is always refused; ±inf only with ``allow_inf``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, Real):
        raise ConfigError(f"{name}: expected a number, found {value!r}")
    number = float(value)
    if math.isnan(number) or (math.isinf(number) and not allow_inf):
        raise ConfigError(f"{name}: expected a finite number, found {value!r}")
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above:
        raise ConfigError(f"{name}: expected a number in {_interval(low, high, low_open, high_open)}, found {value!r}")
    return number


def _interval(low, high, low_open, high_open) -> str:
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    lo = "-∞" if low is None else f"{low:g}"
    hi = "∞" if high is None else f"{high:g}"
    return f"{left}{lo}, {hi}{right}"


def boolean(name: str, value: Any) -> bool:
    """``value`` if it is a boolean (Python or numpy), else ConfigError."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"{name}: expected true or false, found {value!r}")


def choice(name: str, kind: type[E], value: Any) -> E:
    """The member of ``kind`` that is ``value`` or has it as value, else ConfigError."""
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise ConfigError(f"{name}: expected one of {allowed}, found {value!r}") from None


def choices(kind: type[enum.Enum]) -> list[str]:
    """The values of an enum, for click choices and help texts."""
    return [str(m.value) for m in kind]


def text(name: str, value: Any) -> str:
    """``value`` if it is a string, else ConfigError (a path given as ``true`` is refused)."""
    if isinstance(value, str):
        return value
    raise ConfigError(f"{name}: expected a string, found {value!r}")


# ------------------------------------------------------------------ attrs fields
# The checks above as attrs converters. attrs passes no field name to a converter, so
# each field gets its name from a ``name`` argument, or through ``named_fields``
# (a class decorator that re-creates the converters with the field names).

_UNSET = object()


def _field(default, check, optional: bool):
    return attrs.field(default=default, converter=_named("value", check, optional), metadata={"hessfree.check": check, "optional": optional})


def int_field(default=_UNSET, *, minimum: int | None = 1, maximum: int | None = None, optional: bool = False):
    """An attrs field holding an int ≥ ``minimum`` (None allowed with ``optional``)."""
    return _field(_default(default), lambda n, v: integer(n, v, minimum, maximum), optional)


def real_field(default=_UNSET, *, optional: bool = False, **bounds):
    """An attrs field holding a real number within ``bounds`` (see :func:`real`)."""
    return _field(_default(default), lambda n, v: real(n, v, **bounds), optional)


def bool_field(default=_UNSET, *, optional: bool = False):
    """An attrs field holding a strict boolean (or None when ``optional``)."""
    return _field(_default(default), boolean, optional)


def enum_field(kind: type[enum.Enum], default=_UNSET, *, optional: bool = False):
    """An attrs field holding a member of ``kind`` (given as member or value)."""
    return _field(_default(default), lambda n, v: choice(n, kind, v), optional)


def text_field(default=_UNSET, *, optional: bool = True):
    """An attrs field holding a string (or None)."""
    return _field(_default(default), text, optional)


def _default(default):
    return attrs.NOTHING if default is _UNSET else default


def field_transformer(cls, fields):
    """attrs ``field_transformer``: give each checked field's converter the field's name,
    so an error says ``damping: expected …`` instead of ``value: expected …``."""
    out = []
    for f in fields:
        check = f.metadata.get("hessfree.check")
        if check is not None:
            out.append(f.evolve(converter=_named(f.name, check, f.metadata["optional"])))
        else:
            out.append(f)
    return out


def _named(name: str, check, optional: bool):
    def convert(value):
        if optional and value is None:
            return None
        return check(name, value)

    return convert


def config(cls=None, **kwargs):
    """``@config``: a frozen, keyword-only attrs class whose checked fields know their names."""

    def wrap(c):
        return attrs.frozen(c, kw_only=True, field_transformer=field_transformer, **kwargs)

    return wrap if cls is None else wrap(cls)
