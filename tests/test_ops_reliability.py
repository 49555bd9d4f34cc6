"""Bad input, edge cases and numerical safety of :mod:`bnmat.ops`.

One test per row of /work/shared/RELIABILITY.md that applies at the op level,
plus a held-out gradient check on real data (scikit-learn's diabetes data set)
with a differentiation method (Ridders' extrapolation) independent of the
finite-difference helper used elsewhere.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from bnmat import ops

ONES3, ZEROS3 = np.ones(3), np.zeros(3)


def _bn(x, *, eps=1e-5, ddof=0, gamma=None, beta=None):
    p = np.shape(x)[-1] if np.ndim(x) else 1
    gamma = np.ones(p) if gamma is None else gamma
    beta = np.zeros(p) if beta is None else beta
    return ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)


# ---------------------------------------------------------------------------
# too few rows


def test_batchnorm_one_row_needs_two_rows():
    with pytest.raises(ValueError, match="at least 2 rows"):
        _bn(np.ones((1, 3)))


@pytest.mark.parametrize("ddof, n", [(1, 1), (2, 2), (3, 1)])
def test_batchnorm_ddof_needs_more_rows_and_says_why(ddof, n):
    x = np.arange(3.0 * n).reshape(n, 3)
    with pytest.raises(ValueError) as info:
        _bn(x, ddof=ddof)
    msg = str(info.value)
    assert f"at least {max(2, ddof + 1)} rows" in msg
    assert f"ddof={ddof}" in msg
    assert f"N={n}" in msg


@pytest.mark.parametrize("ddof", [0, 1])
def test_batchnorm_zero_rows(ddof):
    with pytest.raises(ValueError, match="rows"):
        _bn(np.empty((0, 3)), ddof=ddof)


def test_batchnorm_inference_one_row_works(rng):
    x = rng.normal(size=(5, 3))
    gamma, beta = rng.normal(size=3), rng.normal(size=3)
    mean, var = rng.normal(size=3), rng.uniform(0.5, 2.0, size=3)
    y1, cache = ops.batchnorm_inference_forward(x[2:3], gamma, beta, mean, var, eps=1e-3)
    expected = (x[2:3] - mean) / np.sqrt(var + 1e-3) * gamma + beta
    np.testing.assert_allclose(y1, expected, rtol=1e-14)
    # rows are independent: the same row inside a larger batch gives the same output
    y5, _ = ops.batchnorm_inference_forward(x, gamma, beta, mean, var, eps=1e-3)
    np.testing.assert_allclose(y1[0], y5[2], rtol=1e-15)
    dy = rng.normal(size=(1, 3))
    dx, dgamma, dbeta = ops.batchnorm_inference_backward(dy, cache)
    np.testing.assert_allclose(dx, dy * gamma / np.sqrt(var + 1e-3), rtol=1e-14)
    assert dgamma.shape == dbeta.shape == (3,)


# ---------------------------------------------------------------------------
# shapes


def _shape_calls(x):
    p = x.shape[-1] if x.ndim else 1
    v = np.ones(p)
    return {
        "batchnorm": lambda: ops.batchnorm_forward(x, v, v),
        "batchnorm_inference": lambda: ops.batchnorm_inference_forward(x, v, v, v, v),
        "dense": lambda: ops.dense_forward(x, np.ones((p, 2))),
    }


@pytest.mark.parametrize("op", ["batchnorm", "batchnorm_inference", "dense"])
@pytest.mark.parametrize("shape, expected_words", [
    ((4,), "2-D"), ((2, 3, 4), "2-D"), ((5, 0), "column"),
])
def test_bad_x_shape_names_shape_and_expectation(op, shape, expected_words):
    x = np.ones(shape)
    with pytest.raises(ValueError) as info:
        _shape_calls(x)[op]()
    msg = str(info.value)
    assert str(shape) in msg
    assert expected_words in msg


@pytest.mark.parametrize("name, bad", [
    ("gamma", np.ones(4)), ("gamma", np.ones(2)), ("gamma", np.ones((1, 3))), ("beta", np.ones(4)),
])
def test_batchnorm_wrong_parameter_shape(name, bad):
    args = {"gamma": ONES3, "beta": ZEROS3, name: bad}
    with pytest.raises(ValueError, match=name):
        ops.batchnorm_forward(np.ones((5, 3)) * np.arange(5.0)[:, None], **args)


@pytest.mark.parametrize("name", ["gamma", "beta", "mean", "var"])
def test_batchnorm_inference_wrong_vector_length(name):
    args = {"gamma": ONES3, "beta": ZEROS3, "mean": ZEROS3, "var": ONES3, name: np.ones(2)}
    with pytest.raises(ValueError, match=name):
        ops.batchnorm_inference_forward(np.ones((4, 3)), **args)


@pytest.mark.parametrize("w_shape", [(4, 2), (2, 3), (3,)])
def test_dense_nonconforming_w_names_shapes(w_shape):
    with pytest.raises(ValueError) as info:
        ops.dense_forward(np.ones((5, 3)), np.ones(w_shape))
    msg = str(info.value)
    assert "(5, 3)" in msg and str(w_shape) in msg


def test_dense_wrong_bias_shape():
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        ops.dense_forward(np.ones((5, 3)), np.ones((3, 2)), np.ones(3))


@pytest.mark.parametrize("backward, forward", [
    (ops.batchnorm_backward, lambda x: _bn(x)),
    (ops.dense_backward, lambda x: ops.dense_forward(x, np.ones((3, 3)))),
    (ops.relu_backward, ops.relu_forward),
])
def test_backward_rejects_wrong_upstream_shape(backward, forward):
    x = np.arange(12.0).reshape(4, 3) ** 1.5
    _, cache = forward(x)
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        backward(np.ones((3, 3)), cache)


# ---------------------------------------------------------------------------
# non-finite input


# NumPy warns on inf − inf before the op's own check; see the next test for that.
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "infinity"), (-np.inf, "infinity")])
def test_batchnorm_non_finite_x_raises(backend, bad, word):
    x = np.random.default_rng(0).normal(size=(6, 3))
    x[4, 1] = bad
    with pytest.raises(ValueError, match=word) as info:
        ops.batchnorm_forward(backend.asarray(x), backend.asarray(ONES3), backend.asarray(ZEROS3))
    assert "column 1" in str(info.value)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("loss", ["sse", "mse", "softmax_cross_entropy"])
@pytest.mark.parametrize("where", ["y_pred", "y"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_loss_non_finite_raises(loss, where, bad):
    rng = np.random.default_rng(1)
    args = {"y_pred": rng.normal(size=(5, 3)), "y": rng.uniform(size=(5, 3))}
    args[where][2, 1] = bad
    forward = getattr(ops, f"{loss}_forward")
    word = "NaN" if np.isnan(bad) else "infinity"
    with pytest.raises(ValueError, match=f"Input {where} contains {word}"):
        forward(args["y_pred"], args["y"])


@pytest.mark.parametrize("op", ["batchnorm", "softmax_cross_entropy"])
def test_non_finite_input_raises_without_runtime_warning(op):
    x = np.random.default_rng(0).normal(size=(6, 3))
    x[4, 1] = np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with pytest.raises(ValueError):
            if op == "batchnorm":
                _bn(x)
            else:
                ops.softmax_cross_entropy_forward(x, np.full((6, 3), 1.0 / 3.0))


# ---------------------------------------------------------------------------
# zero-variance columns


def test_eps0_zero_variance_column_names_index():
    x = np.random.default_rng(2).normal(size=(8, 5))
    x[:, 2] = 0.1   # 0.1 is not exact in binary: the mean's rounding must not hide this
    x[:, 4] = -3.0
    with pytest.raises(ValueError, match="column 2") as info:
        _bn(x, eps=0.0)
    assert "eps" in str(info.value)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_constant_column_with_eps_is_beta_and_finite(ddof, eps, fd_grad, rel_error):
    rng = np.random.default_rng(3)
    n, p = 7, 3
    x = rng.normal(size=(n, p)) * 2.0 + 1.0
    x[:, 1] = 1.0 / 3.0
    gamma, beta = rng.normal(size=p), rng.normal(size=p)
    upstream = rng.normal(size=(n, p))

    y, cache = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
    grads = ops.batchnorm_backward(upstream, cache)
    np.testing.assert_array_equal(y[:, 1], np.full(n, beta[1]))
    assert all(np.all(np.isfinite(g)) for g in grads)

    def scalar(x_, gamma_, beta_):
        out, _ = ops.batchnorm_forward(x_, gamma_, beta_, eps=eps, ddof=ddof)
        return float(np.sum(upstream * out))

    # The constant column's gradient is amplified by 1/sqrt(eps); it varies on
    # the scale sqrt(eps), so its steps are taken much smaller than the others'.
    steps = np.broadcast_to(1e-3 * np.maximum(x.std(axis=0), math.sqrt(eps)), x.shape)
    fd_dx = fd_grad(lambda v: scalar(v, gamma, beta), x, h=steps)
    assert rel_error(grads.dx, fd_dx) <= 1e-8
    # dgamma of the constant column is 0 exactly: compare on the scale of the others
    assert rel_error(grads.dgamma, fd_grad(lambda v: scalar(x, v, beta), gamma), floor=1.0) <= 1e-8
    assert rel_error(grads.dbeta, fd_grad(lambda v: scalar(x, gamma, v), beta)) <= 1e-8


# ---------------------------------------------------------------------------
# large mean, small spread


def _reference_moments(column, ddof):
    """Mean and variance with exactly rounded sums (math.fsum) in float64."""
    values = [float(v) for v in column]
    mean = math.fsum(values) / len(values)
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - ddof)
    return mean, var


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("dtype, offset, spread, std_tol, var_rtol", [
    ("float32", 1e4, 1e-2, 1e-2, 1e-5),
    ("float64", 1e8, 1.0, 1e-6, 1e-10),
])
def test_large_mean_small_spread(backend, ddof, dtype, offset, spread, std_tol, var_rtol):
    rng = np.random.default_rng(4)
    n, p = 1000, 3
    x = (offset + spread * rng.normal(size=(n, p))).astype(dtype)
    x64 = x.astype(np.float64)  # the exact values the op sees
    y, cache = ops.batchnorm_forward(
        backend.asarray(x), backend.asarray(np.ones(p), dtype), backend.asarray(np.zeros(p), dtype),
        eps=0.0, ddof=ddof)
    y = backend.to_numpy(y).astype(np.float64)
    assert str(y.dtype) == "float64"  # (converted here, for the std below)
    np.testing.assert_allclose(y.std(axis=0, ddof=ddof), 1.0, atol=std_tol)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=std_tol)
    reference = [_reference_moments(x64[:, j], ddof) for j in range(p)]
    np.testing.assert_allclose(backend.to_numpy(cache.var), [v for _, v in reference],
                               rtol=var_rtol)
    np.testing.assert_allclose(backend.to_numpy(cache.mean), [m for m, _ in reference],
                               rtol=1e-7 if dtype == "float32" else 1e-15)


# ---------------------------------------------------------------------------
# dtypes


def test_float16_computes_in_float32(backend):
    if not backend.has_float16:
        pytest.skip(f"{backend.name} has no float16")
    rng = np.random.default_rng(5)
    # float16 sums of 4096 values near 100 overflow (max 65504): accumulating
    # in half precision would give inf or garbage, not a standardized column
    x16 = (100.0 + rng.normal(size=(4096, 2))).astype(np.float16)
    y, cache = ops.batchnorm_forward(
        backend.asarray(x16), backend.asarray(np.ones(2)), backend.asarray(np.zeros(2)), eps=0.0)
    assert backend.dtype_name(y) == "float32"
    assert backend.dtype_name(cache.var) == "float32"
    y64, _ = _bn(x16.astype(np.float64), eps=0.0)
    np.testing.assert_allclose(backend.to_numpy(y), y64, rtol=1e-4, atol=1e-5)
    z, _ = ops.dense_forward(backend.asarray(x16), backend.asarray(np.ones((2, 1)), "float16"))
    h, _ = ops.tanh_forward(backend.asarray(x16[:3]))
    assert backend.dtype_name(z) == backend.dtype_name(h) == "float32"


def test_integer_input_becomes_float64(backend):
    rng = np.random.default_rng(6)
    xi = rng.integers(-50, 50, size=(9, 3))
    xf = xi.astype(np.float64)
    for forward in (lambda x: ops.batchnorm_forward(x, backend.asarray(ONES3),
                                                    backend.asarray(ZEROS3)),
                    lambda x: ops.dense_forward(x, backend.asarray(np.ones((3, 2)))),
                    ops.relu_forward, ops.sigmoid_forward):
        out_i, _ = forward(backend.asarray(xi))
        out_f, _ = forward(backend.asarray(xf))
        assert backend.dtype_name(out_i) == "float64"
        np.testing.assert_array_equal(backend.to_numpy(out_i), backend.to_numpy(out_f))


def _chain(backend, data, dtype, *, eps=1e-5, ddof=0):
    """dense → batch norm → tanh → dense (+bias) → MSE, forward and backward."""
    a = {k: backend.asarray(v, dtype) for k, v in data.items()}
    z, c1 = ops.dense_forward(a["x"], a["w1"])
    b, c2 = ops.batchnorm_forward(z, a["gamma"], a["beta"], eps=eps, ddof=ddof)
    h, c3 = ops.tanh_forward(b)
    y_pred, c4 = ops.dense_forward(h, a["w2"], a["b2"])
    loss, c5 = ops.mse_forward(y_pred, a["y"])
    dh, dw2, db2 = ops.dense_backward(ops.mse_backward(1.0, c5), c4)
    dz, dgamma, dbeta = ops.batchnorm_backward(ops.tanh_backward(dh, c3), c2)
    dx, dw1, _ = ops.dense_backward(dz, c1)
    out = {"loss": loss, "y_pred": y_pred, "dx": dx, "dw1": dw1, "dgamma": dgamma,
           "dbeta": dbeta, "dw2": dw2, "db2": db2, "mean": c2.mean, "var": c2.var}
    return {k: backend.to_numpy(v) for k, v in out.items()}


def _chain_data(rng, n=64, p=5, q=6, offset=0.0):
    data = {
        "x": rng.normal(size=(n, p)) + offset, "w1": rng.normal(size=(p, q)) / np.sqrt(p),
        "gamma": rng.uniform(0.5, 1.5, size=q), "beta": rng.normal(size=q) * 0.3,
        "w2": rng.normal(size=(q, 2)), "b2": rng.normal(size=2), "y": rng.normal(size=(n, 2)),
    }
    # float32-representable, so both precisions start from the same numbers
    return {k: v.astype(np.float32).astype(np.float64) for k, v in data.items()}


@pytest.mark.parametrize("offset", [0.0, 1e3])
@pytest.mark.parametrize("ddof", [0, 1])
def test_float32_agrees_with_float64(backend, rel_error, offset, ddof):
    data = _chain_data(np.random.default_rng(7), offset=offset)
    r32 = _chain(backend, data, "float32", ddof=ddof)
    r64 = _chain(backend, data, "float64", ddof=ddof)
    for name in r64:
        assert r32[name].dtype == np.float32, name
        err = rel_error(r32[name], r64[name])
        assert err <= 5e-4, f"{name}: float32 vs float64 relative error {err:.1e}"


# ---------------------------------------------------------------------------
# memory layouts: Fortran order, strided views, read-only memmaps


def _layout_ops(x, rng_seed=8):
    """Forward and backward of the ops that take x; every result as a NumPy array."""
    rng = np.random.default_rng(rng_seed)
    n, p = x.shape
    gamma, beta = rng.normal(size=p), rng.normal(size=p)
    w = rng.normal(size=(p, 2))
    upstream = rng.normal(size=(n, p))
    results = {}
    for ddof in (0, 1):
        y, cache = ops.batchnorm_forward(x, gamma, beta, eps=1e-5, ddof=ddof)
        results[f"bn{ddof}"] = (y, cache.mean, cache.var, *ops.batchnorm_backward(upstream, cache))
    y, cache = ops.batchnorm_inference_forward(x, gamma, beta, beta, gamma ** 2)
    results["bn_inf"] = (y, *ops.batchnorm_inference_backward(upstream, cache))
    y, cache = ops.dense_forward(x, w, beta[:2])
    results["dense"] = (y, *ops.dense_backward(upstream[:, :2], cache))
    y, cache = ops.softplus_forward(x)
    results["softplus"] = (y, ops.softplus_backward(upstream, cache))
    return results


def _assert_same(got, want, exact=True, rel_error=None):
    for key in want:
        for g, w in zip(got[key], want[key]):
            if exact:
                np.testing.assert_array_equal(g, w, err_msg=key)
            else:
                assert rel_error(g, w) <= 1e-13, key


def _base(n=200, p=6, seed=9):
    return np.random.default_rng(seed).normal(size=(n, p)) * 3.0 + 2.0


@pytest.mark.parametrize("view", ["cols", "rows", "both"])
def test_strided_views_equal_contiguous_copies(view):
    base = _base(400, 12)
    before = base.copy()
    x = {"cols": base[:, ::2], "rows": base[::2], "both": base[::2, 1::2]}[view]
    assert not x.flags.c_contiguous
    _assert_same(_layout_ops(x), _layout_ops(np.ascontiguousarray(x)))
    np.testing.assert_array_equal(base, before)


def test_fortran_order_equals_c_order_to_rounding(rel_error):
    x = _base()
    xf = np.asfortranarray(x)
    _assert_same(_layout_ops(xf), _layout_ops(x), exact=False, rel_error=rel_error)
    np.testing.assert_array_equal(xf, x)


def test_fortran_order_bitwise_equal_c_order():
    x = _base()
    _assert_same(_layout_ops(np.asfortranarray(x)), _layout_ops(x))


def test_read_only_memmap_equals_array_and_is_not_written(tmp_path):
    x = _base()
    path = tmp_path / "x.f64"
    x.tofile(path)
    raw = path.read_bytes()
    mm = np.memmap(path, dtype=np.float64, mode="r", shape=x.shape)
    _assert_same(_layout_ops(mm), _layout_ops(x.copy()))
    del mm
    assert path.read_bytes() == raw


# ---------------------------------------------------------------------------
# sparse input


@pytest.mark.parametrize("fmt", ["csr_matrix", "csc_matrix", "csr_array", "csc_array"])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_input_to_dense_matches_dense(fmt, bias, rel_error):
    sp = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(10)
    dense_x = sp.random(30, 7, density=0.3, format="csr", random_state=11).toarray()
    x = getattr(sp, fmt)(dense_x)
    data_before = x.data.copy()
    w, b = rng.normal(size=(7, 3)), (rng.normal(size=3) if bias else None)
    upstream = rng.normal(size=(30, 3))

    y_s, cache_s = ops.dense_forward(x, w, b)
    g_s = ops.dense_backward(upstream, cache_s)
    y_d, cache_d = ops.dense_forward(dense_x, w, b)
    g_d = ops.dense_backward(upstream, cache_d)

    assert type(y_s) is np.ndarray and y_s.shape == (30, 3)
    assert rel_error(y_s, y_d) <= 1e-14
    for name in ("dx", "dw"):
        got = getattr(g_s, name)
        assert type(got) is np.ndarray, f"{name} is {type(got)}"
        assert rel_error(got, getattr(g_d, name)) <= 1e-14
    assert (g_s.db is None) == (not bias)
    if bias:
        assert rel_error(g_s.db, g_d.db) <= 1e-14
    np.testing.assert_array_equal(x.data, data_before)


def test_sparse_dense_nonconforming_w():
    sp = pytest.importorskip("scipy.sparse")
    with pytest.raises(ValueError, match=r"\(5, 3\)"):
        ops.dense_forward(sp.csr_matrix(np.eye(5, 3)), np.ones((4, 2)))


@pytest.mark.parametrize("op", ["batchnorm", "batchnorm_inference", "relu"])
def test_sparse_input_elsewhere_raises_type_error(op):
    sp = pytest.importorskip("scipy.sparse")
    x = sp.csr_matrix(np.eye(5, 3) + 1.0)
    calls = {
        "batchnorm": lambda: ops.batchnorm_forward(x, ONES3, ZEROS3),
        "batchnorm_inference": lambda: ops.batchnorm_inference_forward(x, ONES3, ZEROS3,
                                                                       ZEROS3, ONES3),
        "relu": lambda: ops.relu_forward(x),
    }
    with pytest.raises(TypeError, match="sparse"):
        calls[op]()


# ---------------------------------------------------------------------------
# hyperparameters


@pytest.mark.parametrize("kwargs", [
    {"eps": -1e-3}, {"eps": float("nan")}, {"eps": float("inf")}, {"eps": "1e-5"},
    {"ddof": -1}, {"ddof": 1.5}, {"ddof": 1.0}, {"ddof": "1"}, {"ddof": None},
])
def test_batchnorm_invalid_eps_or_ddof(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        _bn(np.arange(12.0).reshape(4, 3) ** 2, **kwargs)


@pytest.mark.parametrize("eps", [-1e-3, float("nan"), float("inf")])
def test_batchnorm_inference_invalid_eps(eps):
    with pytest.raises(ValueError, match="eps"):
        ops.batchnorm_inference_forward(np.ones((2, 3)), ONES3, ZEROS3, ZEROS3, ONES3, eps=eps)


def test_batchnorm_inference_nonpositive_variance_raises():
    with pytest.raises(ValueError, match="column 1"):
        ops.batchnorm_inference_forward(np.ones((2, 3)), ONES3, ZEROS3, ZEROS3,
                                        np.array([1.0, 0.0, 1.0]), eps=0.0)


def test_batchnorm_accepts_numpy_scalar_hyperparameters():
    x = np.arange(12.0).reshape(4, 3) ** 2
    y_np, _ = _bn(x, eps=np.float32(1e-5), ddof=np.int64(1))
    y_py, _ = _bn(x, eps=float(np.float32(1e-5)), ddof=1)
    np.testing.assert_array_equal(y_np, y_py)


# ---------------------------------------------------------------------------
# determinism


def test_repeat_runs_are_bitwise_identical(backend):
    data = _chain_data(np.random.default_rng(12), n=257)
    for dtype in ("float32", "float64"):
        first = _chain(backend, data, dtype, ddof=1)
        second = _chain(backend, data, dtype, ddof=1)
        for name in first:
            np.testing.assert_array_equal(first[name], second[name], err_msg=name)


# ---------------------------------------------------------------------------
# held-out data, independent numerical differentiation


def _ridders_derivative(phi, h0, shrink=1.6, levels=10):
    """Derivative at t = 0 of ``phi(t)`` by Ridders' extrapolation.

    Central differences ``[phi(h) − phi(−h)] / 2h`` are taken for steps
    ``h0, h0/shrink, h0/shrink², ...``; a Neville tableau extrapolates them to
    h → 0 in powers of h², and the entry with the smallest change from its
    neighbours is returned with that change as its error estimate. ``phi``
    returns ``(value, step_taken)`` so the rounding of x + h is accounted for.
    """
    def central(h):
        up, t_up = phi(h)
        down, t_down = phi(-h)
        return (up - down) / (t_up - t_down)

    tableau = [[central(h0)]]
    best, best_err = tableau[0][0], math.inf
    h = h0
    for i in range(1, levels):
        h /= shrink
        row = [central(h)]
        factor = shrink ** 2
        for j in range(1, i + 1):
            row.append((row[j - 1] * factor - tableau[i - 1][j - 1]) / (factor - 1.0))
            factor *= shrink ** 2
            err = max(abs(row[j] - row[j - 1]), abs(row[j] - tableau[i - 1][j - 1]))
            if err <= best_err:
                best, best_err = row[j], err
        tableau.append(row)
        if abs(row[i] - tableau[i - 1][i - 1]) >= 2.0 * best_err:
            break  # higher orders only amplify rounding now
    return best, best_err


def _ridders_gradient(f, x, h0):
    x = np.asarray(x, dtype=np.float64)
    h0 = np.broadcast_to(h0, x.shape)
    grad = np.empty_like(x)
    for i in np.ndindex(x.shape):
        def phi(t, i=i):
            v = x.copy()
            v[i] = x[i] + t
            return f(v), v[i] - x[i]

        grad[i], _ = _ridders_derivative(phi, float(h0[i]))
    return grad


@pytest.mark.parametrize("ddof", [0, 1])
def test_batchnorm_gradients_on_diabetes_data(ddof, rel_error):
    datasets = pytest.importorskip("sklearn.datasets")
    x = datasets.load_diabetes(scaled=False).data[:30, :5]  # age, sex, bmi, bp, s1
    rng = np.random.default_rng(13)
    w = rng.normal(size=(5, 4)) / 10.0
    gamma, beta = rng.uniform(0.5, 2.0, size=4), rng.normal(size=4)
    upstream = rng.normal(size=(30, 4))

    z, dense_cache = ops.dense_forward(x, w)
    _, bn_cache = ops.batchnorm_forward(z, gamma, beta, eps=0.0, ddof=ddof)
    dz, dgamma, dbeta = ops.batchnorm_backward(upstream, bn_cache)
    dw = ops.dense_backward(dz, dense_cache).dw

    def scalar(z_=z, gamma_=gamma, beta_=beta):
        y, _ = ops.batchnorm_forward(z_, gamma_, beta_, eps=0.0, ddof=ddof)
        return float(np.sum(upstream * y))

    z_spread = z.std(axis=0)
    expected = {
        "dz": _ridders_gradient(lambda v: scalar(z_=v), z, 0.1 * z_spread),
        "dgamma": _ridders_gradient(lambda v: scalar(gamma_=v), gamma, 0.1),
        "dbeta": _ridders_gradient(lambda v: scalar(beta_=v), beta, 0.1),
        "dw": _ridders_gradient(lambda v: scalar(z_=x @ v), w,
                                0.1 * z_spread / np.abs(x).max(axis=0)[:, None]),
    }
    got = {"dz": dz, "dgamma": dgamma, "dbeta": dbeta, "dw": dw}
    for name, want in expected.items():
        err = rel_error(got[name], want)
        assert err <= 1e-7, f"{name}: relative error {err:.1e} against Ridders' extrapolation"
