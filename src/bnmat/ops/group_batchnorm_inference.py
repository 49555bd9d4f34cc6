"""Group-wise batch norm in inference mode: stored per-group statistics.

Rows of groups seen in training use their group's stored mean and variance;
rows of unseen groups use the pooled statistics, with an
:class:`UnseenGroupWarning`. Each row is then an affine map, as in
:func:`bnmat.ops.batchnorm_inference_forward`.
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Mapping
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from .._array_api import Array, check_2d
from .._segments import group_index
from .batchnorm import BatchNormGrads, check_eps
from .group_batchnorm import GroupBatchNormCache, _label, _numpy_float, _param

__all__ = [
    "GroupStatistics",
    "GroupBatchNormInferenceCache",
    "UnseenGroupWarning",
    "quiet_unseen_groups",
    "unseen_groups_quiet",
    "group_statistics",
    "group_batchnorm_inference_forward",
    "group_batchnorm_inference_backward",
]


class UnseenGroupWarning(UserWarning):
    """Rows of groups without stored statistics were normalized with pooled ones."""


# Whether UnseenGroupWarning is silenced here. A context variable, not a
# warnings filter: warnings.catch_warnings() changes the process-wide filters,
# so in one thread it would hide (or, on exit, restore over) other threads'
# warnings; a context variable is local to the thread (and asyncio task).
_QUIET = contextvars.ContextVar("bnmat_quiet_unseen_groups", default=False)


def unseen_groups_quiet() -> bool:
    """Whether :func:`quiet_unseen_groups` is in effect here (this thread/context)."""
    return _QUIET.get()


@contextmanager
def quiet_unseen_groups():
    """Within this block (in this thread only), no :class:`UnseenGroupWarning`.

    For callers that report unseen groups themselves (by label, once) or that
    score held-out groups on purpose every epoch. Other warnings, and other
    threads, are not affected.
    """
    token = _QUIET.set(True)
    try:
        yield
    finally:
        _QUIET.reset(token)


class GroupStatistics(NamedTuple):
    labels: Array        # (G,)   group labels with stored statistics
    mean: Array          # (G, p)
    var: Array           # (G, p)
    pooled_mean: Array   # (p,)   used for groups not in labels
    pooled_var: Array    # (p,)
    count: Array | None = None   # (G,) rows behind each group's statistics


class GroupBatchNormInferenceCache(NamedTuple):
    x_hat: Array         # (N, p)  (Z − m_row) ∘ s_row
    scale: Array         # (T, p)  γ ∘ s for each table row (stored groups, then pooled)
    rows: Array          # (N,)    table row used by each data row


def group_statistics(cache: GroupBatchNormCache) -> GroupStatistics:
    """The statistics of a training-mode forward pass, ready for inference.

    ``pooled_mean`` and ``pooled_var`` are the mean and variance (same ddof)
    of all rows of the batch, the statistics ordinary batch norm would use;
    :func:`group_batchnorm_inference_forward` applies them to unseen groups.

    Parameters
    ----------
    cache : GroupBatchNormCache

    Returns
    -------
    GroupStatistics
        ``labels`` (G,), ``mean`` and ``var`` (G, p), ``pooled_mean`` and
        ``pooled_var`` (p,), ``count`` (G,).
    """
    return GroupStatistics(
        labels=cache.index.labels, mean=cache.mean, var=cache.var,
        pooled_mean=cache.pooled_mean, pooled_var=cache.pooled_var,
        count=cache.index.counts,
    )


def _stored(stats, p, dtype, eps):
    if isinstance(stats, Mapping):   # e.g. a layer's state dict; extra keys are ignored
        missing = [f for f in GroupStatistics._fields[:5] if f not in stats]
        if missing:
            raise ValueError(f"stats lacks {', '.join(missing)}")
        stats = GroupStatistics(**{f: stats[f] for f in GroupStatistics._fields if f in stats})
    labels = np.asarray(stats.labels)
    if labels.ndim != 1:
        raise ValueError(f"stats.labels must be 1-D; got shape {labels.shape}")
    g = labels.shape[0]
    mean = _numpy_float(stats.mean, "stats.mean").astype(dtype, copy=False)
    var = _numpy_float(stats.var, "stats.var").astype(dtype, copy=False)
    for a, name in ((mean, "stats.mean"), (var, "stats.var")):
        if a.shape != (g, p):
            raise ValueError(f"{name} must have shape ({g}, {p}); got {a.shape}")
    pmean = _param(stats.pooled_mean, "stats.pooled_mean", p, dtype)
    pvar = _param(stats.pooled_var, "stats.pooled_var", p, dtype)
    table_mean = np.concatenate([mean, pmean[None, :]])
    table_var = np.concatenate([var, pvar[None, :]])
    bad = ~(np.isfinite(table_mean) & np.isfinite(table_var) & (table_var + eps > 0))
    if bad.any():
        k, j = np.argwhere(bad)[0]
        what = "the pooled statistics" if k == g else f"group {_label(labels, k)!r}"
        raise ValueError(
            f"stored statistics of {what} are unusable in column {j}: mean and var must "
            "be finite and var + eps > 0"
        )
    return labels, table_mean, table_var


def _match(labels_batch, labels_stored):
    """Position of each batch label in the stored labels, or len(stored) when absent."""
    kinds = {"number" if a.dtype.kind in "biu" else a.dtype.kind
             for a in (labels_batch, labels_stored)}
    if labels_stored.shape[0] and len(kinds) == 2 and "O" not in kinds:
        raise TypeError(
            f"group labels have dtype {labels_batch.dtype} but the stored labels have dtype "
            f"{labels_stored.dtype}"
        )
    g = labels_stored.shape[0]
    if g == 0:
        return np.full(labels_batch.shape[0], g, dtype=np.intp)
    order = np.argsort(labels_stored, kind="stable")
    sorted_labels = labels_stored[order]
    if np.any(sorted_labels[1:] == sorted_labels[:-1]):
        raise ValueError("stats.labels has repeated labels; each group needs one row")
    pos = np.minimum(np.searchsorted(sorted_labels, labels_batch), g - 1)
    found = sorted_labels[pos] == labels_batch
    return np.where(found, order[pos], g)


def group_batchnorm_inference_forward(x, groups, gamma, beta, stats, *, eps: float = 1e-5):
    """Group-wise batch norm with stored statistics (inference mode).

    Formula (m_i, v_i the stored mean and variance of row i's group, or the
    pooled ones when the group has none)::

        ẑ_i = (z_i − m_i) ∘ (v_i + ε)^(−1/2),   y_i = γ ∘ ẑ_i + β

    An affine map per row, so any number of rows works and rows are
    independent. Rows of groups without stored statistics use
    ``stats.pooled_mean`` and ``stats.pooled_var``, with an
    :class:`UnseenGroupWarning`.

    Parameters
    ----------
    x : ndarray, shape (N, p)
    groups : array_like of shape (N,), or GroupIndex
    gamma, beta : ndarray, shape (p,)
    stats : GroupStatistics or dict with its fields
        ``labels`` (G,), ``mean`` and ``var`` (G, p), ``pooled_mean`` and
        ``pooled_var`` (p,), e.g. from :func:`group_statistics`.
    eps : float, default 1e-5

    Returns
    -------
    y : ndarray, shape (N, p)
    cache : GroupBatchNormInferenceCache
    """
    eps = check_eps(eps)
    x = check_2d(_numpy_float(x, "x"), "x")
    n, p = x.shape
    index = group_index(groups, n)
    gamma = _param(gamma, "gamma", p, x.dtype)
    beta = _param(beta, "beta", p, x.dtype)
    labels, table_mean, table_var = _stored(stats, p, x.dtype, eps)
    position = _match(index.labels, labels)
    unseen = np.flatnonzero(position == labels.shape[0])
    if unseen.size and not unseen_groups_quiet():
        shown = ", ".join(repr(_label(index.labels, k)) for k in unseen[:5])
        more = f" and {unseen.size - 5} more" if unseen.size > 5 else ""
        warnings.warn(
            f"{int(index.counts[unseen].sum())} row(s) in {unseen.size} group(s) without "
            f"stored statistics ({shown}{more}) are normalized with the pooled statistics",
            UnseenGroupWarning,
            stacklevel=2,
        )
    rows = position[index.codes]
    inv_std = 1.0 / np.sqrt(table_var + eps)
    x_hat = (x - table_mean[rows]) * inv_std[rows]
    y = x_hat * gamma + beta
    return y, GroupBatchNormInferenceCache(x_hat=x_hat, scale=inv_std * gamma, rows=rows)


def group_batchnorm_inference_backward(dy, cache: GroupBatchNormInferenceCache) -> BatchNormGrads:
    """Backward pass of :func:`group_batchnorm_inference_forward`.

    Formula (the stored statistics are constants)::

        dβ = 1ᵀ G,   dγ = 1ᵀ (G ∘ Ẑ),   dz_i = g_i ∘ γ ∘ s_i

    Parameters
    ----------
    dy : ndarray, shape (N, p)
    cache : GroupBatchNormInferenceCache

    Returns
    -------
    BatchNormGrads
        ``(dx, dgamma, dbeta)`` of shapes (N, p), (p,), (p,).
    """
    x_hat, scale, rows = cache
    dy = _numpy_float(dy, "dy")
    if dy.shape != x_hat.shape:
        raise ValueError(f"dy must have shape {x_hat.shape}; got {dy.shape}")
    dy = dy.astype(x_hat.dtype, copy=False)
    return BatchNormGrads(
        dx=dy * scale[rows],
        dgamma=np.sum(dy * x_hat, axis=0, dtype=np.float64).astype(dy.dtype),
        dbeta=np.sum(dy, axis=0, dtype=np.float64).astype(dy.dtype),
    )
