"""Batch normalization in inference mode: stored statistics, an affine map per column."""

from __future__ import annotations

from .._array_api import as_float, check_2d, check_finite, check_vector, get_namespace
from ._types import BatchNormGrads, BatchNormInferenceCache, _accumulator, _first, check_eps

__all__ = [
    "BatchNormInferenceCache",
    "batchnorm_inference_forward",
    "batchnorm_inference_backward",
]


def batchnorm_inference_forward(x, gamma, beta, mean, var, *, eps: float = 1e-5):
    """Batch normalization with stored statistics (inference mode).

    Formula::

        s = (v + ε)^(−1/2)
        Y = (X − 1mᵀ) diag(γ ∘ s) + 1 βᵀ

    An affine map per column, so any number of rows works (one included) and
    rows are independent of each other.

    Parameters
    ----------
    x : array, shape (N, p)
    gamma, beta : array, shape (p,)
    mean, var : array, shape (p,)
        Stored statistics m and v (for example running or population averages).
    eps : float, default 1e-5
        ε ≥ 0; ``v + ε`` must be positive in every column.

    Returns
    -------
    y : array, shape (N, p)
    cache : BatchNormInferenceCache
    """
    from .. import _kernels  # one-pass CPU kernel for NumPy input

    if _kernels.wants(x, gamma, beta, mean, var):
        return _kernels.batchnorm_inference_forward(x, gamma, beta, mean, var, eps=eps)
    eps = check_eps(eps)
    xp = get_namespace(x, gamma, beta, mean, var)
    x = check_2d(as_float(x, "x", xp), "x", min_rows=1)
    check_finite(x, "x", xp)
    p = x.shape[1]
    gamma, beta, mean, var = (
        xp.astype(check_vector(as_float(v, name, xp), name, p), x.dtype, copy=False)
        for v, name in ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var"))
    )
    bad = ~(xp.isfinite(mean) & xp.isfinite(var) & (var + eps > 0))
    if bool(xp.any(bad)):
        raise ValueError(
            f"stored statistics are unusable in column {_first(bad)}: mean and var must "
            "be finite and var + eps > 0"
        )
    inv_std = 1.0 / xp.sqrt(var + eps)
    x_hat = (x - mean) * inv_std
    y = x_hat * gamma + beta
    return y, BatchNormInferenceCache(x_hat=x_hat, scale=gamma * inv_std)


def batchnorm_inference_backward(dy, cache: BatchNormInferenceCache) -> BatchNormGrads:
    """Backward pass of :func:`batchnorm_inference_forward`.

    Formula::

        dβ = 1ᵀ G,    dγ = 1ᵀ (G ∘ X̂),    dX = G diag(γ ∘ s)

    (m and v are constants here, unlike in training mode.)

    Parameters
    ----------
    dy : array, shape (N, p)
    cache : BatchNormInferenceCache

    Returns
    -------
    BatchNormGrads
        ``(dx, dgamma, dbeta)`` of shapes (N, p), (p,), (p,).
    """
    from .. import _kernels  # the kernel's cache holds x, not X̂

    if isinstance(cache, _kernels.BatchNormInferenceKernelCache):
        return _kernels.batchnorm_inference_backward(dy, cache)
    x_hat, scale = cache
    xp = get_namespace(dy, x_hat)
    if tuple(dy.shape) != tuple(x_hat.shape):
        raise ValueError(f"dy must have shape {tuple(x_hat.shape)}; got {tuple(dy.shape)}")
    dy = xp.astype(as_float(dy, "dy", xp), x_hat.dtype, copy=False)
    acc = _accumulator(xp, x_hat.dtype)
    dbeta = xp.astype(xp.sum(dy, axis=0, dtype=acc), dy.dtype)
    dgamma = xp.astype(xp.sum(dy * x_hat, axis=0, dtype=acc), dy.dtype)
    return BatchNormGrads(dx=dy * scale, dgamma=dgamma, dbeta=dbeta)
