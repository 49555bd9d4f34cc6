"""Double backward of group-wise batch norm (training mode, per-group statistics).

Within each group k the op is batch norm of that group's rows with the group's
own s_k and ν_k = n_k − ddof, and a shared γ; so §11.1 of
``docs/derivation.md`` applies group by group (§17), with the γ-gradient summed
over groups.
"""

from __future__ import annotations

import numpy as np

from .._segments import segment_sum
from .batchnorm_double import BatchNormDoubleGrads
from .group_batchnorm import GroupBatchNormCache, _numpy_float

__all__ = ["group_batchnorm_double_backward"]


def group_batchnorm_double_backward(ddx, ddgamma, ddbeta, dy,
                                    cache: GroupBatchNormCache) -> BatchNormDoubleGrads:
    """Backward of :func:`bnmat.ops.group_batchnorm_backward`.

    For group k (rows i ∈ k), column j, with ``P_k m = m − m̄_k − x̂ (Σ_{i∈k} x̂ᵢmᵢ)/ν_k``
    (per-group centering and projection), ``dγ_k = Σ_{i∈k} gᵢx̂ᵢ`` and
    ``q_k = Σ_{i∈k} (P_k a)ᵢ gᵢ``::

        ∂S/∂G = γ s_k P_k A + X̂ diag(c) + 1eᵀ
        ∂S/∂γ = Σ_k s_k ∘ q_k
        ∂S/∂X = s_k P_k[G diag(c) − γ s_k (dγ_k A + (Σ_{i∈k} x̂ᵢaᵢ) G)/ν_k] − γ s_k² q_k X̂/ν_k

    (s_k, dγ_k, q_k and the sums broadcast to the rows of group k.)

    Parameters
    ----------
    ddx : ndarray, shape (N, p)
    ddgamma, ddbeta : ndarray, shape (p,), or None (zero)
    dy : ndarray, shape (N, p)
    cache : GroupBatchNormCache

    Returns
    -------
    BatchNormDoubleGrads
        ``(ddy, dx, dgamma)``.
    """
    x_hat, s_g, gamma, index, ddof = (cache.x_hat, cache.inv_std, cache.gamma, cache.index,
                                      cache.ddof)
    g = _numpy_float(dy, "dy").astype(x_hat.dtype, copy=False)
    a = _numpy_float(ddx, "ddx").astype(x_hat.dtype, copy=False)
    for arr, name in ((g, "dy"), (a, "ddx")):
        if arr.shape != x_hat.shape:
            raise ValueError(f"{name} must have shape {x_hat.shape}; got {arr.shape}")
    p = x_hat.shape[1]
    c = np.zeros(p) if ddgamma is None else np.asarray(ddgamma, dtype=np.float64)
    e = np.zeros(p) if ddbeta is None else np.asarray(ddbeta, dtype=np.float64)
    codes = index.codes
    n_k = index.counts[:, None].astype(np.float64)
    nu = n_k - ddof

    def proj(m):                     # P_k m for every group at once
        mean_k = segment_sum(m, index) / n_k
        dot_k = segment_sum(x_hat * m, index) / nu
        return m - mean_k[codes] - x_hat * dot_k[codes]

    s = s_g[codes]                                   # (N, p) s_k per row
    gs = gamma * s
    dgamma_k = segment_sum(g * x_hat, index)         # (G, p)
    xa_k = segment_sum(x_hat * a, index)             # (G, p)
    pa = proj(a)
    q_k = segment_sum(pa * g, index)                 # (G, p)
    ddy = pa * gs + x_hat * c + e
    d_gamma = np.sum(s_g * q_k, axis=0)
    inner = g * c - gs * (dgamma_k[codes] * a + xa_k[codes] * g) / nu[codes]
    d_x = proj(inner) * s - x_hat * (gs * s * q_k[codes] / nu[codes])
    dt = x_hat.dtype
    return BatchNormDoubleGrads(ddy=ddy.astype(dt), dx=d_x.astype(dt), dgamma=d_gamma.astype(dt))
