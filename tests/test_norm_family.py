"""Inference-mode gradients w.r.t. stored statistics, LayerNorm, batch renorm, BatchNorm
switches — each against torch.autograd and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import bnmat
from bnmat import ops

torch = pytest.importorskip("torch")


def _t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ------------------------------------------------------------------ inference statistics
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_inference_stats_gradients(rng, fd_grad, rel_error, eps):
    n, p = 6, 3
    x = rng.normal(size=(n, p)) * 2 + 1
    gamma, beta = rng.normal(size=p), rng.normal(size=p)
    mean, var = rng.normal(size=p), rng.uniform(0.5, 2, size=p)
    dy = rng.normal(size=(n, p))
    got = ops.batchnorm_inference_stats_backward(dy, x, gamma, beta, mean, var, eps=eps)
    # the existing 3-tuple is unchanged and agrees
    _, cache = ops.batchnorm_inference_forward(x, gamma, beta, mean, var, eps=eps)
    dx, dgamma, dbeta = ops.batchnorm_inference_backward(dy, cache)
    for a, b in zip((dx, dgamma, dbeta), got[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)

    args = [_t(a, True) for a in (x, gamma, beta, mean, var)]
    tx, tg, tb, tm, tv = args
    y = (tx - tm) / torch.sqrt(tv + eps) * tg + tb
    want = torch.autograd.grad(y, args, _t(dy))
    for ours, theirs in zip(got, want):
        assert rel_error(ours, theirs.numpy()) < 1e-13

    def r(**kw):
        a = {**dict(x=x, gamma=gamma, beta=beta, mean=mean, var=var), **kw}
        return float(np.sum(ops.batchnorm_inference_forward(
            a["x"], a["gamma"], a["beta"], a["mean"], a["var"], eps=eps)[0] * dy))

    assert rel_error(got.dmean, fd_grad(lambda m: r(mean=m), mean)) < 1e-9
    assert rel_error(got.dvar, fd_grad(lambda v: r(var=v), var, h=1e-4)) < 1e-9


# ------------------------------------------------------------------ layer norm
def _torch_ln(x, g, b, eps, ddof):
    mu = x.mean(1, keepdim=True)
    var = ((x - mu) ** 2).sum(1, keepdim=True) / (x.shape[1] - ddof)
    return (x - mu) / torch.sqrt(var + eps) * g + b


@pytest.mark.parametrize("ddof,eps", [(0, 0.0), (0, 1e-5), (1, 0.3)])
def test_layernorm_first_and_second_order(rng, fd_grad, rel_error, ddof, eps):
    n, p = 5, 4
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 2, size=(n, 1)) + rng.normal(size=(n, 1))
    gamma, beta = rng.normal(size=p), rng.normal(size=p)
    dy, a = rng.normal(size=(n, p)), rng.normal(size=(n, p))
    c, e = rng.normal(size=p), rng.normal(size=p)
    y, cache = ops.layernorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
    first = ops.layernorm_backward(dy, cache)
    second = ops.layernorm_double_backward(a, c, e, dy, cache)

    tx, tg, tb, tdy = _t(x, True), _t(gamma, True), _t(beta, True), _t(dy, True)
    ty = _torch_ln(tx, tg, tb, eps, ddof)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-13, atol=1e-13)
    dx, dg, db = torch.autograd.grad(ty, (tx, tg, tb), tdy, create_graph=True)
    for ours, theirs in zip(first, (dx, dg, db)):
        assert rel_error(ours, theirs.detach().numpy()) < 1e-13
    s = (dx * _t(a)).sum() + (dg * _t(c)).sum() + (db * _t(e)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tg))
    for ours, theirs in zip(second, want):
        assert rel_error(ours, theirs.numpy()) < 1e-12

    def r(x_):
        return float(np.sum(ops.layernorm_forward(x_, gamma, beta, eps=eps, ddof=ddof)[0] * dy))

    assert rel_error(first.dx, fd_grad(r, x)) < 1e-9

    def s_of(x_, g_, dy_):
        dxx, dgg, dbb = ops.layernorm_backward(
            dy_, ops.layernorm_forward(x_, g_, beta, eps=eps, ddof=ddof)[1])
        return float(np.sum(dxx * a) + dgg @ c + dbb @ e)

    assert rel_error(second.ddy, fd_grad(lambda d: s_of(x, gamma, d), dy)) < 1e-8
    assert rel_error(second.dx, fd_grad(lambda z: s_of(z, gamma, dy), x)) < 1e-8
    assert rel_error(second.dgamma, fd_grad(lambda g: s_of(x, g, dy), gamma)) < 1e-8
    np.testing.assert_allclose(first.dx.sum(axis=1), 0, atol=1e-12 * np.abs(first.dx).max())


def test_layernorm_errors(rng):
    with pytest.raises(ValueError, match="at least 2 features"):
        ops.layernorm_forward(rng.normal(size=(4, 1)), np.ones(1), np.zeros(1))
    x = rng.normal(size=(3, 3))
    x[1] = 2.0
    with pytest.raises(ValueError, match="row 1 of x is constant"):
        ops.layernorm_forward(x, np.ones(3), np.zeros(3), eps=0.0)


# ------------------------------------------------------------------ batch renorm
def _torch_renorm(x, g, b, m, v, r_max, d_max, eps, ddof):
    mu = x.mean(0)
    var_b = ((x - mu) ** 2).sum(0) / (x.shape[0] - ddof)
    sb = torch.sqrt(var_b + eps)
    sigma = torch.sqrt(v + eps)
    r = torch.clamp(sb / sigma, 1 / r_max, r_max).detach()
    d = torch.clamp((mu - m) / sigma, -d_max, d_max).detach()
    return ((x - mu) / sb * r + d) * g + b


@pytest.mark.parametrize("r_max,d_max", [(1.5, 0.5), (100.0, 100.0), (1.0, 0.0)])
@pytest.mark.parametrize("ddof", [0, 1])
def test_batch_renorm_first_and_second_order(rng, fd_grad, rel_error, r_max, d_max, ddof):
    n, p = 7, 3
    x = rng.normal(size=(n, p)) * 2 + 1
    gamma, beta = rng.normal(size=p), rng.normal(size=p)
    mean, var = rng.normal(size=p), rng.uniform(0.3, 4, size=p)
    dy, a = rng.normal(size=(n, p)), rng.normal(size=(n, p))
    c, e = rng.normal(size=p), rng.normal(size=p)
    kw = dict(r_max=r_max, d_max=d_max, eps=1e-3, ddof=ddof)
    y, cache = ops.batch_renorm_forward(x, gamma, beta, mean, var, **kw)
    first = ops.batch_renorm_backward(dy, cache)
    second = ops.batch_renorm_double_backward(a, c, e, dy, cache)

    tx, tg, tb, tdy = _t(x, True), _t(gamma, True), _t(beta, True), _t(dy, True)
    ty = _torch_renorm(tx, tg, tb, _t(mean), _t(var), r_max, d_max, 1e-3, ddof)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-13, atol=1e-13)
    dx, dg, db = torch.autograd.grad(ty, (tx, tg, tb), tdy, create_graph=True)
    for ours, theirs in zip(first, (dx, dg, db)):
        assert rel_error(ours, theirs.detach().numpy()) < 1e-13
    s = (dx * _t(a)).sum() + (dg * _t(c)).sum() + (db * _t(e)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tg))
    for ours, theirs in zip(second, want):
        assert rel_error(ours, theirs.numpy()) < 1e-12
    if r_max == 1.0 and d_max == 0.0:          # r = 1, d = 0: batch norm itself
        y_bn, _ = ops.batchnorm_forward(x, gamma, beta, eps=1e-3, ddof=ddof)
        np.testing.assert_allclose(y, y_bn, rtol=1e-13, atol=1e-13)

    # finite differences of the first-order backward with r, d frozen at their values
    r_fix, d_fix = cache.r, cache.d

    def frozen_forward(x_, g_):
        y_b, c_b = ops.batchnorm_forward(x_, np.ones(p), np.zeros(p), eps=1e-3, ddof=ddof)
        return (y_b * r_fix + d_fix) * g_ + beta

    def s_of(x_, g_, dy_):
        _, c_ = ops.batch_renorm_forward(x_, g_, beta, mean, var, **kw)
        dxx, dgg, dbb = ops.batch_renorm_backward(dy_, c_)
        return float(np.sum(dxx * a) + dgg @ c + dbb @ e)

    assert rel_error(first.dx, fd_grad(lambda z: float(np.sum(frozen_forward(z, gamma) * dy)),
                                       x)) < 1e-9
    assert rel_error(second.ddy, fd_grad(lambda d: s_of(x, gamma, d), dy)) < 1e-8
    assert rel_error(second.dgamma, fd_grad(lambda g: s_of(x, g, dy), gamma)) < 1e-8

    def s_frozen(x_):           # S as a function of x with r and d frozen
        _, cb = ops.batchnorm_forward(x_, gamma * r_fix, np.zeros(p), eps=1e-3, ddof=ddof)
        dxx, dgb, dbb = ops.batchnorm_backward(dy, cb)
        return float(np.sum(dxx * a) + (r_fix * dgb + d_fix * dbb) @ c + dbb @ e)

    assert rel_error(second.dx, fd_grad(s_frozen, x)) < 1e-8


def test_batch_renorm_limits_are_checked(rng):
    x = rng.normal(size=(5, 2))
    with pytest.raises(ValueError, match="r_max"):
        ops.batch_renorm_forward(x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), r_max=0.5)
    with pytest.raises(ValueError, match="d_max"):
        ops.batch_renorm_forward(x, np.ones(2), np.zeros(2), np.zeros(2), np.ones(2), d_max=-1)


# ------------------------------------------------------------------ layers, switches, HVP
from bnmat._tree import tree_leaves, tree_map  # noqa: E402


def _torch_net_grad_and_hvp(forward, params, v, x, y):
    tp = tree_map(lambda a: torch.tensor(a, requires_grad=True), params)
    flat = tree_leaves(tp)
    r = ((forward(tp, torch.tensor(x))[:, 0] - torch.tensor(y)) ** 2).sum()
    g = torch.autograd.grad(r, flat, create_graph=True)
    vs = [torch.tensor(a) for a in tree_leaves(v, like=params)]
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, vs)), flat,
                             allow_unused=True)
    return ([t.detach().numpy() for t in g],
            [np.zeros(a.shape) if h is None else h.numpy() for a, h in zip(flat, hv)])


def _normwise(ours, theirs):
    a = np.concatenate([np.ravel(t) for t in ours])
    b = np.concatenate([np.ravel(t) for t in theirs])
    return float(np.abs(a - b).max() / np.abs(b).max())


def _check_net(net, forward, rng, x, y, state_override=None):
    params, state = net.init(x, seed=0)
    params = tree_map(lambda a: a + 0.3 * rng.normal(size=np.shape(a)), params)
    if state_override is not None:
        state = state_override(state)
    v = tree_map(lambda a: rng.normal(size=np.shape(a)), params)
    _, grads, _ = bnmat.value_and_grad(net, params, state, x, y, "sse")
    hv = bnmat.hvp(net, params, state, x, y, v)
    g_t, hv_t = _torch_net_grad_and_hvp(lambda p, tx: forward(p, tx, state), params, v, x, y)
    assert _normwise(tree_leaves(grads, like=params), g_t) < 1e-11
    assert _normwise(tree_leaves(hv, like=params), hv_t) < 1e-10
    return params, state


def test_layernorm_layer_gradient_and_hvp(rng):
    x, y = rng.normal(size=(9, 5)), rng.normal(size=9)
    net = bnmat.Sequential([bnmat.Dense(4), bnmat.LayerNorm(eps=1e-3), bnmat.Tanh(),
                            bnmat.Dense(1)])

    def forward(p, tx, state):
        h = tx @ p[0]["w"] + p[0]["b"]
        h = _torch_ln(h, p[1]["gamma"], p[1]["beta"], 1e-3, 0)
        return torch.tanh(h) @ p[3]["w"] + p[3]["b"]

    params, state = _check_net(net, forward, rng, x, y)
    # one row works, and inference equals training
    np.testing.assert_allclose(net.predict(params, state, x[:1]),
                               net.forward(params, state, x, training=True)[0][:1], rtol=1e-13)


def test_batch_renorm_layer_gradient_hvp_and_state(rng):
    x, y = rng.normal(size=(10, 4)), rng.normal(size=10)
    net = bnmat.Sequential([bnmat.Dense(3, bias=False), bnmat.BatchRenorm(r_max=1.2, d_max=0.3),
                            bnmat.Sigmoid(), bnmat.Dense(1)])

    def stored(state):
        state = list(state)
        state[1] = {**state[1], "mean": rng.normal(size=3), "var": rng.uniform(0.2, 3, size=3)}
        return state

    def forward(p, tx, state):
        h = tx @ p[0]["w"]
        h = _torch_renorm(h, p[1]["gamma"], p[1]["beta"], torch.tensor(state[1]["mean"]),
                          torch.tensor(state[1]["var"]), 1.2, 0.3, 1e-5, 0)
        return torch.sigmoid(h) @ p[3]["w"] + p[3]["b"]

    params, state = _check_net(net, forward, rng, x, y, stored)
    _, new_state, _ = net.forward(params, state, x, training=True)
    assert int(new_state[1]["count"]) == int(state[1]["count"]) + 1
    pop = bnmat.population_statistics(net, params, state, x)
    np.testing.assert_allclose(net.predict(params, pop, x),
                               net.forward(params, pop, x, training=True)[0], atol=1e-12)
    with pytest.raises(ValueError, match="r_max"):
        bnmat.BatchRenorm(r_max=0.5)


@pytest.mark.parametrize("center,scale", [(False, True), (True, False), (False, False)])
def test_batchnorm_center_scale_switches(rng, center, scale):
    x, y = rng.normal(size=(10, 4)), rng.normal(size=10)
    bn = bnmat.BatchNorm(center=center, scale=scale)
    net = bnmat.Sequential([bnmat.Dense(3, bias=False), bn, bnmat.ReLU(), bnmat.Dense(1)])
    params, _ = net.init(x)
    assert sorted(params[1]) == sorted(k for k, on in (("gamma", scale), ("beta", center)) if on)

    def forward(p, tx, state):
        h = tx @ p[0]["w"]
        mu = h.mean(0)
        h = (h - mu) / torch.sqrt(((h - mu) ** 2).mean(0) + 1e-5)
        h = h * p[1]["gamma"] if scale else h
        h = h + p[1]["beta"] if center else h
        return torch.relu(h) @ p[3]["w"] + p[3]["b"]

    x = x + 0.0          # NumPy float64, C order: the input the fused kernels would take
    _check_net(net, forward, rng, x, y)


def test_batchnorm_without_running_statistics(rng):
    x = rng.normal(size=(12, 3))
    net = bnmat.Sequential([bnmat.Dense(2), bnmat.BatchNorm(track_running_stats=False),
                            bnmat.ReLU(), bnmat.Dense(1)])
    params, state = net.init(x)
    assert state[1] == {}
    out, new_state, _ = net.forward(params, state, x, training=True)
    assert new_state[1] == {}
    np.testing.assert_allclose(net.predict(params, state, x), out, rtol=1e-13, atol=1e-13)
    pop = bnmat.population_statistics(net, params, state, x, batch_size=5)
    assert pop[1] == {}
    with pytest.raises(ValueError, match="at least 2 rows"):
        net.predict(params, state, x[:1])
    with pytest.raises(ValueError, match="True or False"):
        bnmat.BatchNorm(center="yes")


def test_new_layers_and_switches_save_and_load(rng, tmp_path):
    x = rng.normal(size=(10, 3))
    net = bnmat.Sequential([bnmat.Dense(4), bnmat.LayerNorm(ddof=1), bnmat.ReLU(),
                            bnmat.Dense(4, bias=False), bnmat.BatchRenorm(r_max=2.0),
                            bnmat.BatchNorm(center=False, track_running_stats=False),
                            bnmat.Dense(1)])
    params, state = net.init(x, seed=0)
    path = bnmat.save(tmp_path / "m.npz", net, params, state)
    loaded = bnmat.load(path)
    assert loaded.net == net
    np.testing.assert_array_equal(loaded.net.predict(loaded.params, loaded.state, x),
                                  net.predict(params, state, x))
