"""Weighted batch norm (frequency weights): forward, backward, double backward.

Oracles: repeated rows (integer weights equal repeated rows to 1e-12), torch
autograd on the weighted formula written in torch, finite differences, and the
explicit Jacobians of the backward (bnmat.jacobians.batchnorm_backward_jacobians)
against finite-difference Jacobians.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnmat import jacobians, ops

torch = pytest.importorskip("torch")


def _case(rng, n=8, p=3):
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 3, size=p) + rng.normal(size=p)
    return x, rng.normal(size=p), rng.normal(size=p)


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_integer_weights_equal_repeated_rows(rng, ddof, eps):
    x, gamma, beta = _case(rng)
    w = rng.integers(0, 4, size=x.shape[0])
    w[0] = 2                                   # at least two rows in the repeated batch
    rep = np.repeat(np.arange(x.shape[0]), w)
    y_w, c_w = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof, weights=w)
    y_r, c_r = ops.batchnorm_forward(x[rep], gamma, beta, eps=eps, ddof=ddof)
    np.testing.assert_allclose(y_w[rep], y_r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_w.mean, c_r.mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(c_w.var, c_r.var, rtol=1e-12)
    # gradients: R = Σ_copies r(y) = Σ_i w_i r(y_i); upstream of the weighted op is w∘∂r/∂y
    r_grad = rng.normal(size=x.shape)
    g_w = ops.batchnorm_backward(w[:, None] * r_grad, c_w)
    g_r = ops.batchnorm_backward(r_grad[rep], c_r)
    np.testing.assert_allclose(g_w.dgamma, g_r.dgamma, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g_w.dbeta, g_r.dbeta, rtol=1e-12, atol=1e-12)
    summed = np.zeros_like(x)
    np.add.at(summed, rep, g_r.dx)
    scale = np.abs(summed).max()
    np.testing.assert_allclose(g_w.dx, summed, rtol=0, atol=1e-12 * scale)


def test_unit_weights_equal_unweighted(rng):
    x, gamma, beta = _case(rng)
    dy = rng.normal(size=x.shape)
    y1, c1 = ops.batchnorm_forward(x, gamma, beta, ddof=1)
    y2, c2 = ops.batchnorm_forward(x, gamma, beta, ddof=1, weights=np.ones(x.shape[0]))
    np.testing.assert_allclose(y2, y1, rtol=1e-13, atol=1e-13)
    for a, b in zip(ops.batchnorm_backward(dy, c2), ops.batchnorm_backward(dy, c1)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_ddof0_statistics_are_invariant_to_rescaling_weights(rng):
    x, gamma, beta = _case(rng)
    w = rng.uniform(0.1, 2, size=x.shape[0])
    y1, _ = ops.batchnorm_forward(x, gamma, beta, weights=w)
    y2, _ = ops.batchnorm_forward(x, gamma, beta, weights=w / w.sum())
    np.testing.assert_allclose(y1, y2, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("ddof", [0, 1])
def test_weighted_backward_matches_torch_and_finite_differences(rng, fd_grad, rel_error, ddof):
    x, gamma, beta = _case(rng, 7, 3)
    w = rng.uniform(0.2, 3, size=7)
    dy = rng.normal(size=x.shape)
    _, cache = ops.batchnorm_forward(x, gamma, beta, eps=1e-3, ddof=ddof, weights=w)
    got = ops.batchnorm_backward(dy, cache)

    tx, tg, tb = (torch.tensor(a, requires_grad=True) for a in (x, gamma, beta))
    tw = torch.tensor(w).reshape(-1, 1)
    mu = (tw * tx).sum(0) / tw.sum()
    var = (tw * (tx - mu) ** 2).sum(0) / (tw.sum() - ddof)
    y = (tx - mu) / torch.sqrt(var + 1e-3) * tg + tb
    want = torch.autograd.grad(y, (tx, tg, tb), torch.tensor(dy))
    for ours, theirs in zip(got, want):
        assert rel_error(ours, theirs.numpy()) < 1e-12

    def r(x_):
        return float(np.sum(ops.batchnorm_forward(x_, gamma, beta, eps=1e-3, ddof=ddof,
                                                  weights=w)[0] * dy))

    assert rel_error(got.dx, fd_grad(r, x)) < 1e-8
    assert abs(np.sum(got.dx)) < 1e-12 * np.abs(got.dx).sum()   # 1ᵀ dX = 0


def test_weighted_float32_accumulates_in_float64(rng):
    x = (1e4 + 1e-2 * rng.normal(size=(200, 2))).astype(np.float32)
    w = rng.uniform(0.5, 2, size=200)
    y, cache = ops.batchnorm_forward(x, np.ones(2), np.zeros(2), weights=w)
    assert y.dtype == np.float32
    x64 = x.astype(np.float64)
    mu = w @ x64 / w.sum()
    var = w @ (x64 - mu) ** 2 / w.sum()
    np.testing.assert_allclose(cache.var, var, rtol=1e-3)


def test_weight_errors(rng):
    x, gamma, beta = _case(rng)
    n = x.shape[0]
    with pytest.raises(ValueError, match=r"shape \(8,\)"):
        ops.batchnorm_forward(x, gamma, beta, weights=np.ones(n - 1))
    with pytest.raises(ValueError, match=">= 0"):
        ops.batchnorm_forward(x, gamma, beta, weights=-np.ones(n))
    with pytest.raises(ValueError, match="NaN"):
        ops.batchnorm_forward(x, gamma, beta, weights=np.full(n, np.nan))
    with pytest.raises(ValueError, match="total weight"):
        ops.batchnorm_forward(x, gamma, beta, ddof=1, weights=np.full(n, 1 / n))
    w = np.zeros(n)
    w[2] = 3.0                                    # one distinct row: zero variance
    with pytest.raises(ValueError, match="zero weighted variance"):
        ops.batchnorm_forward(x, gamma, beta, eps=0.0, weights=w)
    y, _ = ops.batchnorm_forward(x, gamma, beta, eps=1e-5, weights=w)
    np.testing.assert_allclose(y[2], beta, atol=1e-12)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ddof,eps", [(0, 0.0), (1, 0.2)])
def test_backward_jacobians_against_finite_differences_and_double_backward(
        rng, ddof, eps, weighted):
    """Third oracle: explicit Jacobians of the first-order backward (§11.2, §12)."""
    n, p = 5, 2
    x, gamma, beta = _case(rng, n, p)
    dy = rng.normal(size=(n, p))
    w = rng.uniform(0.3, 2, size=n) if weighted else None
    jac = jacobians.batchnorm_backward_jacobians(dy, x, gamma, eps=eps, ddof=ddof, weights=w)

    def backward(dy_, x_, gamma_):
        _, cache = ops.batchnorm_forward(x_, gamma_, beta, eps=eps, ddof=ddof, weights=w)
        return ops.batchnorm_backward(dy_, cache)

    def fd_jac(f, a, h=1e-5):
        cols = []
        for k in range(a.size):
            e = np.zeros(a.size)
            e[k] = h
            if a.ndim == 2:
                e = jacobians.unvec(e, a.shape)
            else:
                e = e.reshape(a.shape)
            cols.append((-f(a + 2 * e) + 8 * f(a + e) - 8 * f(a - e) + f(a - 2 * e)) / (12 * h))
        return np.stack(cols, axis=1)

    vecf = lambda t: jacobians.vec(t) if t.ndim == 2 else t  # noqa: E731
    checks = [
        (jac.dx_dy, lambda d: vecf(backward(d, x, gamma).dx), dy),
        (jac.dx_dx, lambda z: vecf(backward(dy, z, gamma).dx), x),
        (jac.dx_dgamma, lambda g: vecf(backward(dy, x, g).dx), gamma),
        (jac.dgamma_dy, lambda d: backward(d, x, gamma).dgamma, dy),
        (jac.dgamma_dx, lambda z: backward(dy, z, gamma).dgamma, x),
        (jac.dbeta_dy, lambda d: backward(d, x, gamma).dbeta, dy),
    ]
    for mat, f, at in checks:
        num = fd_jac(f, at)
        assert np.abs(mat - num).max() < 1e-8 * max(1.0, np.abs(num).max())

    a, c, e = rng.normal(size=(n, p)), rng.normal(size=p), rng.normal(size=p)
    _, cache = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof, weights=w)
    got = ops.batchnorm_double_backward(a, c, e, dy, cache)
    va = jacobians.vec(a)
    want_ddy = jac.dx_dy.T @ va + jac.dgamma_dy.T @ c + jac.dbeta_dy.T @ e
    want_dx = jac.dx_dx.T @ va + jac.dgamma_dx.T @ c
    want_dgamma = jac.dx_dgamma.T @ va
    np.testing.assert_allclose(jacobians.vec(got.ddy), want_ddy, atol=1e-12 * np.abs(want_ddy).max())
    np.testing.assert_allclose(jacobians.vec(got.dx), want_dx, atol=1e-12 * np.abs(want_dx).max())
    np.testing.assert_allclose(got.dgamma, want_dgamma, atol=1e-12 * np.abs(want_dgamma).max())


# ------------------------------------------------------------------ networks and estimators
import warnings  # noqa: E402

import bnmat  # noqa: E402
from bnmat._tree import tree_leaves  # noqa: E402


def _net():
    return bnmat.Sequential([
        bnmat.Dense(5, bias=False), bnmat.BatchNorm(ddof=1), bnmat.ReLU(),
        bnmat.Sequential([bnmat.Dense(3, bias=False), bnmat.BatchNorm(), bnmat.Tanh()]),
        bnmat.Dense(1)])


def _repeat_case(rng, n=30):
    x, y = rng.normal(size=(n, 4)), rng.normal(size=n)
    w = rng.integers(0, 4, size=n)
    w[:2] = 1
    return x, y, w, np.repeat(np.arange(n), w)


@pytest.mark.parametrize("loss", ["sse", "mse"])
def test_value_and_grad_integer_weights_equal_repeated_rows(rng, loss):
    x, y, w, rep = _repeat_case(rng)
    net = _net()
    params, state = net.init(x, seed=0)
    a = bnmat.value_and_grad(net, params, state, x, y, loss, l2=0.1, sample_weight=w)
    b = bnmat.value_and_grad(net, params, state, x[rep], y[rep], loss, l2=0.1)
    assert abs(a[0] - b[0]) <= 1e-12 * abs(b[0])
    for u, v in zip(tree_leaves(a[1]), tree_leaves(b[1])):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-12 * np.abs(v).max())
    for u, v in zip(tree_leaves(a[2]), tree_leaves(b[2])):      # running statistics
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)


def test_value_and_grad_weighted_cross_entropy_equals_repeated_rows(rng):
    x, _, w, rep = _repeat_case(rng)
    labels = rng.integers(0, 3, size=x.shape[0])
    net = bnmat.Sequential([bnmat.Dense(4, bias=False), bnmat.BatchNorm(), bnmat.Tanh(),
                            bnmat.Dense(3)])
    params, state = net.init(x, seed=1)
    a = bnmat.value_and_grad(net, params, state, x, labels, "softmax_cross_entropy",
                             sample_weight=w)
    b = bnmat.value_and_grad(net, params, state, x[rep], labels[rep], "softmax_cross_entropy")
    assert abs(a[0] - b[0]) <= 1e-12 * abs(b[0])
    for u, v in zip(tree_leaves(a[1]), tree_leaves(b[1])):
        np.testing.assert_allclose(u, v, rtol=0, atol=1e-12 * np.abs(v).max())


def test_weighted_network_gradient_matches_torch(rng):
    x, y, _, _ = _repeat_case(rng, 12)
    w = rng.uniform(0.2, 2.0, size=12)
    net = bnmat.Sequential([bnmat.Dense(4, bias=False), bnmat.BatchNorm(eps=1e-3),
                            bnmat.Sigmoid(), bnmat.Dense(1)])
    params, state = net.init(x, seed=0)
    _, grads, _ = bnmat.value_and_grad(net, params, state, x, y, "mse", sample_weight=w)
    w1 = torch.tensor(params[0]["w"], requires_grad=True)
    g = torch.tensor(params[1]["gamma"], requires_grad=True)
    b = torch.tensor(params[1]["beta"], requires_grad=True)
    w2 = torch.tensor(params[3]["w"], requires_grad=True)
    b2 = torch.tensor(params[3]["b"], requires_grad=True)
    tw = torch.tensor(w).reshape(-1, 1)
    z = torch.tensor(x) @ w1
    mu = (tw * z).sum(0) / tw.sum()
    var = (tw * (z - mu) ** 2).sum(0) / tw.sum()
    h = torch.sigmoid((z - mu) / torch.sqrt(var + 1e-3) * g + b)
    out = h @ w2 + b2
    r = (tw * (out - torch.tensor(y).reshape(-1, 1)) ** 2).sum() / tw.sum()
    want = torch.autograd.grad(r, (w1, g, b, w2, b2))
    ours = [grads[0]["w"], grads[1]["gamma"], grads[1]["beta"], grads[3]["w"], grads[3]["b"]]
    for o, t in zip(ours, want):
        np.testing.assert_allclose(o, t.numpy(), rtol=1e-11, atol=1e-13)


@pytest.mark.parametrize("solver", ["lbfgs", "newton"])
def test_full_batch_fit_with_weights_equals_repeated_rows(rng, solver):
    x, y, w, rep = _repeat_case(rng)
    net = _net()
    params, state = net.init(x, seed=0)
    if solver == "lbfgs":
        a = bnmat.fit_lbfgs(net, params, state, x, y, sample_weight=w, max_iter=30)
        b = bnmat.fit_lbfgs(net, params, state, x[rep], y[rep], max_iter=30)
    else:
        a = bnmat.fit_newton(net, params, state, x, y, sample_weight=w, max_iter=15)
        b = bnmat.fit_newton(net, params, state, x[rep], y[rep], max_iter=15)
    pa, pb = net.predict(a.params, a.state, x), net.predict(b.params, b.state, x)
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-9 * np.abs(pb).max())
    # weighted population statistics: predict reproduces the weighted training output
    train_out = bnmat.train._weighted.weighted_forward(net, a.params, a.state, x, w.astype(float),
                                                       training=True)[0]
    np.testing.assert_allclose(pa, train_out, atol=1e-10)


def test_minibatch_fit_slices_weights(rng):
    x, y, w, _ = _repeat_case(rng, 40)
    net = _net()
    params, state = net.init(x, seed=0)
    full = bnmat.fit(net, params, state, x, y, sample_weight=w, epochs=3, progress=False)
    ones = bnmat.fit(net, params, state, x, y, sample_weight=np.ones(40), epochs=3,
                     batch_size=10, progress=False, validation_fraction=0.2)
    plain = bnmat.fit(net, params, state, x, y, epochs=3, batch_size=10, progress=False,
                      validation_fraction=0.2)
    for u, v in zip(tree_leaves(ones.params), tree_leaves(plain.params)):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(ones.history["val_loss"], plain.history["val_loss"], rtol=1e-12)
    assert np.isfinite(full.history["loss"]).all()


def test_sample_weight_errors(rng):
    x, y, _, _ = _repeat_case(rng, 10)
    net = _net()
    params, state = net.init(x, seed=0)
    with pytest.raises(ValueError, match="sample_weight must have shape"):
        bnmat.value_and_grad(net, params, state, x, y, sample_weight=np.ones(9))
    with pytest.raises(ValueError, match=">= 0"):
        bnmat.value_and_grad(net, params, state, x, y, sample_weight=-np.ones(10))
    with pytest.raises(ValueError, match="zero everywhere"):
        bnmat.value_and_grad(net, params, state, x, y, sample_weight=np.zeros(10))
    with pytest.raises(ValueError, match="cannot be combined"):
        bnmat.value_and_grad(net, params, state, x, y, sample_weight=np.ones(10),
                             groups=np.arange(10) % 2)


@pytest.mark.parametrize("cls", ["BNMLPRegressor", "BNMLPClassifier"])
def test_estimators_integer_weights_equal_repeated_rows(rng, cls):
    """scikit-learn's check_sample_weight_equivalence, for the full-batch solver."""
    x = rng.normal(size=(40, 4))
    w = rng.integers(0, 4, size=40)
    w[:2] = 1
    rep = np.repeat(np.arange(40), w)
    if cls == "BNMLPRegressor":
        y = np.sin(x[:, 0]) + 0.1 * rng.normal(size=40)
    else:
        y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 0)
    est = getattr(bnmat, cls)(hidden_layer_sizes=(6,), solver="lbfgs", max_iter=60,
                              early_stopping=False,   # held-out rows differ from weights
                              random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = type(est)(**est.get_params()).fit(x, y, sample_weight=w)
        b = type(est)(**est.get_params()).fit(x[rep], y[rep])
    if cls == "BNMLPRegressor":
        pa, pb = a.predict(x), b.predict(x)
    else:
        pa, pb = a.predict_proba(x), b.predict_proba(x)
    np.testing.assert_allclose(pa, pb, rtol=0, atol=1e-9 * max(1.0, np.abs(pb).max()))
    # zero weights = dropping the rows (same scaling, same statistics, same loss)
    keep = w > 0
    c = type(est)(**est.get_params()).fit(x[keep], y[keep], sample_weight=w[keep])
    pc = c.predict(x) if cls == "BNMLPRegressor" else c.predict_proba(x)
    np.testing.assert_allclose(pa, pc, rtol=0, atol=1e-9 * max(1.0, np.abs(pc).max()))


def test_estimator_stochastic_solver_accepts_weights(rng):
    x, y = rng.normal(size=(50, 3)), rng.normal(size=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = bnmat.BNMLPRegressor(hidden_layer_sizes=(4,), max_iter=3, random_state=0,
                                   early_stopping=True)
        est.fit(x, y, sample_weight=rng.uniform(0.5, 2, size=50))
    assert np.isfinite(est.predict(x)).all()
    with pytest.raises(ValueError, match="sample_weight"):
        bnmat.BNMLPRegressor().fit(x, y, sample_weight=np.ones(3))


def test_sample_weight_refuses_layers_with_unweighted_batch_statistics(rng):
    x, y = rng.normal(size=(10, 3)), rng.normal(size=10)
    net = bnmat.Sequential([bnmat.Dense(2, bias=False), bnmat.BatchRenorm(), bnmat.Dense(1)])
    params, state = net.init(x)
    with pytest.raises(TypeError, match="BatchRenorm"):
        bnmat.value_and_grad(net, params, state, x, y, sample_weight=np.ones(10))
    ln = bnmat.Sequential([bnmat.Dense(2), bnmat.LayerNorm(), bnmat.Dense(1)])
    p2, s2 = ln.init(x)          # layer norm's statistics are per row: weights do not enter
    a = bnmat.value_and_grad(ln, p2, s2, x, y, sample_weight=np.full(10, 2.0))
    b = bnmat.value_and_grad(ln, p2, s2, x, y)
    assert abs(a[0] - 2 * b[0]) < 1e-12 * abs(b[0])
