"""bnmat.hvp against torch's double-backward HVP and finite differences of the gradient;
check_hvp (including that it fails on a wrong second derivative); fit_newton."""

from __future__ import annotations

import numpy as np
import pytest

import bnmat
from bnmat import ops
from bnmat._tree import tree_leaves, tree_map

torch = pytest.importorskip("torch")


# ------------------------------------------------------------------ torch oracle
def _torch_forward(net, params, x):
    h = x
    for layer, p in zip(net.layers, params):
        kind = type(layer).__name__
        if kind == "Sequential":
            h = _torch_forward(layer, p, h)
        elif kind == "Dense":
            h = h @ p["w"] + (p["b"] if "b" in p else 0)
        elif kind == "BatchNorm":
            mu = h.mean(0)
            var = ((h - mu) ** 2).sum(0) / (h.shape[0] - layer.ddof)
            h = (h - mu) / torch.sqrt(var + layer.eps)
            h = h * p["gamma"] if "gamma" in p else h
            h = h + p["beta"] if "beta" in p else h
        elif kind == "LayerNorm":
            mu = h.mean(1, keepdim=True)
            var = ((h - mu) ** 2).mean(1, keepdim=True)
            h = (h - mu) / torch.sqrt(var + layer.eps) * p["gamma"] + p["beta"]
        elif kind == "ReLU":
            h = torch.relu(h)
        elif kind == "LeakyReLU":
            h = torch.nn.functional.leaky_relu(h, layer.negative_slope)
        elif kind == "Tanh":
            h = torch.tanh(h)
        elif kind == "Sigmoid":
            h = torch.sigmoid(h)
        elif kind == "Softplus":
            h = torch.nn.functional.softplus(h)
        elif kind == "Identity":
            pass
        else:  # pragma: no cover
            raise AssertionError(kind)
    return h


def _torch_loss(out, y, loss):
    if loss == "sse":
        return ((out - y) ** 2).sum()
    if loss == "mse":
        return ((out - y) ** 2).mean()
    return -(y * torch.log_softmax(out, dim=1)).sum() / out.shape[0]


def torch_hvp(net, params, x, y, v, loss, l2=0.0):
    tparams = tree_map(lambda a: torch.tensor(a, requires_grad=True), params)
    flat = tree_leaves(tparams)
    out = _torch_forward(net, tparams, torch.tensor(x))
    ty = torch.tensor(y)
    if ty.ndim == 1:
        ty = ty.reshape(-1, 1)
    r = _torch_loss(out, ty, loss)
    if l2:
        r = r + 0.5 * l2 * sum((w ** 2).sum() for w in _weights_t(tparams))
    g = torch.autograd.grad(r, flat, create_graph=True)
    vs = [torch.tensor(a) for a in tree_leaves(v, like=params)]
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, vs)), flat,
                             allow_unused=True)
    return [np.zeros(a.shape) if h is None else h.numpy() for a, h in zip(flat, hv)]


def _weights_t(tree):
    if isinstance(tree, dict):
        for k, val in tree.items():
            if k == "w":
                yield val
    else:
        for t in tree:
            yield from _weights_t(t)


def _normwise(ours, theirs):
    a = np.concatenate([np.ravel(t) for t in ours])
    b = np.concatenate([np.ravel(t) for t in theirs])
    return float(np.abs(a - b).max() / np.abs(b).max())


def _perturbed(net, x, rng, seed=0):
    params, state = net.init(x, seed=seed)
    params = tree_map(lambda a: a + 0.3 * rng.normal(size=np.shape(a)), params)
    return params, state


NETS = {
    "bn-tanh": lambda: bnmat.Sequential([
        bnmat.Dense(4, bias=False), bnmat.BatchNorm(), bnmat.Tanh(), bnmat.Dense(1)]),
    "bias-bn-ddof1-eps0-softplus": lambda: bnmat.Sequential([
        bnmat.Dense(4), bnmat.BatchNorm(ddof=1, eps=0.0), bnmat.Softplus(), bnmat.Dense(1)]),
    "two-bn-relu-sigmoid": lambda: bnmat.Sequential([
        bnmat.Dense(5, bias=False), bnmat.BatchNorm(eps=0.1), bnmat.ReLU(),
        bnmat.Dense(3, bias=False), bnmat.BatchNorm(), bnmat.Sigmoid(), bnmat.Dense(1)]),
    "nested-leaky-identity": lambda: bnmat.Sequential([
        bnmat.Sequential([bnmat.Dense(4, bias=False), bnmat.BatchNorm(), bnmat.LeakyReLU(0.2)]),
        bnmat.Dense(2), bnmat.Identity()]),
}


@pytest.mark.parametrize("loss", ["sse", "mse"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_hvp_matches_torch(rng, name, loss):
    net = NETS[name]()
    x = rng.normal(size=(10, 7))
    params, state = _perturbed(net, x, rng)
    out_dim = net.forward(params, state, x, training=True)[0].shape[1]
    y = rng.normal(size=(10,) if out_dim == 1 else (10, out_dim))
    v = tree_map(lambda a: rng.normal(size=np.shape(a)), params)
    ours = tree_leaves(bnmat.hvp(net, params, state, x, y, v, loss=loss), like=params)
    theirs = torch_hvp(net, params, x, y, v, loss)
    assert _normwise(ours, theirs) < 1e-10


def test_hvp_softmax_cross_entropy_and_l2_match_torch(rng):
    net = bnmat.Sequential([bnmat.Dense(5, bias=False), bnmat.BatchNorm(), bnmat.Tanh(),
                            bnmat.Dense(3)])
    x = rng.normal(size=(12, 4))
    params, state = _perturbed(net, x, rng)
    y = np.eye(3)[rng.integers(0, 3, size=12)]
    v = tree_map(lambda a: rng.normal(size=np.shape(a)), params)
    ours = bnmat.hvp(net, params, state, x, y, v, loss="softmax_cross_entropy", l2=0.3)
    theirs = torch_hvp(net, params, x, y, v, "softmax_cross_entropy", l2=0.3)
    assert _normwise(tree_leaves(ours, like=params), theirs) < 1e-10


@pytest.mark.parametrize("name", sorted(NETS))
def test_hvp_matches_differences_of_the_gradient(rng, name):
    """Second oracle: H v ≈ [∇R(θ + hv) − ∇R(θ − hv)]/2h (4-point), from the first-order
    value_and_grad, which is itself held to torch and finite differences elsewhere."""
    net = NETS[name]()
    x = rng.normal(size=(10, 7))
    params, state = _perturbed(net, x, rng)
    out_dim = net.forward(params, state, x, training=True)[0].shape[1]
    y = rng.normal(size=(10,) if out_dim == 1 else (10, out_dim))
    v = tree_map(lambda a: rng.normal(size=np.shape(a)), params)

    def grad_at(t):
        p = tree_map(lambda a, b: a + t * b, params, v)
        return np.concatenate([np.ravel(g) for g in tree_leaves(
            bnmat.value_and_grad(net, p, state, x, y, "sse")[1], like=params)])

    h = 1e-3
    fd = (-grad_at(2 * h) + 8 * grad_at(h) - 8 * grad_at(-h) + grad_at(-2 * h)) / (12 * h)
    ours = np.concatenate([np.ravel(a) for a in tree_leaves(
        bnmat.hvp(net, params, state, x, y, v), like=params)])
    assert np.abs(ours - fd).max() / np.abs(fd).max() < 1e-7


def test_hvp_is_linear_and_symmetric(rng):
    net = NETS["two-bn-relu-sigmoid"]()
    x, y = rng.normal(size=(10, 7)), rng.normal(size=10)
    params, state = _perturbed(net, x, rng)
    u = tree_map(lambda a: rng.normal(size=np.shape(a)), params)
    v = tree_map(lambda a: rng.normal(size=np.shape(a)), params)

    def dot(a, b):
        return sum(float(np.sum(p * q)) for p, q in zip(tree_leaves(a, like=params),
                                                        tree_leaves(b, like=params)))

    hu = bnmat.hvp(net, params, state, x, y, u)
    hv = bnmat.hvp(net, params, state, x, y, v)
    assert abs(dot(u, hv) - dot(v, hu)) < 1e-11 * (abs(dot(u, hv)) + 1)
    huv = bnmat.hvp(net, params, state, x, y, tree_map(lambda a, b: 2 * a - b, u, v))
    for a, b, c in zip(tree_leaves(huv, like=params), tree_leaves(hu, like=params),
                       tree_leaves(hv, like=params)):
        np.testing.assert_allclose(a, 2 * b - c, atol=1e-11 * (1 + np.abs(a).max()))


def test_hvp_rejects_unsupported(rng):
    x, y = rng.normal(size=(8, 3)), rng.normal(size=8)
    net = bnmat.Sequential([bnmat.Dense(2), bnmat.Dense(1)])
    params, state = net.init(x)
    with pytest.raises(ValueError, match="losses"):
        bnmat.hvp(net, params, state, x, y, params, loss="within_sse")
    with pytest.raises(ValueError, match="keys"):
        bnmat.hvp(net, params, state, x, y, [{"w": params[0]["w"]}, params[1]])
    gnet = bnmat.Sequential([bnmat.Dense(2), bnmat.GroupBatchNorm(), bnmat.Dense(1)])
    gp, gs = gnet.init(x)
    with pytest.raises(TypeError, match="hvp supports"):
        bnmat.hvp(gnet, gp, gs, x, y, gp)


# ------------------------------------------------------------------ check_hvp
def _dict_problem(rng, net):
    """A network's loss as functions of a flat dict of named parameters."""
    x, y = rng.normal(size=(10, 5)), rng.normal(size=10)
    params, state = _perturbed(net, x, rng)
    names = [f"{i}.{k}" for i, d in enumerate(params) for k in d]

    def to_tree(d):
        return [{k: d[f"{i}.{k}"] for k in p} for i, p in enumerate(params)]

    def to_dict(tree):
        return {f"{i}.{k}": a for i, p in enumerate(tree) for k, a in p.items()}

    def grad(d):
        return to_dict(bnmat.value_and_grad(net, to_tree(d), state, x, y, "sse")[1])

    def hvp(d, v):
        return to_dict(bnmat.hvp(net, to_tree(d), state, x, y, to_tree(v)))

    return to_dict(params), grad, hvp, names


def test_check_hvp_passes_on_the_closed_forms(rng):
    net = bnmat.Sequential([bnmat.Dense(3, bias=False), bnmat.BatchNorm(), bnmat.Tanh(),
                            bnmat.Dense(1)])
    params, grad, hvp, _ = _dict_problem(rng, net)
    report = bnmat.check_hvp(grad, hvp, params, rtol=1e-6)
    assert report.ok, str(report)
    assert max(report.errors.values()) < 1e-6
    assert "check_hvp: OK" in str(report)


def test_check_hvp_fails_when_batch_statistics_are_treated_as_constants(rng, monkeypatch):
    """A wrong second derivative: batch norm's double backward without the terms that
    come from differentiating the mean and variance (x̄ = γ s² Pᵀ… dropped)."""
    net = bnmat.Sequential([bnmat.Dense(3, bias=False), bnmat.BatchNorm(), bnmat.Tanh(),
                            bnmat.Dense(1)])
    params, grad, hvp, _ = _dict_problem(rng, net)
    right = ops.batchnorm_double_backward

    def wrong(ddx, ddgamma, ddbeta, dy, cache):
        out = right(ddx, ddgamma, ddbeta, dy, cache)
        return out._replace(dx=0 * out.dx)

    monkeypatch.setattr(ops, "batchnorm_double_backward", wrong)
    report = bnmat.check_hvp(grad, hvp, params, rtol=1e-6)
    assert not report.ok
    assert "FAIL" in str(report)


def test_check_hvp_fails_on_a_wrong_activation_curvature(rng, monkeypatch):
    net = bnmat.Sequential([bnmat.Dense(3, bias=False), bnmat.BatchNorm(), bnmat.Tanh(),
                            bnmat.Dense(1)])
    params, grad, hvp, _ = _dict_problem(rng, net)
    right = ops.activation_double_backward

    def wrong(name, ddx, dy, cache):          # a″ of tanh with the wrong sign
        out = right(name, ddx, dy, cache)
        return out._replace(dx=-out.dx)

    monkeypatch.setattr(ops, "activation_double_backward", wrong)
    assert not bnmat.check_hvp(grad, hvp, params).ok


def test_check_hvp_simple_function_and_asymmetry():
    params = {"a": np.array([0.3, -1.2]), "b": np.array([[0.5]])}

    def grad(p):
        a, b = p["a"], p["b"][0, 0]
        return {"a": np.cos(a) * b, "b": np.array([[np.sum(np.sin(a))]])}

    def hvp(p, v):
        a, b = p["a"], p["b"][0, 0]
        return {"a": -np.sin(a) * b * v["a"] + np.cos(a) * v["b"][0, 0],
                "b": np.array([[np.sum(np.cos(a) * v["a"])]])}

    assert bnmat.check_hvp(grad, hvp, params).ok

    def asymmetric(p, v):                       # drops the cross term in one block
        out = hvp(p, v)
        return {"a": -np.sin(p["a"]) * p["b"][0, 0] * v["a"], "b": out["b"]}

    bad = bnmat.check_hvp(grad, asymmetric, params)
    assert not bad.ok and bad.symmetry_error > 1e-3


# ------------------------------------------------------------------ fit_newton
@pytest.mark.parametrize("method", ["trust-ncg", "trust-krylov", "newton-cg"])
def test_fit_newton_lowers_the_loss_and_the_gradient(rng, method):
    x = rng.normal(size=(40, 3))
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2]
    net = bnmat.Sequential([bnmat.Dense(5, bias=False), bnmat.BatchNorm(), bnmat.Tanh(),
                            bnmat.Dense(1)])
    params, state = net.init(x, seed=0)
    start, g0, _ = bnmat.value_and_grad(net, params, state, x, y, "mse")
    result = bnmat.fit_newton(net, params, state, x, y, method=method, max_iter=300)
    end, g1, _ = bnmat.value_and_grad(net, result.params, state, x, y, "mse")
    assert end < 0.5 * start
    gnorm = lambda g: max(np.abs(a).max() for a in tree_leaves(g))  # noqa: E731
    assert gnorm(g1) < 0.1 * gnorm(g0)
    # population statistics: predicting on x reproduces the training output
    train_out = net.forward(result.params, result.state, x, training=True)[0]
    np.testing.assert_allclose(net.predict(result.params, result.state, x), train_out,
                               atol=1e-10)


def test_fit_newton_rejects_bad_options(rng):
    x, y = rng.normal(size=(10, 2)), rng.normal(size=10)
    net = bnmat.Sequential([bnmat.Dense(1)])
    params, state = net.init(x)
    with pytest.raises(ValueError, match="method"):
        bnmat.fit_newton(net, params, state, x, y, method="bfgs")
    with pytest.raises(ValueError, match="losses"):
        bnmat.fit_newton(net, params, state, x, y, loss="within_mse")


def test_weighted_hvp_equals_repeated_rows_and_torch(rng):
    net = NETS["two-bn-relu-sigmoid"]()
    x, y = rng.normal(size=(12, 7)), rng.normal(size=12)
    params, state = _perturbed(net, x, rng)
    v = tree_map(lambda a: rng.normal(size=np.shape(a)), params)
    w = rng.integers(0, 4, size=12)
    w[:2] = 1
    rep = np.repeat(np.arange(12), w)
    for loss in ("sse", "mse"):
        ours = tree_leaves(bnmat.hvp(net, params, state, x, y, v, loss=loss, sample_weight=w),
                           like=params)
        repeated = tree_leaves(bnmat.hvp(net, params, state, x[rep], y[rep], v, loss=loss),
                               like=params)
        assert _normwise(ours, repeated) < 1e-12
        assert _normwise(ours, torch_hvp(net, params, x[rep], y[rep], v, loss)) < 1e-10


def test_second_order_guide_examples_run(capsys):
    from pathlib import Path

    from _doc_examples import check_doc_examples

    check_doc_examples(Path(__file__).resolve().parents[1] / "docs" / "second_order.md", capsys)


def test_weighted_cross_entropy_hvp_equals_repeated_rows_and_torch(rng):
    net = bnmat.Sequential([bnmat.Dense(5, bias=False), bnmat.BatchNorm(), bnmat.Tanh(),
                            bnmat.Dense(3)])
    x = rng.normal(size=(12, 4))
    params, state = _perturbed(net, x, rng)
    y = np.eye(3)[rng.integers(0, 3, size=12)]
    v = tree_map(lambda a: rng.normal(size=np.shape(a)), params)
    w = rng.integers(1, 4, size=12)
    rep = np.repeat(np.arange(12), w)
    ours = tree_leaves(bnmat.hvp(net, params, state, x, y, v, loss="softmax_cross_entropy",
                                 sample_weight=w), like=params)
    assert _normwise(ours, torch_hvp(net, params, x[rep], y[rep], v,
                                     "softmax_cross_entropy")) < 1e-10
