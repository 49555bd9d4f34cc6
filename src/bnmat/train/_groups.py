"""Group labels that travel with the rows: checking, slicing, whole-group mini-batches.

``groups`` in the training functions is one of

* a label array of shape (N,): one factor (the units);
* a sequence of label arrays of shape (N,), or an (N, F) array: several
  factors, e.g. ``(unit, period)``.

The **first** factor is the grouping that layers such as
:class:`~bnmat.layers.GroupBatchNorm` read and that mini-batches are made of;
the within losses (``"within_sse"``, ``"within_mse"``) project out **all**
factors.
"""

from __future__ import annotations

import numpy as np

from .._segments import GroupIndex, _label_array as label_array

__all__ = ["as_factors", "take_factors", "group_batches", "group_holdout", "for_layers",
           "for_loss"]


def _labels(g, n: int, name: str) -> np.ndarray:
    if isinstance(g, GroupIndex):
        g = g.labels[g.codes]
    return label_array(g, n, name)


def as_factors(groups, n: int) -> list[np.ndarray] | None:
    """``groups`` as a list of F label arrays of length n (None stays None)."""
    if groups is None:
        return None
    if isinstance(groups, GroupIndex):
        return [_labels(groups, n, "groups")]
    if isinstance(groups, (list, tuple)) and groups and all(
        isinstance(g, GroupIndex) or np.ndim(g) == 1 for g in groups
    ):
        return [_labels(g, n, f"groups[{f}]") for f, g in enumerate(groups)]
    arr = np.asarray(groups)
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise ValueError("groups has 0 columns; give at least one factor")
        return [_labels(arr[:, f], n, f"groups[:, {f}]") for f in range(arr.shape[1])]
    return [_labels(arr, n, "groups")]


def take_factors(factors, idx):
    """The rows ``idx`` (None: all) of every factor."""
    if factors is None or idx is None:
        return factors
    return [f[idx] for f in factors]


def for_layers(factors):
    """The labels the layers read: the first factor."""
    return None if factors is None else factors[0]


def for_loss(factors):
    """The labels the within loss projects out: one array, or the list of all factors."""
    if factors is None:
        return None
    return factors[0] if len(factors) == 1 else list(factors)


def group_batches(labels: np.ndarray, size, rng, shuffle: bool, drop_last: str):
    """Row-index arrays of mini-batches made of whole groups.

    The groups (distinct values of ``labels``) are visited in a random order
    (``shuffle``) or in sorted order, and added to the current batch while it
    has fewer than ``size`` rows; so every batch but the last has at least
    ``size`` rows, and a batch exceeds ``size`` by less than one group. The
    rows of a batch are in data order. A trailing batch with fewer than
    ``size`` rows follows ``drop_last`` as in :func:`bnmat.fit`: "merge"
    appends it to the previous batch when it has a single row, "drop" drops
    it, "keep" keeps it.

    Returns
    -------
    list of ndarray of intp, or ``[None]`` (one batch of all rows) when
    ``size`` is None or at least N.
    """
    n = labels.shape[0]
    if size is None or size >= n:
        return [None]
    _, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    order_rows = np.argsort(codes, kind="stable")
    counts = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(counts)])
    g_order = rng.permutation(counts.shape[0]) if shuffle else np.arange(counts.shape[0])
    batches, current, rows = [], [], 0
    for g in g_order:
        current.append(order_rows[starts[g]:starts[g + 1]])
        rows += int(counts[g])
        if rows >= size:
            batches.append(np.sort(np.concatenate(current)))
            current, rows = [], 0
    if current:
        tail = np.sort(np.concatenate(current))
        if not batches or drop_last == "keep" or (drop_last == "merge" and tail.shape[0] >= 2):
            batches.append(tail)
        elif drop_last == "merge":
            batches[-1] = np.sort(np.concatenate([batches[-1], tail]))
        # "drop": leave it out
    return batches


def group_holdout(labels: np.ndarray, fraction: float, rng):
    """Split the rows by whole groups: about ``fraction`` of the groups held out.

    Returns ``(train_idx, val_idx)``, sorted row indices; ``ceil(fraction · G)``
    groups (at least one) are held out.
    """
    uniq, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(-1)
    g = uniq.shape[0]
    n_val = int(np.ceil(fraction * g))
    if n_val >= g:
        raise ValueError(
            f"validation_fraction={fraction} holds out all {g} groups; nothing is left to train on"
        )
    held = np.zeros(g, dtype=bool)
    held[rng.permutation(g)[:n_val]] = True
    val = held[codes]
    return np.flatnonzero(~val), np.flatnonzero(val)
