"""Validation and small state helpers shared by the layer configurations."""

from __future__ import annotations

import math

import numpy as np

#: The error of a GroupBatchNorm in training mode without labels (the layer's and
#: the synchronized path's).
NO_GROUP_LABELS = (
    "GroupBatchNorm needs the group label of every row in training: pass groups= to "
    "forward, predict, bnmat.value_and_grad, bnmat.fit, bnmat.fit_lbfgs or "
    "bnmat.population_statistics (or use GroupBatchNorm(ghost=k) for ghost batches)"
)


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


def normalize_bn_fields(layer) -> None:
    """Validate and normalize ``eps``, ``ddof`` and ``decay`` of a frozen batch-norm layer."""
    name = type(layer).__name__
    eps = finite_float(layer.eps, "eps")
    if eps < 0:
        raise ValueError(f"{name} needs eps >= 0; got {layer.eps!r}")
    ddof = layer.ddof
    if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer; got {ddof!r}")
    decay = finite_float(layer.decay, "decay")
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1]; got {layer.decay!r}")
    object.__setattr__(layer, "eps", eps)
    object.__setattr__(layer, "ddof", int(ddof))
    object.__setattr__(layer, "decay", decay)


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


def carried_counts(state, new_labels) -> np.ndarray:
    """The step counts in ``state`` of the groups ``new_labels``, 0 for groups it lacks.

    ``state["labels"]`` is sorted (as :class:`GroupBatchNorm` keeps it) and
    ``state["count"]`` holds a count per label; the result, int64 of the shape
    of ``new_labels``, carries those counts over to a state with new labels.
    """
    old_labels = np.asarray(state["labels"])
    count = np.zeros(new_labels.shape[0], dtype=np.int64)
    if old_labels.shape[0]:
        pos = np.minimum(np.searchsorted(old_labels, new_labels), old_labels.shape[0] - 1)
        found = old_labels[pos] == new_labels
        count = np.where(found, np.asarray(state["count"])[pos], 0).astype(np.int64)
    return count
