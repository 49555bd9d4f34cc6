"""Numba kernels for batch normalization and ReLU on C-contiguous NumPy arrays.

Layout and threading. ``x`` is C-contiguous of shape (N, p), float32 or
float64. Column sums are taken over fixed chunks of rows in parallel (one row of
float64 partial sums per chunk, added up in chunk order afterwards, so the
result does not depend on how many threads ran); elementwise passes are
parallel over rows. Innermost loops run along a row, over contiguous columns,
so they vectorize without reassociating a sum: every column keeps its own
sequential float64 accumulator. With ``rows4`` (arrays that fit in cache) the
sums and the forward pass read four rows per step, so that accumulators and
coefficient vectors are loaded once per four rows: while arrays sit in L2/L3,
loads, not memory, limit. Arrays streamed from DRAM go one row at a time, which
the hardware prefetchers follow better.

Precision. Statistics and the two backward sums accumulate in float64 for
either dtype. In the four-row loops on float32 data, each step's per-row terms
(differences, squares, products) and their sum over the four rows are taken in
float32, and that partial sum is converted and added to the float64
accumulator: a few float32 roundings per element, against one conversion per
element to float64 (which doubled the sweeps' instruction count). Elementwise passes compute in the data's dtype (float32 data gets
16 SIMD lanes instead of 8) after centring with a two-part mean
``x − mean = (x − mean_hi) − mean_lo``: ``mean_hi`` is the mean rounded to the
dtype and ``mean_lo`` the rounding remainder, so data with a large mean and a
small spread (float32 ``1e4 + 1e-2·N(0,1)``) keeps its digits; the first
subtraction is exact when x is within a factor 2 of the mean (Sterbenz).

fastmath is off: the order of every sum is the one written here, comparisons
with NaN keep their meaning, and no multiply-add is contracted, so the ReLU mask
recomputed in the backward pass is bitwise the one the forward pass applied
(and equals the mask a NumPy expression with the same operations gives).

The wrappers in :mod:`bnmat._kernels._batchnorm` validate every argument and
choose ``nchunks``; nothing here checks shapes or dtypes.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit, prange

_OPTS = dict(parallel=True, cache=True, nogil=True, error_model="numpy", fastmath=False)

_F64_MAX = float(np.finfo(np.float64).max)

#: rows per in-cache block of the two-pass (float64) statistics
_BLOCK_ROWS = 32


@njit(inline="always", **_OPTS)
def _moments(x, two_pass, rows4, nchunks):
    """Column means and sums of squared deviations of x, float64, one sweep.

    All sums use ``d = x − x[0]`` (the first row): a constant column then gives
    ``d = 0`` everywhere and a variance of exactly 0.

    * ``two_pass=False`` (float32 data): per chunk ``Σd`` and ``Σd²`` in
      float64. With ``rows4``, ``d``, ``d²`` and their sums over each group of
      four rows are float32 (``d`` is exact when x is within a factor 2 of
      ``x[0]``, e.g. a large mean with a small spread); each group's two sums
      are then added in float64. Without ``rows4`` (arrays streamed from
      DRAM, where converting costs nothing) ``d`` and ``d²`` are formed in
      float64, where they are exact. Either way the error is amplified by
      ``1 + ((x[0] − mean)/sd)²`` and stays near float32 rounding.
    * ``two_pass=True`` (float64 data): blocks of ``_BLOCK_ROWS`` rows stay
      in cache and are done by the two-pass algorithm (block mean, then
      ``Σ(d − block mean)²``).

    Blocks and chunks are merged by Chan et al.'s pairwise update, in order.
    Returns ``(mean_d, m2)``: the column means of ``d`` (add ``x[0]`` for the
    mean of x) and ``m2 = Σ(x − mean)²``.
    """
    n, p = x.shape
    x0 = x[0]
    cmean = np.zeros((nchunks, p))
    cm2 = np.zeros((nchunks, p))
    for c in prange(nchunks):
        r0 = c * n // nchunks
        r1 = (c + 1) * n // nchunks
        s = np.empty(p)
        q = np.empty(p)
        mc = cmean[c]
        qc = cm2[c]
        cnt = 0
        block = _BLOCK_ROWS if two_pass else r1 - r0
        for b0 in range(r0, r1, block):
            b1 = min(b0 + block, r1)
            nb = b1 - b0
            for j in range(p):
                s[j] = 0.0
                q[j] = 0.0
            if two_pass:
                for i in range(b0, b1):
                    xi = x[i]
                    for j in range(p):
                        s[j] += np.float64(xi[j]) - x0[j]
                for j in range(p):
                    s[j] /= nb
                for i in range(b0, b1):
                    xi = x[i]
                    for j in range(p):
                        d = (np.float64(xi[j]) - x0[j]) - s[j]
                        q[j] += d * d
            else:
                i = b0
                while rows4 and i + 4 <= b1:
                    xa = x[i]
                    xb = x[i + 1]
                    xc = x[i + 2]
                    xd = x[i + 3]
                    for j in range(p):
                        z = x0[j]
                        da = xa[j] - z
                        db = xb[j] - z
                        dc = xc[j] - z
                        dd = xd[j] - z
                        s[j] += np.float64((da + db) + (dc + dd))
                        q[j] += np.float64((da * da + db * db) + (dc * dc + dd * dd))
                    i += 4
                while i < b1:
                    xa = x[i]
                    for j in range(p):
                        da = np.float64(xa[j]) - np.float64(x0[j])
                        s[j] += da
                        q[j] += da * da
                    i += 1
                for j in range(p):
                    s[j] /= nb
                    q[j] = max(q[j] - s[j] * s[j] * nb, 0.0)
            tot = cnt + nb
            wa = nb / tot
            wb = cnt * wa
            for j in range(p):
                delta = s[j] - mc[j]
                mc[j] += delta * wa
                qc[j] += q[j] + delta * delta * wb
            cnt = tot
    mean = np.zeros(p)
    m2 = np.zeros(p)
    cnt = 0
    for c in range(nchunks):
        nb = (c + 1) * n // nchunks - c * n // nchunks
        tot = cnt + nb
        wa = nb / tot
        wb = cnt * wa
        for j in range(p):
            delta = cmean[c, j] - mean[j]
            mean[j] += delta * wa
            m2[j] += cm2[c, j] + delta * delta * wb
        cnt = tot
    return mean, m2


@njit(cache=True, nogil=True, error_model="numpy", fastmath=False)
def _range_status(var, inv_std, like, n, rows4, two_pass):
    """3 and the column when the statistics leave the range where this kernel's
    arithmetic matches the reference's, else (0, -1).

    Out of range: var or s not finite once rounded to x's dtype; for float32 in
    the four-row loop (squares formed in float32), a positive variance below
    1e-30 (a deviation's square may underflow); for float64, a positive
    variance below 1e-250 or above max/(2N) (a deviation's square may under- or
    overflow in one path and not the other).
    """
    p = var.shape[0]
    cast = np.empty(2, like.dtype)       # x's dtype
    big = _F64_MAX / (2.0 * n)
    for j in range(p):
        cast[0] = var[j]
        cast[1] = inv_std[j]
        if not (np.isfinite(cast[0]) and np.isfinite(cast[1])):
            return 3, j
        v = var[j]
        if v > 0.0:
            if two_pass:
                if v < 1e-250 or v > big:
                    return 3, j
            elif rows4 and v < 1e-30:
                return 3, j
    return 0, -1


@njit(**_OPTS)
def forward(x, gamma, beta, eps, ddof, relu, two_pass, rows4, nchunks, out):
    """Batch-norm training forward pass: statistics, then ``out`` in one pass.

    ``gamma`` and ``beta`` have x's dtype. Writes
    ``out = ((x − mean_hi) − mean_lo)·scale + beta`` (through ReLU when
    ``relu``), ``scale = γ ∘ s`` rounded to the dtype, unless a column is
    unusable: then ``status`` is 1 (non-finite statistics), 2 (zero variance
    with eps = 0) or 3 (statistics outside the range where this kernel matches
    the reference, :func:`_range_status`), ``col`` the first such column, and
    out is left untouched.

    Returns ``(mean, var, inv_std, mean_hi, mean_lo, scale, status, col)``:
    the first three float64, the next three in x's dtype.
    """
    n, p = x.shape
    mean_d, m2 = _moments(x, two_pass, rows4, nchunks)
    x0 = x[0]
    mean = np.empty(p)
    var = np.empty(p)
    inv_std = np.empty(p)
    mean_hi = np.empty(p, x.dtype)
    mean_lo = np.empty(p, x.dtype)
    scale = np.empty(p, x.dtype)
    status = 0
    col = -1
    for j in range(p):
        # mean = x0 + mean_d as an unevaluated sum hi + lo (Knuth's TwoSum), so
        # that centring keeps digits beyond one float64 when the mean is large
        # against the spread (float64 1e8 + N(0,1)).
        a = np.float64(x0[j])
        b = mean_d[j]
        m = a + b
        bv = m - a
        err = (a - (m - bv)) + (b - bv)
        mean[j] = m
        mean_hi[j] = m
        mean_lo[j] = (m - np.float64(mean_hi[j])) + err
        var[j] = m2[j] / (n - ddof)
        if status == 0 and not (np.isfinite(m) and np.isfinite(var[j])):
            status = 1
            col = j
    if status == 0 and eps == 0.0:
        for j in range(p):
            if var[j] == 0.0:
                status = 2
                col = j
                break
    for j in range(p):
        inv_std[j] = 1.0 / np.sqrt(var[j] + eps)
        scale[j] = np.float64(gamma[j]) * inv_std[j]
    if status == 0:
        status, col = _range_status(var, inv_std, mean_hi, n, rows4, two_pass)
    if status != 0:
        return mean, var, inv_std, mean_hi, mean_lo, scale, status, col
    zero = np.zeros(1, x.dtype)[0]
    # One row per step: the loop over a row's columns then has two pointers
    # written/read per row, and LLVM vectorizes it behind a cheap overlap check.
    # (Four rows per step, as the sums do, needs more runtime checks than the
    # vectorizer allows and ran scalar: 2.5x slower at 256x64 and 4096x256.)
    if relu:
        for i in prange(n):
            xi = x[i]
            oi = out[i]
            for j in range(p):
                v = ((xi[j] - mean_hi[j]) - mean_lo[j]) * scale[j] + beta[j]
                oi[j] = v if v > zero else zero
    else:
        for i in prange(n):
            xi = x[i]
            oi = out[i]
            for j in range(p):
                oi[j] = ((xi[j] - mean_hi[j]) - mean_lo[j]) * scale[j] + beta[j]
    return mean, var, inv_std, mean_hi, mean_lo, scale, status, col


@njit(**_OPTS)
def backward(dy, x, mean_hi, mean_lo, scale, beta, relu, norm, a, n_ddof, rows4, nchunks, out):
    """Batch-norm training backward pass: two column sums, then ``out``.

    With ``D = (X − 1 mean_hiᵀ) − 1 mean_loᵀ`` (recomputed from x), ``X̂ = D
    diag(norm)`` and ``G = dy`` (or, when ``relu``, ``dy ∘ 1[D diag(scale) + 1βᵀ
    > 0]``, the forward pass's mask)::

        dβ = 1ᵀG,   dγ = 1ᵀ(G ∘ X̂)                       (float64 sums)
        out = [G − 1 dβᵀ/N − X̂ diag(dγ)/(N − ddof)] diag(a),   a = γ ∘ s

    Without ReLU, mean_lo leaves the per-element work: the sums take
    ``1ᵀ(G ∘ (X − 1 mean_hiᵀ))`` and subtract ``mean_lo ∘ 1ᵀG`` in float64, and
    ``out = G diag(a) + (X − 1 mean_hiᵀ) diag(b) + 1(c − b ∘ mean_lo)ᵀ``.
    With ReLU the mask needs D itself, so D is formed as written above. In the
    four-row loop each group's four float32 terms are summed in float32 before
    the float64 add.

    ``out`` may be ``dy`` itself: each element is read before it is written.
    Returns ``(dgamma, dbeta)`` in float64; when one of them is not finite,
    ``out`` is not written.
    """
    n, p = x.shape
    cdb = np.zeros((nchunks, p))
    cdg = np.zeros((nchunks, p))
    zero = np.zeros(1, x.dtype)[0]
    for c in prange(nchunks):
        r0 = c * n // nchunks
        r1 = (c + 1) * n // nchunks
        db = cdb[c]
        dg = cdg[c]
        i = r0
        while rows4 and i + 4 <= r1:
            xa = x[i]
            xb = x[i + 1]
            xc = x[i + 2]
            xd = x[i + 3]
            ga = dy[i]
            gb = dy[i + 1]
            gc = dy[i + 2]
            gd = dy[i + 3]
            for j in range(p):
                h = mean_hi[j]
                da = xa[j] - h
                d2 = xb[j] - h
                d3 = xc[j] - h
                d4 = xd[j] - h
                g1 = ga[j]
                g2 = gb[j]
                g3 = gc[j]
                g4 = gd[j]
                if relu:
                    lo = mean_lo[j]
                    da = da - lo
                    d2 = d2 - lo
                    d3 = d3 - lo
                    d4 = d4 - lo
                    s = scale[j]
                    b = beta[j]
                    g1 = g1 if da * s + b > zero else zero
                    g2 = g2 if d2 * s + b > zero else zero
                    g3 = g3 if d3 * s + b > zero else zero
                    g4 = g4 if d4 * s + b > zero else zero
                db[j] += np.float64((g1 + g2) + (g3 + g4))
                dg[j] += np.float64((g1 * da + g2 * d2) + (g3 * d3 + g4 * d4))
            i += 4
        while i < r1:
            xa = x[i]
            ga = dy[i]
            for j in range(p):
                da = xa[j] - mean_hi[j]
                g1 = ga[j]
                if relu:
                    da = da - mean_lo[j]
                    if not (da * scale[j] + beta[j] > zero):
                        g1 = zero
                db[j] += np.float64(g1)
                dg[j] += np.float64(g1) * np.float64(da)
            i += 1
    dbeta = np.zeros(p)
    dgamma = np.zeros(p)
    for c in range(nchunks):
        for j in range(p):
            dbeta[j] += cdb[c, j]
            dgamma[j] += cdg[c, j]
    ca = np.empty(p, x.dtype)
    cb = np.empty(p, x.dtype)
    cc = np.empty(p, x.dtype)
    for j in range(p):
        if not relu:
            # Without ReLU the sums were of G ∘ (X − 1 mean_hiᵀ): take out mean_lo.
            dgamma[j] -= np.float64(mean_lo[j]) * dbeta[j]
        dgamma[j] *= norm[j]
        ca[j] = a[j]
        b64 = -a[j] * norm[j] * dgamma[j] / n_ddof
        cb[j] = b64
        # Without ReLU, dx = a∘G + b∘(X − mean_hi) + (c − b∘mean_lo): mean_lo is
        # folded into the constant, which saves a subtraction per element.
        c64 = -a[j] * dbeta[j] / n
        cc[j] = c64 if relu else c64 - b64 * np.float64(mean_lo[j])
    for j in range(p):
        if not (np.isfinite(dgamma[j]) and np.isfinite(dbeta[j])):
            # The wrapper hands this input to the reference; out (possibly dy
            # itself) is left untouched.
            return dgamma, dbeta
    # When out is dy (in place), dy's row is first copied to a small buffer: a
    # loop reading dy and writing the same row would fail the vectorizer's
    # runtime overlap check and run scalar, about 6× slower. Otherwise the
    # copy is skipped (it cost a third of the pass at 256×64).
    inplace = out.ctypes.data == dy.ctypes.data
    for c in prange(nchunks):
        gi = np.empty(p, x.dtype)
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            xi = x[i]
            di = dy[i]
            oi = out[i]
            if inplace:
                for j in range(p):
                    gi[j] = di[j]
                if relu:
                    for j in range(p):
                        d = (xi[j] - mean_hi[j]) - mean_lo[j]
                        g = gi[j] if d * scale[j] + beta[j] > zero else zero
                        oi[j] = (ca[j] * g + cb[j] * d) + cc[j]
                else:
                    for j in range(p):
                        oi[j] = (ca[j] * gi[j] + cb[j] * (xi[j] - mean_hi[j])) + cc[j]
            elif relu:
                for j in range(p):
                    d = (xi[j] - mean_hi[j]) - mean_lo[j]
                    g = di[j] if d * scale[j] + beta[j] > zero else zero
                    oi[j] = (ca[j] * g + cb[j] * d) + cc[j]
            else:
                for j in range(p):
                    oi[j] = (ca[j] * di[j] + cb[j] * (xi[j] - mean_hi[j])) + cc[j]
    return dgamma, dbeta


@njit(**_OPTS)
def inference_forward(x, mean, inv_std, gamma, beta, nchunks, out):
    """``out = ((x − mean) · inv_std) · γ + β`` in x's dtype, in the reference's order.

    The same operations as the NumPy reference, elementwise and uncontracted, so
    the result is bitwise the reference's. Returns False when x has a NaN or an
    infinity (found as a non-zero column sum of ``x · 0``, which vectorizes).
    """
    n, p = x.shape
    zero = np.zeros(1, x.dtype)[0]
    chk = np.zeros((nchunks, p), x.dtype)
    for c in prange(nchunks):
        ck = chk[c]
        for i in range(c * n // nchunks, (c + 1) * n // nchunks):
            xi = x[i]
            oi = out[i]
            for j in range(p):
                v = xi[j]
                oi[j] = ((v - mean[j]) * inv_std[j]) * gamma[j] + beta[j]
                ck[j] += v * zero
    for c in range(nchunks):
        for j in range(p):
            if chk[c, j] != zero:
                return False
    return True


@njit(**_OPTS)
def relu_forward(x, out):
    """``out = x`` where x > 0, else 0 (NaN gives 0), for 1-D contiguous arrays."""
    zero = np.zeros(1, x.dtype)[0]
    for i in prange(x.shape[0]):
        v = x[i]
        out[i] = max(zero, v)


@njit(**_OPTS)
def relu_backward(dy, x, out):
    """``out = dy`` where x > 0, else 0, for 1-D contiguous arrays."""
    zero = np.zeros(1, x.dtype)[0]
    for i in prange(x.shape[0]):
        out[i] = dy[i] if x[i] > zero else zero


@njit(cache=True, nogil=True, error_model="numpy", fastmath=False)
def sums_finite(dgamma, dbeta):
    """True when every element of both vectors is finite (``backward``'s own
    test before it writes ``out``); no floating-point warning either way."""
    for j in range(dgamma.shape[0]):
        if not (np.isfinite(dgamma[j]) and np.isfinite(dbeta[j])):
            return False
    return True


# ------------------------------------------------------------- serial builds
_SERIAL_OPTS = dict(_OPTS, parallel=False)


def _serial_build(kernel, name):
    """``kernel`` compiled without threads (``prange`` runs as ``range``).

    The same source, the same chunks (a function of N only) and the same
    order of every operation: the results are bitwise those of the parallel
    build (``tests/test_kernels.py``). Small arrays use it: no parallel region
    to start and no switch of numba's thread count per call. Helpers called
    inside (``_moments``) are inlined, so they run serially too.
    """
    py = kernel.py_func
    f = types.FunctionType(py.__code__, globals(), name, py.__defaults__, py.__closure__)
    f.__qualname__ = name
    f.__doc__ = f"Serial build of :func:`{py.__name__}` (same arguments, bitwise the same results)."
    return njit(**_SERIAL_OPTS)(f)


forward_serial = _serial_build(forward, "forward_serial")
backward_serial = _serial_build(backward, "backward_serial")
