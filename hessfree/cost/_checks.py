"""Validators shared by the cost model's frozen classes (finite, non-negative, positive)."""

from __future__ import annotations

import math
from numbers import Real

from hessfree.errors import ConfigError


def finite_number(name: str, value: object) -> float:
    """``value`` as a float, or ConfigError unless it is a finite real number (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ConfigError(f"{name}: expected a number, found {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name}: expected a finite number, found {value!r}")
    return number


def non_negative(instance, attribute, value) -> None:
    """attrs validator: finite and ≥ 0."""
    if finite_number(attribute.name, value) < 0:
        raise ConfigError(f"{attribute.name}: expected a number ≥ 0, found {value!r}")


def positive(instance, attribute, value) -> None:
    """attrs validator: finite and > 0."""
    if finite_number(attribute.name, value) <= 0:
        raise ConfigError(f"{attribute.name}: expected a number > 0, found {value!r}")


def positive_or_inf(instance, attribute, value) -> None:
    """attrs validator: > 0, +inf allowed (an unlimited rate), nan rejected."""
    if isinstance(value, bool) or not isinstance(value, Real) or math.isnan(value) or value <= 0:
        raise ConfigError(f"{attribute.name}: expected a number > 0 (or inf), found {value!r}")


def count(name: str, value: object, minimum: int = 1) -> int:
    """``value`` as an int ≥ ``minimum``, or ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name}: expected an integer ≥ {minimum}, found {value!r}")
    return int(value)


def real(name: str):
    """attrs converter: a real number (not bool, not str) to float, else ConfigError."""

    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ConfigError(f"{name}: expected a number, found {value!r}")
        return float(value)

    return convert
