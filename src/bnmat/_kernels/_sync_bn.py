"""Numba kernels for batch norm whose statistics are reduced across processes.

The synchronized batch norm (:mod:`bnmat.layers._sync`) cannot use the fused
single-process kernels, which compute the statistics and apply them in one
call: between the local sums and their use lies an all-reduce. These kernels
are the pieces, each one sweep over C-contiguous (N, p) arrays, one thread
(each process of a distributed run has its own core):

* ``column_sums(x)``, ``shifted_sums(x, shift)``: ``1ᵀX`` and, with
  ``D = X − 1 shiftᵀ``, ``1ᵀD`` and ``1ᵀ(D∘D)`` (the corrected two-pass moments);
* ``normalize``: ``Y = ((X − 1μᵀ) diag(s)) diag(γ) + 1βᵀ``;

where μ is passed in two parts, ``X − 1μᵀ = (X − 1 mean_hiᵀ) − 1 mean_loᵀ``
(mean_hi the mean rounded to x's dtype, mean_lo the remainder), so float32
data with a large mean and a small spread keep their digits;
* ``backward_sums``: ``1ᵀG`` and ``1ᵀ(G∘X̂)`` with X̂ recomputed from X;
* ``backward_apply``: ``dX = (G − 1aᵀ − X̂ diag(b)) diag(c)``.

Sums accumulate in float64 along each column in row order; elementwise work
is in x's dtype with the operations (and their order) of the NumPy formulas
in :mod:`bnmat.layers._sync`, so both give the same bits elementwise and the
sums differ by rounding only. fastmath is off.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_OPTS = dict(cache=True, nogil=True, error_model="numpy", fastmath=False)

__all__ = ["column_sums", "shifted_sums", "normalize", "backward_sums", "backward_apply"]


@njit(**_OPTS)
def column_sums(x):
    n, p = x.shape
    s = np.zeros(p)
    for i in range(n):
        for j in range(p):
            s[j] += x[i, j]
    return s


@njit(**_OPTS)
def shifted_sums(x, shift):
    n, p = x.shape
    s1 = np.zeros(p)
    s2 = np.zeros(p)
    for i in range(n):
        for j in range(p):
            d = x[i, j] - shift[j]
            s1[j] += d
            s2[j] += d * d
    return s1, s2


@njit(**_OPTS)
def normalize(x, mean, mean_lo, inv_std, gamma, beta, out):
    n, p = x.shape
    for i in range(n):
        for j in range(p):
            out[i, j] = (((x[i, j] - mean[j]) - mean_lo[j]) * inv_std[j]) * gamma[j] + beta[j]


@njit(**_OPTS)
def backward_sums(dy, x, mean, mean_lo, inv_std):
    n, p = x.shape
    sb = np.zeros(p)
    sg = np.zeros(p)
    for i in range(n):
        for j in range(p):
            g = dy[i, j]
            sb[j] += g
            sg[j] += g * (((x[i, j] - mean[j]) - mean_lo[j]) * inv_std[j])
    return sb, sg


@njit(**_OPTS)
def backward_apply(dy, x, mean, mean_lo, inv_std, a, b, c, out):
    n, p = x.shape
    for i in range(n):
        for j in range(p):
            x_hat = ((x[i, j] - mean[j]) - mean_lo[j]) * inv_std[j]
            out[i, j] = ((dy[i, j] - a[j]) - x_hat * b[j]) * c[j]


# Batch norm fused with the ReLU after it: B = ((X − 1 meanᵀ) − 1 mean_loᵀ) diag(c) + 1βᵀ with
# c = γ∘s rounded to x's dtype (the operations of
# bnmat.layers._fused.relu_backward_from_batchnorm, so the mask recomputed
# in the backward pass is bitwise the one applied here); H = max(B, 0) (NaN → 0).


@njit(**_OPTS)
def normalize_relu(x, mean, mean_lo, scale, beta, out):
    n, p = x.shape
    for i in range(n):
        for j in range(p):
            b = ((x[i, j] - mean[j]) - mean_lo[j]) * scale[j] + beta[j]
            out[i, j] = b if b > 0 else 0.0


@njit(**_OPTS)
def backward_sums_relu(dh, x, mean, mean_lo, inv_std, scale, beta):
    n, p = x.shape
    sb = np.zeros(p)
    sg = np.zeros(p)
    for i in range(n):
        for j in range(p):
            d = (x[i, j] - mean[j]) - mean_lo[j]
            if d * scale[j] + beta[j] > 0:
                g = dh[i, j]
                sb[j] += g
                sg[j] += g * (d * inv_std[j])
    return sb, sg


@njit(**_OPTS)
def backward_apply_relu(dh, x, mean, mean_lo, inv_std, scale, beta, a, b, c, out):
    n, p = x.shape
    for i in range(n):
        for j in range(p):
            d = (x[i, j] - mean[j]) - mean_lo[j]
            g = dh[i, j] if d * scale[j] + beta[j] > 0 else 0.0
            out[i, j] = ((g - a[j]) - (d * inv_std[j]) * b[j]) * c[j]
