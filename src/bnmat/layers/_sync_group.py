"""Group-wise batch norm over rows held by several processes (see :mod:`bnmat.layers._sync`).

Every unit (group) lies on one rank, so each group's statistics and its two
backward sums are local; only the pooled statistics (two all-reduces, by
:func:`bnmat.layers._sync.sync_moments`), a flag for errors found on any rank,
and the table of the batch's groups (one all-gather of labels, means and
variances, for the running statistics) are exchanged.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np

from ._checks import carried_counts
from ._sync import _as_matrix, sync_moments

__all__ = ["EmptyGroupCache", "sync_group_forward", "sync_group_population"]


def _gathered_groups(reducer, labels, mean, var):
    """Every rank's (labels, mean, var) rows, concatenated and sorted by label."""
    parts = reducer.allgather((np.asarray(labels, dtype=np.int64), np.asarray(mean),
                               np.asarray(var)))
    labels = np.concatenate([q[0] for q in parts])
    mean = np.concatenate([q[1] for q in parts])
    var = np.concatenate([q[2] for q in parts])
    order = np.argsort(labels, kind="stable")
    labels = labels[order]
    if labels.shape[0] > 1 and np.any(labels[1:] == labels[:-1]):
        dup = labels[1:][labels[1:] == labels[:-1]][0]
        raise ValueError(
            f"group {dup} has rows on more than one rank: distributed group-wise batch norm "
            "needs every group's rows on one rank (split the data by whole units)"
        )
    return labels, mean[order], var[order]


def _local_group_forward(layer, x, groups, gamma, beta):
    """The op on this rank's rows, or None for an empty shard; errors are collected."""
    from .. import ops

    if x.shape[0] == 0:
        return None, None, None
    try:
        index = layer._training_index(x, groups)
        y, cache = ops.group_batchnorm_forward(x, index, gamma, beta, eps=layer.eps,
                                               ddof=layer.ddof)
    except (ValueError, TypeError) as exc:
        return None, None, exc
    return y, cache, None


def _raise_any(reducer, exc):
    """Raise on every rank when any rank's local step failed (its message, its rank)."""
    flag = reducer.allreduce_max(np.asarray([1.0 if exc is not None else 0.0]))
    if flag[0] == 0:
        return
    msgs = reducer.allgather(None if exc is None else (type(exc).__name__, str(exc)))
    for rank, m in enumerate(msgs):
        if m is not None:
            kind = TypeError if m[0] == "TypeError" else ValueError
            raise kind(f"rank {rank}: {m[1]}") from exc


def sync_group_forward(layer, params, state, x, groups, reducer):
    """Training-mode forward of a :class:`GroupBatchNorm` whose groups are spread over ranks.

    Each group lies on one rank, so its statistics are local
    (:func:`bnmat.ops.group_batchnorm_forward` on this rank's rows); the pooled
    statistics are those of all ranks' rows (:func:`sync_moments`), and the
    running statistics are updated, on every rank alike, with the groups of all
    ranks' batches (one all-gather of their labels, means and variances).

    Returns
    -------
    y : array, shape (N_r, p)
    new_state : dict
        Identical on every rank; equal to one process's update on the whole batch.
    cache : GroupBatchNormCache, or an empty-shard marker
    """
    if layer.ghost is not None:
        raise ValueError(
            "GroupBatchNorm(ghost=...) cannot be synchronized across ranks (its runs of "
            "consecutive rows would straddle ranks); use BatchNorm or labelled groups"
        )
    xp, x = _as_matrix(x)
    gamma, beta = params["gamma"], params["beta"]
    y, cache, exc = _local_group_forward(layer, x, groups, gamma, beta)
    _raise_any(reducer, exc)
    _, pooled_mean, pooled_var = sync_moments(reducer, [x], layer.ddof)
    p = x.shape[1]
    if cache is None:
        local = (np.zeros(0, dtype=np.int64), np.zeros((0, p), dtype=x.dtype),
                 np.zeros((0, p), dtype=x.dtype))
        y = x[:0] * 1.0
        cache = EmptyGroupCache(p=p, dtype=x.dtype)
    else:
        local = (cache.index.labels, cache.mean, cache.var)
    labels, mean, var = _gathered_groups(reducer, *local)
    whole = SimpleNamespace(
        index=SimpleNamespace(labels=labels), mean=mean, var=var,
        pooled_mean=pooled_mean.astype(x.dtype), pooled_var=pooled_var.astype(x.dtype))
    return y, layer._updated_state(state, whole), cache


class EmptyGroupCache(NamedTuple):
    """Cache of group-wise batch norm on a rank with no rows in the batch."""

    p: int
    dtype: Any


def sync_group_population(layer, params, state, xs, groups, reducer):
    """:meth:`GroupBatchNorm.population_state` over the rows of all ranks.

    Each rank's groups get their exact statistics from its own rows; the
    pooled statistics and the table of groups are combined across ranks, so
    the new state is identical on every rank and equal to one process's.
    """
    if layer.ghost is not None:
        raise ValueError("GroupBatchNorm(ghost=...) cannot be synchronized across ranks")
    xs = [np.asarray(_as_matrix(x)[1]) for x in xs]
    sizes = np.cumsum([int(x.shape[0]) for x in xs])[:-1]
    x = xs[0] if len(xs) == 1 else np.concatenate(xs)
    p = x.shape[1]
    gamma, beta = params["gamma"], params["beta"]
    exc = y = cache = None
    if x.shape[0]:
        if groups is None:
            from ._checks import NO_GROUP_LABELS
            exc = ValueError(NO_GROUP_LABELS)
        else:
            labels = groups[0] if len(groups) == 1 else np.concatenate(
                [np.asarray(g) for g in groups])
            y, cache, exc = _local_group_forward(layer, x, labels, gamma, beta)
    _raise_any(reducer, exc)
    _, pooled_mean, pooled_var = sync_moments(reducer, [x], layer.ddof)
    if cache is None:
        y = x * 1.0
        local = (np.zeros(0, dtype=np.int64), np.zeros((0, p), x.dtype),
                 np.zeros((0, p), x.dtype))
    else:
        local = (cache.index.labels, cache.mean, cache.var)
    new_labels, mean, var = _gathered_groups(reducer, *local)
    count = carried_counts(state, new_labels)
    new_state = {**state, "labels": new_labels, "mean": mean, "var": var, "count": count,
                 "pooled_mean": pooled_mean.astype(x.dtype),
                 "pooled_var": pooled_var.astype(x.dtype)}
    return np.split(y, sizes), new_state
