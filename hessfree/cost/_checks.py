"""The cost model's checks: the package-wide vocabulary (``hessfree.validate``) in the
shapes the cost model's frozen classes use (attrs converters and validators)."""

from __future__ import annotations

import math

from hessfree import validate
from hessfree.errors import ConfigError


def finite_number(name: str, value: object) -> float:
    """``value`` as a float, or ConfigError unless it is a finite real number (not a bool)."""
    return validate.real(name, value)


def non_negative(instance, attribute, value) -> None:
    """attrs validator: finite and ≥ 0."""
    validate.real(attribute.name, value, low=0)


def positive(instance, attribute, value) -> None:
    """attrs validator: finite and > 0."""
    validate.real(attribute.name, value, low=0, low_open=True)


def positive_or_inf(instance, attribute, value) -> None:
    """attrs validator: > 0, +inf allowed (an unlimited rate), nan rejected."""
    if validate.real(attribute.name, value, allow_inf=True) <= 0 or value == -math.inf:
        raise ConfigError(f"{attribute.name}: expected a number > 0 (or inf), found {value!r}")


def count(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum``, or ConfigError."""
    return validate.integer(name, value, minimum)


def real(name: str):
    """attrs converter: a real number (not bool, not str) to float, else ConfigError."""

    def convert(value: object) -> float:
        return validate.real(name, value, allow_inf=True)

    return convert
