"""Batch renormalization (Ioffe 2017) in training mode, with r and d held constant.

With batch statistics μ_B, σ²_B (ddof as in batch norm), ``σ_B = (σ²_B + ε)^(1/2)``,
stored statistics m, v and ``σ = (v + ε)^(1/2)``::

    r = clip(σ_B / σ, 1/r_max, r_max)          d = clip((μ_B − m)/σ, −d_max, d_max)
    X̂ = C X diag(s_B) diag(r) + 1dᵀ             (s_B = 1/σ_B)
    Y = X̂ diag(γ) + 1βᵀ

r and d are computed from the batch but treated as constants in the gradient
(``stop_gradient`` in the paper): the backward is batch norm's with the
effective scale γ ∘ r, and ``dγ = 1ᵀ(G ∘ X̂)`` with X̂ including r and d. With
r = 1 and d = 0 (``r_max = 1, d_max = 0``) it is batch norm. Proofs in
``docs/derivation.md`` §15.
"""

from __future__ import annotations

from typing import NamedTuple

from .._array_api import Array, as_float, get_namespace
from .batchnorm import BatchNormCache, BatchNormGrads, _accumulator, batchnorm_forward
from .batchnorm_double import BatchNormDoubleGrads, batchnorm_double_backward

__all__ = ["BatchRenormCache", "batch_renorm_forward", "batch_renorm_backward",
           "batch_renorm_double_backward"]


class BatchRenormCache(NamedTuple):
    bn: BatchNormCache    # batch norm's cache with gamma = γ ∘ r (x_hat without r, d)
    r: Array              # (p,)
    d: Array              # (p,)
    x_hat: Array          # (N, p)  X̂ including r and d


def _check_limit(value, name, low):
    value = float(value)
    if not value >= low or value != value:
        raise ValueError(f"{name} must be a number >= {low}; got {value!r}")
    return value


def batch_renorm_forward(x, gamma, beta, mean, var, *, r_max: float = 3.0, d_max: float = 5.0,
                         eps: float = 1e-5, ddof: int = 0):
    """Batch renormalization in training mode.

    Parameters
    ----------
    x : array, shape (N, p)
    gamma, beta : array, shape (p,)
    mean, var : array, shape (p,)
        Stored (moving) statistics m and v.
    r_max : float ≥ 1, default 3
    d_max : float ≥ 0, default 5
    eps, ddof
        As in :func:`bnmat.ops.batchnorm_forward`.

    Returns
    -------
    y : array, shape (N, p)
    cache : BatchRenormCache
        ``cache.bn.mean`` and ``cache.bn.var`` are the batch statistics.
    """
    r_max = _check_limit(r_max, "r_max", 1.0)
    d_max = _check_limit(d_max, "d_max", 0.0)
    xp = get_namespace(x, gamma, beta, mean, var)
    # batch norm with γ = 1, β = 0 gives X̂_B and the batch statistics
    x_arr = as_float(x, "x", xp)
    dt = x_arr.dtype if x_arr.dtype in (xp.float32, xp.float64) else xp.float64
    p = x_arr.shape[1] if x_arr.ndim == 2 else 0
    _, cache = batchnorm_forward(x_arr, xp.ones(p, dtype=dt), xp.zeros(p, dtype=dt), eps=eps,
                                 ddof=ddof)
    x_hat_b = cache.x_hat
    dt = x_hat_b.dtype
    gamma = xp.astype(as_float(gamma, "gamma", xp), dt, copy=False)
    beta = xp.astype(as_float(beta, "beta", xp), dt, copy=False)
    mean = xp.astype(as_float(mean, "mean", xp), dt, copy=False)
    var = xp.astype(as_float(var, "var", xp), dt, copy=False)
    for v, name in ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var")):
        if v.ndim != 1 or v.shape[0] != p:
            raise ValueError(f"{name} must have shape ({p},); got {tuple(v.shape)}")
    if bool(xp.any(~(var + eps > 0))) or bool(xp.any(~xp.isfinite(mean))):
        raise ValueError("stored statistics are unusable: mean must be finite and var + eps > 0")
    sigma = xp.sqrt(var + eps)
    sigma_b = 1.0 / cache.inv_std
    r = xp.clip(sigma_b / sigma, 1.0 / r_max, r_max)
    d = xp.clip((cache.mean - mean) / sigma, -d_max, d_max)
    x_hat = x_hat_b * r + d
    bn = BatchNormCache(x_hat=x_hat_b, inv_std=cache.inv_std, gamma=gamma * r,
                        mean=cache.mean, var=cache.var, ddof=cache.ddof)
    return x_hat * gamma + beta, BatchRenormCache(bn=bn, r=r, d=d, x_hat=x_hat)


def batch_renorm_backward(dy, cache: BatchRenormCache) -> BatchNormGrads:
    """Backward of :func:`batch_renorm_forward`, r and d constant.

    Formula (G = dy, X̂_B = C X diag(s_B), n′ = N − ddof)::

        dβ = 1ᵀG,   dγ = 1ᵀ(G ∘ X̂)  (X̂ = X̂_B diag(r) + 1dᵀ)
        dX = [C G − X̂_B diag(1ᵀ(G ∘ X̂_B))/n′] diag(γ ∘ r ∘ s_B)

    Returns
    -------
    BatchNormGrads
    """
    xp = get_namespace(dy, cache.x_hat)
    if tuple(dy.shape) != tuple(cache.x_hat.shape):
        raise ValueError(f"dy must have shape {tuple(cache.x_hat.shape)}; got {tuple(dy.shape)}")
    dy = xp.astype(as_float(dy, "dy", xp), cache.x_hat.dtype, copy=False)
    dx, _, dbeta = _bn_backward(dy, cache.bn)
    acc = _accumulator(xp, dy.dtype)
    dgamma = xp.astype(xp.sum(dy * cache.x_hat, axis=0, dtype=acc), dy.dtype)
    return BatchNormGrads(dx=dx, dgamma=dgamma, dbeta=dbeta)


def _bn_backward(dy, bn_cache):
    from .batchnorm import batchnorm_backward
    return batchnorm_backward(dy, bn_cache)


def batch_renorm_double_backward(ddx, ddgamma, ddbeta, dy, cache: BatchRenormCache):
    """Backward of :func:`batch_renorm_backward` (r, d constant).

    Since ``dγ = r ∘ 1ᵀ(G ∘ X̂_B) + d ∘ 1ᵀG``, the cotangent c of dγ enters
    batch norm's double backward (scale γ ∘ r) as ``ddγ_B = c ∘ r`` and
    ``ddβ_B = e + c ∘ d``; the γ-gradient is batch norm's times r::

        (ddY, ∂S/∂X, t) = batchnorm_double_backward(A, c∘r, e + c∘d, G, cache_B)
        ∂S/∂γ = r ∘ t

    Returns
    -------
    BatchNormDoubleGrads
        ``(ddy, dx, dgamma)``.
    """
    xp = get_namespace(dy, cache.x_hat)
    r, d = cache.r, cache.d
    c = None if ddgamma is None else xp.astype(ddgamma, r.dtype, copy=False)
    e = None if ddbeta is None else xp.astype(ddbeta, r.dtype, copy=False)
    dd_gamma_b = None if c is None else c * r
    dd_beta_b = e if c is None else (c * d if e is None else e + c * d)
    out = batchnorm_double_backward(ddx, dd_gamma_b, dd_beta_b, dy, cache.bn)
    return BatchNormDoubleGrads(ddy=out.ddy, dx=out.dx, dgamma=out.dgamma * r)
