"""The fused CPU kernels (bnmat._kernels) against the reference formulas.

The reference is the array-API code of bnmat.ops, run with the kernels disabled
(``BNMAT_DISABLE_KERNELS=1``); it is itself proved against finite differences
and torch.autograd in tests/test_ops.py. Here the kernels must agree with it
(float64 to 1e-12, normwise; float32 as the dtype allows), keep its contract
(errors and messages, returned types, dtypes, inputs never written), and, for
the fused batch norm + ReLU, agree with independent oracles (finite differences,
torch.autograd).

Tolerances: float64 1e-12; float32 3e-6 (a few units in the last place of the
largest entry; both paths round every elementwise step to float32).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from bnmat import _kernels, ops
from bnmat._kernels import _config

RTOL = {np.float64: 1e-12, np.float32: 3e-6}


@pytest.fixture
def kernels_on(monkeypatch):
    """Kernels enabled for every size, and multi-threaded for every size (both
    thresholds lowered to 0), so that small test inputs exercise the parallel
    code paths."""
    monkeypatch.delenv(_config.DISABLE_ENV, raising=False)
    monkeypatch.setattr(_config, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(_config, "PARALLEL_MIN_ELEMENTS", 0)
    assert _kernels.enabled()


class _Reference:
    """Context manager: the reference formulas (kernels disabled) inside."""

    def __enter__(self):
        self.old = os.environ.get(_config.DISABLE_ENV)
        os.environ[_config.DISABLE_ENV] = "1"

    def __exit__(self, *exc):
        if self.old is None:
            del os.environ[_config.DISABLE_ENV]
        else:
            os.environ[_config.DISABLE_ENV] = self.old


reference = _Reference()


def rel(actual, expected, floor=0.0):
    """Normwise relative error ``max|a − e| / max(max|e|, floor)``."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    scale = max(np.max(np.abs(expected)), floor, 1e-300)
    return float(np.max(np.abs(actual - expected)) / scale)


def _data(rng, n, p, dtype, loc=3.0, scale=2.0):
    x = (loc + scale * rng.standard_normal((n, p))).astype(dtype)
    gamma = (1.0 + 0.3 * rng.standard_normal(p)).astype(dtype)
    beta = (0.5 * rng.standard_normal(p)).astype(dtype)
    dy = rng.standard_normal((n, p)).astype(dtype)
    return x, gamma, beta, dy


def _layout(a, layout):
    if layout == "F":
        return np.asfortranarray(a)
    if layout == "strided":
        wide = np.zeros((a.shape[0] * 2, a.shape[1] * 3), a.dtype)
        wide[::2, ::3] = a
        return wide[::2, ::3]
    return a


def _assert_grads_close(g, r, tol, cache=None, dy=None):
    """dγ, dβ normwise; dx relative to the size of the terms it is a difference of.

    dX = [G − 1dβᵀ/N − X̂ diag(dγ)/(N − ddof)] diag(γ ∘ s) can be far smaller than
    its terms (for N = 2 it is O(ε)); rounding errors scale with the terms,
    ``max|γ∘s| · max|G|``, so that is the floor of the relative error of dx.
    """
    assert type(g) is type(r)
    floor = 0.0
    if cache is not None:
        floor = float(np.max(np.abs(cache.gamma * cache.inv_std)) * np.max(np.abs(dy)))
    for name in ("dx", "dgamma", "dbeta"):
        assert getattr(g, name).dtype == getattr(r, name).dtype, name
        f = floor if name == "dx" else 0.0
        assert rel(getattr(g, name), getattr(r, name), f) < tol, name


SHAPES = [(2, 1), (2, 5), (3, 1), (7, 3), (64, 16), (257, 33), (2048, 4)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ddof,eps", [(0, 1e-5), (1, 0.0)])
def test_batchnorm_matches_reference(kernels_on, rng, dtype, shape, ddof, eps):
    n, p = shape
    if n - ddof < 2 and eps == 0.0:
        ddof = 0  # N=2, ddof=1 is legal but leaves one degree of freedom; keep both
    x, gamma, beta, dy = _data(rng, n, p, dtype)
    y, cache = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
    grads = ops.batchnorm_backward(dy, cache)
    assert isinstance(cache, _kernels.BatchNormKernelCache)
    with reference:
        y_ref, cache_ref = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
        grads_ref = ops.batchnorm_backward(dy, cache_ref)
    assert isinstance(cache_ref, ops.BatchNormCache)
    tol = RTOL[dtype]
    assert y.dtype == x.dtype and y.shape == x.shape
    assert rel(y, y_ref) < tol
    for name in ("mean", "var", "inv_std", "gamma", "x_hat"):
        got, want = getattr(cache, name), getattr(cache_ref, name)
        assert got.dtype == want.dtype, name
        assert rel(got, want) < tol, name
    assert cache.ddof == cache_ref.ddof
    _assert_grads_close(grads, grads_ref, tol, cache_ref, dy)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_one_row_loops_for_large_arrays(kernels_on, monkeypatch, rng, dtype, relu):
    """Arrays above 8 MiB take one-row loops instead of four-row ones; force that
    path on a small array (129 rows: chunks whose row counts are not multiples of 4)."""
    from bnmat._kernels import _batchnorm

    x, gamma, beta, dy = _data(rng, 129, 6, dtype)
    monkeypatch.setattr(_batchnorm, "_ROWS4_MAX_BYTES", 0)
    if relu:
        h, cache = _kernels.batchnorm_relu_forward(x, gamma, beta)
        grads = _kernels.batchnorm_relu_backward(dy, cache)
        _, h_ref, g_ref = _compose_reference(x, gamma, beta, dy, 1e-5, 0)
        if dtype == np.float32:  # compare under the kernel's own mask
            with reference:
                _, bn_cache = ops.batchnorm_forward(x, gamma, beta)
                g_ref = ops.batchnorm_backward(np.where(h > 0, dy, 0).astype(dtype), bn_cache)
        cache = cache.bn
    else:
        h, cache = ops.batchnorm_forward(x, gamma, beta)
        grads = ops.batchnorm_backward(dy, cache)
        with reference:
            h_ref, c_ref = ops.batchnorm_forward(x, gamma, beta)
            g_ref = ops.batchnorm_backward(dy, c_ref)
    assert rel(h, h_ref) < RTOL[dtype]
    _assert_grads_close(grads, g_ref, RTOL[dtype], cache, dy)


@pytest.mark.parametrize("layout", ["F", "strided"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_layouts_agree_with_c_order(kernels_on, rng, layout, dtype):
    x, gamma, beta, dy = _data(rng, 130, 7, dtype)
    y, cache = ops.batchnorm_forward(x, gamma, beta)
    grads = ops.batchnorm_backward(dy, cache)
    xl, dyl = _layout(x, layout), _layout(dy, layout)
    y2, cache2 = ops.batchnorm_forward(xl, gamma, beta)
    grads2 = ops.batchnorm_backward(dyl, cache2)
    # The kernels copy to C order first, so every layout gives bitwise the same.
    assert np.array_equal(y, y2)
    for a, b in zip(grads, grads2):
        assert np.array_equal(a, b)
    with reference:
        y_ref, c_ref = ops.batchnorm_forward(xl, gamma, beta)
        g_ref = ops.batchnorm_backward(dyl, c_ref)
    assert rel(y2, y_ref) < RTOL[dtype]
    _assert_grads_close(grads2, g_ref, RTOL[dtype])


def test_large_mean_small_spread_float32(kernels_on, rng):
    """float32 1e4 + 1e-2·N(0,1): the statistics accumulate in float64 and the
    centring uses a two-part mean, so y keeps float32 accuracy."""
    n, p = 4096, 8
    x = (1e4 + 1e-2 * rng.standard_normal((n, p))).astype(np.float32)
    gamma, beta = np.ones(p, np.float32), np.zeros(p, np.float32)
    dy = rng.standard_normal((n, p)).astype(np.float32)
    y, cache = ops.batchnorm_forward(x, gamma, beta, eps=0.0)
    grads = ops.batchnorm_backward(dy, cache)
    # Independent float64 truth on the same float32 numbers, by plain two-pass.
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=0)
    var = ((x64 - mean) ** 2).mean(axis=0)
    x_hat = (x64 - mean) / np.sqrt(var)
    dy64 = dy.astype(np.float64)
    dgamma = (dy64 * x_hat).sum(axis=0)
    dx = (dy64 - dy64.mean(axis=0) - x_hat * dgamma / n) / np.sqrt(var)
    assert rel(cache.var, var) < 1e-6
    assert rel(y, x_hat) < 1e-5
    assert rel(grads.dgamma, dgamma) < 1e-6
    assert rel(grads.dx, dx) < 1e-5
    with reference:
        y_ref, _ = ops.batchnorm_forward(x, gamma, beta, eps=0.0)
    assert rel(y, y_ref) < 1e-5


def test_large_mean_small_spread_float64(kernels_on, rng):
    n, p = 3000, 3
    x = 1e8 + rng.standard_normal((n, p))
    y, cache = ops.batchnorm_forward(x, np.ones(p), np.zeros(p), eps=0.0)
    centered = x - x.mean(axis=0)
    var = (centered**2).mean(axis=0)
    assert rel(cache.var, var) < 1e-9  # x itself carries 1e8·2⁻⁵³ ≈ 1e-8 absolute noise
    with reference:
        y_ref, _ = ops.batchnorm_forward(x, np.ones(p), np.zeros(p), eps=0.0)
    assert rel(y, y_ref) < 1e-9


def test_float32_sums_accumulate_in_float64(kernels_on, rng):
    """dγ over 65536 rows: float64 accumulation keeps it near float32 rounding of
    the result, far better than a float32 running sum."""
    n, p = 65536, 2
    x, gamma, beta, dy = _data(rng, n, p, np.float32)
    dy = dy + 1.0  # a non-zero mean makes sequential float32 sums drift
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    grads = ops.batchnorm_backward(dy, cache)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    x_hat = (x64 - x64.mean(axis=0)) / np.sqrt(x64.var(axis=0) + 1e-5)
    assert rel(grads.dbeta, dy64.sum(axis=0)) < 1e-7
    assert rel(grads.dgamma, (dy64 * x_hat).sum(axis=0)) < 1e-5


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_constant_column_with_positive_eps(kernels_on, rng, dtype):
    x, gamma, beta, dy = _data(rng, 50, 4, dtype)
    x[:, 2] = dtype(0.1)
    y, cache = ops.batchnorm_forward(x, gamma, beta, eps=1e-3)
    grads = ops.batchnorm_backward(dy, cache)
    assert cache.var[2] == 0
    assert np.all(y[:, 2] == beta[2])
    assert np.all(np.isfinite(grads.dx)) and np.all(np.isfinite(grads.dgamma))
    with reference:
        y_ref, c_ref = ops.batchnorm_forward(x, gamma, beta, eps=1e-3)
        g_ref = ops.batchnorm_backward(dy, c_ref)
    assert rel(y, y_ref) < RTOL[dtype]
    _assert_grads_close(grads, g_ref, RTOL[dtype])


def _error(f):
    with pytest.raises((ValueError, TypeError)) as info:
        f()
    return info.type, str(info.value)


BAD_INPUTS = {
    "zero variance, eps=0": lambda x, g, b: (np.where(np.arange(4) == 1, 7.0, x), g, b, 0.0, 0),
    "NaN": lambda x, g, b: (np.where((np.arange(4) == 2) & (np.arange(9)[:, None] == 3),
                                     np.nan, x), g, b, 1e-5, 0),
    "infinity": lambda x, g, b: (np.where(np.arange(4) == 0, np.inf, x), g, b, 1e-5, 0),
    "one row": lambda x, g, b: (x[:1], g, b, 1e-5, 0),
    "ddof too large": lambda x, g, b: (x[:2], g, b, 1e-5, 2),
    "gamma shape": lambda x, g, b: (x, g[:3], b, 1e-5, 0),
    "NaN and one row": lambda x, g, b: (np.full((1, 4), np.nan), g, b, 1e-5, 0),
    "negative eps": lambda x, g, b: (x, g, b, -1.0, 0),
    "bool ddof": lambda x, g, b: (x, g, b, 1e-5, True),
    "1-D x": lambda x, g, b: (x[:, 0], g, b, 1e-5, 0),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_errors_match_reference(kernels_on, rng, case, dtype):
    x, gamma, beta, _ = _data(rng, 9, 4, np.float64)
    x, gamma, beta, eps, ddof = BAD_INPUTS[case](x, gamma, beta)
    x, gamma, beta = (np.asarray(a, dtype) for a in (x, gamma, beta))
    got = _error(lambda: ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof))
    with reference:
        want = _error(lambda: ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof))
    assert got == want


def test_zero_variance_error_names_the_column(kernels_on, rng):
    x, gamma, beta, _ = _data(rng, 30, 5, np.float32)
    x[:, 3] = 2.5
    with pytest.raises(ValueError, match="column 3 of x has zero variance"):
        ops.batchnorm_forward(x, gamma, beta, eps=0.0)


@pytest.mark.parametrize("fused", [False, True])
def test_inputs_never_written(kernels_on, rng, fused):
    x, gamma, beta, dy = _data(rng, 40, 6, np.float32)
    saved = [a.copy() for a in (x, gamma, beta, dy)]
    if fused:
        _, cache = _kernels.batchnorm_relu_forward(x, gamma, beta)
        _kernels.batchnorm_relu_backward(dy, cache)
    else:
        _, cache = ops.batchnorm_forward(x, gamma, beta)
        ops.batchnorm_backward(dy, cache)
    for a, b in zip((x, gamma, beta, dy), saved):
        assert np.array_equal(a, b)


def test_integer_input_is_converted(kernels_on, rng):
    x, gamma, beta, _ = _data(rng, 20, 3, np.float64)
    xi = np.round(x * 10).astype(np.int32)
    xi.flags.writeable = False
    y, cache = ops.batchnorm_forward(xi, gamma, beta)
    assert y.dtype == np.float64
    with reference:
        y_ref, _ = ops.batchnorm_forward(xi, gamma, beta)
    assert rel(y, y_ref) < 1e-12


def test_results_do_not_depend_on_thread_count(kernels_on, rng):
    x, gamma, beta, dy = _data(rng, 3000, 9, np.float32)
    threads = numba.get_num_threads()
    try:
        runs = []
        for t in sorted({1, threads}):
            numba.set_num_threads(t)
            y, cache = ops.batchnorm_forward(x, gamma, beta)
            runs.append((y, *ops.batchnorm_backward(dy, cache)))
    finally:
        numba.set_num_threads(threads)
    y2, cache2 = ops.batchnorm_forward(x, gamma, beta)
    runs.append((y2, *ops.batchnorm_backward(dy, cache2)))
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("rows4", [True, False])
@pytest.mark.parametrize("relu", [False, True])
def test_parallel_results_do_not_depend_on_thread_count(kernels_on, monkeypatch, rng,
                                                         rows4, relu):
    """Parallel regions really run (threshold lowered), in both loop shapes, with
    data whose mean does not fit float32 (mean_lo != 0): bitwise equal results."""
    from bnmat._kernels import _batchnorm

    monkeypatch.setattr(_config, "PARALLEL_MIN_ELEMENTS", 0)
    if not rows4:
        monkeypatch.setattr(_batchnorm, "_ROWS4_MAX_BYTES", 0)
    n, p = 2051, 37  # chunks whose row counts are not multiples of 4
    x = (300.0 + 3.0 * rng.standard_normal((n, p))).astype(np.float32)
    gamma = (1.0 + 0.1 * rng.standard_normal(p)).astype(np.float32)
    beta = (0.1 * rng.standard_normal(p)).astype(np.float32)
    dy = rng.standard_normal((n, p)).astype(np.float32)
    fwd = _kernels.batchnorm_relu_forward if relu else _kernels.batchnorm_forward
    bwd = _kernels.batchnorm_relu_backward if relu else _kernels.batchnorm_backward
    threads = numba.get_num_threads()
    runs = []
    try:
        for t in sorted({1, min(2, threads), threads}):
            numba.set_num_threads(t)
            y, cache = fwd(x, gamma, beta)
            runs.append((y, *bwd(dy, cache)))
    finally:
        numba.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert np.array_equal(a, b)


def test_small_inputs_run_on_one_thread(kernels_on, monkeypatch, rng):
    x, gamma, beta, dy = _data(rng, 300, 7, np.float64)
    y, cache = ops.batchnorm_forward(x, gamma, beta)
    grads = ops.batchnorm_backward(dy, cache)
    monkeypatch.setattr(_config, "PARALLEL_MIN_ELEMENTS", 10**9)
    threads = numba.get_num_threads()
    y1, cache1 = ops.batchnorm_forward(x, gamma, beta)
    grads1 = ops.batchnorm_backward(dy, cache1)
    assert numba.get_num_threads() == threads  # restored
    assert np.array_equal(y, y1)
    for a, b in zip(grads, grads1):
        assert np.array_equal(a, b)


def test_kernel_caches_are_reference_caches(kernels_on, rng):
    """Layers tell training from inference caches by isinstance; code that unpacks
    a cache by position gets None for X̂ instead of x."""
    import pickle

    x, gamma, beta, dy = _data(rng, 30, 4, np.float64)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    assert isinstance(cache, ops.BatchNormCache)
    assert cache[0] is None and cache.x_hat.shape == x.shape
    _, icache = ops.batchnorm_inference_forward(x, gamma, beta, np.zeros(4), np.ones(4))
    assert isinstance(icache, ops.BatchNormInferenceCache)
    assert not isinstance(icache, ops.BatchNormCache)
    for c, backward in ((cache, ops.batchnorm_backward), (icache, ops.batchnorm_inference_backward)):
        c2 = pickle.loads(pickle.dumps(c))
        assert type(c2) is type(c)
        for a, b in zip(backward(dy, c), backward(dy, c2)):
            assert np.array_equal(a, b)


def test_out_buffers(kernels_on, rng):
    x, gamma, beta, dy = _data(rng, 100, 8, np.float32)
    y, cache = _kernels.batchnorm_forward(x, gamma, beta)
    grads = _kernels.batchnorm_backward(dy, cache)
    y_buf = np.full_like(x, 9.0)
    y2, cache2 = _kernels.batchnorm_forward(x, gamma, beta, out=y_buf)
    assert y2 is y_buf and np.array_equal(y2, y)
    dx_buf = np.empty_like(x)
    grads2 = _kernels.batchnorm_backward(dy, cache2, out=dx_buf)
    assert grads2.dx is dx_buf and np.array_equal(grads2.dx, grads.dx)
    dy_copy = dy.copy()
    grads3 = _kernels.batchnorm_backward(dy_copy, cache2, out=dy_copy)  # in place
    assert grads3.dx is dy_copy and np.array_equal(dy_copy, grads.dx)
    with pytest.raises(ValueError, match="overlap"):
        _kernels.batchnorm_forward(x, gamma, beta, out=x)
    with pytest.raises(ValueError, match="shape"):
        _kernels.batchnorm_forward(x, gamma, beta, out=np.empty((3, 3), np.float32))
    with pytest.raises(ValueError, match="dtype"):
        _kernels.batchnorm_forward(x, gamma, beta, out=np.empty(x.shape, np.float64))


def test_out_buffers_on_reference_path(monkeypatch, rng):
    monkeypatch.setenv(_config.DISABLE_ENV, "1")
    x, gamma, beta, _ = _data(rng, 10, 3, np.float64)
    buf = np.empty_like(x)
    y, cache = _kernels.batchnorm_forward(x, gamma, beta, out=buf)
    assert y is buf and isinstance(cache, ops.BatchNormCache)
    y_ref, _ = ops.batchnorm_forward(x, gamma, beta)
    assert np.array_equal(y, y_ref)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_backward_accepts_either_cache(kernels_on, rng, dtype):
    x, gamma, beta, dy = _data(rng, 33, 5, dtype)
    _, fast_cache = ops.batchnorm_forward(x, gamma, beta, ddof=1)
    with reference:
        _, ref_cache = ops.batchnorm_forward(x, gamma, beta, ddof=1)
        want = ops.batchnorm_backward(dy, ref_cache)
        # kernels switched off between the forward and the backward pass
        from_fast_cache = ops.batchnorm_backward(dy, fast_cache)
    from_ref_cache = ops.batchnorm_backward(dy, ref_cache)  # kernel on a reference cache
    _assert_grads_close(from_fast_cache, want, RTOL[dtype])
    _assert_grads_close(from_ref_cache, want, RTOL[dtype])
    assert rel(fast_cache.to_reference().x_hat, ref_cache.x_hat) < RTOL[dtype]


def test_backward_checks_dy(kernels_on, rng):
    x, gamma, beta, dy = _data(rng, 12, 3, np.float64)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match=r"dy must have shape \(12, 3\)"):
        ops.batchnorm_backward(dy[:5], cache)
    grads = ops.batchnorm_backward(dy.astype(np.float32), cache)  # cast to x's dtype
    assert grads.dx.dtype == np.float64


# ---------------------------------------------------------------- batch norm + ReLU


def _compose_reference(x, gamma, beta, dh, eps, ddof):
    with reference:
        y, bn_cache = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
        h, relu_cache = ops.relu_forward(y)
        grads = ops.batchnorm_backward(ops.relu_backward(dh, relu_cache), bn_cache)
    return y, h, grads


@pytest.mark.parametrize("shape", [(2, 3), (9, 4), (300, 17)])
@pytest.mark.parametrize("ddof,eps", [(0, 1e-5), (1, 0.0)])
def test_fused_relu_matches_composed_ops_float64(kernels_on, rng, shape, ddof, eps):
    x, gamma, beta, dh = _data(rng, *shape, np.float64)
    h, cache = _kernels.batchnorm_relu_forward(x, gamma, beta, eps=eps, ddof=ddof)
    grads = _kernels.batchnorm_relu_backward(dh, cache)
    assert isinstance(cache, _kernels.BatchNormReLUCache) and cache.relu is None
    _, h_ref, g_ref = _compose_reference(x, gamma, beta, dh, eps, ddof)
    assert rel(h, h_ref) < 1e-12
    _assert_grads_close(grads, g_ref, 1e-12, cache.bn, dh)
    assert rel(cache.bn.mean, x.mean(axis=0)) < 1e-12


def test_fused_relu_matches_composed_ops_float32(kernels_on, rng):
    x, gamma, beta, dh = _data(rng, 500, 12, np.float32)
    h, cache = _kernels.batchnorm_relu_forward(x, gamma, beta)
    grads = _kernels.batchnorm_relu_backward(dh, cache)
    y_ref, h_ref, _ = _compose_reference(x, gamma, beta, dh, 1e-5, 0)
    assert rel(h, h_ref) < RTOL[np.float32]
    # The masks may differ only where B rounds to the other side of 0.
    assert np.all(np.abs(y_ref[(h > 0) != (h_ref > 0)]) < 1e-5)
    # Backward against the reference batch-norm backward under the kernel's own mask.
    with reference:
        _, bn_cache = ops.batchnorm_forward(x, gamma, beta)
        g_ref = ops.batchnorm_backward(np.where(h > 0, dh, 0).astype(np.float32), bn_cache)
    _assert_grads_close(grads, g_ref, RTOL[np.float32])


def test_fused_relu_against_finite_differences(kernels_on, rng, fd_grad, rel_error):
    n, p = 7, 3
    x, gamma, beta, _ = _data(rng, n, p, np.float64)
    w = rng.standard_normal((n, p))  # R = Σ W ∘ H, a random upstream gradient

    def loss(x=x, gamma=gamma, beta=beta):
        h, _ = _kernels.batchnorm_relu_forward(x, gamma, beta, ddof=1, eps=1e-3)
        return float(np.sum(w * h))

    _, cache = _kernels.batchnorm_relu_forward(x, gamma, beta, ddof=1, eps=1e-3)
    assert np.min(np.abs(((x - x.mean(0)) / x.std(0, ddof=1)) * gamma + beta)) > 1e-3
    grads = _kernels.batchnorm_relu_backward(w, cache)
    assert rel_error(grads.dx, fd_grad(lambda v: loss(x=v), x, h=1e-6)) < 1e-7
    assert rel_error(grads.dgamma, fd_grad(lambda v: loss(gamma=v), gamma, h=1e-6)) < 1e-7
    assert rel_error(grads.dbeta, fd_grad(lambda v: loss(beta=v), beta, h=1e-6)) < 1e-7


def test_fused_relu_against_torch_autograd(kernels_on, rng):
    torch = pytest.importorskip("torch")
    x, gamma, beta, dh = _data(rng, 256, 10, np.float64)
    h, cache = _kernels.batchnorm_relu_forward(x, gamma, beta)
    grads = _kernels.batchnorm_relu_backward(dh, cache)
    xt, gt, bt = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    ht = torch.relu(torch.nn.functional.batch_norm(xt, None, None, gt, bt, training=True,
                                                   eps=1e-5))
    ht.backward(torch.tensor(dh))
    assert rel(h, ht.detach().numpy()) < 1e-12
    assert rel(grads.dx, xt.grad.numpy()) < 1e-11
    assert rel(grads.dgamma, gt.grad.numpy()) < 1e-11
    assert rel(grads.dbeta, bt.grad.numpy()) < 1e-11


def test_fused_cache_rejected_by_plain_backward(kernels_on, rng):
    x, gamma, beta, dy = _data(rng, 10, 3, np.float64)
    _, cache = _kernels.batchnorm_relu_forward(x, gamma, beta)
    with pytest.raises(ValueError, match="batchnorm_relu_backward"):
        ops.batchnorm_backward(dy, cache.bn)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fused_relu_after_disabling(kernels_on, rng, dtype):
    """Kernels switched off between forward and backward: the NumPy fallback
    recomputes bitwise the same mask and gives the same gradients."""
    x, gamma, beta, dh = _data(rng, 64, 5, dtype)
    _, cache = _kernels.batchnorm_relu_forward(x, gamma, beta)
    grads = _kernels.batchnorm_relu_backward(dh, cache)
    with reference:
        fallback = _kernels.batchnorm_relu_backward(dh, cache)
    _assert_grads_close(fallback, grads, RTOL[dtype])


def test_fused_relu_reference_path(monkeypatch, rng):
    monkeypatch.setenv(_config.DISABLE_ENV, "1")
    x, gamma, beta, dh = _data(rng, 20, 4, np.float64)
    h, cache = _kernels.batchnorm_relu_forward(x, gamma, beta)
    assert isinstance(cache.bn, ops.BatchNormCache) and cache.relu is not None
    grads = _kernels.batchnorm_relu_backward(dh, cache)
    _, h_ref, g_ref = _compose_reference(x, gamma, beta, dh, 1e-5, 0)
    assert np.array_equal(h, h_ref)
    for a, b in zip(grads, g_ref):
        assert np.array_equal(a, b)


# ------------------------------------------------------ inference batch norm, ReLU


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inference_bitwise_equal_to_reference(kernels_on, rng, dtype):
    x, gamma, beta, dy = _data(rng, 70, 6, dtype)
    mean = rng.standard_normal(6).astype(dtype)
    var = (0.5 + rng.random(6)).astype(dtype)
    y, cache = ops.batchnorm_inference_forward(x, gamma, beta, mean, var, eps=1e-3)
    grads = ops.batchnorm_inference_backward(dy, cache)
    assert isinstance(cache, _kernels.BatchNormInferenceKernelCache)
    with reference:
        y_ref, c_ref = ops.batchnorm_inference_forward(x, gamma, beta, mean, var, eps=1e-3)
        g_ref = ops.batchnorm_inference_backward(dy, c_ref)
    assert np.array_equal(y, y_ref) and y.dtype == y_ref.dtype
    assert np.array_equal(cache.x_hat, c_ref.x_hat)
    for a, b in zip(grads, g_ref):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("bad", ["nan_x", "bad_var", "gamma_shape"])
def test_inference_errors_match_reference(kernels_on, rng, bad):
    x, gamma, beta, _ = _data(rng, 8, 3, np.float64)
    mean, var = np.zeros(3), np.ones(3)
    if bad == "nan_x":
        x[5, 1] = np.nan
    elif bad == "bad_var":
        var[2] = -1.0
    else:
        gamma = gamma[:2]
    got = _error(lambda: ops.batchnorm_inference_forward(x, gamma, beta, mean, var))
    with reference:
        want = _error(lambda: ops.batchnorm_inference_forward(x, gamma, beta, mean, var))
    assert got == want


@pytest.mark.parametrize("layout", ["C", "F", "strided", "1-D", "3-D"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_relu_bitwise_equal_to_reference(kernels_on, rng, layout, dtype):
    x = rng.standard_normal((40, 6)).astype(dtype)
    x[0, :4] = [np.nan, np.inf, -np.inf, -0.0]
    dy = rng.standard_normal((40, 6)).astype(dtype)
    if layout == "1-D":
        x, dy = x.ravel(), dy.ravel()
    elif layout == "3-D":
        x, dy = x.reshape(4, 10, 6), dy.reshape(4, 10, 6)
    else:
        x, dy = _layout(x, layout), _layout(dy, layout)
    y, cache = ops.relu_forward(x)
    dx = ops.relu_backward(dy, cache)
    with reference:
        y_ref, c_ref = ops.relu_forward(x)
        dx_ref = ops.relu_backward(dy, c_ref)
    for a, b in ((y, y_ref), (dx, dx_ref)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=True)
        assert np.array_equal(np.signbit(a), np.signbit(b))


# ------------------------------------------------------------- when kernels run


def test_disable_environment_variable(monkeypatch, rng):
    monkeypatch.setattr(_config, "MIN_ELEMENTS", 0)
    monkeypatch.setenv(_config.DISABLE_ENV, "1")
    assert not _kernels.enabled()
    x, gamma, beta, _ = _data(rng, 10, 2, np.float64)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    assert isinstance(cache, ops.BatchNormCache)
    monkeypatch.setenv(_config.DISABLE_ENV, "0")
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    assert isinstance(cache, _kernels.BatchNormKernelCache)


def test_missing_numba_falls_back(monkeypatch, rng):
    monkeypatch.setattr(_config, "MIN_ELEMENTS", 0)
    monkeypatch.delenv(_config.DISABLE_ENV, raising=False)
    monkeypatch.setitem(_config._state, "available", False)
    assert not _kernels.available() and not _kernels.enabled()
    x, gamma, beta, _ = _data(rng, 10, 2, np.float64)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    assert isinstance(cache, ops.BatchNormCache)


def test_size_threshold(monkeypatch, rng):
    monkeypatch.delenv(_config.DISABLE_ENV, raising=False)
    monkeypatch.setattr(_config, "MIN_ELEMENTS", 100)
    small, gamma, beta, _ = _data(rng, 9, 11, np.float64)
    big, _, _, _ = _data(rng, 10, 11, np.float64)
    assert isinstance(ops.batchnorm_forward(small, gamma, beta)[1], ops.BatchNormCache)
    assert isinstance(ops.batchnorm_forward(big, gamma, beta)[1], _kernels.BatchNormKernelCache)


def test_other_namespaces_use_reference(kernels_on, rng):
    xs = pytest.importorskip("array_api_strict")
    x, gamma, beta, _ = _data(rng, 12, 3, np.float64)
    y, cache = ops.batchnorm_forward(xs.asarray(x), xs.asarray(gamma), xs.asarray(beta))
    assert isinstance(cache, ops.BatchNormCache)
    y_np, _ = ops.batchnorm_forward(x, gamma, beta)
    assert rel(np.asarray(y), y_np) < 1e-12
    # a NumPy subclass is not plain NumPy either
    masked = np.ma.masked_array(x)
    assert not _kernels.wants(masked, gamma, beta)


def test_forked_child_uses_reference(monkeypatch):
    monkeypatch.delenv(_config.DISABLE_ENV, raising=False)
    monkeypatch.setitem(_config._state, "forked", True)
    assert not _kernels.enabled()


# ------------------------------------------------------------ no silent compile stall
class TestCompileAhead:
    """``_config.ready()``: use compiled kernels, or say on stderr what happens instead."""

    @pytest.fixture
    def fresh(self, monkeypatch, tmp_path):
        from bnmat._kernels import _config, _warm

        marker = tmp_path / "bnmat-kernels-ready-test"
        spawned, compiled = [], []
        monkeypatch.setattr(_warm, "marker_path", lambda: str(marker))
        monkeypatch.setattr(_warm, "compile_all", lambda: compiled.append(1) or 1.5)
        monkeypatch.setattr(_config, "_spawn_background_compile", lambda: spawned.append(1))
        monkeypatch.setitem(_config._state, "ready", None)
        yield _config, marker, spawned, compiled
        _config._state["ready"] = None       # the real decision again (marker present)

    def test_background_by_default(self, fresh, monkeypatch, capsys):
        config, marker, spawned, compiled = fresh
        monkeypatch.delenv(config.COMPILE_ENV, raising=False)
        assert config.ready() is False
        assert config.ready() is False                  # decided once per process
        err = capsys.readouterr().err
        assert err.count("bnmat: compiling the fused CPU kernels") == 1
        assert "background" in err and "NumPy formulas" in err
        assert spawned == [1] and compiled == [] and not marker.exists()
        # this process keeps to the reference formulas for its whole life
        x = np.random.default_rng(0).standard_normal((100, 64))
        _, cache = ops.batchnorm_forward(x, np.ones(64), np.zeros(64))
        assert type(cache) is ops.BatchNormCache

    def test_sync_compiles_in_the_foreground_and_says_how_long(self, fresh, monkeypatch,
                                                               capsys):
        config, marker, spawned, compiled = fresh
        monkeypatch.setenv(config.COMPILE_ENV, "sync")
        assert config.ready() is True
        err = capsys.readouterr().err
        assert "compiling the fused CPU kernels" in err and "compiled in 1.5 s" in err
        assert compiled == [1] and spawned == [] and marker.exists()

    def test_compiled_kernels_are_used_silently(self, fresh, monkeypatch, capsys):
        config, marker, spawned, compiled = fresh
        marker.write_text("compiled\n")
        monkeypatch.delenv(config.COMPILE_ENV, raising=False)
        assert config.ready() is True
        assert capsys.readouterr().err == ""
        assert spawned == [] and compiled == []


def test_warm_marker_names_numba_cpu_and_source():
    from bnmat._kernels import _warm

    path = _warm.marker_path()
    assert path is not None and os.path.basename(path).startswith("bnmat-kernels-ready-numba")
    assert os.path.exists(path)        # the session compiled (or found) the kernels
