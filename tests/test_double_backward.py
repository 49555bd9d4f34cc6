"""Double backward of every op, against torch's double backward and finite differences.

Each double backward returns the gradient of S = Σ ⟨cotangent, first-order output⟩
with respect to the inputs of the first-order backward. Oracles:

* torch.autograd: the op written in torch, ``grad(..., create_graph=True)`` for the
  first-order gradients, then ``grad`` of S;
* float64 central differences of S, where the first-order gradients come from
  bnmat's own first-order backward (itself held to independent oracles in
  test_ops.py), never from the double-backward formulas.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnmat import ops

torch = pytest.importorskip("torch")

TOL_TORCH = 1e-12
TOL_FD = 1e-8


def _t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def _torch_bn(x, gamma, beta, eps, ddof, w=None):
    """Weighted batch norm written directly in torch (frequency weights)."""
    if w is None:
        w = torch.ones(x.shape[0], dtype=x.dtype)
    w = w.reshape(-1, 1)
    n = w.sum()
    mu = (w * x).sum(0) / n
    var = (w * (x - mu) ** 2).sum(0) / (n - ddof)
    return (x - mu) / torch.sqrt(var + eps) * gamma + beta


def _bn_case(rng, n, p, weights):
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 3, size=p) + rng.normal(size=p)
    gamma, beta = rng.normal(size=p), rng.normal(size=p)
    dy, a = rng.normal(size=(n, p)), rng.normal(size=(n, p))
    c, e = rng.normal(size=p), rng.normal(size=p)
    w = None
    if weights == "real":
        w = rng.uniform(0.2, 3.0, size=n)
    elif weights == "integer":
        w = rng.integers(1, 4, size=n).astype(float)
    return x, gamma, beta, dy, a, c, e, w


def _forward(x, gamma, beta, eps, ddof, w):
    if w is None:
        return ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
    return ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof, weights=w)


def _weight_options():
    import inspect
    if "weights" in inspect.signature(ops.batchnorm_forward).parameters:
        return [None, "real", "integer"]
    return [None]


@pytest.mark.parametrize("weights", _weight_options())
@pytest.mark.parametrize("ddof", [0, 1, 2])
@pytest.mark.parametrize("eps", [0.0, 1e-5, 0.5])
def test_batchnorm_double_backward_matches_torch(rng, rel_error, ddof, eps, weights):
    x, gamma, beta, dy, a, c, e, w = _bn_case(rng, 9, 4, weights)
    _, cache = _forward(x, gamma, beta, eps, ddof, w)
    got = ops.batchnorm_double_backward(a, c, e, dy, cache)

    tx, tg, tb, tdy = _t(x, True), _t(gamma, True), _t(beta, True), _t(dy, True)
    y = _torch_bn(tx, tg, tb, eps, ddof, None if w is None else _t(w))
    dx, dg, db = torch.autograd.grad(y, (tx, tg, tb), tdy, create_graph=True)
    s = (dx * _t(a)).sum() + (dg * _t(c)).sum() + (db * _t(e)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tg))
    for name, ours, theirs in zip(("ddy", "dx", "dgamma"), got, want):
        err = rel_error(ours, theirs.numpy())
        assert err < TOL_TORCH, (name, err)


@pytest.mark.parametrize("weights", _weight_options())
@pytest.mark.parametrize("ddof,eps", [(0, 0.0), (1, 1e-3), (0, 0.3)])
def test_batchnorm_double_backward_matches_finite_differences(rng, fd_grad, rel_error, ddof,
                                                              eps, weights):
    x, gamma, beta, dy, a, c, e, w = _bn_case(rng, 6, 3, weights)

    def s_of(x_, gamma_, dy_):
        _, cache = _forward(x_, gamma_, beta, eps, ddof, w)
        dx, dg, db = ops.batchnorm_backward(dy_, cache)
        return float(np.sum(dx * a) + dg @ c + db @ e)

    _, cache = _forward(x, gamma, beta, eps, ddof, w)
    got = ops.batchnorm_double_backward(a, c, e, dy, cache)
    assert rel_error(got.ddy, fd_grad(lambda d: s_of(x, gamma, d), dy)) < TOL_FD
    assert rel_error(got.dx, fd_grad(lambda z: s_of(z, gamma, dy), x, h=1e-3)) < TOL_FD
    assert rel_error(got.dgamma, fd_grad(lambda g: s_of(x, g, dy), gamma)) < TOL_FD


def test_batchnorm_double_backward_none_cotangents_are_zero(rng):
    x, gamma, beta, dy, a, c, e, _ = _bn_case(rng, 8, 3, None)
    _, cache = ops.batchnorm_forward(x, gamma, beta, eps=1e-5)
    with_none = ops.batchnorm_double_backward(a, None, None, dy, cache)
    with_zero = ops.batchnorm_double_backward(a, 0 * c, 0 * e, dy, cache)
    for u, z in zip(with_none, with_zero):
        np.testing.assert_array_equal(u, z)


def test_batchnorm_double_backward_shape_errors(rng):
    x, gamma, beta, dy, a, c, e, _ = _bn_case(rng, 8, 3, None)
    _, cache = ops.batchnorm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match="ddx must have shape"):
        ops.batchnorm_double_backward(a[:, :2], c, e, dy, cache)
    with pytest.raises(ValueError, match="dy must have shape"):
        ops.batchnorm_double_backward(a, c, e, dy[:4], cache)


def test_batchnorm_double_backward_float32_follows_float64(rng):
    x, gamma, beta, dy, a, c, e, _ = _bn_case(rng, 64, 5, None)
    _, c64 = ops.batchnorm_forward(x, gamma, beta)
    _, c32 = ops.batchnorm_forward(x.astype(np.float32), gamma, beta)
    f64 = ops.batchnorm_double_backward(a, c, e, dy, c64)
    f32 = ops.batchnorm_double_backward(a.astype(np.float32), c, e, dy.astype(np.float32), c32)
    for u, v in zip(f32, f64):
        assert u.dtype == np.float32
        np.testing.assert_allclose(u, v, rtol=2e-4, atol=2e-4 * np.abs(v).max())


# ------------------------------------------------------------------ dense
@pytest.mark.parametrize("bias", [True, False])
def test_dense_double_backward(rng, fd_grad, rel_error, bias):
    n, p_in, p_out = 5, 4, 3
    x, w, b = rng.normal(size=(n, p_in)), rng.normal(size=(p_in, p_out)), rng.normal(size=p_out)
    dy = rng.normal(size=(n, p_out))
    ddx, ddw, ddb = rng.normal(size=(n, p_in)), rng.normal(size=(p_in, p_out)), rng.normal(size=p_out)
    _, cache = ops.dense_forward(x, w, b if bias else None)
    got = ops.dense_double_backward(ddx, ddw, ddb if bias else None, dy, cache)

    tx, tw, tb, tdy = _t(x, True), _t(w, True), _t(b, True), _t(dy, True)
    y = tx @ tw + (tb if bias else 0)
    inputs = (tx, tw, tb) if bias else (tx, tw)
    grads = torch.autograd.grad(y, inputs, tdy, create_graph=True)
    s = (grads[0] * _t(ddx)).sum() + (grads[1] * _t(ddw)).sum()
    if bias:
        s = s + (grads[2] * _t(ddb)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tw), allow_unused=True)
    want = [np.zeros_like(x) if t is None else t.numpy() for t in want]
    for ours, theirs in zip(got, want):
        assert rel_error(ours, theirs, floor=1.0) < TOL_TORCH

    def s_of(x_, w_, dy_):
        _, cache_ = ops.dense_forward(x_, w_, b if bias else None)
        dx, dw, db = ops.dense_backward(dy_, cache_)
        return float(np.sum(dx * ddx) + np.sum(dw * ddw) + (db @ ddb if bias else 0.0))

    assert rel_error(got.ddy, fd_grad(lambda d: s_of(x, w, d), dy)) < TOL_FD
    assert rel_error(got.dx, fd_grad(lambda z: s_of(z, w, dy), x)) < TOL_FD
    assert rel_error(got.dw, fd_grad(lambda v: s_of(x, v, dy), w)) < TOL_FD


# ------------------------------------------------------------------ activations
_TORCH_ACT = {
    "relu": torch.relu,
    "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, 0.01),
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "softplus": torch.nn.functional.softplus,
    "identity": lambda z: z,
}


@pytest.mark.parametrize("name", sorted(_TORCH_ACT))
def test_activation_double_backward(rng, fd_grad, rel_error, name):
    x = rng.normal(size=(6, 3)) * 2
    x = np.where(np.abs(x) < 0.1, 0.5, x)     # away from the kink of relu-type activations
    dy, dd = rng.normal(size=x.shape), rng.normal(size=x.shape)
    fwd, bwd = ops.ACTIVATIONS[name]
    _, cache = fwd(x)
    got = ops.activation_double_backward(name, dd, dy, cache)

    tx, tdy = _t(x, True), _t(dy, True)
    (dx,) = torch.autograd.grad(_TORCH_ACT[name](tx), tx, tdy, create_graph=True)
    want = torch.autograd.grad((dx * _t(dd)).sum(), (tdy, tx), allow_unused=True)
    want = [np.zeros_like(x) if t is None else t.numpy() for t in want]
    for ours, theirs in zip(got, want):
        assert rel_error(ours, theirs, floor=1.0) < TOL_TORCH

    def s_of(x_, dy_):
        return float(np.sum(bwd(dy_, fwd(x_)[1]) * dd))

    assert rel_error(got.ddy, fd_grad(lambda d: s_of(x, d), dy), floor=1.0) < TOL_FD
    assert rel_error(got.dx, fd_grad(lambda z: s_of(z, dy), x), floor=1.0) < TOL_FD


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize("name", ["sse", "mse", "softmax_cross_entropy"])
@pytest.mark.parametrize("dloss", [1.0, 0.7])
def test_loss_double_backward(rng, fd_grad, rel_error, name, dloss):
    y_pred = rng.normal(size=(6, 3))
    if name == "softmax_cross_entropy":
        y = rng.dirichlet(np.ones(3), size=6) * rng.uniform(0.5, 2, size=(6, 1))
    else:
        y = rng.normal(size=(6, 3))
    dd = rng.normal(size=y_pred.shape)
    fwd, bwd = ops.LOSSES[name]
    _, cache = fwd(y_pred, y)
    got = ops.loss_double_backward(name, dd, dloss, cache)

    tp = _t(y_pred, True)
    ty = _t(y)
    if name == "sse":
        r = ((tp - ty) ** 2).sum()
    elif name == "mse":
        r = ((tp - ty) ** 2).mean()
    else:
        r = -(ty * torch.log_softmax(tp, dim=1)).sum() / 6
    (g,) = torch.autograd.grad(r * dloss, tp, create_graph=True)
    (want,) = torch.autograd.grad((g * _t(dd)).sum(), tp)
    assert rel_error(got.dy_pred, want.numpy()) < TOL_TORCH
    assert abs(got.ddloss - float((g.detach() / dloss * _t(dd)).sum())) < 1e-12 * (1 + abs(got.ddloss))

    def s_of(p_):
        return float(np.sum(bwd(dloss, fwd(p_, y)[1]) * dd))

    assert rel_error(got.dy_pred, fd_grad(s_of, y_pred)) < TOL_FD


# ------------------------------------------------------------------ group-wise batch norm
@pytest.mark.parametrize("ddof,eps", [(0, 0.0), (1, 1e-3), (0, 0.5)])
def test_group_batchnorm_double_backward(rng, fd_grad, rel_error, ddof, eps):
    n, p = 11, 3
    groups = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2])
    x = rng.normal(size=(n, p)) * 2 + groups[:, None]
    gamma, beta = rng.normal(size=p), rng.normal(size=p)
    dy, a = rng.normal(size=(n, p)), rng.normal(size=(n, p))
    c, e = rng.normal(size=p), rng.normal(size=p)
    _, cache = ops.group_batchnorm_forward(x, groups, gamma, beta, eps=eps, ddof=ddof)
    got = ops.group_batchnorm_double_backward(a, c, e, dy, cache)

    tx, tg, tb, tdy = _t(x, True), _t(gamma, True), _t(beta, True), _t(dy, True)
    y = torch.zeros_like(tx)
    parts = []
    for k in range(3):
        rows = np.flatnonzero(groups == k)
        parts.append((rows, _torch_bn(tx[rows], tg, tb, eps, ddof)))
    y = torch.zeros(n, p, dtype=torch.float64)
    for rows, yk in parts:
        y = y.index_put((torch.tensor(rows),), yk)
    dx, dg, db = torch.autograd.grad(y, (tx, tg, tb), tdy, create_graph=True)
    s = (dx * _t(a)).sum() + (dg * _t(c)).sum() + (db * _t(e)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tg))
    for name, ours, theirs in zip(("ddy", "dx", "dgamma"), got, want):
        assert rel_error(ours, theirs.numpy()) < TOL_TORCH, name

    def s_of(x_, gamma_, dy_):
        _, cache_ = ops.group_batchnorm_forward(x_, groups, gamma_, beta, eps=eps, ddof=ddof)
        r = ops.group_batchnorm_backward(dy_, cache_)
        return float(np.sum(r.dx * a) + r.dgamma @ c + r.dbeta @ e)

    assert rel_error(got.ddy, fd_grad(lambda d: s_of(x, gamma, d), dy)) < TOL_FD
    assert rel_error(got.dx, fd_grad(lambda z: s_of(z, gamma, dy), x)) < TOL_FD
    assert rel_error(got.dgamma, fd_grad(lambda g: s_of(x, g, dy), gamma)) < TOL_FD


def test_group_batchnorm_double_backward_one_group_is_batchnorm(rng):
    x, gamma, beta, dy, a, c, e, _ = _bn_case(rng, 8, 3, None)
    _, gcache = ops.group_batchnorm_forward(x, np.zeros(8, dtype=int), gamma, beta, ddof=1)
    _, cache = ops.batchnorm_forward(x, gamma, beta, ddof=1)
    for u, v in zip(ops.group_batchnorm_double_backward(a, c, e, dy, gcache),
                    ops.batchnorm_double_backward(a, c, e, dy, cache)):
        np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------ array namespaces
def test_double_backward_ops_run_on_every_namespace(backend, rng):
    """The new ops are array-API code: each namespace gives NumPy's numbers."""
    x, gamma, beta, dy, a, c, e, w = _bn_case(rng, 8, 3, "real")
    B = backend.asarray

    def both(f):
        ours = f(B)
        ref = f(np.asarray)
        for u, v in zip(ours, ref):
            assert backend.owns(u)
            np.testing.assert_allclose(backend.to_numpy(u), v, rtol=1e-12, atol=1e-13)

    both(lambda A: ops.batchnorm_double_backward(
        A(a), A(c), A(e), A(dy), ops.batchnorm_forward(A(x), A(gamma), A(beta), ddof=1)[1]))
    both(lambda A: ops.batchnorm_double_backward(
        A(a), A(c), A(e), A(dy),
        ops.batchnorm_forward(A(x), A(gamma), A(beta), weights=A(w))[1]))
    both(lambda A: ops.batchnorm_backward(
        A(dy), ops.batchnorm_forward(A(x), A(gamma), A(beta), weights=A(w))[1]))
    both(lambda A: ops.layernorm_double_backward(
        A(a), A(c), A(e), A(dy), ops.layernorm_forward(A(x), A(gamma), A(beta))[1]))
    both(lambda A: ops.batch_renorm_double_backward(
        A(a), A(c), A(e), A(dy), ops.batch_renorm_forward(
            A(x), A(gamma), A(beta), A(np.zeros(3)), A(np.ones(3)))[1]))
    both(lambda A: ops.batchnorm_inference_stats_backward(
        A(dy), A(x), A(gamma), A(beta), A(np.zeros(3)), A(np.ones(3))))
    both(lambda A: ops.activation_double_backward(
        "tanh", A(a), A(dy), ops.tanh_forward(A(x))[1]))
