"""Batch normalization in training mode (batch statistics), in closed matrix form.

With ``C = I − 11ᵀ/N`` (never formed), ``σ² = diag(ZᵀCZ)/(N − ddof)`` and
``s = (σ² + ε)^(−1/2)``::

    Ẑ = C Z diag(s)
    B = Ẑ diag(γ) + 1 βᵀ

The proofs of the backward formulas are in ``docs/derivation.md``.
"""

from __future__ import annotations

from .._array_api import as_float, check_2d, check_finite, get_namespace
from ._types import (BatchNormCache, BatchNormGrads, ColumnMoments, _accumulator, _check_param,
                     _first, check_ddof, check_eps)

__all__ = [
    "BatchNormCache",
    "BatchNormGrads",
    "ColumnMoments",
    "column_moments",
    "check_eps",
    "check_ddof",
    "batchnorm_forward",
    "batchnorm_backward",
]


def column_moments(x, *, ddof: int = 0, xp=None) -> ColumnMoments:
    """Column means and variances by the corrected two-pass algorithm.

    The first pass takes the mean of ``x − x₀`` (x₀ the first row) in float64,
    also for float32 data, to get a shift ``m``; the second forms ``d = x − m``,
    ``d²`` and their sums in float64 and corrects for the rounding of ``m``
    (Björck's corrected two-pass formula)::

        mean = m + 1ᵀd/N
        var  = (1ᵀ(d∘d) − (1ᵀd)²/N) / (N − ddof)

    This is accurate for data with a large mean and a small spread (for example
    float32 ``1e4 + 1e-2·N(0,1)``), where the one-pass ``E[x²] − E[x]²`` fails.
    Forming d and d² in float64 keeps float32 data's squares from overflowing
    (``|d| > 1.8e19``) or underflowing (``|d| < 1e-19``).

    Parameters
    ----------
    x : array, shape (N, p)
        Integers are converted to float64, float16 to float32.
    ddof : int
        Delta degrees of freedom: 0 for batch norm, 1 for R's ``scale()``.

    Returns
    -------
    ColumnMoments
        ``mean`` and ``var`` of shape (p,) in the accumulator dtype (float64 for
        float32 input), and ``centered = x − mean`` of shape (N, p) in x's dtype.
    """
    xp = get_namespace(x, xp=xp)
    x = as_float(x, "x", xp)
    n = x.shape[0]
    acc = _accumulator(xp, x.dtype)
    xa = xp.astype(x, acc)
    # Shift by the first row, then by the mean of the differences: a constant
    # column gets d = 0 exactly (variance exactly 0, as the kernels find), and
    # no sum of x itself is formed (it could overflow where the variance does not).
    x0 = xa[0, :]
    shift = x0 + xp.mean(xa - x0, axis=0)
    d = xa - shift
    s1 = xp.sum(d, axis=0)
    s2 = xp.sum(d * d, axis=0)
    delta = s1 / n
    mean = shift + delta
    var = xp.maximum((s2 - s1 * delta) / (n - ddof), xp.zeros_like(s2))
    # The shift is off by the rounding of the mean; remove that offset so that
    # the centered columns sum to zero.
    centered = xp.astype(d - delta, x.dtype)
    return ColumnMoments(mean=mean, var=var, centered=centered)


def batchnorm_forward(x, gamma, beta, *, eps: float = 1e-5, ddof: int = 0, weights=None):
    """Batch normalization in training mode, with batch statistics.

    Formula::

        μ = Xᵀ1/N,   σ² = diag(XᵀCX)/(N − ddof),   s = (σ² + ε)^(−1/2)
        X̂ = C X diag(s)
        Y = X̂ diag(γ) + 1 βᵀ          i.e. (γᵀ⊗1_N)∘X̂ + βᵀ⊗1_N

    Parameters
    ----------
    x : array, shape (N, p)
        Pre-activations ``Z = XΓ1`` of the layer; rows are observations.
        Integers are converted to float64, float16 to float32.
    gamma, beta : array, shape (p,)
        Scale and shift; cast to x's dtype.
    eps : float, default 1e-5
        ε ≥ 0. ``eps=0`` is the exact textbook standardization; a column of zero
        variance then raises ``ValueError`` (with ε > 0 it maps to β and its
        gradient is finite).
    ddof : int, default 0
        0 divides the variance by N (batch norm's convention), 1 by N − 1 (R's
        ``scale()``).

    Returns
    -------
    y : array, shape (N, p)
        Same dtype as x.
    cache : BatchNormCache
        Holds ``mean`` and ``var`` (shape (p,), x's dtype) for running statistics.

    Raises
    ------
    ValueError
        Fewer than 2 rows, or fewer than ``ddof + 1``; non-finite values in a
        column; a zero-variance column with ``eps=0``; non-conforming shapes.
    """
    from .. import _kernels  # fused CPU kernels for NumPy input

    if weights is not None:  # the reference path: the kernels take no weights
        from .batchnorm_weighted import weighted_batchnorm_forward
        return weighted_batchnorm_forward(x, gamma, beta, weights, eps=eps, ddof=ddof)
    lean = _kernels.lean_batchnorm_forward(x, gamma, beta, eps, ddof)  # the common case
    if lean is not None:
        return lean
    if _kernels.wants(x, gamma, beta):
        return _kernels.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
    eps, ddof = check_eps(eps), check_ddof(ddof)
    xp = get_namespace(x, gamma, beta)
    x = check_2d(as_float(x, "x", xp), "x")
    check_finite(x, "x", xp)
    n, p = x.shape
    if n < 2 or n - ddof < 1:
        raise ValueError(
            f"batch norm in training mode needs at least {max(2, ddof + 1)} rows to "
            f"compute batch statistics (ddof={ddof} divides the variance by N - {ddof}); "
            f"got N={n}. Predict with stored statistics (inference mode) instead, or "
            "merge the batch with another."
        )
    gamma = _check_param(gamma, "gamma", p, xp, x.dtype)
    beta = _check_param(beta, "beta", p, xp, x.dtype)

    mean, var, centered = column_moments(x, ddof=ddof, xp=xp)
    # var and s are stored in x's dtype: both must be finite there.
    bad = ~xp.isfinite(xp.astype(var, x.dtype))
    if bool(xp.any(bad)):
        raise ValueError(
            f"the variance of column {_first(bad)} of x overflows {x.dtype}; rescale the data"
        )
    if eps == 0 and bool(xp.any(var == 0)):
        raise ValueError(
            f"column {_first(var == 0)} of x has zero variance and eps=0: the "
            "standardization divides by zero. Use eps > 0 or drop the column."
        )
    inv_std = xp.astype(1.0 / xp.sqrt(var + eps), x.dtype)
    bad = ~xp.isfinite(inv_std)
    if bool(xp.any(bad)):
        raise ValueError(
            f"the variance of column {_first(bad)} of x is too small for {x.dtype}: "
            f"1/sqrt(var + eps) overflows it. Rescale the data or use a larger eps."
        )
    x_hat = centered * inv_std
    y = x_hat * gamma + beta
    cache = BatchNormCache(
        x_hat=x_hat,
        inv_std=inv_std,
        gamma=gamma,
        mean=xp.astype(mean, x.dtype),
        var=xp.astype(var, x.dtype),
        ddof=ddof,
    )
    return y, cache


def batchnorm_backward(dy, cache: BatchNormCache) -> BatchNormGrads:
    """Backward pass of :func:`batchnorm_forward` (training mode).

    Formula (G = dy, the upstream gradient ∂R/∂Y)::

        dβ = 1ᵀ G
        dγ = 1ᵀ (G ∘ X̂)                                  (= diag(X̂ᵀG); no factor γ)
        dX = [C G − X̂ diag(dγ)/(N − ddof)] diag(γ ∘ s)

    It accounts for the dependence of μ and σ on X and holds for every ε ≥ 0
    and ddof. Invariants: ``1ᵀ dX = 0`` (a bias before batch norm gets no
    gradient) and, when ε = 0, ``1ᵀ(dX ∘ X̂) = 0``.

    Parameters
    ----------
    dy : array, shape (N, p)
    cache : BatchNormCache

    Returns
    -------
    BatchNormGrads
        ``dx`` of shape (N, p), ``dgamma`` and ``dbeta`` of shape (p,), all in
        x's dtype (sums accumulate in float64 for float32).
    """
    from .. import _kernels  # fused CPU kernels: a kernel cache, or NumPy input

    lean = _kernels.lean_batchnorm_backward(dy, cache)  # the common case: a kernel cache
    if lean is not None:
        return lean
    if getattr(cache, "weights", None) is not None:  # from batchnorm_forward(weights=...)
        from .batchnorm_weighted import weighted_batchnorm_backward
        return weighted_batchnorm_backward(dy, cache)
    if _kernels.batchnorm_backward_applies(dy, cache):
        return _kernels.batchnorm_backward(dy, cache)
    x_hat, inv_std, gamma, _, _, ddof = cache
    xp = get_namespace(dy, x_hat)
    if tuple(dy.shape) != tuple(x_hat.shape):
        raise ValueError(f"dy must have shape {tuple(x_hat.shape)}; got {tuple(dy.shape)}")
    dy = xp.astype(as_float(dy, "dy", xp), x_hat.dtype, copy=False)
    n = x_hat.shape[0]
    acc = _accumulator(xp, x_hat.dtype)
    dbeta = xp.astype(xp.sum(dy, axis=0, dtype=acc), dy.dtype)
    dgamma = xp.astype(xp.sum(dy * x_hat, axis=0, dtype=acc), dy.dtype)
    dx = (dy - dbeta / n - x_hat * (dgamma / (n - ddof))) * (gamma * inv_std)
    return BatchNormGrads(dx=dx, dgamma=dgamma, dbeta=dbeta)