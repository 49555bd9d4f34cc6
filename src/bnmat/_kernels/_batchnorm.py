"""Batch norm in training mode on the fused kernels, and batch norm fused with ReLU.

Same contract as :func:`bnmat.ops.batchnorm_forward` / ``batchnorm_backward``
(same validation, messages, returned types and dtypes; inputs never written),
plus ``out=`` buffers for training loops. Passes over the N×p data:

* forward: one sweep for the column statistics (float64), one pass writing y;
* backward: one sweep for the two column sums dβ, dγ (float64), one pass
  writing dx, with X̂ recomputed from x on the fly in both.

Transient memory per call is the outputs only (y, dx; none with ``out=``) plus
p-sized vectors. Input that is not C-contiguous (Fortran order, strided views) is
copied to C order once, and the copy is what the cache holds.
"""

from __future__ import annotations

import math

import numpy as np

from ..ops._types import (BatchNormCache, BatchNormGrads, _check_param, check_ddof, check_eps,
                          reference)
from . import _config
from ._caches import BatchNormKernelCache, BatchNormReLUCache

__all__ = [
    "batchnorm_backward",
    "batchnorm_backward_applies",
    "batchnorm_forward",
    "batchnorm_relu_backward",
    "batchnorm_relu_forward",
]

#: rows of one chunk of the column sums is at least this (chunks ≤ 32)
_MIN_CHUNK_ROWS = 64
_MAX_CHUNKS = 32
_ROWS4_MAX_BYTES = 8 << 20
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _kernels():
    return _config.load_kernels()


def _nchunks(n: int) -> int:
    # A function of N only, so that sums (and results) do not depend on threads.
    return max(1, min(_MAX_CHUNKS, n // _MIN_CHUNK_ROWS))


def _rows4(x) -> bool:
    # Four rows per loop step pays while the arrays sit in cache (fewer loads of
    # accumulators and coefficients: ~15 % at 4096×256); from DRAM, one row at a
    # time streams faster (~40 % at 65536×256), so switch at 8 MiB per array.
    return x.nbytes <= _ROWS4_MAX_BYTES


def _check_out(out, shape, dtype, name):
    if type(out) is not np.ndarray:
        raise TypeError(f"{name} must be a NumPy array; got {type(out).__name__}")
    if out.shape != tuple(shape) or out.dtype != dtype:
        raise ValueError(
            f"{name} must have shape {tuple(shape)} and dtype {dtype}; got shape "
            f"{out.shape} and dtype {out.dtype}"
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError(f"{name} must be a writeable C-contiguous array")
    return out


def _check_rows(n, ddof):
    # The message of bnmat.ops.batchnorm_forward, word for word (tests compare them).
    if n < 2 or n - ddof < 1:
        raise ValueError(
            f"batch norm in training mode needs at least {max(2, ddof + 1)} rows to "
            f"compute batch statistics (ddof={ddof} divides the variance by N - {ddof}); "
            f"got N={n}. Predict with stored statistics (inference mode) instead, or "
            "merge the batch with another."
        )


def _plain_vector(v, p) -> bool:
    return v.ndim == 1 and v.shape[0] == p and v.dtype.kind in "fiub" and v.dtype.itemsize <= 8


def _validated(x, gamma, beta, eps, ddof):
    """The reference's validation and conversions, in its order and words."""
    eps, ddof = check_eps(eps), check_ddof(ddof)
    x, gamma, beta = np.asarray(x), np.asarray(gamma), np.asarray(beta)  # memmaps
    if (x.dtype in _FLOATS and x.ndim == 2 and x.shape[1] > 0 and x.flags.c_contiguous
            and _plain_vector(gamma, x.shape[1]) and _plain_vector(beta, x.shape[1])
            and x.shape[0] - ddof >= 1 and x.shape[0] >= 2):
        # The common case, where every check passes: skip the array-API plumbing
        # (half of the call's time at 256×64). The conversions are the same.
        gamma = np.ascontiguousarray(gamma, dtype=x.dtype)
        beta = np.ascontiguousarray(beta, dtype=x.dtype)
        return x, gamma, beta, eps, ddof
    from .._array_api import as_float, check_2d, check_finite, get_namespace

    xp = get_namespace(x, gamma, beta)
    x = check_2d(as_float(x, "x", xp), "x")
    n, p = x.shape
    try:
        _check_rows(n, ddof)
        gamma = _check_param(gamma, "gamma", p, xp, x.dtype)
        beta = _check_param(beta, "beta", p, xp, x.dtype)
    except (ValueError, TypeError):
        # The reference checks x's values first (a pass the kernel folds into
        # its statistics); on this error path, do it explicitly.
        check_finite(x, "x", xp)
        raise
    x = np.ascontiguousarray(x)
    gamma = np.ascontiguousarray(gamma)
    beta = np.ascontiguousarray(beta)
    return x, gamma, beta, eps, ddof


def _forward(x, gamma, beta, eps, ddof, relu, out):
    """Validated kernel forward; x, gamma, beta are NumPy arrays.

    Returns None when the reference formulas must run instead: the kernel
    raises no errors itself. NaN/inf in x, a variance or s that does not fit x's
    dtype, a zero variance with eps = 0, and statistics where its arithmetic
    could round differently from the reference's (``status`` 1–3, see
    :func:`bnmat._kernels._numba_bn._range_status`) go to the reference
    formulas, which decide the result or the error. Constant columns give
    exactly 0 on both paths.
    """
    x, gamma, beta, eps, ddof = _validated(x, gamma, beta, eps, ddof)
    n, p = x.shape
    if out is None:
        out = np.empty((n, p), dtype=x.dtype)
    else:
        _check_out(out, (n, p), x.dtype, "out")
        if np.may_share_memory(out, x):
            # x is kept in the cache for the backward pass.
            raise ValueError("out must not overlap x: the backward pass reads x")
    args = (x, gamma, beta, float(eps), ddof, bool(relu), x.dtype == np.float64, _rows4(x),
            _nchunks(n), out)
    if x.size < _config.PARALLEL_MIN_ELEMENTS:
        _, var, inv_std64, mean_hi, mean_lo, scale, status, col = _kernels().forward_serial(*args)
    else:
        with _config.kernel_call(x.size):
            _, var, inv_std64, mean_hi, mean_lo, scale, status, col = _kernels().forward(*args)
    if status != 0:
        return None     # the reference decides: its result, or its error
    cache = BatchNormKernelCache(
        x=x,
        inv_std=inv_std64.astype(x.dtype),
        gamma=gamma,
        mean=mean_hi,
        var=var.astype(x.dtype),
        ddof=ddof,
        mean_lo=mean_lo,
        inv_std64=inv_std64,
        beta=beta,
        scale=scale,
        relu=bool(relu),
    )
    return out, cache


def _prepare_dy(dy, shape, dtype):
    from .._array_api import as_float, get_namespace

    if tuple(dy.shape) != tuple(shape):
        raise ValueError(f"dy must have shape {tuple(shape)}; got {tuple(dy.shape)}")
    if type(dy) is np.memmap:
        dy = np.asarray(dy)
    if type(dy) is np.ndarray and dy.dtype == dtype and dy.flags.c_contiguous:
        return dy
    xp = get_namespace(dy)
    dy = xp.astype(as_float(dy, "dy", xp), dtype, copy=False)
    return np.ascontiguousarray(dy)


def _backward(dy, x, mean_hi, mean_lo, scale, beta, relu, norm, a, ddof, out):
    """Kernel backward on NumPy arrays; returns BatchNormGrads in x's dtype."""
    n, p = x.shape
    dy = _prepare_dy(dy, x.shape, x.dtype)
    if out is None:
        out = np.empty((n, p), dtype=x.dtype)
    else:
        _check_out(out, (n, p), x.dtype, "out")
        same = out.__array_interface__["data"][0] == dy.__array_interface__["data"][0]
        if np.may_share_memory(out, x) or (np.may_share_memory(out, dy) and not same):
            raise ValueError("out may be dy itself but must not overlap x or part of dy")
    args = (dy, x, mean_hi, mean_lo, scale, beta, bool(relu), norm, a, float(n - ddof),
            _rows4(x), _nchunks(n), out)
    if x.size < _config.PARALLEL_MIN_ELEMENTS:
        dgamma, dbeta = _kernels().backward_serial(*args)
    else:
        with _config.kernel_call(x.size):
            dgamma, dbeta = _kernels().backward(*args)
    if _sums_not_finite(dgamma, dbeta):
        # NaN/inf in dy, or float32 partial sums that overflowed: the kernel
        # left out (possibly dy itself) untouched, and the reference (float64
        # sums of dy) decides. Decided per element: finite sums whose total
        # overflows were sent here before although the kernel had already
        # written out, which could be dy.
        return None
    return BatchNormGrads(dx=out, dgamma=dgamma.astype(x.dtype),
                                  dbeta=dbeta.astype(x.dtype))


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
    k = _config._state["kernels"] or _kernels()
    nchunks = max(1, min(_MAX_CHUNKS, n // _MIN_CHUNK_ROWS))   # _nchunks(n)
    if size < _config.PARALLEL_MIN_ELEMENTS:
        _, var, inv_std64, mean_hi, mean_lo, scale, status, _ = k.forward_serial(
            x, gamma, beta, eps, ddof, relu, dt is _F64,
            size * dt.itemsize <= _ROWS4_MAX_BYTES, nchunks, out)
    else:
        with _config.kernel_call(size):
            _, var, inv_std64, mean_hi, mean_lo, scale, status, _ = k.forward(
                x, gamma, beta, eps, ddof, relu, dt is _F64,
                size * dt.itemsize <= _ROWS4_MAX_BYTES, nchunks, out)
    if status:
        if relu:
            return None
        with _config.reference_only():
            return reference("batchnorm_forward")(x, gamma, beta, eps=eps, ddof=ddof)
    return out, BatchNormKernelCache._lean(x, inv_std64.astype(dt), gamma, mean_hi, var.astype(dt),
                                           ddof, mean_lo, inv_std64, beta, scale, relu)


def _sums_not_finite(dgamma, dbeta) -> bool:
    """True exactly when the backward kernel found a non-finite dγ or dβ (and
    then left ``out`` unwritten). One dot product decides the common case (any
    NaN/inf makes it NaN/inf, 0·inf included); only when it is not finite are
    the elements checked, since finite sums can have a product that overflows."""
    if math.isfinite(np.dot(dgamma, dbeta)):
        return False
    return not (np.isfinite(dgamma).all() and np.isfinite(dbeta).all())


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
            a, float(n - cache.ddof), size * dt.itemsize <= _ROWS4_MAX_BYTES,
            max(1, min(_MAX_CHUNKS, n // _MIN_CHUNK_ROWS)), out)   # _nchunks(n)
    k = _config._state["kernels"] or _kernels()
    if size < _config.PARALLEL_MIN_ELEMENTS:
        dgamma, dbeta = k.backward_serial(*args)
    else:
        with _config.kernel_call(size):
            dgamma, dbeta = k.backward(*args)
    if _sums_not_finite(dgamma, dbeta):
        if relu or not fresh:
            return None
        with _config.reference_only():
            grads = reference("batchnorm_backward")(dy, cache.to_reference())
        return grads
    return BatchNormGrads(out, dgamma.astype(dt, copy=False), dbeta.astype(dt, copy=False))


def batchnorm_forward(x, gamma, beta, *, eps: float = 1e-5, ddof: int = 0, out=None):
    """:func:`bnmat.ops.batchnorm_forward` on the fused kernels, with an output buffer.

    Formula (as the reference)::

        μ = Xᵀ1/N,   σ² = diag(XᵀCX)/(N − ddof),   s = (σ² + ε)^(−1/2)
        Y = C X diag(s ∘ γ) + 1 βᵀ

    Parameters
    ----------
    x : array, shape (N, p)
    gamma, beta : array, shape (p,)
    eps : float, default 1e-5
    ddof : int, default 0
    out : ndarray, shape (N, p), optional
        C-contiguous buffer of x's dtype that receives y (reuse it across
        training steps); must not overlap x.

    Returns
    -------
    y : array, shape (N, p)
        ``out`` when given.
    cache : BatchNormKernelCache or bnmat.ops.BatchNormCache
        The reference cache when the reference formulas ran (input that is not
        NumPy, kernels disabled or unavailable, or fewer than
        ``MIN_ELEMENTS`` elements).
    """
    if _config.wants(x, gamma, beta):
        result = _forward(x, gamma, beta, eps, ddof, False, out)
        if result is not None:
            return result
    bn_reference = reference("batchnorm_forward")

    with _config.reference_only():
        y, cache = bn_reference(x, gamma, beta, eps=eps, ddof=ddof)
    return _into(out, y), cache


def _into(out, y):
    if out is None:
        return y
    _check_out(out, y.shape, y.dtype, "out")
    np.copyto(out, y)
    return out


def batchnorm_backward(dy, cache, *, out=None):
    """:func:`bnmat.ops.batchnorm_backward` on the fused kernels, with an output buffer.

    Formula (G = dy)::

        dβ = 1ᵀ G,   dγ = 1ᵀ (G ∘ X̂),   dX = [C G − X̂ diag(dγ)/(N − ddof)] diag(γ ∘ s)

    The two sums are one sweep over (dy, x) in float64; dX is one more pass.

    Parameters
    ----------
    dy : array, shape (N, p)
    cache : BatchNormKernelCache or bnmat.ops.BatchNormCache
    out : ndarray, shape (N, p), optional
        C-contiguous buffer of x's dtype for dX; may be ``dy`` itself (dy is then
        overwritten, which saves an N×p array when dy is not needed afterwards).

    Returns
    -------
    BatchNormGrads
        ``(dx, dgamma, dbeta)`` in x's dtype.
    """
    bn_reference = reference("batchnorm_backward")
    if isinstance(cache, BatchNormKernelCache):
        if cache.relu:
            raise ValueError(
                "this cache comes from batchnorm_relu_forward; pass it to "
                "batchnorm_relu_backward"
            )
        if _config._plain(dy) and _config.enabled():
            a = cache.gamma.astype(np.float64) * cache.inv_std64
            grads = _backward(dy, cache.x, cache.mean, cache.mean_lo, cache.scale, cache.beta,
                              False, cache.inv_std64, a, cache.ddof, out)
            if grads is not None:
                return grads
        with _config.reference_only():
            grads = bn_reference(dy, cache.to_reference())
    elif isinstance(cache, BatchNormCache):
        if _config.wants(dy, cache.x_hat):
            x_hat = np.ascontiguousarray(cache.x_hat)
            p = x_hat.shape[1]
            zero = np.zeros(p, x_hat.dtype)
            a = cache.gamma.astype(np.float64) * cache.inv_std.astype(np.float64)
            grads = _backward(dy, x_hat, zero, zero, zero, zero, False, np.ones(p), a,
                              cache.ddof, out)
            if grads is not None:
                return grads
        with _config.reference_only():
            grads = bn_reference(dy, cache)
    else:
        raise TypeError(f"expected a batch-norm cache; got {type(cache).__name__}")
    return grads._replace(dx=_into(out, grads.dx))


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
        result = _forward(x, gamma, beta, eps, ddof, True, out)
        if result is not None:
            return result[0], BatchNormReLUCache(bn=result[1], relu=None)
    relu_forward, bn_forward = reference("relu_forward"), reference("batchnorm_forward")

    with _config.reference_only():
        y, bn_cache = bn_forward(x, gamma, beta, eps=eps, ddof=ddof)
        h, relu_cache = relu_forward(y)
    return _into(out, h), BatchNormReLUCache(bn=bn_cache, relu=relu_cache)


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
            grads = _backward(dh, bn.x, bn.mean, bn.mean_lo, bn.scale, bn.beta, True,
                              bn.inv_std64, a, bn.ddof, out)
            if grads is not None:
                return grads
        # Kernels switched off since the forward pass: the same mask (the same
        # uncontracted operations in x's dtype), then the reference formula.
        bn_reference = reference("batchnorm_backward")

        dh = _prepare_dy(dh, bn.x.shape, bn.x.dtype)
        b = ((bn.x - bn.mean) - bn.mean_lo) * bn.scale + bn.beta
        g = np.where(b > 0, dh, np.zeros_like(dh))
        with _config.reference_only():
            grads = bn_reference(g, bn.to_reference())
        return grads._replace(dx=_into(out, grads.dx))
    relu_backward, bn_backward = reference("relu_backward"), reference("batchnorm_backward")

    grads = bn_backward(relu_backward(dh, cache.relu), bn)
    return grads._replace(dx=_into(out, grads.dx))


def batchnorm_backward_applies(dy, cache) -> bool:
    """Whether :func:`bnmat.ops.batchnorm_backward` should hand over to the kernels.

    Always for a kernel cache (the kernels then choose between kernel and
    reference themselves); for a reference cache, when :func:`wants` accepts dy
    and X̂.
    """
    if isinstance(cache, BatchNormKernelCache):
        return True
    return _config.wants(dy, getattr(cache, "x_hat", None))
