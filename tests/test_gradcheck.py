"""Tests of bnmat.gradcheck: it accepts correct gradients and rejects wrong ones.

The oracle is always finite differences in float64 (inside the checker) or a
closed-form gradient derived independently (log-sum-exp). The wrong gradients
are the pitfalls of DESIGN §1, written by hand here.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from bnmat import ops
from bnmat.gradcheck import (
    DegenerateCheckWarning,
    GradCheckReport,
    assert_vjp,
    check_grad,
    check_vjp,
    numerical_grad,
)

array_api_strict = pytest.importorskip("array_api_strict")
try:
    import torch
except ImportError:  # pragma: no cover - torch is optional
    torch = None


# --------------------------------------------------------------------------- numerical_grad


def _logsumexp(x):
    m = np.max(x)
    return float(m + np.log(np.sum(np.exp(x - m))))


def _softmax(x):
    e = np.exp(x - np.max(x))
    return e / np.sum(e)


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 2)])
def test_numerical_grad_matches_logsumexp_gradient(shape):
    x = np.random.default_rng(1).standard_normal(shape)
    g = numerical_grad(_logsumexp, x)
    assert g.shape == x.shape and g.dtype == np.float64
    np.testing.assert_allclose(g, _softmax(x), rtol=1e-9, atol=0)


def test_numerical_grad_quadratic_form_and_large_entries():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4))
    a = a @ a.T
    x = rng.standard_normal(4) * 100.0  # relative steps keep large entries accurate

    def quad(v):
        return float(v @ a @ v) / 2.0

    np.testing.assert_allclose(numerical_grad(quad, x), a @ x, rtol=1e-9)
    np.testing.assert_allclose(numerical_grad(quad, x, order=2), a @ x, rtol=1e-6)
    np.testing.assert_allclose(numerical_grad(quad, x, step=1e-3), a @ x, rtol=1e-9)


def test_numerical_grad_never_mutates_its_input():
    x = np.random.default_rng(3).standard_normal((3, 2))
    before = x.copy()
    numerical_grad(_logsumexp, x)
    assert np.array_equal(x, before)
    x.flags.writeable = False  # read-only input works: the function copies it
    numerical_grad(_logsumexp, x)
    # float32 and list input are converted to float64 copies
    g32 = numerical_grad(_logsumexp, before.astype(np.float32))
    assert g32.dtype == np.float64
    assert numerical_grad(lambda v: float(v @ v), [1.0, 2.0]).tolist() == pytest.approx([2, 4])


def test_numerical_grad_detects_function_that_mutates_its_argument():
    def bad(v):
        v[0] = 0.0
        return float(np.sum(v))

    with pytest.raises(RuntimeError, match="modified its argument"):
        numerical_grad(bad, np.ones(3))


def test_numerical_grad_rejects_non_scalar_and_non_finite():
    with pytest.raises(ValueError, match="scalar"):
        numerical_grad(lambda v: v * 2, np.ones(3))
    with pytest.raises(ValueError, match="not finite"):
        numerical_grad(lambda v: 1.0 / v[0] if v[0] > 0 else float("inf"), np.array([1e-6]),
                       step=1e-3)


# --------------------------------------------------------------------------- a small network
#
# X (10×7) → Z = XΓ1 (4 units) → batch norm (ddof=1, eps=0) → ReLU → ŷ = HΓ2 → SSE


def _network_point():
    # seed 19 keeps every batch-norm output at least 0.14 away from ReLU's kink,
    # with negative entries in every column (so ReLU's derivative is not all ones)
    rng = np.random.default_rng(19)
    x = rng.standard_normal((10, 7))
    params = {
        "Gamma1": rng.standard_normal((7, 4)),
        "gamma": rng.uniform(0.5, 2.0, 4),
        "beta": 0.5 * rng.standard_normal(4),
        "Gamma2": rng.standard_normal(4),
    }
    y = rng.standard_normal(10)
    return x, y, params


def _forward_by_hand(x, y, p):
    """The network in plain NumPy, independent of bnmat.ops."""
    z = x @ p["Gamma1"]
    n = z.shape[0]
    centered = z - z.mean(axis=0)
    s = 1.0 / np.sqrt(np.sum(centered**2, axis=0) / (n - 1))  # ddof = 1, eps = 0
    z_hat = centered * s
    b = z_hat * p["gamma"] + p["beta"]
    h = np.maximum(b, 0.0)
    y_hat = h @ p["Gamma2"]
    return {"z_hat": z_hat, "s": s, "b": b, "h": h, "loss": float(np.sum((y - y_hat) ** 2))}


def _correct_grads(x, y, p):
    """The gradient by bnmat.ops (checked against finite differences below)."""
    z, dense1 = ops.dense_forward(x, p["Gamma1"])
    b, bn = ops.batchnorm_forward(z, p["gamma"], p["beta"], eps=0.0, ddof=1)
    h, act = ops.relu_forward(b)
    y_hat, dense2 = ops.dense_forward(h, p["Gamma2"][:, None])
    _, loss = ops.sse_forward(y_hat[:, 0], y)
    dy_hat = ops.sse_backward(1.0, loss)
    dh, dgamma2, _ = ops.dense_backward(dy_hat[:, None], dense2)
    dz, dgamma, dbeta = ops.batchnorm_backward(ops.relu_backward(dh, act), bn)
    return {"Gamma1": ops.dense_backward(dz, dense1).dw, "gamma": dgamma, "beta": dbeta,
            "Gamma2": dgamma2[:, 0]}


def _upstream_g(x, y, p, fw, relu_derivative=None):
    """G = ∂R/∂B by hand, with a chosen (possibly wrong) ReLU derivative."""
    residual = fw["h"] @ p["Gamma2"] - y
    d_h = 2.0 * residual[:, None] * p["Gamma2"][None, :]
    if relu_derivative is None:
        relu_derivative = (fw["b"] > 0).astype(float)
    return d_h * relu_derivative


def _grads_by_hand(x, y, p, *, pitfall=None):
    """Closed-form gradients written by hand, optionally with one DESIGN §1 pitfall."""
    fw = _forward_by_hand(x, y, p)
    n, ddof = x.shape[0], 1
    derivative = None
    if pitfall == "relu_all_ones":
        # "set negatives to 0, then set everything ≥ 0 to 1"
        derivative = np.maximum(fw["b"], 0.0)
        derivative[derivative >= 0] = 1.0
    g = _upstream_g(x, y, p, fw, derivative)
    z_hat, scale = fw["z_hat"], p["gamma"] * fw["s"]
    dgamma = np.sum(g * z_hat, axis=0)
    dbeta = np.sum(g, axis=0)
    dz = (g - g.mean(axis=0) - z_hat * dgamma / (n - ddof)) * scale
    grads = {"Gamma1": x.T @ dz, "gamma": dgamma, "beta": dbeta, "Gamma2": fw["h"].T @
             (2.0 * (fw["h"] @ p["Gamma2"] - y))}
    if pitfall == "mu_sigma_constant":
        grads["Gamma1"] = x.T @ (g * scale)
    elif pitfall == "gamma_factor":
        grads["gamma"] = p["gamma"] * dgamma
    elif pitfall == "gamma_full_matrix":
        grads["gamma"] = z_hat.T @ g
    elif pitfall == "full_matrix_in_projection":
        # the projection term with the full matrix ẐᵀG instead of its diagonal
        dz_full = (g - g.mean(axis=0) - z_hat @ (z_hat.T @ g) / (n - ddof)) * scale
        grads["Gamma1"] = x.T @ dz_full
    return grads


@pytest.fixture(scope="module")
def network():
    x, y, params = _network_point()
    fw = _forward_by_hand(x, y, params)
    assert np.min(np.abs(fw["b"])) > 0.1  # finite differences never cross the kink
    assert np.all(np.any(fw["b"] < 0, axis=0))

    def f(p):
        return _forward_by_hand(x, y, p)["loss"]

    return x, y, params, f


def test_check_grad_accepts_the_correct_gradients(network):
    x, y, params, f = network
    report = check_grad(f, lambda p: _correct_grads(x, y, p), params)
    assert isinstance(report, GradCheckReport)
    assert report.ok, str(report)
    assert set(report.errors) == {"Gamma1", "gamma", "beta", "Gamma2"}
    assert max(report.errors.values()) < 1e-8  # DESIGN §5: 1e-8 relative in float64
    assert report.directional.ok and not report.warnings
    # the hand-written closed forms agree as well
    assert check_grad(f, lambda p: _grads_by_hand(x, y, p), params).ok


def test_check_grad_does_not_touch_the_callers_params(network):
    x, y, params, f = network
    before = {k: v.copy() for k, v in params.items()}
    as32 = {k: v.astype(np.float32) for k, v in params.items()}

    def greedy_grad(p):
        out = _correct_grads(x, y, p)
        for v in p.values():
            v *= 2.0  # a careless grad that scribbles on its input
        return out

    check_grad(f, greedy_grad, params)
    assert all(np.array_equal(params[k], before[k]) for k in params)
    report = check_grad(f, lambda p: _correct_grads(x, y, p), as32)  # float64 copies inside
    assert report.ok and all(v.dtype == np.float32 for v in as32.values())


@pytest.mark.parametrize(
    "pitfall, wrong",
    [
        ("mu_sigma_constant", {"Gamma1"}),          # 1: misses C and the projection term
        ("full_matrix_in_projection", {"Gamma1"}),  # 2: ẐᵀG where diag(ẐᵀG) belongs
        ("gamma_factor", {"gamma"}),                # 2: an extra factor γ
        ("relu_all_ones", {"Gamma1", "gamma", "beta"}),  # 3: a′(B) = 1 everywhere
    ],
)
def test_check_grad_rejects_each_pitfall(network, pitfall, wrong):
    x, y, params, f = network
    report = check_grad(f, lambda p: _grads_by_hand(x, y, p, pitfall=pitfall), params)
    assert not report.ok
    failed = {name for name, c in report.params.items() if not c.ok}
    assert failed == wrong, str(report)
    assert all(report.errors[name] > 1e-3 for name in wrong)
    assert not report.directional.ok
    assert "FAIL" in str(report)


def test_gamma_as_full_matrix_is_a_clear_shape_error(network):
    x, y, params, f = network
    with pytest.raises(ValueError, match=r"'gamma'.*\(4, 4\).*\(4,\).*diagonal"):
        check_grad(f, lambda p: _grads_by_hand(x, y, p, pitfall="gamma_full_matrix"), params)


def test_check_grad_rejects_wrong_keys(network):
    x, y, params, f = network

    def missing(p):
        g = _correct_grads(x, y, p)
        g.pop("beta")
        g["Beta"] = np.zeros(4)
        return g

    with pytest.raises(ValueError, match=r"missing \['beta'\].*unexpected \['Beta'\]"):
        check_grad(f, missing, params)
    with pytest.raises(ValueError, match="dict"):
        check_grad(f, lambda p: list(_correct_grads(x, y, p).values()), params)


def test_report_prints_a_table_with_every_parameter(network):
    x, y, params, f = network
    text = str(check_grad(f, lambda p: _grads_by_hand(x, y, p, pitfall="gamma_factor"), params))
    lines = text.splitlines()
    assert "rel err" in text and "|analytic|" in text and "|numerical|" in text
    for name, shape in [("Gamma1", "(7, 4)"), ("gamma", "(4,)"), ("beta", "(4,)"),
                        ("Gamma2", "(4,)")]:
        (row,) = [ln for ln in lines if ln.startswith(name + " ")]
        assert shape in row
        assert row.endswith("FAIL" if name == "gamma" else "OK")


def test_check_grad_fails_a_grad_that_is_not_repeatable():
    buffer = np.zeros(3)

    def accumulating_grad(p):
        buffer[...] += 2.0 * p["w"]  # forgets to reset between calls
        return {"w": buffer}

    w = np.random.default_rng(10).standard_normal(3)
    report = check_grad(lambda p: float(p["w"] @ p["w"]), accumulating_grad, {"w": w})
    assert report.params["w"].ok  # the first call was right...
    assert not report.ok and "not repeatable" in str(report)  # ...but it is not re-entrant


# --------------------------------------------------------------------------- degenerate checks


def test_all_ones_upstream_gradient_warns_that_the_check_is_degenerate():
    # R = Σ BN(Z) = N Σβ: the gradient with respect to Z and γ is exactly zero, so
    # a wrong formula that also returns zero there (here: no projection term and
    # a γ factor) would pass. The checker must say so.
    rng = np.random.default_rng(4)
    params = {"z": rng.standard_normal((8, 3)), "gamma": rng.uniform(0.5, 2, 3),
              "beta": rng.standard_normal(3)}

    def f(p):
        return float(np.sum(ops.batchnorm_forward(p["z"], p["gamma"], p["beta"])[0]))

    def wrong_grad(p):
        n = p["z"].shape[0]
        return {"z": np.zeros((n, 3)), "gamma": p["gamma"] * 0.0, "beta": np.full(3, float(n))}

    with pytest.warns(DegenerateCheckWarning) as record:
        report = check_grad(f, wrong_grad, params)
    assert report.ok  # passes, which is exactly why the warning matters
    messages = " ".join(str(w.message) for w in record)
    assert "'z'" in messages and "'gamma'" in messages and "'beta'" not in messages
    assert len(report.warnings) == 2 and "WARNING" in str(report)


def test_zero_gradient_at_a_stationary_point_warns():
    with pytest.warns(DegenerateCheckWarning, match="zero everywhere"):
        report = check_grad(lambda p: float(np.sum(p["w"] ** 2)), lambda p: {"w": 2 * p["w"]},
                            {"w": np.zeros(3)})
    assert report.ok


def test_random_upstream_gradient_does_not_warn():
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((8, 3))
    params = {"z": rng.standard_normal((8, 3)), "gamma": rng.uniform(0.5, 2, 3),
              "beta": rng.standard_normal(3)}

    def f(p):
        return float(np.sum(weights * ops.batchnorm_forward(p["z"], p["gamma"], p["beta"])[0]))

    def grad(p):
        _, cache = ops.batchnorm_forward(p["z"], p["gamma"], p["beta"])
        dz, dgamma, dbeta = ops.batchnorm_backward(weights, cache)
        return {"z": dz, "gamma": dgamma, "beta": dbeta}

    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateCheckWarning)
        assert check_grad(f, grad, params).ok


# --------------------------------------------------------------------------- check_vjp


def _namespaces():
    yield pytest.param(np, id="numpy")
    yield pytest.param(array_api_strict, id="array_api_strict")
    if torch is not None:
        yield pytest.param(torch, id="torch")


def _to(xp, a):
    if a is None or not isinstance(a, np.ndarray):
        return a
    if xp is torch:
        return torch.asarray(a)
    return xp.asarray(a)


def _away_from_zero(rng, shape):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.2, 2.0, shape)


def _onehot(rng, n, k):
    return np.eye(k)[rng.integers(0, k, n)]


_R = np.random.default_rng(6)
# name -> (forward, backward, args as NumPy arrays, forward keyword arguments)
_OP_CASES = {
    "dense": (ops.dense_forward, ops.dense_backward,
              (_R.standard_normal((6, 3)), _R.standard_normal((3, 2)), _R.standard_normal(2)), {}),
    "dense_no_bias": (ops.dense_forward, ops.dense_backward,
                      (_R.standard_normal((6, 3)), _R.standard_normal((3, 2)), None), {}),
    **{
        f"batchnorm_ddof{ddof}_eps{eps:g}": (
            ops.batchnorm_forward, ops.batchnorm_backward,
            (_R.standard_normal((7, 3)) * 2 + 1, _R.uniform(0.5, 2, 3), _R.standard_normal(3)),
            {"eps": eps, "ddof": ddof})
        for ddof in (0, 1) for eps in (0.0, 1e-3)
    },
    "batchnorm_inference": (
        ops.batchnorm_inference_forward, ops.batchnorm_inference_backward,
        (_R.standard_normal((5, 3)), _R.uniform(0.5, 2, 3), _R.standard_normal(3),
         _R.standard_normal(3), _R.uniform(0.5, 2, 3)), {"eps": 1e-3}),
    "relu": (ops.relu_forward, ops.relu_backward, (_away_from_zero(_R, (5, 3)),), {}),
    "leaky_relu": (ops.leaky_relu_forward, ops.leaky_relu_backward,
                   (_away_from_zero(_R, (5, 3)), 0.2), {}),
    "tanh": (ops.tanh_forward, ops.tanh_backward, (_R.standard_normal((5, 3)),), {}),
    "sigmoid": (ops.sigmoid_forward, ops.sigmoid_backward, (_R.standard_normal((5, 3)),), {}),
    "softplus": (ops.softplus_forward, ops.softplus_backward, (_R.standard_normal((5, 3)),), {}),
    "sse": (ops.sse_forward, ops.sse_backward,
            (_R.standard_normal(6), _R.standard_normal(6)), {}),
    "mse_2d": (ops.mse_forward, ops.mse_backward,
               (_R.standard_normal((6, 2)), _R.standard_normal((6, 2))), {}),
    "softmax_cross_entropy": (ops.softmax_cross_entropy_forward,
                              ops.softmax_cross_entropy_backward,
                              (_R.standard_normal((6, 3)), _onehot(_R, 6, 3)), {}),
}


@pytest.mark.parametrize("xp", list(_namespaces()))
@pytest.mark.parametrize("case", list(_OP_CASES))
def test_check_vjp_accepts_the_ops(case, xp):
    forward, backward, args, kwargs = _OP_CASES[case]
    report = check_vjp(forward, backward, [_to(xp, a) for a in args], kwargs=kwargs)
    assert report.ok, str(report)
    assert report.error < 1e-8
    assert len(report.terms) >= 2  # the joint check and one line per input


def test_check_vjp_accepts_partial_and_float32_input():
    x = np.random.default_rng(7).standard_normal((6, 2)).astype(np.float32)
    forward = functools.partial(ops.batchnorm_forward, eps=0.0, ddof=1)
    before = x.copy()
    report = assert_vjp(forward, ops.batchnorm_backward, (x, np.ones(2), np.zeros(2)))
    assert report.ok and np.array_equal(x, before)


def _batchnorm_backward_without_projection(dy, cache):
    """Pitfall 1 as an op: μ and σ treated as constants in dX (dγ, dβ are right)."""
    dbeta = np.sum(dy, axis=0)
    dgamma = np.sum(dy * cache.x_hat, axis=0)
    dx = (dy - dbeta / dy.shape[0]) * (cache.gamma * cache.inv_std)
    return ops.BatchNormGrads(dx, dgamma, dbeta)


def test_check_vjp_fails_on_a_wrong_batchnorm_backward():
    forward, _, args, kwargs = _OP_CASES["batchnorm_ddof1_eps0"]
    report = check_vjp(forward, _batchnorm_backward_without_projection, args, kwargs=kwargs)
    assert not report.ok
    by_name = {t.name: t for t in report.terms}
    assert not by_name["all inputs"].ok and not by_name["dx"].ok
    assert by_name["dgamma"].ok and by_name["dbeta"].ok
    assert report.error > 1e-3
    with pytest.raises(AssertionError, match="dx .*FAIL"):
        assert_vjp(forward, _batchnorm_backward_without_projection, args, kwargs=kwargs)


def test_check_vjp_fails_on_an_all_ones_relu_derivative():
    x = _away_from_zero(np.random.default_rng(8), (5, 3))

    def all_ones_backward(dy, cache):
        return dy * 1.0

    report = check_vjp(ops.relu_forward, all_ones_backward, (x,))
    assert not report.ok and "dx" in str(report)


def test_check_vjp_shape_errors_and_degenerate_input():
    forward, backward, args, kwargs = _OP_CASES["batchnorm_ddof0_eps0"]

    def full_matrix_dgamma(dy, cache):
        dx, _, dbeta = backward(dy, cache)
        return ops.BatchNormGrads(dx, cache.x_hat.T @ dy, dbeta)

    with pytest.raises(ValueError, match=r"dgamma has shape \(3, 3\)"):
        check_vjp(forward, full_matrix_dgamma, args, kwargs=kwargs)
    with pytest.warns(DegenerateCheckWarning, match="does not move"):
        report = check_vjp(ops.relu_forward, ops.relu_backward, (-np.ones((4, 2)),))
    assert report.ok and report.warnings


def test_check_vjp_detects_a_forward_that_writes_into_its_input():
    def scribbling_forward(x):
        y, cache = ops.tanh_forward(x)
        x[0, 0] = 0.0
        return y, cache

    x = np.random.default_rng(9).standard_normal((3, 2))
    report = check_vjp(scribbling_forward, ops.tanh_backward, (x,))
    assert not report.ok and "modified in place" in str(report)


def test_check_vjp_fails_a_backward_that_is_not_repeatable():
    previous = []

    def accumulating_backward(dy, cache):
        dx = ops.tanh_backward(dy, cache)
        if previous:
            dx = dx + previous[-1]
        previous.append(dx)
        return dx

    x = np.random.default_rng(11).standard_normal((3, 2))
    report = check_vjp(ops.tanh_forward, accumulating_backward, (x,))
    assert not report.ok and "not repeatable" in str(report)
