"""One-pass kernels: batch norm in inference mode, ReLU.

These compute exactly the reference's floating-point operations, elementwise
and in the reference's order, so their results are bitwise the reference's;
they only save temporaries (the reference's ``xp.where`` builds a zeros array and
a mask, inference batch norm builds X̂ and y) and use both cores.
"""

from __future__ import annotations

import numpy as np

from ..ops._types import ActivationCache, reference
from . import _config
from ._caches import BatchNormInferenceKernelCache

__all__ = [
    "batchnorm_inference_backward",
    "batchnorm_inference_forward",
    "relu_backward",
    "relu_backward_applies",
    "relu_forward",
    "relu_forward_applies",
]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _kernels():
    return _config.load_kernels()


def batchnorm_inference_forward(x, gamma, beta, mean, var, *, eps: float = 1e-5):
    """:func:`bnmat.ops.batchnorm_inference_forward` in one pass.

    Formula::

        s = (v + ε)^(−1/2),   Y = (X − 1mᵀ) diag(s) diag(γ) + 1 βᵀ

    X̂ is not stored: the cache holds x and recomputes X̂ (bitwise the
    reference's) if the backward pass runs.

    Parameters
    ----------
    x : array, shape (N, p)
    gamma, beta, mean, var : array, shape (p,)
    eps : float, default 1e-5

    Returns
    -------
    y : array, shape (N, p)
    cache : BatchNormInferenceKernelCache or bnmat.ops.BatchNormInferenceCache
    """
    if not _config.wants(x, gamma, beta, mean, var):
        return reference("batchnorm_inference_forward")(x, gamma, beta, mean, var, eps=eps)
    from .._array_api import (
        as_float,
        check_2d,
        check_finite,
        check_vector,
        get_namespace,
    )
    from ..ops._types import _first, check_eps

    # The reference's validation, in its order and words; x's values are
    # checked inside the kernel's pass (explicitly only on an error path).
    eps = check_eps(eps)
    xp = get_namespace(x, gamma, beta, mean, var)
    x = check_2d(as_float(x, "x", xp), "x", min_rows=1)
    p = x.shape[1]
    try:
        gamma, beta, mean, var = (
            np.ascontiguousarray(
                xp.astype(check_vector(as_float(v, name, xp), name, p), x.dtype, copy=False))
            for v, name in ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var"))
        )
    except (ValueError, TypeError):
        check_finite(x, "x", xp)
        raise
    bad = ~(np.isfinite(mean) & np.isfinite(var) & (var + eps > 0))
    if bool(np.any(bad)):
        check_finite(x, "x", xp)
        raise ValueError(
            f"stored statistics are unusable in column {_first(bad)}: mean and var must "
            "be finite and var + eps > 0"
        )
    inv_std = 1.0 / np.sqrt(var + eps)
    x = np.ascontiguousarray(x)
    y = np.empty(x.shape, dtype=x.dtype)
    n = x.shape[0]
    with _config.kernel_call(x.size):
        finite = _kernels().inference_forward(
            x, mean, inv_std, gamma, beta, max(1, min(32, n // 64)), y)
    if not finite:
        check_finite(x, "x", xp)
    return y, BatchNormInferenceKernelCache(x=x, mean=mean, inv_std=inv_std,
                                            scale=gamma * inv_std)


def batchnorm_inference_backward(dy, cache):
    """:func:`bnmat.ops.batchnorm_inference_backward` for either kind of cache.

    Formula::

        dβ = 1ᵀ G,    dγ = 1ᵀ (G ∘ X̂),    dX = G diag(γ ∘ s)

    The kernel cache is turned into the reference one (X̂ recomputed, bitwise)
    and the reference formula runs.
    """
    if isinstance(cache, BatchNormInferenceKernelCache):
        cache = cache.to_reference()
    return reference("batchnorm_inference_backward")(dy, cache)


def _flat(a):
    """A 1-D view of a C- or F-contiguous array in memory order, or None."""
    if not (a.flags.c_contiguous or a.flags.f_contiguous):
        return None
    return np.asarray(a).ravel(order="K")


def relu_forward_applies(x) -> bool:
    """Whether :func:`relu_forward` runs the kernel (else it runs the reference)."""
    return _config.wants(x, ndim=None) and x.dtype in _FLOATS and _flat(x) is not None


def relu_backward_applies(dy, cache) -> bool:
    """Whether :func:`relu_backward` runs the kernel (else it runs the reference)."""
    x = getattr(cache, "saved", None)
    return (
        _config.wants(dy, x, ndim=None)
        and x.dtype in _FLOATS
        and dy.dtype == x.dtype
        and dy.shape == x.shape
        and _flat(dy) is not None
        and _flat(x) is not None
        and (dy.ndim < 2 or dy.flags.c_contiguous == x.flags.c_contiguous)
    )


def relu_forward(x):
    """:func:`bnmat.ops.relu_forward` in one pass: ``y = x`` where x > 0, else 0.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    y : array, same shape and dtype
    cache : ActivationCache (holds x)
    """
    if not relu_forward_applies(x):
        return reference("relu_forward")(x)
    y = np.empty_like(np.asarray(x))
    with _config.kernel_call(x.size):
        _kernels().relu_forward(_flat(x), _flat(y))
    return y, ActivationCache(x)


def relu_backward(dy, cache):
    """:func:`bnmat.ops.relu_backward` in one pass: ``dB = G ∘ 1[B > 0]``.

    Parameters
    ----------
    dy : array, same shape as x
    cache : ActivationCache

    Returns
    -------
    dx : array, same shape
    """
    if not relu_backward_applies(dy, cache):
        return reference("relu_backward")(dy, cache)
    x = cache.saved
    dx = np.empty_like(np.asarray(x))
    with _config.kernel_call(x.size):
        _kernels().relu_backward(_flat(dy), _flat(x), _flat(dx))
    return dx
