"""The public batch-norm ops' common case in the fewest Python steps, and the
fused batch norm + ReLU pair.

:func:`lean_forward` / :func:`lean_backward` take the common case of
:func:`bnmat.ops.batchnorm_forward` / ``batchnorm_backward`` (and, with
``relu``, of the fused pair below): plain C-contiguous float arrays, a float
eps and an int ddof. Every check of the general path
(:mod:`bnmat._kernels._batchnorm`) passes there, so they check only those
conditions, once, and call the kernels directly (the serial builds below
``PARALLEL_MIN_ELEMENTS``). Outside the common case they return None and the
general path runs, with its checks, errors and messages
(``tests/test_kernel_builds.py``).
"""

from __future__ import annotations

import math

import numpy as np

from ..ops._types import BatchNormGrads, reference
from . import _batchnorm as _bn
from . import _config
from ._caches import BatchNormKernelCache, BatchNormReLUCache

__all__ = ["batchnorm_relu_backward", "batchnorm_relu_forward", "lean_backward", "lean_forward"]

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_NDARRAY = np.ndarray


def lean_forward(x, gamma, beta, eps, ddof, relu=False):
    """:func:`bnmat.ops.batchnorm_forward` (or, with ``relu``, the fused
    :func:`batchnorm_relu_forward`) for its common case, in the fewest Python steps.

    The common case: x a C-contiguous float32/float64 ``numpy.ndarray`` of at
    least :data:`MIN_ELEMENTS` elements, 2 ≤ N, ddof < N, gamma and beta
    contiguous vectors of x's dtype and length p ≥ 1, eps a ``float`` in
    [0, ∞), ddof an ``int`` ≥ 0, kernels enabled. Every check of the general
    path passes there, so this path skips them and checks only these
    conditions, once each; small arrays run the serial build of the kernel
    (no thread switch, no lock). Returns None outside the common case (the
    caller then takes the general path, which decides as before). Statistics
    the kernel hands back (status ≠ 0) go to the reference formulas, which
    give their result or raise their error, exactly as on the general path
    (with ``relu``: None, and the general path does that).

    Returns ``(y, cache)``: y (or H) of shape (N, p) and the
    :class:`BatchNormKernelCache` (``relu`` set as given).
    """
    if not (type(x) is _NDARRAY and type(gamma) is _NDARRAY and type(beta) is _NDARRAY
            and type(eps) is float and type(ddof) is int):
        return None
    dt = x.dtype
    if not ((dt is _F32 or dt is _F64) and gamma.dtype is dt and beta.dtype is dt
            and x.ndim == 2 and gamma.ndim == 1 and beta.ndim == 1):
        return None
    n, p = x.shape
    size = n * p
    if not (size >= _config.MIN_ELEMENTS and p > 0 and gamma.shape[0] == p
            and beta.shape[0] == p and 0 <= ddof < n and n >= 2
            and 0.0 <= eps < math.inf and x.flags.c_contiguous and gamma.flags.c_contiguous
            and beta.flags.c_contiguous and _config.lean_enabled()):
        return None
    relu = relu is True
    out = np.empty((n, p), dt)
    k = _config._state["kernels"] or _bn._kernels()
    nchunks = max(1, min(_bn._MAX_CHUNKS, n // _bn._MIN_CHUNK_ROWS))   # _nchunks(n)
    if size < _config.PARALLEL_MIN_ELEMENTS:
        _, var, inv_std64, mean_hi, mean_lo, scale, status, _ = k.forward_serial(
            x, gamma, beta, eps, ddof, relu, dt is _F64,
            size * dt.itemsize <= _bn._ROWS4_MAX_BYTES, nchunks, out)
    else:
        with _config.kernel_call(size):
            _, var, inv_std64, mean_hi, mean_lo, scale, status, _ = k.forward(
                x, gamma, beta, eps, ddof, relu, dt is _F64,
                size * dt.itemsize <= _bn._ROWS4_MAX_BYTES, nchunks, out)
    if status:
        if relu:
            return None
        with _config.reference_only():
            return reference("batchnorm_forward")(x, gamma, beta, eps=eps, ddof=ddof)
    return out, BatchNormKernelCache._lean(x, inv_std64.astype(dt), gamma, mean_hi, var.astype(dt),
                                           ddof, mean_lo, inv_std64, beta, scale, relu)


def lean_backward(dy, cache, relu=False, out=None):
    """:func:`bnmat.ops.batchnorm_backward` (``relu``: :func:`batchnorm_relu_backward`
    with ``cache.bn``) for its common case; None outside it.

    The common case: a :class:`BatchNormKernelCache` whose ``relu`` is
    ``relu`` and dy a C-contiguous ``numpy.ndarray`` of x's shape and dtype,
    kernels enabled; ``out`` None or dy itself (writeable, not overlapping
    x). Non-finite sums go to the reference formulas, as on the general path
    (with ``relu`` or ``out``: None, and the general path does that; the
    kernel then left dy untouched).
    """
    if type(cache) is not BatchNormKernelCache or type(dy) is not _NDARRAY:
        return None
    x = cache.x
    dt = x.dtype
    if (cache.relu is not relu or dy.dtype is not dt or dy.shape != x.shape
            or not dy.flags.c_contiguous or not _config.enabled()):
        return None
    n, p = x.shape
    size = n * p
    if out is None:
        out = np.empty((n, p), dt)
        fresh = True
    elif out is dy and dy.flags.writeable and not np.may_share_memory(dy, x):
        fresh = False
    else:
        return None
    # γ in float64 times s: the promotion converts γ exactly, as astype does.
    a = np.multiply(cache.gamma, cache.inv_std64)
    args = (dy, x, cache.mean, cache.mean_lo, cache.scale, cache.beta, relu, cache.inv_std64,
            a, float(n - cache.ddof), size * dt.itemsize <= _bn._ROWS4_MAX_BYTES,
            max(1, min(_bn._MAX_CHUNKS, n // _bn._MIN_CHUNK_ROWS)), out)   # _nchunks(n)
    k = _config._state["kernels"] or _bn._kernels()
    if size < _config.PARALLEL_MIN_ELEMENTS:
        dgamma, dbeta = k.backward_serial(*args)
    else:
        with _config.kernel_call(size):
            dgamma, dbeta = k.backward(*args)
    if _bn._sums_not_finite(dgamma, dbeta):
        if relu or not fresh:
            return None
        with _config.reference_only():
            grads = reference("batchnorm_backward")(dy, cache.to_reference())
        return grads
    return BatchNormGrads(out, dgamma.astype(dt, copy=False), dbeta.astype(dt, copy=False))


def batchnorm_relu_forward(x, gamma, beta, *, eps: float = 1e-5, ddof: int = 0, out=None):
    """Batch norm (training mode) followed by ReLU, in one pass over the output.

    Formula::

        B = C X diag(s ∘ γ) + 1 βᵀ   (as batchnorm_forward),   H = max(B, 0)

    B is never stored: H is written directly, and the backward pass recomputes
    the mask ``1[B > 0]`` from x bitwise as the forward pass applied it.

    Parameters
    ----------
    x : array, shape (N, p)
    gamma, beta : array, shape (p,)
    eps : float, default 1e-5
    ddof : int, default 0
    out : ndarray, shape (N, p), optional
        Buffer for H (C-contiguous, x's dtype, not overlapping x).

    Returns
    -------
    h : array, shape (N, p)
    cache : BatchNormReLUCache
        ``cache.bn.mean`` and ``cache.bn.var`` are the batch statistics.
    """
    if out is None:
        lean = lean_forward(x, gamma, beta, eps, ddof, True)
        if lean is not None:
            return lean[0], BatchNormReLUCache(bn=lean[1], relu=None)
    if _config.wants(x, gamma, beta):
        result = _bn._forward(x, gamma, beta, eps, ddof, True, out)
        if result is not None:
            return result[0], BatchNormReLUCache(bn=result[1], relu=None)
    relu_forward, bn_forward = reference("relu_forward"), reference("batchnorm_forward")

    with _config.reference_only():
        y, bn_cache = bn_forward(x, gamma, beta, eps=eps, ddof=ddof)
        h, relu_cache = relu_forward(y)
    return _bn._into(out, h), BatchNormReLUCache(bn=bn_cache, relu=relu_cache)


def batchnorm_relu_backward(dh, cache: BatchNormReLUCache, *, out=None):
    """Backward pass of :func:`batchnorm_relu_forward`.

    Formula (G = dH ∘ 1[B > 0], then as batchnorm_backward)::

        dβ = 1ᵀ G,   dγ = 1ᵀ (G ∘ X̂),   dX = [C G − X̂ diag(dγ)/(N − ddof)] diag(γ ∘ s)

    Parameters
    ----------
    dh : array, shape (N, p)
        Upstream gradient ∂R/∂H.
    cache : BatchNormReLUCache
    out : ndarray, shape (N, p), optional
        Buffer for dX; may be ``dh`` itself.

    Returns
    -------
    BatchNormGrads
        ``(dx, dgamma, dbeta)`` in x's dtype.
    """
    if not isinstance(cache, BatchNormReLUCache):
        raise TypeError(f"expected a BatchNormReLUCache; got {type(cache).__name__}")
    bn = cache.bn
    if cache.relu is None:
        lean = lean_backward(dh, bn, True, out)
        if lean is not None:
            return lean
        if not _config._plain(dh):
            raise TypeError(
                f"the forward pass ran on NumPy arrays; dh must be a NumPy array, got "
                f"{type(dh).__name__}"
            )
        if _config.enabled():
            a = bn.gamma.astype(np.float64) * bn.inv_std64
            grads = _bn._backward(dh, bn.x, bn.mean, bn.mean_lo, bn.scale, bn.beta, True,
                              bn.inv_std64, a, bn.ddof, out)
            if grads is not None:
                return grads
        # Kernels switched off since the forward pass: the same mask (the same
        # uncontracted operations in x's dtype), then the reference formula.
        bn_reference = reference("batchnorm_backward")

        dh = _bn._prepare_dy(dh, bn.x.shape, bn.x.dtype)
        b = ((bn.x - bn.mean) - bn.mean_lo) * bn.scale + bn.beta
        g = np.where(b > 0, dh, np.zeros_like(dh))
        with _config.reference_only():
            grads = bn_reference(g, bn.to_reference())
        return grads._replace(dx=_bn._into(out, grads.dx))
    relu_backward, bn_backward = reference("relu_backward"), reference("batchnorm_backward")

    grads = bn_backward(relu_backward(dh, cache.relu), bn)
    return grads._replace(dx=_bn._into(out, grads.dx))
