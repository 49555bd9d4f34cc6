"""Batch normalization with row weights (frequency-weight convention).

With weights w ≥ 0 (one per row), n = 1ᵀw, W = diag(w) and the weighted
centering ``C_w = I − 1wᵀ/n`` (never formed)::

    μ  = Xᵀw / n
    σ² = diag((C_w X)ᵀ W (C_w X)) / (n − ddof)
    X̂  = C_w X diag(s),   s = (σ² + ε)^(−1/2)
    Y  = X̂ diag(γ) + 1 βᵀ

Frequency weights: a row with integer weight k acts exactly as k copies of the
row (with any ddof), so ``n`` is a count. Other conventions, not implemented
here (see ``docs/derivation.md`` §12):

* probability (survey) weights, w ∝ 1/πᵢ: with ddof = 0 the statistics are
  invariant to rescaling w, so the same code gives the Hájek-type weighted
  mean and variance; the ``n − ddof`` correction has no meaning for them;
* reliability (analytic) weights: the unbiased variance divides by
  ``n − (wᵀw)/n`` instead of ``n − 1``.

This is the reference path only: the fused CPU kernels take no weights, so
``bnmat.ops.batchnorm_forward(..., weights=w)`` always comes here.
"""

from __future__ import annotations

from typing import Any

from .._array_api import as_float, check_2d, check_finite, get_namespace
from ._types import (
    BatchNormCache,
    BatchNormGrads,
    _accumulator,
    _check_param,
    _first,
    check_ddof,
    check_eps,
)

Array = Any

__all__ = ["WeightedBatchNormCache", "check_weights", "weighted_column_moments",
           "weighted_batchnorm_forward", "weighted_batchnorm_backward"]


class WeightedBatchNormCache(BatchNormCache):
    """A :class:`BatchNormCache` that also carries the row weights (attribute ``weights``).

    The six tuple fields are those of the unweighted cache (so positional
    unpacking and ``isinstance(cache, BatchNormCache)`` keep working);
    ``weights`` (N,) is an attribute in x's dtype.
    """

    def __new__(cls, *, x_hat, inv_std, gamma, mean, var, ddof, weights):
        self = super().__new__(cls, x_hat, inv_std, gamma, mean, var, ddof)
        self.__dict__["weights"] = weights
        return self

    def __reduce__(self):
        return (_rebuild, (tuple(self), self.weights))


def _rebuild(fields, weights):
    x_hat, inv_std, gamma, mean, var, ddof = fields
    return WeightedBatchNormCache(x_hat=x_hat, inv_std=inv_std, gamma=gamma, mean=mean,
                                  var=var, ddof=ddof, weights=weights)


def check_weights(weights, n_rows: int, xp, dtype, *, ddof: int = 0, name="weights"):
    """Validate row weights: shape (N,), finite, ≥ 0, and total weight > ddof.

    Returns the weights as a vector of ``dtype``.
    """
    w = as_float(weights, name, xp)
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise ValueError(f"{name} must have shape ({n_rows},), one per row; got "
                         f"{tuple(w.shape)}")
    check_finite(w, name, xp)
    if bool(xp.any(w < 0)):
        raise ValueError(f"{name} must be >= 0; entry {_first(w < 0)} is negative")
    total = float(xp.sum(xp.astype(w, xp.float64)))
    if not total > ddof:
        raise ValueError(
            f"the total weight must exceed ddof={ddof} for batch statistics; got "
            f"sum({name}) = {total:g}")
    return xp.astype(w, dtype, copy=False)


def weighted_column_moments(x, w, *, ddof: int = 0, xp=None):
    """Weighted column mean and variance (frequency weights), corrected two-pass.

    Formula::

        n = 1ᵀw,  m = Xᵀw/n,  d = X − 1mᵀ
        mean = m + dᵀw/n,   var = (diag(dᵀWd) − (dᵀw)²/n) / (n − ddof)

    Parameters
    ----------
    x : array, shape (N, p)
    w : array, shape (N,)
    ddof : int

    Returns
    -------
    mean, var : array, shape (p,), in the accumulator dtype (float64 for float32)
    centered : array, shape (N, p), ``x − mean`` in x's dtype
    """
    xp = get_namespace(x, xp=xp)
    acc = _accumulator(xp, x.dtype)
    wc = xp.reshape(xp.astype(w, acc), (-1, 1))
    n = xp.sum(wc)
    shift = xp.sum(wc * xp.astype(x, acc), axis=0) / n
    d = x - xp.astype(shift, x.dtype)
    d_acc = xp.astype(d, acc)
    s1 = xp.sum(wc * d_acc, axis=0)
    s2 = xp.sum(wc * d_acc * d_acc, axis=0)
    delta = s1 / n
    mean = shift + delta
    var = xp.maximum((s2 - s1 * delta) / (n - ddof), xp.zeros_like(s2))
    return mean, var, d - xp.astype(delta, x.dtype)


def weighted_batchnorm_forward(x, gamma, beta, weights, *, eps: float = 1e-5, ddof: int = 0):
    """Weighted batch norm in training mode; see the module docstring for the formula.

    Called by :func:`bnmat.ops.batchnorm_forward` when ``weights`` is given.
    Needs at least one row and a total weight above ddof (a row of weight k
    counts as k rows); rows of weight 0 are normalized with the others'
    statistics and get zero gradient through the statistics.
    """
    eps, ddof = check_eps(eps), check_ddof(ddof)
    xp = get_namespace(x, gamma, beta)
    x = check_2d(as_float(x, "x", xp), "x")
    check_finite(x, "x", xp)
    n, p = x.shape
    if n < 1:
        raise ValueError("batch norm needs at least one row; got N=0")
    w = check_weights(weights, n, xp, x.dtype, ddof=ddof)
    gamma = _check_param(gamma, "gamma", p, xp, x.dtype)
    beta = _check_param(beta, "beta", p, xp, x.dtype)
    mean, var, centered = weighted_column_moments(x, w, ddof=ddof, xp=xp)
    bad = ~xp.isfinite(var)
    if bool(xp.any(bad)):
        raise ValueError(
            f"the variance of column {_first(bad)} of x overflows {x.dtype}; rescale the data")
    if eps == 0 and bool(xp.any(var == 0)):
        raise ValueError(
            f"column {_first(var == 0)} of x has zero weighted variance and eps=0: the "
            "standardization divides by zero. Use eps > 0 or drop the column.")
    inv_std = xp.astype(1.0 / xp.sqrt(var + eps), x.dtype)
    x_hat = centered * inv_std
    y = x_hat * gamma + beta
    cache = WeightedBatchNormCache(
        x_hat=x_hat, inv_std=inv_std, gamma=gamma, mean=xp.astype(mean, x.dtype),
        var=xp.astype(var, x.dtype), ddof=ddof, weights=w)
    return y, cache


def weighted_batchnorm_backward(dy, cache: WeightedBatchNormCache) -> BatchNormGrads:
    """Backward of the weighted batch norm.

    Formula (G = dy, n = 1ᵀw, n′ = n − ddof, W = diag(w))::

        dβ = 1ᵀG,   dγ = 1ᵀ(G ∘ X̂)
        dX = [G − w (1ᵀG)/n − W X̂ diag(dγ)/n′] diag(γ ∘ s)

    i.e. ``C_wᵀ G − W X̂ diag(dγ)/n′``; with w = 1 it is the unweighted formula.
    Invariant: ``1ᵀ dX = 0``.
    """
    x_hat, inv_std, gamma, _, _, ddof = cache
    w = cache.weights
    xp = get_namespace(dy, x_hat)
    if tuple(dy.shape) != tuple(x_hat.shape):
        raise ValueError(f"dy must have shape {tuple(x_hat.shape)}; got {tuple(dy.shape)}")
    dy = xp.astype(as_float(dy, "dy", xp), x_hat.dtype, copy=False)
    acc = _accumulator(xp, x_hat.dtype)
    wc = xp.reshape(w, (-1, 1))
    n = float(xp.sum(xp.astype(w, xp.float64)))
    dbeta = xp.astype(xp.sum(dy, axis=0, dtype=acc), dy.dtype)
    dgamma = xp.astype(xp.sum(dy * x_hat, axis=0, dtype=acc), dy.dtype)
    dx = (dy - wc * (dbeta / n) - wc * x_hat * (dgamma / (n - ddof))) * (gamma * inv_std)
    return BatchNormGrads(dx=dx, dgamma=dgamma, dbeta=dbeta)


def is_weighted(cache) -> bool:
    """True for a cache made with weights."""
    return isinstance(cache, WeightedBatchNormCache)

