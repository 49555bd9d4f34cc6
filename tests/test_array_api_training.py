"""The whole training path on other array libraries: array_api_strict and torch (CPU).

``Sequential.init``, ``value_and_grad``, ``fit`` and ``predict`` run on any
namespace ``array_api_compat`` knows, through the ops' reference formulas; NumPy
takes the fused kernels and fit's lean step. In float64 both must give the same
numbers to 1e-12 (relative to each array's scale), and the results stay in the
input's library.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnmat
from bnmat._array_api import to_numpy
from bnmat.optim import tree_leaves

array_api_strict = pytest.importorskip("array_api_strict")

NAMESPACES = ["array_api_strict"]
try:
    import torch  # noqa: F401

    NAMESPACES.append("torch")
except ImportError:  # pragma: no cover - torch is a test dependency
    pass


def _convert(name, a):
    if name == "array_api_strict":
        return array_api_strict.asarray(a)
    import torch

    return torch.asarray(a)


def _is_native(name, a):
    if name == "array_api_strict":
        return type(a).__module__.startswith("array_api_strict")
    import torch

    return isinstance(a, torch.Tensor)


def _net():
    return bnmat.Sequential([
        bnmat.Dense(64, bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
        bnmat.Dense(32, bias=False), bnmat.BatchNorm(ddof=1), bnmat.Tanh(),
        bnmat.Dense(2)])


def _data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 7))
    y = np.stack([x[:, 0] ** 2, np.sin(x[:, 1])], axis=1) + 0.1 * rng.standard_normal((n, 2))
    return x, y


def _assert_close(tree, ref, rtol=1e-12):
    a, b = tree_leaves(tree), tree_leaves(ref)
    assert len(a) == len(b)
    for u, v in zip(a, b):
        u, v = to_numpy(u).astype(np.float64), np.asarray(v, dtype=np.float64)
        assert u.shape == v.shape
        scale = max(float(np.max(np.abs(v))), 1.0) if v.size else 1.0
        np.testing.assert_allclose(u, v, rtol=0, atol=rtol * scale)


@pytest.mark.parametrize("name", NAMESPACES)
@pytest.mark.parametrize("loss, l2", [("sse", 0.0), ("mse", 1e-2)])
def test_value_and_grad_equals_numpy(name, loss, l2):
    x, y = _data()
    net = _net()
    params, state = net.init(x, seed=3)
    ref = bnmat.value_and_grad(net, params, state, x, y, loss=loss, l2=l2)

    xs, ys = _convert(name, x), _convert(name, y)
    p2, s2 = net.init(xs, seed=3)
    assert all(_is_native(name, a) for a in tree_leaves((p2, s2)))
    _assert_close(p2, params, 0.0)
    value, grads, new_state = bnmat.value_and_grad(net, p2, s2, xs, ys, loss=loss, l2=l2)
    assert abs(value - ref[0]) <= 1e-12 * abs(ref[0])
    assert all(_is_native(name, g) for g in tree_leaves(grads))
    _assert_close(grads, ref[1])
    _assert_close(new_state, ref[2])


@pytest.mark.parametrize("name", NAMESPACES)
def test_fit_and_predict_equal_numpy(name):
    x, y = _data(130)
    net = _net()
    params, state = net.init(x, seed=1)
    kw = dict(loss="mse", optimizer=bnmat.optim.adam(1e-2), epochs=3, batch_size=32, seed=4,
              l2=1e-3, validation_fraction=0.2, progress=False)
    ref = bnmat.fit(net, params, state, x, y, **kw)

    xs, ys = _convert(name, x), _convert(name, y)
    p2, s2 = net.init(xs, seed=1)
    result = bnmat.fit(net, p2, s2, xs, ys, **kw)
    assert all(_is_native(name, a) for a in tree_leaves((result.params, result.state)))
    _assert_close(result.params, ref.params)
    _assert_close(result.state, ref.state)
    np.testing.assert_allclose(result.history["loss"], ref.history["loss"], rtol=1e-12)
    np.testing.assert_allclose(result.history["val_loss"], ref.history["val_loss"], rtol=1e-12)

    pred = net.predict(result.params, result.state, xs)
    assert _is_native(name, pred)
    np.testing.assert_allclose(to_numpy(pred), net.predict(ref.params, ref.state, x),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMESPACES)
def test_train_step_and_sgd_equal_numpy(name):
    x, y = _data(64)
    net = _net()
    opt = bnmat.optim.sgd(1e-2, momentum=0.9, nesterov=True)
    params, state = net.init(x, seed=2)
    ref = bnmat.train.train_step(net, opt, params, state, opt.init(params), x, y, loss="mse")

    xs, ys = _convert(name, x), _convert(name, y)
    p2, s2 = net.init(xs, seed=2)
    out = bnmat.train.train_step(net, opt, p2, s2, opt.init(p2), xs, ys, loss="mse")
    assert abs(out[0] - ref[0]) <= 1e-12 * abs(ref[0])
    _assert_close(out[1], ref[1])
    _assert_close(out[2], ref[2])


@pytest.mark.parametrize("name", NAMESPACES)
def test_float32_stays_float32(name):
    x, y = _data(64)
    x32, y32 = _convert(name, x.astype(np.float32)), _convert(name, y.astype(np.float32))
    net = _net()
    params, state = net.init(x32, seed=0)
    _, grads, _ = bnmat.value_and_grad(net, params, state, x32, y32, loss="mse")
    ref_params, ref_state = net.init(x.astype(np.float32), seed=0)
    ref = bnmat.value_and_grad(net, ref_params, ref_state, x.astype(np.float32),
                               y.astype(np.float32), loss="mse")
    for g, r in zip(tree_leaves(grads), tree_leaves(ref[1])):
        g = to_numpy(g)
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, r, rtol=0, atol=2e-4 * max(1.0, float(np.abs(r).max())))


@pytest.mark.parametrize("name", NAMESPACES)
def test_zero_rows_and_bad_input_are_the_same_errors(name):
    x, y = _data(20)
    net = _net()
    params, state = net.init(x, seed=0)
    xs = _convert(name, x)
    p2, s2 = net.init(xs, seed=0)
    with pytest.raises(ValueError, match="0 rows"):
        net.predict(p2, s2, _convert(name, x[:0]))
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError) as ref:
        bnmat.value_and_grad(net, params, state, bad, y)
    with pytest.raises(ValueError) as got:
        bnmat.value_and_grad(net, p2, s2, _convert(name, bad), _convert(name, y))
    assert str(got.value) == str(ref.value)
