"""Layer normalization: each row standardized over its features, in closed matrix form.

Layer norm is batch norm's standardization applied to Xᵀ (rows instead of
columns) with the affine map per column of X. With ``C_p = I_p − 11ᵀ/p``,
per-row variances ``σ²ᵢ = (row i of X C_p)·(row i of X C_p)/(p − ddof)`` and
``s = (σ² + ε)^(−1/2)`` (N,)::

    X̂ = diag(s) X C_p
    Y = X̂ diag(γ) + 1βᵀ

Rows are independent, so training and inference are the same map. Proofs in
``docs/derivation.md`` §14.
"""

from __future__ import annotations

from typing import NamedTuple

from .._array_api import Array, as_float, check_2d, check_finite, get_namespace
from .batchnorm import (
    BatchNormCache,
    BatchNormGrads,
    _accumulator,
    _check_param,
    _first,
    check_ddof,
    check_eps,
    column_moments,
)
from .batchnorm_double import batchnorm_double_backward

__all__ = ["LayerNormCache", "LayerNormDoubleGrads", "layernorm_forward", "layernorm_backward",
           "layernorm_double_backward"]


class LayerNormCache(NamedTuple):
    x_hat: Array     # (N, p)  X̂
    inv_std: Array   # (N,)    s, one per row
    gamma: Array     # (p,)
    ddof: int


class LayerNormDoubleGrads(NamedTuple):
    ddy: Array       # (N, p)
    dx: Array        # (N, p)
    dgamma: Array    # (p,)


def layernorm_forward(x, gamma, beta, *, eps: float = 1e-5, ddof: int = 0):
    """Layer normalization ``Y = diag(s) X C_p diag(γ) + 1βᵀ``.

    Parameters
    ----------
    x : array, shape (N, p)
        p ≥ max(2, ddof + 1) features (the statistics are over a row).
    gamma, beta : array, shape (p,)
    eps : float, default 1e-5
        ε ≥ 0; a constant row with ε = 0 raises ``ValueError``.
    ddof : int, default 0
        The row variance divides by p − ddof.

    Returns
    -------
    y : array, shape (N, p)
    cache : LayerNormCache
    """
    eps, ddof = check_eps(eps), check_ddof(ddof)
    xp = get_namespace(x, gamma, beta)
    x = check_2d(as_float(x, "x", xp), "x")
    check_finite(x, "x", xp)
    n, p = x.shape
    if p < 2 or p - ddof < 1:
        raise ValueError(
            f"layer norm needs at least {max(2, ddof + 1)} features per row to compute row "
            f"statistics (ddof={ddof}); got p={p}")
    gamma = _check_param(gamma, "gamma", p, xp, x.dtype)
    beta = _check_param(beta, "beta", p, xp, x.dtype)
    _, var, centered_t = column_moments(xp.matrix_transpose(x), ddof=ddof, xp=xp)
    if eps == 0 and bool(xp.any(var == 0)):
        raise ValueError(
            f"row {_first(var == 0)} of x is constant and eps=0: the standardization divides "
            "by zero. Use eps > 0.")
    inv_std = xp.astype(1.0 / xp.sqrt(var + eps), x.dtype)
    x_hat = xp.matrix_transpose(centered_t * inv_std)
    return x_hat * gamma + beta, LayerNormCache(x_hat=x_hat, inv_std=inv_std, gamma=gamma,
                                                ddof=ddof)


def _row_core_backward(m, x_hat, inv_std, ddof, xp):
    """``diag(s)[M C_p − diag(1ᵀ(Mᵀ∘X̂ᵀ)) X̂/(p − ddof)]``: the gradient through X̂."""
    p = x_hat.shape[1]
    acc = _accumulator(xp, x_hat.dtype)
    row_sum = xp.astype(xp.sum(m, axis=1, keepdims=True, dtype=acc), m.dtype)
    row_dot = xp.astype(xp.sum(m * x_hat, axis=1, keepdims=True, dtype=acc), m.dtype)
    return (m - row_sum / p - x_hat * (row_dot / (p - ddof))) * xp.reshape(inv_std, (-1, 1))


def layernorm_backward(dy, cache: LayerNormCache) -> BatchNormGrads:
    """Backward of :func:`layernorm_forward`.

    Formula (G = dy, Ĝ = G diag(γ) = ∂R/∂X̂)::

        dβ = 1ᵀG,   dγ = 1ᵀ(G ∘ X̂)
        dX = diag(s) [Ĝ C_p − diag(rowsums(Ĝ ∘ X̂)) X̂/(p − ddof)]

    Invariant: every row of dX sums to 0.

    Returns
    -------
    BatchNormGrads
        ``(dx, dgamma, dbeta)``.
    """
    x_hat, inv_std, gamma, ddof = cache
    xp = get_namespace(dy, x_hat)
    if tuple(dy.shape) != tuple(x_hat.shape):
        raise ValueError(f"dy must have shape {tuple(x_hat.shape)}; got {tuple(dy.shape)}")
    dy = xp.astype(as_float(dy, "dy", xp), x_hat.dtype, copy=False)
    acc = _accumulator(xp, x_hat.dtype)
    dbeta = xp.astype(xp.sum(dy, axis=0, dtype=acc), dy.dtype)
    dgamma = xp.astype(xp.sum(dy * x_hat, axis=0, dtype=acc), dy.dtype)
    return BatchNormGrads(dx=_row_core_backward(dy * gamma, x_hat, inv_std, ddof, xp),
                          dgamma=dgamma, dbeta=dbeta)


def layernorm_double_backward(ddx, ddgamma, ddbeta, dy, cache: LayerNormCache):
    """Backward of :func:`layernorm_backward` (for Hessian-vector products).

    Layer norm's core is batch norm's standardization of Xᵀ with unit scale, so
    with Ĝ = G diag(γ), A = ddX, c = ddγ, e = ddβ and T the batch-norm double
    backward of §11 applied to the transposed problem (γ = 1)::

        (T_G, T_X, ·) = batchnorm_double_backward(Aᵀ, 0, 0, Ĝᵀ, cache of Xᵀ)
        ∂S/∂G = T_Gᵀ diag(γ) + X̂ diag(c) + 1eᵀ
        ∂S/∂γ = 1ᵀ(T_Gᵀ ∘ G)
        ∂S/∂X = T_Xᵀ + layernorm core backward of G diag(c)

    (the last term differentiates ⟨c, dγ⟩ = ⟨G diag(c), X̂⟩ through X̂).

    Returns
    -------
    LayerNormDoubleGrads
        ``(ddy, dx, dgamma)``.
    """
    x_hat, inv_std, gamma, ddof = cache
    xp = get_namespace(dy, x_hat)
    dt = x_hat.dtype
    dy = xp.astype(as_float(dy, "dy", xp), dt, copy=False)
    n, p = x_hat.shape
    t = xp.matrix_transpose
    ones = xp.ones(n, dtype=dt)
    bn_cache = BatchNormCache(x_hat=t(x_hat), inv_std=inv_std, gamma=ones,
                              mean=xp.zeros(n, dtype=dt), var=xp.zeros(n, dtype=dt), ddof=ddof)
    core = batchnorm_double_backward(t(ddx), None, None, t(dy * gamma), bn_cache)
    dd_ghat = t(core.ddy)
    ddy = dd_ghat * gamma
    dgamma = xp.astype(xp.sum(dd_ghat * dy, axis=0, dtype=_accumulator(xp, dt)), dt)
    dx = t(core.dx)
    if ddgamma is not None:
        c = xp.astype(ddgamma, dt, copy=False)
        ddy = ddy + x_hat * c
        dx = dx + _row_core_backward(dy * c, x_hat, inv_std, ddof, xp)
    if ddbeta is not None:
        ddy = ddy + xp.astype(ddbeta, dt, copy=False)
    return LayerNormDoubleGrads(ddy=ddy, dx=dx, dgamma=dgamma)
