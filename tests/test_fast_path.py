"""The lean training path of Sequential, value_and_grad and sgd.

``Sequential`` runs a BatchNorm directly followed by a ReLU as one fused kernel
call in training mode (when the kernels take the input), differentiates the pair
in one call, writes dZ into a gradient array it made itself, and skips ∂R/∂X of
the first Dense layer inside ``value_and_grad``. Dense and sgd avoid temporaries
for NumPy arrays. None of this may change a result beyond rounding:

* the fused network against the same layers run one by one (their own
  ``forward`` / ``backward``, which never fuse), with the kernels on and off;
* the whole-network gradient against central finite differences in float64,
  on a batch large enough for the kernels (and so the fusion) to run;
* inference (``predict``) unchanged; caller's arrays never written.
"""

from __future__ import annotations

import numpy as np
import pytest

import bnmat
from bnmat import _kernels, ops
from bnmat.layers._fused import FusedReLUCache
from bnmat.optim import sgd
from bnmat.train import value_and_grad

N, P_IN, WIDTH = 64, 5, 80         # 64 × 80 = 5120 ≥ MIN_ELEMENTS: the kernels run
needs_kernels = pytest.mark.skipif(not _kernels.available(), reason="numba not installed")


def _net(width=WIDTH):
    return bnmat.Sequential([
        bnmat.Dense(width, bias=False), bnmat.BatchNorm(eps=1e-3), bnmat.ReLU(),
        bnmat.Dense(width, bias=False), bnmat.BatchNorm(eps=1e-3, ddof=1), bnmat.ReLU(),
        bnmat.Dense(2)])


def _problem(dtype=np.float64, seed=0, n=N):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, P_IN)).astype(dtype)
    y = rng.standard_normal((n, 2)).astype(dtype)
    net = _net()
    params, state = net.init(x, seed=seed)
    # move γ, β and the running statistics off their initial values
    for i in (1, 4):
        params[i]["gamma"] = (1.0 + 0.3 * rng.standard_normal(WIDTH)).astype(dtype)
        params[i]["beta"] = (0.5 * rng.standard_normal(WIDTH)).astype(dtype)
        state[i]["mean"] = rng.standard_normal(WIDTH).astype(dtype)
        state[i]["count"] = np.asarray(3, dtype=np.int64)
    return net, params, state, x, y


def _layer_by_layer(net, params, state, x, y):
    """Loss, grads and new state with every layer's own forward and backward."""
    caches, new_state, h = [], [], x
    for layer, p, s in zip(net.layers, params, state):
        h, s, c = layer.forward(p, s, h, training=True)
        new_state.append(s)
        caches.append(c)
    r = h - y
    loss = float(np.sum(r * r))
    dy = 2.0 * r
    grads = [None] * len(net.layers)
    for i in range(len(net.layers) - 1, -1, -1):
        dy, grads[i] = net.layers[i].backward(dy, caches[i])
    return loss, grads, new_state


def _assert_trees_close(a, b, rtol, atol=0.0):
    la, lb = bnmat.optim.tree_leaves(a), bnmat.optim.tree_leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        u, v = np.asarray(u), np.asarray(v)
        assert u.shape == v.shape and u.dtype == v.dtype
        scale = max(float(np.max(np.abs(v))), 1e-300) if v.size else 1.0
        np.testing.assert_allclose(u, v, rtol=0, atol=rtol * scale + atol)


# ----------------------------------------------------------------- fusion happens
@needs_kernels
def test_training_forward_fuses_batchnorm_and_relu():
    net, params, state, x, _ = _problem()
    _, _, cache = net.forward(params, state, x, training=True)
    assert isinstance(cache.caches[2], FusedReLUCache)
    assert isinstance(cache.caches[5], FusedReLUCache)
    assert cache.caches[2].bn is cache.caches[1]
    # the batch-norm cache still reads as one (statistics for running averages)
    assert isinstance(cache.caches[1], ops.BatchNormCache)


def test_no_fusion_below_the_kernel_threshold_or_in_inference():
    net, params, state, x, _ = _problem(n=8)          # 8 × 80 < 4096
    _, _, cache = net.forward(params, state, x, training=True)
    assert not any(isinstance(c, FusedReLUCache) for c in cache.caches)
    net, params, state, x, _ = _problem()
    _, _, cache = net.forward(params, state, x, training=False)
    assert not any(isinstance(c, FusedReLUCache) for c in cache.caches)


def test_no_fusion_with_kernels_disabled(monkeypatch):
    monkeypatch.setenv(_kernels.DISABLE_ENV, "1")
    net, params, state, x, _ = _problem()
    _, _, cache = net.forward(params, state, x, training=True)
    assert not any(isinstance(c, FusedReLUCache) for c in cache.caches)


# ------------------------------------------------- fused = unfused, to rounding
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("disabled", [False, True])
def test_value_and_grad_matches_layer_by_layer(monkeypatch, dtype, rtol, disabled):
    net, params, state, x, y = _problem(dtype)
    # the reference: layers one by one, with the reference formulas (no kernels)
    monkeypatch.setenv(_kernels.DISABLE_ENV, "1")
    ref_loss, ref_grads, ref_state = _layer_by_layer(net, params, state, x, y)
    if not disabled:
        monkeypatch.delenv(_kernels.DISABLE_ENV)
    loss, grads, new_state = value_and_grad(net, params, state, x, y, loss="sse")
    assert loss == pytest.approx(ref_loss, rel=rtol)
    _assert_trees_close(grads, ref_grads, rtol)
    _assert_trees_close(new_state, ref_state, rtol)
    # and against the kernels' own unfused path (layer by layer, kernels on)
    if not disabled:
        k_loss, k_grads, k_state = _layer_by_layer(net, params, state, x, y)
        assert loss == pytest.approx(k_loss, rel=rtol)
        _assert_trees_close(grads, k_grads, rtol)
        _assert_trees_close(new_state, k_state, rtol)


def test_running_statistics_update_is_batchnorms(monkeypatch):
    net, params, state, x, _ = _problem()
    _, new_state, cache = net.forward(params, state, x, training=True)
    z1 = x @ params[0]["w"]
    for i, z in ((1, z1),):
        layer = net.layers[i]
        w = min(layer.decay, 3 / 4)
        mean = z.mean(axis=0)
        var = z.var(axis=0, ddof=layer.ddof)
        np.testing.assert_allclose(new_state[i]["mean"], w * state[i]["mean"] + (1 - w) * mean,
                                   rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new_state[i]["var"], w * state[i]["var"] + (1 - w) * var,
                                   rtol=1e-12)
        assert int(new_state[i]["count"]) == 4
    assert new_state[2] is state[2] and new_state[5] is state[5]


@needs_kernels
def test_fused_caches_differentiate_layer_by_layer():
    # Sequential's forward fused the pair; each layer's own backward still works.
    net, params, state, x, _ = _problem()
    h, _, cache = net.forward(params, state, x, training=True)
    dy = np.random.default_rng(5).standard_normal(h.shape)
    dx_seq, g_seq = net.backward(dy, cache)
    g, caches = dy, cache.caches
    grads = [None] * len(net.layers)
    for i in range(len(net.layers) - 1, -1, -1):
        g, grads[i] = net.layers[i].backward(g, caches[i])
    _assert_trees_close(g_seq, grads, 1e-12)
    _assert_trees_close(dx_seq, g, 1e-12)


@needs_kernels
def test_kernels_disabled_between_forward_and_backward(monkeypatch):
    net, params, state, x, y = _problem()
    _, _, cache = net.forward(params, state, x, training=True)
    dy = np.random.default_rng(6).standard_normal((N, 2))
    dx, grads = net.backward(dy, cache)
    monkeypatch.setenv(_kernels.DISABLE_ENV, "1")
    dx_off, grads_off = net.backward(dy, cache)
    _assert_trees_close(grads_off, grads, 1e-12)
    _assert_trees_close(dx_off, dx, 1e-12)


# ------------------------------------------------------ finite differences
def _flat(tree):
    return np.concatenate([np.ravel(a) for a in bnmat.optim.tree_leaves(tree)])


def _unflat(vec, like):
    leaves, out, k = bnmat.optim.tree_leaves(like), [], 0
    for a in leaves:
        out.append(vec[k:k + a.size].reshape(a.shape))
        k += a.size
    return bnmat.optim.tree_unflatten(like, out)


@needs_kernels
def test_whole_network_gradient_against_finite_differences():
    net, params, state, x, y = _problem(np.float64, seed=3)
    loss, grads, _ = value_and_grad(net, params, state, x, y, loss="sse")
    _, _, cache = net.forward(params, state, x, training=True)
    assert isinstance(cache.caches[2], FusedReLUCache)       # the fused path ran
    theta, g = _flat(params), _flat(grads)

    def f(t):
        out, _, _ = net.forward(_unflat(t, params), state, x, training=True)
        return float(np.sum((out - y) ** 2))

    h = 1e-6
    rng = np.random.default_rng(11)
    # random directions over all parameters at once
    for _ in range(4):
        v = rng.standard_normal(theta.size)
        fd = (f(theta + h * v) - f(theta - h * v)) / (2 * h)
        assert fd == pytest.approx(float(g @ v), rel=1e-6, abs=1e-7 * abs(loss))
    # every γ and β of both batch norms, and a sample of each weight matrix
    sizes = [a.size for a in bnmat.optim.tree_leaves(params)]
    starts = np.cumsum([0] + sizes)
    idx = []
    for leaf, (a, b) in enumerate(zip(starts[:-1], starts[1:])):
        size = b - a
        idx += list(range(a, b)) if size <= WIDTH else list(a + rng.choice(size, 12, False))
    fd = np.empty(len(idx))
    for j, k in enumerate(idx):
        e = np.zeros_like(theta)
        e[k] = h
        fd[j] = (f(theta + e) - f(theta - e)) / (2 * h)
    np.testing.assert_allclose(g[idx], fd, rtol=1e-5, atol=1e-6 * np.max(np.abs(g)))


# ------------------------------------------------------- no hidden writes
@needs_kernels
def test_backward_never_writes_the_callers_dy_and_is_repeatable():
    # The network ends in batch norm + ReLU: its fused backward gets the caller's dy.
    net = bnmat.Sequential([bnmat.Dense(WIDTH, bias=False), bnmat.BatchNorm(), bnmat.ReLU()])
    rng = np.random.default_rng(2)
    x = rng.standard_normal((N, P_IN))
    params, state = net.init(x, seed=0)
    h, _, cache = net.forward(params, state, x, training=True)
    dy = rng.standard_normal(h.shape)
    dy0 = dy.copy()
    dx1, g1 = net.backward(dy, cache)
    np.testing.assert_array_equal(dy, dy0)
    dx2, g2 = net.backward(dy, cache)
    np.testing.assert_array_equal(dx1, dx2)
    for a, b in zip(bnmat.optim.tree_leaves(g1), bnmat.optim.tree_leaves(g2)):
        np.testing.assert_array_equal(a, b)


def test_value_and_grad_leaves_inputs_alone():
    net, params, state, x, y = _problem()
    copies = [bnmat.optim.tree_map(np.copy, t) for t in (params, state)]
    x0, y0 = x.copy(), y.copy()
    value_and_grad(net, params, state, x, y, loss="mse")
    for t, c in zip((params, state), copies):
        for a, b in zip(bnmat.optim.tree_leaves(t), bnmat.optim.tree_leaves(c)):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)


# ------------------------------------------------------ inference unchanged
def test_predict_is_the_inference_composition():
    net, params, state, x, _ = _problem()
    h = x
    for layer, p, s in zip(net.layers, params, state):
        h, _, _ = layer.forward(p, s, h, training=False)
    np.testing.assert_array_equal(net.predict(params, state, x), h)


# ------------------------------------------------------ Dense and sgd details
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_fast_path_matches_the_op(dtype):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 7)).astype(dtype)
    for units in (1, 3):
        layer = bnmat.Dense(units)
        _, p, _ = layer.init(rng, 7)
        p = {k: (v + rng.standard_normal(v.shape)).astype(dtype) for k, v in p.items()}
        y, _, cache = layer.forward(p, {}, x, training=True)
        y_ref, cache_ref = ops.dense_forward(x, p["w"], p["b"])
        np.testing.assert_array_equal(y, y_ref)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx, g = layer.backward(dy, cache)
        dx_ref, dw_ref, db_ref = ops.dense_backward(dy, cache_ref)
        tol = 1e-6 if dtype == np.float32 else 1e-14
        np.testing.assert_allclose(dx, dx_ref, rtol=tol)
        np.testing.assert_allclose(g["w"], dw_ref, rtol=tol)
        np.testing.assert_allclose(g["b"], db_ref, rtol=tol)
        assert dx.dtype == g["w"].dtype == dtype
        none, g2 = layer._backward(dy, cache, need_dx=False)
        assert none is None
        np.testing.assert_array_equal(g2["w"], g["w"])


@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9}, {"momentum": 0.9, "nesterov": True}])
def test_sgd_update_is_the_formula(kwargs):
    rng = np.random.default_rng(8)
    params = [{"w": rng.standard_normal((4, 3)).astype(np.float32)},
              {"b": rng.standard_normal(3)}]
    opt = sgd(0.05, **kwargs)
    st = opt.init(params)
    mu = kwargs.get("momentum", 0.0)
    v = [np.zeros((4, 3), np.float32), np.zeros(3)]
    for _ in range(3):
        grads = [{"w": rng.standard_normal((4, 3)).astype(np.float32)},
                 {"b": rng.standard_normal(3)}]
        before = [params[0]["w"].copy(), params[1]["b"].copy()]
        new, st = opt.update(grads, st, params)
        for k, (key, old) in enumerate((("w", before[0]), ("b", before[1]))):
            g = grads[k][key]
            if mu:
                v[k] = mu * v[k] + g
                d = g + mu * v[k] if kwargs.get("nesterov") else v[k]
            else:
                d = g
            np.testing.assert_array_equal(new[k][key], old - 0.05 * d)
            np.testing.assert_array_equal(params[k][key], old)    # not written
            assert new[k][key].dtype == old.dtype
        params = new


# ------------------------------------------------- fit's lean step (train/_fast.py)
import importlib  # noqa: E402

_fast = importlib.import_module("bnmat.train._fast")
_fit_module = importlib.import_module("bnmat.train._fit")


def _fit_problem(dtype=np.float64, n=530, k=1, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 10)).astype(dtype)
    y = (x[:, :k] ** 2 + 0.1 * rng.standard_normal((n, k))).astype(dtype)
    return x, y


def _mlp(activation="relu", k=1, ddof=0):
    from bnmat.layers._mlp import build_mlp

    return build_mlp((64, 48), activation, k, ddof=ddof)


def _fit_with(net, x, y, monkeypatch, *, fast: bool, kernels: bool = True, **kw):
    with monkeypatch.context() as m:
        if not fast:
            m.setenv("BNMAT_DISABLE_FAST_STEP", "1")
        if not kernels:
            m.setenv(_kernels.DISABLE_ENV, "1")
        params, state = net.init(x, seed=0)
        kw.setdefault("optimizer", bnmat.optim.adam(1e-2))
        return bnmat.fit(net, params, state, x, y, epochs=3, batch_size=100, seed=0,
                         progress=False, **kw)


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("case", [
    dict(loss="mse", l2=1e-3),
    dict(loss="sse", optimizer=sgd(1e-3, momentum=0.9, nesterov=True)),
    dict(loss="mse", activation="tanh", ddof=1),
    dict(loss="mse", k=3, validation_fraction=0.2, early_stopping=True),
])
def test_fit_lean_step_matches_value_and_grad(case, kernels, monkeypatch):
    case = dict(case)
    activation, k, ddof = case.pop("activation", "relu"), case.pop("k", 1), case.pop("ddof", 0)
    x, y = _fit_problem(k=k)
    net = _mlp(activation, k, ddof)
    calls = []
    real = _fit_module.value_and_grad
    monkeypatch.setattr(_fit_module, "value_and_grad",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    fast = _fit_with(net, x, y, monkeypatch, fast=True, kernels=kernels, **case)
    assert calls == []                       # every step ran on the lean path
    ref = _fit_with(net, x, y, monkeypatch, fast=False, kernels=kernels, **case)
    assert len(calls) > 0
    _assert_trees_close(fast.params, ref.params, 1e-12)
    _assert_trees_close(fast.state, ref.state, 1e-12)
    np.testing.assert_allclose(fast.history["loss"], ref.history["loss"], rtol=1e-12)
    assert fast.best_epoch == ref.best_epoch


def test_fit_lean_step_float32(monkeypatch):
    x, y = _fit_problem(np.float32)
    net = _mlp()
    fast = _fit_with(net, x, y, monkeypatch, fast=True, loss="mse")
    ref = _fit_with(net, x, y, monkeypatch, fast=False, loss="mse")
    assert all(a.dtype == np.float32 for a in bnmat.optim.tree_leaves(fast.params))
    _assert_trees_close(fast.params, ref.params, 2e-4)


def test_fit_lean_step_float32_x_with_float64_y(monkeypatch):
    x, y = _fit_problem(np.float32)
    y64 = y.astype(np.float64) + 1e-3          # not representable in float32
    net = _mlp()
    calls = []
    real = _fit_module.value_and_grad
    monkeypatch.setattr(_fit_module, "value_and_grad",
                        lambda *a, **kw: calls.append(1) or real(*a, **kw))
    fast = _fit_with(net, x, y64, monkeypatch, fast=True, loss="mse")
    assert calls == []
    ref = _fit_with(net, x, y64, monkeypatch, fast=False, loss="mse")
    _assert_trees_close(fast.params, ref.params, 2e-4)
    np.testing.assert_allclose(fast.history["loss"], ref.history["loss"], rtol=1e-4)


def test_fit_lean_step_only_where_it_applies():
    x, y = _fit_problem()
    net = _mlp()
    params, state = net.init(x, seed=0)
    adam = bnmat.optim.adam(1e-3)
    assert _fast.fast_step(net, params, state, x, y, "mse", adam, 0.0, None) is not None
    custom = bnmat.optim.Optimizer(adam.init, lambda g, s, p: adam.update(g, s, p))
    assert _fast.fast_step(net, params, state, x, y, "mse", custom, 0.0, None) is None
    assert _fast.fast_step(net, params, state, x, y, "softmax_cross_entropy", adam, 0.0,
                           None) is None
    assert _fast.fast_step(net, params, state, x.astype(np.float32), y, "mse", adam, 0.0,
                           None) is None            # float64 parameters, float32 x
    assert _fast.fast_step(net, params, state, x, y.astype(np.int64), "mse", adam, 0.0,
                           None) is None            # integer y: the loss's own conversion
    grouped = bnmat.Sequential([bnmat.Dense(4), bnmat.GroupBatchNorm(), bnmat.Dense(1)])
    gp, gs = grouped.init(x, seed=0)
    assert _fast.fast_step(grouped, gp, gs, x, y, "mse", adam, 0.0, None) is None


def test_fit_lean_step_leaves_inputs_alone_and_hands_out_fresh_arrays(monkeypatch):
    x, y = _fit_problem()
    net = _mlp()
    params, state = net.init(x, seed=0)
    before = [np.array(a) for a in bnmat.optim.tree_leaves((params, state))]
    x0, y0 = x.copy(), y.copy()
    seen = []
    result = bnmat.fit(net, params, state, x, y, epochs=3, batch_size=100, progress=False,
                       callback=lambda epoch, logs: seen.append(
                           [np.array(a) for a in bnmat.optim.tree_leaves(logs["params"])])
                       and None)
    for a, b in zip(bnmat.optim.tree_leaves((params, state)), before):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(y, y0)
    # what the callback was handed at epoch 1 is not overwritten by later steps
    assert not all(np.array_equal(a, b) for a, b in
                   zip(seen[0], bnmat.optim.tree_leaves(result.params)))


def test_fit_lean_step_divergence_is_the_same_error(monkeypatch):
    x, y = _fit_problem()
    net = _mlp()
    errors = []
    for fast in (True, False):
        with pytest.raises(Exception) as info:
            _fit_with(net, x, y, monkeypatch, fast=fast, optimizer=sgd(1e200))
        errors.append((type(info.value), str(info.value), info.value.epoch))
        finite = bnmat.optim.tree_leaves(info.value.params)
        assert all(np.isfinite(np.asarray(a)).all() for a in finite)
    assert errors[0] == errors[1]
