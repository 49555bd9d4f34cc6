"""Validation shared by the layer configurations."""

from __future__ import annotations

import math

import numpy as np


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def finite_float(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number; got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}")
    return float(value)


def check_generator(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(
            f"rng must be a numpy.random.Generator (np.random.default_rng(seed)); got {rng!r}"
        )


def check_keys(params, keys, layer, what: str = "parameters", optional=()) -> None:
    """Raise a ValueError naming the layer when ``params`` lacks or adds keys."""
    ok = isinstance(params, dict) and set(keys) <= set(params) <= set(keys) | set(optional)
    if not ok:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        extra = f" (optionally {sorted(optional)})" if optional else ""
        raise ValueError(f"{layer!r} expects {what} {sorted(keys)}{extra}; got {got}")
