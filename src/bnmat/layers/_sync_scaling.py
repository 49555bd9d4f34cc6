"""Input scaling over rows spread across processes: :func:`fit_scaling` of all ranks' rows."""

from __future__ import annotations

import numpy as np

from ._mlp import Scaling
from ._sync import sync_moments

__all__ = ["sync_scaling"]


def sync_scaling(reducer, x):
    """:func:`bnmat.layers._mlp.fit_scaling` of the rows ``x`` (n_r, p) of all ranks.

    Each column is divided by the power of two near its largest absolute value
    on all ranks (exact), its mean and variance are the exact two-pass moments
    over ranks, and it is constant (scale 1) only when its largest and smallest
    values on all ranks are equal. Needs N ≥ 2 rows on all ranks.

    Returns
    -------
    bnmat.layers._mlp.Scaling
        ``mean`` and ``scale`` of shape (p,), float64, identical on every rank.
    """
    x64 = np.asarray(x, dtype=np.float64)
    p = x64.shape[1]
    local = np.full((3, p), -np.inf)
    if x64.shape[0]:
        local = np.stack([np.max(np.abs(x64), axis=0), np.max(x64, axis=0),
                          -np.min(x64, axis=0)])
    big, top, neg_bottom = reducer.allreduce_max(local)
    c = np.exp2(np.floor(np.log2(np.where(big > 0, big, 1.0))))
    _, mean, var = sync_moments(reducer, [x64 / c], 0)
    mean = np.asarray(mean, dtype=np.float64) * c
    scale = np.sqrt(np.asarray(var, dtype=np.float64)) * c
    constant = top == -neg_bottom
    return Scaling(mean=mean, scale=np.where(constant | ~(scale > 0), 1.0, scale))
