"""Batch norm over rows held by several processes: the statistics and sums are reduced.

A training step with a reducer (see :mod:`bnmat.distributed`) runs inside
:func:`synchronized`; while it is active, the training-mode ``forward`` of
:class:`~bnmat.layers.BatchNorm` and :class:`~bnmat.layers.GroupBatchNorm`
use the statistics of the **whole** batch (every rank's rows) instead of the
rank's own. The layers never import :mod:`bnmat.distributed`: a reducer is
any object with ``allreduce`` (a sum of a float64 buffer, identical on every
rank), ``allgather`` and ``size``.

What is exchanged, per batch-norm layer with p columns
-------------------------------------------------------
Forward, the exact two-pass moments of ``Z`` (the same corrected two-pass
algorithm as :func:`bnmat.ops.column_moments`, its sums split over ranks)::

    all-reduce 1: [n_r, 1ᵀZ_r]                → N, m = 1ᵀZ/N            (1 + p floats)
    all-reduce 2: [1ᵀD_r, 1ᵀ(D_r∘D_r)],  D = Z − 1mᵀ
                  → μ = m + 1ᵀD/N,  σ² = (1ᵀ(D∘D) − (1ᵀD)²/N)/(N − ddof)   (2p floats)

Exact sums with a second pass were chosen over merging per-rank
``(n_r, μ_r, M2_r)`` by Chan's formula: they use all-reduce only (no
all-gather whose size grows with the number of ranks) and reproduce the
single-process algorithm term by term, so the results agree with one process
to rounding (≈1e-16 relative), also for a large mean and a small spread.

Backward, the two column sums of the formula::

    all-reduce 3: [1ᵀG_r, 1ᵀ(G_r∘Ẑ_r)]  → dβ, dγ of the whole batch     (2p floats)
    dZ_r = [G_r − 1dβᵀ/N − Ẑ_r diag(dγ)/(N − ddof)] diag(γ ∘ s)

The layer's returned parameter gradients are this rank's **contributions**
``1ᵀG_r`` and ``1ᵀ(G_r∘Ẑ_r)``, like every other layer's (a Dense layer returns
``X_rᵀ dY_r``): the training functions sum all parameter gradients in one
flat all-reduce.

Group-wise batch norm is in :mod:`bnmat.layers._sync_group`.
"""

from __future__ import annotations

import contextvars
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np

from .._array_api import as_float, check_2d, get_namespace, to_numpy

__all__ = ["synchronized", "active_reducer", "SyncBatchNormCache", "sync_moments",
           "sync_batchnorm_forward", "sync_batchnorm_backward", "sync_batchnorm_relu_forward",
           "sync_batchnorm_relu_backward", "sync_population_moments"]

_REDUCER: contextvars.ContextVar = contextvars.ContextVar("bnmat_reducer", default=None)


def active_reducer():
    """The reducer of the enclosing :func:`synchronized` block, or None."""
    return _REDUCER.get()


@contextmanager
def synchronized(reducer):
    """Within this block, batch norms in training mode use the whole batch across ranks.

    ``reducer`` of size 1 (or None) changes nothing.
    """
    if reducer is None or int(reducer.size) == 1:
        yield
        return
    token = _REDUCER.set(reducer)
    try:
        yield
    finally:
        _REDUCER.reset(token)


class SyncBatchNormCache(NamedTuple):
    x_hat: Any       # (N_r, p)  Ẑ_r = ((Z_r − 1 meanᵀ) − 1 mean_loᵀ) diag(s)
    inv_std: Any     # (p,)      s = (σ² + ε)^(−1/2)
    gamma: Any       # (p,)
    mean: Any        # (p,)      μ of the whole batch
    var: Any         # (p,)      σ² of the whole batch (ddof)
    ddof: int
    n_total: int     # N, rows on all ranks
    reducer: Any
    x: Any = None    # (N_r, p)  the input, kept instead of Ẑ_r (x_hat None) on the kernel path
    relu: bool = False   # fused with the ReLU after it (then beta, scale, mean_lo are set)
    beta: Any = None     # (p,)
    scale: Any = None    # (p,)  γ ∘ s in x's dtype
    mean_lo: Any = None  # (p,)  the mean's remainder beyond ``mean`` (x's dtype)

    def without_relu(self):
        """The same cache, as from plain (not fused) batch norm."""
        return self._replace(relu=False)


def _kernel_ready(x) -> bool:
    """The numba pieces take x: a plain float NumPy array large enough (see bnmat._kernels)."""
    from .. import _kernels

    return (type(x) is np.ndarray and x.dtype in (np.float32, np.float64)
            and x.shape[0] > 0 and _kernels.wants(x))


def _sync_kernels():
    from .._kernels import _sync_bn

    return _sync_bn


def _as_matrix(x):
    xp = get_namespace(x)
    return xp, check_2d(as_float(x, "x", xp), "x")


def sync_moments(reducer, xs, ddof: int):
    """Mean and variance (divisor N − ddof) of the rows of ``xs`` on all ranks.

    Parameters
    ----------
    reducer : reducer
    xs : list of arrays, each (N_i, p); N_i = 0 allowed
    ddof : int

    Returns
    -------
    n : int
        N, the rows on all ranks.
    mean, var : arrays, shape (p,)
        float64 accumulators (float64 also for float32 data).

    Raises
    ------
    ValueError
        On every rank alike: N < max(2, ddof + 1), or non-finite values in
        any rank's rows.
    """
    xp = get_namespace(xs[0])
    p = xs[0].shape[1]
    n_local = sum(int(x.shape[0]) for x in xs)
    s = np.zeros(p)
    for x in xs:
        if _kernel_ready(x):
            s = s + _sync_kernels().column_sums(np.ascontiguousarray(x))
        elif x.shape[0]:
            s = s + np.asarray(xp.sum(x, axis=0, dtype=xp.float64))
    tot = reducer.allreduce(np.concatenate([[float(n_local)], s]))
    n = int(round(tot[0]))
    if n < 2 or n - ddof < 1:
        raise ValueError(
            f"batch norm in training mode needs at least {max(2, ddof + 1)} rows to compute "
            f"batch statistics (ddof={ddof}); got N={n} rows on all {reducer.size} ranks"
        )
    # The shift the second pass subtracts is the mean rounded to the data's
    # dtype; μ = shift + 1ᵀD/N must use that rounded shift (for float32 data the
    # rounding is up to half an ulp of the mean, a large part of a small spread).
    dtype = to_numpy(xs[0][:0]).dtype
    shift = (tot[1:] / n).astype(dtype).astype(np.float64)
    if not np.all(np.isfinite(shift)):
        raise ValueError("Input x contains NaN or infinity (on at least one rank).")
    s1, s2 = np.zeros(p), np.zeros(p)
    for x in xs:
        if _kernel_ready(x):
            a, b = _sync_kernels().shifted_sums(np.ascontiguousarray(x),
                                                shift.astype(x.dtype))
            s1, s2 = s1 + a, s2 + b
        elif x.shape[0]:
            d = x - xp.asarray(shift, dtype=x.dtype)
            s1 = s1 + np.asarray(xp.sum(d, axis=0, dtype=xp.float64))
            s2 = s2 + np.asarray(xp.sum(d * d, axis=0, dtype=xp.float64))
    tot = reducer.allreduce(np.concatenate([s1, s2]))
    s1, s2 = tot[:p], tot[p:]
    delta = s1 / n
    mean = shift + delta
    var = np.maximum((s2 - s1 * delta) / (n - ddof), 0.0)
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
        raise ValueError("Input x contains NaN or infinity, or its variance overflows "
                         "(on at least one rank).")
    return n, mean, var


def sync_batchnorm_forward(x, gamma, beta, *, eps: float, ddof: int, reducer):
    """Training-mode batch norm of this rank's rows with the whole batch's statistics.

    Formula (μ, σ² from :func:`sync_moments`, s = (σ² + ε)^(−1/2))::

        Ẑ_r = (Z_r − 1μᵀ) diag(s),   B_r = Ẑ_r diag(γ) + 1βᵀ

    Parameters
    ----------
    x : array, shape (N_r, p), N_r ≥ 0
    gamma, beta : array, shape (p,)
    eps, ddof : as in :func:`bnmat.ops.batchnorm_forward`
    reducer : reducer

    Returns
    -------
    y : array, shape (N_r, p)
    cache : SyncBatchNormCache
    """
    from ..ops.batchnorm import _check_param, _first, check_ddof, check_eps

    eps, ddof = check_eps(eps), check_ddof(ddof)
    xp, x = _as_matrix(x)
    p = x.shape[1]
    gamma = _check_param(gamma, "gamma", p, xp, x.dtype)
    beta = _check_param(beta, "beta", p, xp, x.dtype)
    n, mean, var = sync_moments(reducer, [x], ddof)
    if eps == 0 and np.any(var == 0):
        raise ValueError(
            f"column {_first(var == 0)} of x has zero variance (on all ranks together) and "
            "eps=0: the standardization divides by zero. Use eps > 0 or drop the column."
        )
    inv_std = xp.asarray(1.0 / np.sqrt(var + eps), dtype=x.dtype)
    mean_x, mean_lo = _two_part(mean, to_numpy(x[:0]).dtype)
    mean_x, mean_lo = xp.asarray(mean_x), xp.asarray(mean_lo)
    if _kernel_ready(x):
        x = np.ascontiguousarray(x)
        y = np.empty_like(x)
        _sync_kernels().normalize(x, mean_x, mean_lo, inv_std, np.ascontiguousarray(gamma),
                                  np.ascontiguousarray(beta), y)
        x_hat, kept = None, x
    else:
        x_hat, kept = ((x - mean_x) - mean_lo) * inv_std, None
        y = x_hat * gamma + beta
    cache = SyncBatchNormCache(x_hat=x_hat, inv_std=inv_std, gamma=gamma, mean=mean_x,
                               var=xp.asarray(var, dtype=x.dtype), ddof=ddof, n_total=n,
                               reducer=reducer, x=kept, mean_lo=mean_lo)
    return y, cache


def _two_part(mean, dtype):
    """``mean`` (float64) as ``hi + lo`` in ``dtype``: hi rounded, lo the remainder.

    ``(x − hi) − lo`` then centres float32 data as accurately as float64 would
    (the first subtraction is exact for x near the mean); for float64, lo = 0.
    """
    hi = np.asarray(mean).astype(dtype)
    lo = (np.asarray(mean, dtype=np.float64) - hi.astype(np.float64)).astype(dtype)
    return hi, lo


def sync_batchnorm_backward(dy, cache: SyncBatchNormCache):
    """Backward of :func:`sync_batchnorm_forward`.

    Formula (G_r = dy; dβ, dγ summed over all ranks)::

        dβ = Σ_r 1ᵀG_r,   dγ = Σ_r 1ᵀ(G_r ∘ Ẑ_r)
        dZ_r = [G_r − 1dβᵀ/N − Ẑ_r diag(dγ)/(N − ddof)] diag(γ ∘ s)

    Returns
    -------
    dx : array, shape (N_r, p)
    dgamma_r, dbeta_r : arrays, shape (p,)
        This rank's contributions ``1ᵀ(G_r∘Ẑ_r)`` and ``1ᵀG_r`` (their sum over
        ranks is the gradient).
    """
    x_hat, inv_std, gamma, ddof = cache.x_hat, cache.inv_std, cache.gamma, cache.ddof
    n, reducer = cache.n_total, cache.reducer
    if cache.x is not None:          # kernel path: Ẑ recomputed from x while streaming through it
        return _kernel_backward(dy, cache)
    xp = get_namespace(x_hat)
    if tuple(dy.shape) != tuple(x_hat.shape):
        raise ValueError(f"dy must have shape {tuple(x_hat.shape)}; got {tuple(dy.shape)}")
    dy = xp.astype(as_float(dy, "dy", xp), x_hat.dtype, copy=False)
    p = x_hat.shape[1]
    dbeta_r = np.asarray(xp.sum(dy, axis=0, dtype=xp.float64))
    dgamma_r = np.asarray(xp.sum(dy * x_hat, axis=0, dtype=xp.float64))
    tot = reducer.allreduce(np.concatenate([dbeta_r, dgamma_r]))
    dbeta = xp.asarray(tot[:p], dtype=x_hat.dtype)
    dgamma = xp.asarray(tot[p:], dtype=x_hat.dtype)
    dx = (dy - dbeta / n - x_hat * (dgamma / (n - ddof))) * (gamma * inv_std)
    return (dx, xp.asarray(dgamma_r, dtype=x_hat.dtype),
            xp.asarray(dbeta_r, dtype=x_hat.dtype))


def _kernel_backward(dy, cache: SyncBatchNormCache):
    """:func:`sync_batchnorm_backward` on the numba pieces (same formula)."""
    inv_std, gamma, mean, ddof = cache.inv_std, cache.gamma, cache.mean, cache.ddof
    n, reducer, x = cache.n_total, cache.reducer, cache.x
    if tuple(dy.shape) != tuple(x.shape):
        raise ValueError(f"dy must have shape {tuple(x.shape)}; got {tuple(dy.shape)}")
    dy = np.ascontiguousarray(as_float(dy, "dy"), dtype=x.dtype)
    k = _sync_kernels()
    dbeta_r, dgamma_r = k.backward_sums(dy, x, mean, cache.mean_lo, inv_std)
    p = x.shape[1]
    tot = reducer.allreduce(np.concatenate([dbeta_r, dgamma_r]))
    a = (tot[:p].astype(x.dtype) / n).astype(x.dtype)
    b = (tot[p:].astype(x.dtype) / (n - ddof)).astype(x.dtype)
    dx = np.empty_like(x)
    k.backward_apply(dy, x, mean, cache.mean_lo, inv_std, a, b,
                     np.ascontiguousarray(gamma * inv_std), dx)
    return dx, dgamma_r.astype(x.dtype), dbeta_r.astype(x.dtype)


def sync_batchnorm_relu_forward(bn_layer, params, state, x, reducer):
    """``ReLU ∘ BatchNorm`` in training mode, whole-batch statistics, one pass for H.

    The synchronized counterpart of :func:`bnmat.layers._fused.batchnorm_relu_forward`
    (which calls it under a reducer): ``H = max((Z − 1μᵀ) diag(γ∘s) + 1βᵀ, 0)``.

    Returns
    -------
    None
        When the numba pieces do not take x (the two layers then run one after
        the other, each synchronized).
    (h, new_state, bn_cache, relu_cache)
        As the single-process function; ``relu_cache`` is a
        :class:`~bnmat.layers._fused.FusedReLUCache` pointing to ``bn_cache``.
    """
    from ..ops.batchnorm import _check_param, _first
    from ._fused_relu import FusedReLUCache

    from ._checks import check_keys

    if not _kernel_ready(x):
        return None
    check_keys(params, ("gamma", "beta"), bn_layer)
    check_keys(state, ("mean", "var"), bn_layer, "state", optional=("count",))
    x = np.ascontiguousarray(x)
    p = x.shape[1]
    gamma = np.ascontiguousarray(_check_param(params["gamma"], "gamma", p, np, x.dtype))
    beta = np.ascontiguousarray(_check_param(params["beta"], "beta", p, np, x.dtype))
    n, mean, var = sync_moments(reducer, [x], bn_layer.ddof)
    if bn_layer.eps == 0 and np.any(var == 0):
        raise ValueError(
            f"column {_first(var == 0)} of x has zero variance (on all ranks together) and "
            "eps=0: the standardization divides by zero. Use eps > 0 or drop the column.")
    inv_std = (1.0 / np.sqrt(var + bn_layer.eps)).astype(x.dtype)
    mean_x, mean_lo = _two_part(mean, x.dtype)
    scale = np.ascontiguousarray(gamma * inv_std)
    h = np.empty_like(x)
    _sync_kernels().normalize_relu(x, mean_x, mean_lo, scale, beta, h)
    cache = SyncBatchNormCache(x_hat=None, inv_std=inv_std, gamma=gamma, mean=mean_x,
                               var=var.astype(x.dtype), ddof=bn_layer.ddof, n_total=n,
                               reducer=reducer, x=x, relu=True, beta=beta, scale=scale,
                               mean_lo=mean_lo)
    new_state = bn_layer._updated_state(state, cache.mean, cache.var)
    return h, new_state, cache, FusedReLUCache(cache)


def sync_batchnorm_relu_backward(dh, cache: SyncBatchNormCache, *, overwrite: bool):
    """Backward of :func:`sync_batchnorm_relu_forward`: G = dH ∘ 1[B > 0], then
    :func:`sync_batchnorm_backward`'s formula, in two passes.

    Returns
    -------
    dz : array, shape (N_r, p)
        A new array (``overwrite`` is accepted for the caller's interface).
    grads : dict
        This rank's contributions ``{"gamma": 1ᵀ(G_r∘Ẑ_r), "beta": 1ᵀG_r}``.
    """
    x = cache.x
    if tuple(dh.shape) != tuple(x.shape):
        raise ValueError(f"dy must have shape {tuple(x.shape)}; got {tuple(dh.shape)}")
    fits = (type(dh) is np.ndarray and dh.dtype == x.dtype and dh.flags.c_contiguous
            and dh.flags.writeable)
    dh = dh if fits else np.ascontiguousarray(as_float(dh, "dy"), dtype=x.dtype)
    k = _sync_kernels()
    dbeta_r, dgamma_r = k.backward_sums_relu(dh, x, cache.mean, cache.mean_lo, cache.inv_std,
                                             cache.scale, cache.beta)
    p, n = x.shape[1], cache.n_total
    tot = cache.reducer.allreduce(np.concatenate([dbeta_r, dgamma_r]))
    a = (tot[:p].astype(x.dtype) / n).astype(x.dtype)
    b = (tot[p:].astype(x.dtype) / (n - cache.ddof)).astype(x.dtype)
    # A fresh output even when dh may be overwritten: numba's loop writing into
    # the array it reads ran 5× slower (88 against 16 ms at 100,000 × 64).
    out = np.empty_like(x)
    k.backward_apply_relu(dh, x, cache.mean, cache.mean_lo, cache.inv_std, cache.scale,
                          cache.beta, a, b, cache.scale, out)
    return out, {"gamma": dgamma_r.astype(x.dtype), "beta": dbeta_r.astype(x.dtype)}


def sync_population_moments(layer, params, state, xs, reducer):
    """:meth:`BatchNorm.population_state` over the rows of all ranks (exact two-pass)."""
    from .. import ops

    xs = [_as_matrix(x)[1] for x in xs]
    _, mean, var = sync_moments(reducer, xs, layer.ddof)
    dtype = xs[0].dtype
    xp = get_namespace(xs[0])
    mean, var = xp.asarray(mean, dtype=dtype), xp.asarray(var, dtype=dtype)
    ys = [ops.batchnorm_inference_forward(x, params["gamma"], params["beta"], mean, var,
                                          eps=layer.eps)[0] if x.shape[0] else x * 1.0
          for x in xs]
    return ys, {**state, "mean": mean, "var": var}


