"""Hyperparameter checks for the built-in predictors: one-line ValueErrors that name the parameter and what it
accepts, raised on construction (and by set_params), so that e.g. `--param max_epochs=-5` never reaches a fit.

Strict on types on purpose: a float where an integer is required (n_latent=2.5), a boolean where a number is
required (True is an int in Python) and a string where a boolean is required ('false' from the command line) are
errors, not silent conversions.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np


def _got(value: Any) -> str:
    """How a bad value is shown: its repr, plus its type when the repr hides it (a string, a float)."""
    if isinstance(value, str):
        return f"{value!r} (a string)"
    return f"{value!r} ({type(value).__name__})" if not isinstance(value, numbers.Real) else repr(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    """An integer (not a bool, not a float) in [low, high]."""
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    if not _is_int(value) or value < low or (high is not None and value > high):
        raise ValueError(f"{name} must be an integer {bound}, got {_got(value)}")


def check_optional_int(name: str, value: Any, low: int) -> None:
    """None, or an integer >= low."""
    if value is not None and (not _is_int(value) or value < low):
        raise ValueError(f"{name} must be None or an integer >= {low}, got {_got(value)}")


def check_float(
    name: str, value: Any, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
) -> None:
    """A finite real number (ints accepted, bools not) in the interval given by low/high and their openness."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open or high == math.inf else ']'}"
    ok = _is_real(value) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        raise ValueError(f"{name} must be a finite number in {interval}, got {_got(value)}")


def check_bool(name: str, value: Any) -> None:
    """True or False (numpy booleans accepted); a string such as 'false' is an error, not a truthy value."""
    if not isinstance(value, bool | np.bool_):
        got = (
            f"the string {value!r} (write True or False, without quotes)"
            if isinstance(value, str)
            else repr(value)
        )
        raise ValueError(f"{name} must be True or False, got {got}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """One of a fixed set of values."""
    choices = tuple(choices)
    if not any(isinstance(value, type(c)) and value == c for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


def check_positive_grid(name: str, value: Any) -> None:
    """A non-empty list or tuple of finite numbers > 0 (a penalty grid)."""
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(_is_real(v) and math.isfinite(v) and v > 0 for v in value)
    ):
        raise ValueError(f"{name} must be a non-empty tuple of finite numbers > 0, got {_got(value)}")


def check_int_grid(name: str, value: Any, low: int) -> None:
    """A non-empty list or tuple of integers >= low (a rank grid)."""
    if not isinstance(value, list | tuple) or not value or not all(_is_int(v) and v >= low for v in value):
        raise ValueError(f"{name} must be a non-empty tuple of integers >= {low}, got {_got(value)}")


class ValidatedParams:
    """Mixin for predictors: set_params re-runs the class's `_validate` (which __init__ also calls), and leaves
    the parameters unchanged when the new values are rejected."""

    def _validate(self) -> None:  # pragma: no cover - overridden
        """Raise ValueError for the first hyperparameter out of its range."""

    def set_params(self, **params: Any):
        """Set hyperparameters by name, then validate them all; on a ValueError the old values are restored."""
        before = self.get_params()
        super().set_params(**params)
        try:
            self._validate()
        except ValueError:
            super().set_params(**before)
            raise
        return self
