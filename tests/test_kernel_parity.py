"""The kernel path and the reference path: the same result or the same error, for every input.

The fused kernels (:mod:`bnmat._kernels`) take over from the reference formulas
for NumPy input of at least ``MIN_ELEMENTS`` elements, so an input's fate must
not depend on its size. Each case runs twice: once with every NumPy input sent to
the kernels (``MIN_ELEMENTS = 0``) and once on the reference formulas
(``BNMAT_DISABLE_KERNELS=1``); either both raise the same exception with the
same message, or both return results equal to rounding. Sizes lie on both sides
of the default threshold (and of the four-row loop's 8 MiB switch in the
explicit cases), so the size-dependent parts of the kernels are covered.

Regressions from the adversarial review (issue 9, item 6): float32 ±3e38,
float32 spreads of 1e-24 with eps = 0, big-endian arrays, masked arrays,
float16 in :func:`bnmat.ops.column_moments`.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from bnmat import _kernels, ops
from bnmat._kernels import _config

needs_kernels = pytest.mark.skipif(not _kernels.available(), reason="numba not installed")

#: shapes on both sides of the default threshold (4096 elements)
SHAPES = [(2, 3), (7, 5), (40, 50), (64, 63), (65, 64), (130, 40), (257, 33)]


def _run(fn, kernels: bool, monkeypatch):
    """``fn()`` on one path: ('ok', result) or (exception type, message)."""
    with monkeypatch.context() as m:
        if kernels:
            m.setattr(_config, "MIN_ELEMENTS", 0)
            m.delenv(_config.DISABLE_ENV, raising=False)
        else:
            m.setenv(_config.DISABLE_ENV, "1")
        with np.errstate(all="ignore"):
            try:
                return "ok", fn()
            except Exception as exc:  # compared below: type and message
                return type(exc), str(exc)


def _column(rng, n, dtype, kind, loc_exp, sd_exp):
    info = np.finfo(dtype)
    if kind == "normal":
        col = 10.0 ** loc_exp + 10.0 ** sd_exp * rng.standard_normal(n)
    elif kind == "constant":
        col = np.full(n, 10.0 ** loc_exp)
    elif kind == "extreme":          # ± the largest values of the dtype
        col = rng.choice([-1.0, 1.0], n) * float(info.max) * rng.uniform(0.5, 1.0, n)
    elif kind == "huge_spread":      # squares overflow the dtype, the values do not
        col = rng.standard_normal(n) * float(info.max) ** 0.75
    elif kind == "tiny":             # spreads near and below the dtype's smallest normal
        col = rng.standard_normal(n) * float(info.tiny) ** rng.uniform(0.3, 1.0)
    elif kind == "nonfinite":
        col = rng.standard_normal(n)
        col[rng.integers(n)] = rng.choice([np.nan, np.inf, -np.inf])
    else:                            # a column with two values
        col = np.where(rng.random(n) < 0.5, 0.0, 10.0 ** sd_exp) + 10.0 ** loc_exp
    with np.errstate(over="ignore"):
        return col.astype(dtype)


@st.composite
def bn_cases(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n, p = draw(st.sampled_from(SHAPES))
    seed = draw(st.integers(0, 2**32 - 1))
    kinds = draw(st.lists(st.sampled_from(
        ["normal", "normal", "normal", "constant", "extreme", "huge_spread", "tiny",
         "nonfinite", "binary"]), min_size=1, max_size=3))
    top = 30 if dtype == np.float32 else 200
    loc_exp = draw(st.integers(-top, top))
    sd_exp = draw(st.integers(-top, top))
    eps = draw(st.sampled_from([0.0, 1e-5]))
    ddof = draw(st.sampled_from([0, 1]))
    layout = draw(st.sampled_from(["C", "F", "big-endian"]))
    note(f"dtype={dtype.__name__} shape={(n, p)} kinds={kinds} loc=1e{loc_exp} "
         f"sd=1e{sd_exp} eps={eps} ddof={ddof} layout={layout} seed={seed}")
    rng = np.random.default_rng(seed)
    x = np.empty((n, p), dtype)
    for j in range(p):
        kind = kinds[j % len(kinds)] if j < len(kinds) else "normal"
        x[:, j] = _column(rng, n, dtype, kind, loc_exp if j < len(kinds) else 0,
                          sd_exp if j < len(kinds) else 0)
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "big-endian":
        x = x.astype(x.dtype.newbyteorder(">"))
    gamma = (1 + 0.3 * rng.standard_normal(p)).astype(dtype)
    beta = (0.5 * rng.standard_normal(p)).astype(dtype)
    dy = rng.standard_normal((n, p)).astype(dtype)
    return x, gamma, beta, eps, ddof, dy


def _sd(x):
    """Column standard deviations without under- or overflow (scaled by max|x|)."""
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        top = np.max(np.abs(x64), axis=0)
        top = np.where((top > 0) & np.isfinite(top), top, 1.0)
        return np.std(x64 / top, axis=0) * top


def _cond(x, mean, var):
    """Per column, how much rounding of x is amplified in X̂: (max|x| + |μ|)/σ + 1."""
    x64 = np.asarray(x, dtype=np.float64)
    with np.errstate(all="ignore"):
        c = (np.max(np.abs(x64), axis=0) + np.abs(mean)) / _sd(x) + 1.0
    return np.where(np.isfinite(c), c, 1.0)


def _assert_same_outcome(kern, ref):
    assert kern[0] is ref[0] or kern[0] == ref[0], (kern, ref)
    if kern[0] != "ok":
        assert kern[1] == ref[1]
        return False
    return True


def _close(a, b, atol_cols, what):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, what
    same_nonfinite = (~np.isfinite(a)) == (~np.isfinite(b))
    assert same_nonfinite.all(), what
    fin = np.isfinite(b)
    err = np.where(fin, np.abs(a - b), 0.0)
    assert (err <= atol_cols).all(), (what, float(np.max(err - atol_cols)))


@needs_kernels
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=bn_cases())
def test_batchnorm_forward_backward_same_on_both_paths(case, monkeypatch):
    x, gamma, beta, eps, ddof, dy = case

    def both_passes():
        y, cache = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
        grads = ops.batchnorm_backward(dy, cache)
        return (np.array(y), np.asarray(cache.mean), np.asarray(cache.var),
                np.asarray(cache.inv_std), *(np.array(g) for g in grads))

    kern = _run(both_passes, True, monkeypatch)
    ref = _run(both_passes, False, monkeypatch)
    if not _assert_same_outcome(kern, ref):
        return
    yk, mk, vk, sk, dxk, dgk, dbk = kern[1]
    yr, mr, vr, sr, dxr, dgr, dbr = ref[1]
    eps_d = float(np.finfo(yr.dtype).eps)
    n = x.shape[0]
    cond = _cond(x, mr, vr)
    _close(mk, mr, 8 * eps_d * (np.abs(mr) + _sd(x)) + 1e-320, "mean")
    _close(vk, vr, 64 * eps_d * cond ** 2 * np.abs(vr.astype(np.float64)) + 1e-300, "var")
    _close(yk, yr, 64 * eps_d * cond * (np.abs(gamma) + np.abs(beta) + 1.0), "y")
    # Backward: dx ≈ γ s (dy − mean(dy) − x̂ mean(dy x̂)); its rounding scales with
    # γ s · max|dy| and with the conditioning of X̂.
    gs = np.abs(gamma.astype(np.float64) * sr.astype(np.float64))
    scale = np.max(np.abs(dy), axis=0) * cond
    _close(dbk, dbr, 8 * eps_d * n * np.max(np.abs(dy), axis=0), "dbeta")
    _close(dgk, dgr, 64 * eps_d * n * scale, "dgamma")
    _close(dxk, dxr, 64 * eps_d * (gs * scale + 1e-300) * 4, "dx")


@needs_kernels
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=bn_cases())
def test_fused_batchnorm_relu_same_as_the_two_reference_ops(case, monkeypatch):
    x, gamma, beta, eps, ddof, dy = case

    def fused():
        h, cache = _kernels.batchnorm_relu_forward(x, gamma, beta, eps=eps, ddof=ddof)
        grads = _kernels.batchnorm_relu_backward(dy, cache)
        return np.array(h), *(np.array(g) for g in grads)

    def reference():
        y, c1 = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
        h, c2 = ops.relu_forward(y)
        grads = ops.batchnorm_backward(ops.relu_backward(dy, c2), c1)
        return np.array(h), *(np.array(g) for g in grads)

    kern = _run(fused, True, monkeypatch)
    ref = _run(reference, False, monkeypatch)
    if not _assert_same_outcome(kern, ref):
        return
    hk, hr = kern[1][0], ref[1][0]
    x64 = np.asarray(x, np.float64)
    with np.errstate(all="ignore"):
        cond = _cond(x, x64.mean(axis=0), None)
    eps_d = float(np.finfo(hr.dtype).eps)
    _close(hk, hr, 64 * eps_d * cond * (np.abs(gamma) + np.abs(beta) + 1.0), "h")
    # The masks may differ only where B is within rounding of 0, which moves a
    # gradient entry in or out; compare the gradients where the masks agree.
    if np.array_equal(hk > 0, hr > 0):
        dgk, dgr = kern[1][2], ref[1][2]
        _close(dgk, dgr, 64 * eps_d * x.shape[0] * np.max(np.abs(dy), axis=0) * cond,
               "dgamma")


@needs_kernels
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=bn_cases())
def test_inference_forward_same_on_both_paths(case, monkeypatch):
    x, gamma, beta, eps, _, _ = case
    p = x.shape[1]
    mean = np.linspace(-1, 1, p).astype(gamma.dtype)
    var = np.linspace(0.5, 2, p).astype(gamma.dtype)

    def run():
        return np.array(ops.batchnorm_inference_forward(x, gamma, beta, mean, var, eps=eps)[0])

    kern = _run(run, True, monkeypatch)
    ref = _run(run, False, monkeypatch)
    if _assert_same_outcome(kern, ref):
        np.testing.assert_array_equal(kern[1], ref[1])   # bitwise, as documented


# ------------------------------------------------------------ the review's cases
def _both(fn, monkeypatch):
    return _run(fn, True, monkeypatch), _run(fn, False, monkeypatch)


@needs_kernels
@pytest.mark.parametrize("n", [1100, 8200])     # the four-row loop, and streaming rows
def test_float32_extremes_raise_on_both_paths(n, monkeypatch):
    rng = np.random.default_rng(0)
    x = rng.choice([-3e38, 3e38], size=(n, 256)).astype(np.float32)
    g, b = np.ones(256, np.float32), np.zeros(256, np.float32)
    kern, ref = _both(lambda: ops.batchnorm_forward(x, g, b), monkeypatch)
    assert kern == ref
    assert kern[0] is ValueError and "overflows float32" in kern[1]


@needs_kernels
@pytest.mark.parametrize("n", [1100, 8200])
def test_float32_tiny_spread_with_eps_zero_standardizes_on_both_paths(n, monkeypatch):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((n, 256)) * 1e-24).astype(np.float32)
    g, b = np.ones(256, np.float32), np.zeros(256, np.float32)
    kern, ref = _both(lambda: ops.batchnorm_forward(x, g, b, eps=0.0)[0], monkeypatch)
    assert kern[0] == ref[0] == "ok"
    for y in (kern[1], ref[1]):
        # a standardized column: mean 0 and standard deviation 1
        np.testing.assert_allclose(y.astype(np.float64).std(axis=0), 1.0, rtol=1e-4)
        np.testing.assert_allclose(y.astype(np.float64).mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(kern[1], ref[1], rtol=0, atol=1e-4)


@needs_kernels
def test_subnormal_spread_with_eps_zero_is_one_clear_error(monkeypatch):
    # s = 1/σ ≈ 1e42 does not fit float32: the same ValueError on both paths.
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((200, 64)) * 1e-42).astype(np.float32)
    g, b = np.ones(64, np.float32), np.zeros(64, np.float32)
    kern, ref = _both(lambda: ops.batchnorm_forward(x, g, b, eps=0.0), monkeypatch)
    assert kern == ref and kern[0] is ValueError and "too small for float32" in kern[1]


@needs_kernels
@pytest.mark.parametrize("dtype", [">f8", ">f4"])
def test_big_endian_arrays_give_the_native_result(dtype, monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((100, 64))
    g, b = 1 + rng.random(64), rng.standard_normal(64)
    kern, ref = _both(lambda: ops.batchnorm_forward(x.astype(dtype), g.astype(dtype),
                                                    b.astype(dtype))[0], monkeypatch)
    native = dtype[1:]
    kern_native, ref_native = _both(lambda: ops.batchnorm_forward(
        x.astype(native), g.astype(native), b.astype(native))[0], monkeypatch)
    assert kern[0] == ref[0] == "ok"
    # (a non-native array takes the reference formulas, which convert it first)
    tol = 1e-5 if native == "f4" else 1e-12
    np.testing.assert_allclose(kern[1], kern_native[1], rtol=tol, atol=tol)
    np.testing.assert_array_equal(ref[1], ref_native[1])
    assert kern[1].dtype.isnative and ref[1].dtype.isnative


@needs_kernels
def test_masked_arrays_are_refused_on_both_paths(monkeypatch):
    rng = np.random.default_rng(4)
    x = np.ma.masked_array(rng.standard_normal((100, 64)), mask=rng.random((100, 64)) < 0.1)
    g, b = np.ones(64), np.zeros(64)
    kern, ref = _both(lambda: ops.batchnorm_forward(x, g, b), monkeypatch)
    assert kern == ref and kern[0] is TypeError and "masked array" in kern[1]
    with pytest.raises(TypeError, match="masked array"):
        ops.column_moments(x)


def test_column_moments_never_sums_in_float16():
    rng = np.random.default_rng(5)
    x16 = (3 + rng.standard_normal((200_000, 2))).astype(np.float16)
    m = ops.column_moments(x16)
    exact = x16.astype(np.float64)
    np.testing.assert_allclose(m.mean, exact.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.var, exact.var(axis=0), rtol=1e-10)
    assert m.mean.dtype == np.float64 and m.centered.dtype == np.float32


def test_column_moments_of_a_constant_column_is_exactly_zero():
    x = np.full((1000, 3), 0.1)
    x[:, 1] = np.float32(1e4)
    m = ops.column_moments(x.astype(np.float32))
    assert np.all(m.var == 0) and np.all(m.centered == 0)


# ------------------------------------------------------------------- 0 rows
@pytest.mark.parametrize("kernels", [True, False])
def test_inference_forward_on_zero_rows_raises(kernels, monkeypatch):
    x = np.zeros((0, 5))
    one = np.ones(5)

    def run():
        return ops.batchnorm_inference_forward(x, one, one, one, one)

    outcome = _run(run, kernels, monkeypatch)
    assert outcome[0] is ValueError and "0 row" in outcome[1]


def test_predict_on_zero_rows_raises():
    import bnmat

    x = np.random.default_rng(0).standard_normal((20, 3))
    net = bnmat.Sequential([bnmat.Dense(4), bnmat.BatchNorm(), bnmat.ReLU(), bnmat.Dense(1)])
    params, state = net.init(x, seed=0)
    with pytest.raises(ValueError, match="0 rows"):
        net.predict(params, state, x[:0])
    assert net.predict(params, state, x[:1]).shape == (1, 1)


def test_column_moments_mean_is_not_rounded_to_the_data_dtype():
    # float32 1e4 + 1e-2·N(0,1): the mean in float64 is exact to ~1e-12, not off by
    # half a float32 ulp of 1e4 (2.6e-4, a quarter of a standard deviation).
    z = (np.random.default_rng(6).normal(size=(2000, 2)) * 1e-2 + 1e4).astype(np.float32)
    m = ops.column_moments(z)
    exact = z.astype(np.float64)
    np.testing.assert_allclose(m.mean, exact.mean(axis=0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(m.var, exact.var(axis=0), rtol=1e-9)
