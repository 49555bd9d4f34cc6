"""Tests of bnmat.layers: whole-network gradients against independent oracles,
running statistics, composition, validation and dtypes.

Oracles: float64 finite differences of the forward pass only (the conftest's
4-point stencil), torch.autograd, hand-written NumPy forward passes that do not
call bnmat, and scikit-learn's MLPRegressor (its trained weights and its
predictions).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from _doc_examples import check_doc_examples

from bnmat import train
from bnmat.layers import (
    Additive,
    BatchNorm,
    Dense,
    Identity,
    LeakyReLU,
    ReLU,
    Sequential,
    Sigmoid,
    Softplus,
    Tanh,
    tree_leaves,
    tree_unflatten,
)

ACTIVATIONS = {
    "relu": ReLU,
    "leaky_relu": lambda: LeakyReLU(0.2),
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "softplus": Softplus,
    "identity": Identity,
}
KINKED = {"relu", "leaky_relu"}


# --------------------------------------------------------------------------- helpers
def bn_net(depth, act, *, ddof=0, bias=False, width=4, out=1, eps=1e-5):
    """``depth`` blocks Dense–BatchNorm–activation, then a Dense output layer."""
    layers = []
    for _ in range(depth):
        layers += [Dense(width, bias=bias), BatchNorm(eps=eps, ddof=ddof), ACTIVATIONS[act]()]
    layers.append(Dense(out, bias=bias))
    return Sequential(layers)


def randomize(params, state, rng, *, stats=True):
    """Random parameters (and stored statistics), recursively, so that no gradient
    vanishes by symmetry (γ = 1, β = 0 would make many of them equal).

    Use :func:`stored_stats` for statistics that suit the data."""
    def walk(tree):
        if isinstance(tree, list):
            return [walk(t) for t in tree]
        out = {}
        for k, v in tree.items():
            if isinstance(v, (list, dict)):
                out[k] = walk(v)
            elif k == "count":
                out[k] = v
            elif k == "var":
                out[k] = rng.uniform(0.5, 2.0, size=v.shape) if stats else v
            elif k == "mean":
                out[k] = rng.normal(size=v.shape) * 0.3 if stats else v
            else:
                out[k] = rng.normal(size=v.shape) * (0.5 if k == "w" else 1.0) + (k == "gamma")
        return out

    return walk(params), walk(state)


def stored_stats(net, params, state, x, rng):
    """Stored statistics near those of ``x`` (perturbed), for inference-mode checks."""
    pop = train.population_statistics(net, params, state, x)

    def walk(tree):
        if isinstance(tree, list):
            return [walk(t) for t in tree]
        if "mean" in tree:
            scale = np.sqrt(tree["var"])
            return {**tree, "mean": tree["mean"] + 0.2 * scale * rng.normal(size=scale.shape),
                    "var": tree["var"] * rng.uniform(0.7, 1.3, size=scale.shape)}
        return tree

    return walk(pop)


def flat(tree, like=None):
    leaves = tree_leaves(tree, like=like)
    return np.concatenate([np.ravel(a) for a in leaves])


def unflat(theta, like):
    out, i = [], 0
    for a in tree_leaves(like):
        out.append(theta[i:i + a.size].reshape(a.shape))
        i += a.size
    return tree_unflatten(like, out)


def loss_of_output(y_pred, y, loss):
    """The loss written out in NumPy (not through bnmat's loss ops)."""
    if y.ndim == 1:
        y = y.reshape(-1, 1)
    if loss == "sse":
        return float(np.sum((y_pred - y) ** 2))
    if loss == "mse":
        return float(np.mean((y_pred - y) ** 2))
    z = y_pred - y_pred.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-np.sum(y * logp) / y.shape[0])


def check_network_grads(net, params, state, x, y, *, loss, training, fd_grad, rel_error,
                        h, tol=1e-7):
    """value_and_grad against finite differences of the forward pass alone."""
    value, grads, _ = train.value_and_grad(net, params, state, x, y, loss, training=training)

    def f(theta):
        out = net.forward(unflat(theta, params), state, x, training=training)[0]
        return loss_of_output(out, y, loss)

    theta = flat(params)
    assert value == pytest.approx(f(theta), rel=1e-12)
    numeric = unflat(fd_grad(f, theta, h=h), params)
    checked = 0
    for (g_leaf, n_leaf) in zip(tree_leaves(grads, like=params), tree_leaves(numeric)):
        assert g_leaf.shape == n_leaf.shape
        assert np.max(np.abs(n_leaf)) > 0 or np.max(np.abs(g_leaf)) < 1e-12
        if np.max(np.abs(n_leaf)) > 1e-8:
            assert rel_error(g_leaf, n_leaf) < tol
            checked += 1
    assert checked > 0

    # and the input gradient, through each layer's backward
    out, _, cache = net.forward(params, state, x, training=training)
    g_out = np.random.default_rng(1).normal(size=out.shape)
    dx, _ = net.backward(g_out, cache)
    numeric_dx = fd_grad(
        lambda xx: float(np.sum(net.forward(params, state, xx, training=training)[0] * g_out)),
        x, h=h)
    assert np.max(np.abs(numeric_dx)) > 1e-6
    assert rel_error(dx, numeric_dx) < tol


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_whole_network_gradients(depth, act, training, fd_grad, rel_error):
    """Depths 1–4 × every activation × both modes. For each activation and mode the
    four depths cover all four (ddof, bias) pairs."""
    rng = np.random.default_rng(100 * depth + len(act) + training)
    ddof, bias = (depth + 1) % 2, depth in (2, 3)
    net = bn_net(depth, act, ddof=ddof, bias=bias)
    x = rng.normal(size=(7, 3))
    y = rng.normal(size=7)
    params, state = randomize(*net.init(x, seed=depth), rng)
    if not training:
        state = stored_stats(net, params, state, x, rng)
    check_network_grads(net, params, state, x, y, loss="sse", training=training,
                        fd_grad=fd_grad, rel_error=rel_error,
                        h=1e-5 if act in KINKED else 1e-4)


@pytest.mark.parametrize("training", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("loss", ["mse", "softmax_cross_entropy"])
def test_gradients_every_ddof_bias_loss(ddof, bias, loss, training, fd_grad, rel_error):
    rng = np.random.default_rng(7 + ddof + 2 * bias)
    out = 3 if loss == "softmax_cross_entropy" else 2
    net = bn_net(2, "tanh", ddof=ddof, bias=bias, out=out, eps=1e-3)
    x = rng.normal(size=(6, 3))
    if loss == "softmax_cross_entropy":
        y = np.eye(3)[rng.integers(0, 3, size=6)]
    else:
        y = rng.normal(size=(6, 2))
    params, state = randomize(*net.init(x, seed=3), rng)
    if not training:
        state = stored_stats(net, params, state, x, rng)
    check_network_grads(net, params, state, x, y, loss=loss, training=training,
                        fd_grad=fd_grad, rel_error=rel_error, h=1e-4)


def test_bias_before_batchnorm_gets_zero_gradient():
    rng = np.random.default_rng(2)
    net = Sequential([Dense(4, bias=True), BatchNorm(), Tanh(), Dense(1)])
    x, y = rng.normal(size=(9, 3)), rng.normal(size=9)
    params, state = randomize(*net.init(x), rng)
    _, grads, _ = train.value_and_grad(net, params, state, x, y)
    assert np.max(np.abs(grads[0]["b"])) < 1e-12 * np.max(np.abs(grads[0]["w"]))
    assert np.max(np.abs(grads[3]["b"])) > 1e-3


def test_nested_and_additive_gradients(fd_grad, rel_error):
    """ŷ = X_lin b + f(X_nn), with overlapping columns and a nested Sequential."""
    rng = np.random.default_rng(3)
    inner = Sequential([Dense(4, bias=False), BatchNorm(ddof=1), Softplus()])
    net = Additive([
        ([0, 1], Dense(1, bias=False)),
        (slice(1, 4), Sequential([inner, Dense(3), BatchNorm(), Sigmoid(), Dense(1)])),
        ([3, 0], Sequential([Dense(2, bias=False), BatchNorm(), LeakyReLU(), Dense(1)])),
    ])
    x, y = rng.normal(size=(8, 4)), rng.normal(size=8)
    params, state = randomize(*net.init(x, seed=0), rng)
    for training in (True, False):
        if not training:
            state = stored_stats(net, params, state, x, rng)
        check_network_grads(net, params, state, x, y, loss="sse", training=training,
                            fd_grad=fd_grad, rel_error=rel_error, h=1e-5)


def test_additive_forward_is_linear_part_plus_network():
    rng = np.random.default_rng(4)
    nn = Sequential([Dense(5, bias=False), BatchNorm(), ReLU(), Dense(1)])
    net = Additive([([0, 2], Dense(1, bias=False)), (slice(1, None), nn)])
    x = rng.normal(size=(10, 4))
    params, state = net.init(x, seed=1)
    b = params[0]["w"]
    expected = x[:, [0, 2]] @ b + nn.predict(params[1], state[1], x[:, 1:])
    np.testing.assert_allclose(net.predict(params, state, x), expected, rtol=1e-14, atol=1e-14)


def test_against_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    net = Sequential([Dense(5, bias=False), BatchNorm(eps=1e-3), ReLU(),
                      Dense(4, bias=False), BatchNorm(eps=1e-3), Tanh(), Dense(1)])
    x, y = rng.normal(size=(12, 3)), rng.normal(size=12)
    params, state = randomize(*net.init(x), rng)
    value, grads, _ = train.value_and_grad(net, params, state, x, y, "mse")
    out, _, cache = net.forward(params, state, x, training=True)
    dx, _ = net.backward(2.0 * (out - y[:, None]) / 12, cache)

    t = {(i, k): torch.tensor(v, dtype=torch.float64, requires_grad=True)
         for i, p in enumerate(params) for k, v in p.items()}
    tx = torch.tensor(x, requires_grad=True)
    F = torch.nn.functional
    h = F.batch_norm(tx @ t[0, "w"], None, None, t[1, "gamma"], t[1, "beta"],
                     training=True, eps=1e-3)
    h = F.batch_norm(torch.relu(h) @ t[3, "w"], None, None, t[4, "gamma"], t[4, "beta"],
                     training=True, eps=1e-3)
    pred = torch.tanh(h) @ t[6, "w"] + t[6, "b"]
    tloss = torch.mean((pred[:, 0] - torch.tensor(y)) ** 2)
    tloss.backward()
    assert value == pytest.approx(tloss.item(), rel=1e-13)
    for (i, k), tensor in t.items():
        np.testing.assert_allclose(grads[i][k], tensor.grad.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.fixture(scope="module")
def diabetes_mlp():
    """Diabetes data and weights trained by scikit-learn's MLPRegressor (outside bnmat)."""
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPRegressor

    x, y = datasets.load_diabetes(return_X_y=True)
    y = (y - y.mean()) / y.std()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp = MLPRegressor(hidden_layer_sizes=(6,), max_iter=30, random_state=0).fit(x, y)
    return x, y, mlp


def test_external_weights_reproduce_sklearn_predictions(diabetes_mlp):
    x, _, mlp = diabetes_mlp
    net = Sequential([Dense(6), ReLU(), Dense(1)])
    params = [{"w": mlp.coefs_[0], "b": mlp.intercepts_[0]}, {},
              {"w": mlp.coefs_[1], "b": mlp.intercepts_[1]}]
    np.testing.assert_allclose(net.predict(params, [{}, {}, {}], x)[:, 0], mlp.predict(x),
                               rtol=1e-12, atol=1e-12)


def test_external_weights_and_data_gradients(diabetes_mlp, fd_grad, rel_error):
    """scikit-learn's weights, a batch norm inserted, diabetes data: FD agreement."""
    x, y, mlp = diabetes_mlp
    net = Sequential([Dense(6), BatchNorm(ddof=1), Softplus(), Dense(1)])
    params = [{"w": mlp.coefs_[0], "b": mlp.intercepts_[0]},
              {"gamma": np.linspace(0.5, 1.5, 6), "beta": np.linspace(-0.3, 0.3, 6)}, {},
              {"w": mlp.coefs_[1], "b": mlp.intercepts_[1]}]
    state = [{}, {"mean": np.zeros(6), "var": np.full(6, 0.01), "count": np.asarray(0)}, {}, {}]
    state = train.population_statistics(net, params, state, x)
    xs, ys = x[:60], y[:60]
    for training in (True, False):
        check_network_grads(net, params, state, xs, ys, loss="mse", training=training,
                            fd_grad=fd_grad, rel_error=rel_error, h=1e-4)


# --------------------------------------------------------------------------- batch norm state
def numpy_stats(z, ddof):
    return z.mean(axis=0), z.var(axis=0, ddof=ddof)


@pytest.mark.parametrize("ddof", [0, 1])
def test_running_statistics_convention(ddof):
    rng = np.random.default_rng(6)
    bn = BatchNorm(ddof=ddof, decay=0.8)
    _, params, state = bn.init(rng, 3)
    z1, z2, z3 = (rng.normal(loc=i, size=(10, 3)) for i in range(3))
    _, s1, _ = bn.forward(params, state, z1, training=True)
    m1, v1 = numpy_stats(z1, ddof)
    np.testing.assert_allclose(s1["mean"], m1, rtol=1e-13)  # first batch replaces m=0, v=1
    np.testing.assert_allclose(s1["var"], v1, rtol=1e-13)
    _, s2, _ = bn.forward(params, s1, z2, training=True)
    m2, v2 = numpy_stats(z2, ddof)
    np.testing.assert_allclose(s2["mean"], (m1 + m2) / 2, rtol=1e-13)  # weight min(.8, 1/2)
    np.testing.assert_allclose(s2["var"], (v1 + v2) / 2, rtol=1e-13)
    _, s3, _ = bn.forward(params, s2, z3, training=True)
    m3, v3 = numpy_stats(z3, ddof)
    np.testing.assert_allclose(s3["mean"], (2 / 3) * s2["mean"] + (1 / 3) * m3,
                               rtol=1e-13)  # weight min(.8, 2/3)
    assert v3.shape == (3,)
    _, s4, _ = bn.forward(params, {**s3, "count": np.asarray(10)}, z1, training=True)
    np.testing.assert_allclose(s4["var"], 0.8 * s3["var"] + 0.2 * v1, rtol=1e-13)
    assert int(s4["count"]) == 11 and int(state["count"]) == 0


def test_state_without_count_uses_plain_moving_average():
    rng = np.random.default_rng(16)
    bn = BatchNorm(decay=0.75)
    _, params, _ = bn.init(rng, 2)
    old = {"mean": np.array([1.0, -1.0]), "var": np.array([2.0, 0.5])}
    z = rng.normal(size=(6, 2))
    _, new, _ = bn.forward(params, old, z, training=True)
    np.testing.assert_allclose(new["mean"], 0.75 * old["mean"] + 0.25 * z.mean(axis=0))
    np.testing.assert_allclose(new["var"], 0.75 * old["var"] + 0.25 * z.var(axis=0))
    assert "count" not in new
    with pytest.raises(ValueError, match="expects state"):
        bn.forward(params, {"mean": old["mean"]}, z, training=False)


def test_constant_column_gives_finite_output_and_gradients():
    rng = np.random.default_rng(17)
    x = np.column_stack([rng.normal(size=10), np.full(10, 3.0)])
    net = Sequential([BatchNorm(), Dense(1)])
    params, state = randomize(*net.init(x), rng, stats=False)
    value, grads, new_state = train.value_and_grad(net, params, state, x, rng.normal(size=10))
    assert np.isfinite(value)
    assert all(np.all(np.isfinite(a)) for a in tree_leaves([grads, new_state]))
    assert new_state[0]["var"][1] == 0.0
    out = net.predict(params, new_state, x)
    assert np.all(np.isfinite(out))


@pytest.mark.parametrize("ddof", [0, 1])
def test_inference_equals_training_on_batch_with_stored_statistics(ddof):
    rng = np.random.default_rng(7)
    net = Sequential([Dense(4, bias=False), BatchNorm(ddof=ddof), ReLU(),
                      Dense(3), BatchNorm(ddof=ddof), Tanh(), Dense(1)])
    x = rng.normal(size=(20, 5))
    params, state = randomize(*net.init(x), rng)
    y_train, _, _ = net.forward(params, state, x, training=True)
    # statistics of each batch norm's input, computed here in NumPy
    g1, g2 = params[1], params[4]
    z1 = x @ params[0]["w"]
    m1, v1 = numpy_stats(z1, ddof)
    h1 = np.maximum((z1 - m1) / np.sqrt(v1 + 1e-5) * g1["gamma"] + g1["beta"], 0)
    z2 = h1 @ params[3]["w"] + params[3]["b"]
    m2, v2 = numpy_stats(z2, ddof)
    stored = list(state)
    stored[1] = {"mean": m1, "var": v1, "count": np.asarray(5)}
    stored[4] = {"mean": m2, "var": v2, "count": np.asarray(5)}
    np.testing.assert_allclose(net.predict(params, stored, x), y_train, rtol=1e-12, atol=1e-12)
    pop = train.population_statistics(net, params, state, x)
    for i, (m, v) in ((1, (m1, v1)), (4, (m2, v2))):
        np.testing.assert_allclose(pop[i]["mean"], m, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(pop[i]["var"], v, rtol=1e-12)


def test_one_row_training_batch_raises_and_predicting_one_row_works():
    rng = np.random.default_rng(8)
    net = bn_net(2, "relu")
    x = rng.normal(size=(10, 3))
    params, state = net.init(x)
    with pytest.raises(ValueError, match="at least 2 rows"):
        net.forward(params, state, x[:1], training=True)
    with pytest.raises(ValueError, match="at least 2 rows"):
        train.value_and_grad(net, params, state, x[:1], np.zeros(1))
    state = train.population_statistics(net, params, state, x)
    full = net.predict(params, state, x)
    one = net.predict(params, state, x[3:4])
    assert one.shape == (1, 1)
    np.testing.assert_allclose(one, full[3:4], rtol=1e-13)
    perm = rng.permutation(10)[:6]
    np.testing.assert_allclose(net.predict(params, state, x[perm]), full[perm], rtol=1e-13)


def test_forward_and_predict_never_mutate():
    rng = np.random.default_rng(9)
    net = bn_net(2, "tanh", bias=True)
    x = rng.normal(size=(10, 3))
    params, state = net.init(x)
    copies = [np.copy(a) for a in tree_leaves([params, state])]
    x_copy = x.copy()
    net.predict(params, state, x)
    _, new_state, cache = net.forward(params, state, x, training=True)
    net.backward(rng.normal(size=(10, 1)), cache)
    train.population_statistics(net, params, state, x, batch_size=3)
    for a, b in zip(tree_leaves([params, state]), copies):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(x, x_copy)
    assert new_state[1] is not state[1]


def test_population_statistics_in_chunks_match_one_pass():
    rng = np.random.default_rng(10)
    net = Additive([([0], Dense(1, bias=False)),
                    (slice(None), bn_net(2, "softplus", ddof=1))])
    x = rng.normal(loc=3.0, size=(100, 4))
    params, state = net.init(x)
    one = train.population_statistics(net, params, state, x)
    chunked = train.population_statistics(net, params, state, x, batch_size=37)
    for a, b in zip(tree_leaves(one), tree_leaves(chunked)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    y_train = net.forward(params, state, x, training=True)[0]
    np.testing.assert_allclose(net.predict(params, one, x), y_train, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ddof", [0, 1])
def test_unequal_chunks_merge_with_count_weights(ddof):
    """Chunks of 37 and 63 rows and an empty one give the statistics of all 100 rows."""
    rng = np.random.default_rng(18)
    z = rng.normal(loc=[1e4, -2.0], scale=[1e-2, 3.0], size=(100, 2))
    bn = BatchNorm(ddof=ddof)
    _, params, state = bn.init(rng, 2)
    ys, new = bn.population_state(params, state, [z[:37], z[37:], z[:0]])
    np.testing.assert_allclose(new["mean"], z.mean(axis=0), rtol=1e-14)
    np.testing.assert_allclose(new["var"], z.var(axis=0, ddof=ddof), rtol=1e-9)
    assert [y.shape[0] for y in ys] == [37, 63, 0]
    y_full, _, _ = bn.forward(params, state, z, training=True)
    np.testing.assert_allclose(np.vstack(ys), y_full, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------- construction
def test_init_shapes_dtypes_and_seeds():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(50, 6))
    net = Sequential([Dense(300), BatchNorm(), ReLU(), Dense(200, init="glorot", bias=False),
                      Dense(2)])
    params, state = net.init(x, seed=4)
    assert params[0]["w"].shape == (6, 300) and params[0]["b"].shape == (300,)
    assert set(params[3]) == {"w"} and params[3]["w"].shape == (300, 200)
    assert params[4]["w"].shape == (200, 2)
    assert all(a.dtype == np.float64 for a in tree_leaves(params))
    np.testing.assert_array_equal(params[0]["b"], 0.0)
    np.testing.assert_array_equal(params[1]["gamma"], 1.0)
    assert state[1]["count"].dtype == np.int64
    # He: variance 2/p_in; Glorot: uniform on ±√(6/(p_in+p_out))
    assert np.var(params[0]["w"]) == pytest.approx(2 / 6, rel=0.1)
    bound = np.sqrt(6 / 500)
    assert np.abs(params[3]["w"]).max() <= bound
    assert np.abs(params[3]["w"]).max() > 0.95 * bound
    again, _ = net.init(x, seed=4)
    other, _ = net.init(x, seed=5)
    assert all(np.array_equal(a, b) for a, b in zip(tree_leaves(params), tree_leaves(again)))
    assert not np.array_equal(params[0]["w"], other[0]["w"])
    assert Dense(3, init="glorot") == Dense(3, weight_init="glorot")


def test_float32_network_stays_float32():
    rng = np.random.default_rng(12)
    x64 = rng.normal(size=(30, 4))
    x32 = x64.astype(np.float32)
    net = bn_net(2, "relu", bias=True)
    p32, s32 = net.init(x32, seed=0)
    p64, s64 = net.init(x64, seed=0)
    assert all(a.dtype == np.float32 for a in tree_leaves([p32, s32]) if a.dtype.kind == "f")
    y = rng.normal(size=30).astype(np.float32)
    value, grads, new_state = train.value_and_grad(net, p32, s32, x32, y, "mse")
    assert all(a.dtype == np.float32 for a in tree_leaves(grads))
    assert all(a.dtype == np.float32 for a in tree_leaves(new_state) if a.dtype.kind == "f")
    out32 = net.predict(p32, new_state, x32)
    assert out32.dtype == np.float32
    _, _, s64n = train.value_and_grad(net, p64, s64, x64, y.astype(np.float64), "mse")
    np.testing.assert_allclose(out32, net.predict(p64, s64n, x64), rtol=5e-4, atol=5e-4)


@pytest.mark.parametrize("make, match", [
    (lambda: BatchNorm(eps=-1e-3), "eps >= 0"),
    (lambda: BatchNorm(eps=float("nan")), "finite"),
    (lambda: BatchNorm(ddof=-1), "ddof"),
    (lambda: BatchNorm(ddof=0.5), "ddof"),
    (lambda: BatchNorm(decay=1.5), "decay"),
    (lambda: Dense(0), "units"),
    (lambda: Dense(2.5), "units"),
    (lambda: Dense(3, init="xavier"), "init"),
    (lambda: Dense(3, bias="yes"), "bias"),
    (lambda: LeakyReLU(float("inf")), "negative_slope"),
    (lambda: Sequential([]), "at least one"),
    (lambda: Additive([]), "at least one"),
    (lambda: Additive([([], Dense(1))]), "columns"),
    (lambda: Additive([([0.5], Dense(1))]), "columns"),
])
def test_invalid_configurations(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_not_a_layer_is_rejected():
    with pytest.raises(TypeError, match="not a layer"):
        Sequential([Dense(2), "relu"])


def test_structure_errors_are_clear():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(6, 3))
    net = bn_net(1, "relu")
    params, state = net.init(x)
    with pytest.raises(ValueError, match="one entry per layer"):
        net.forward(params[:-1], state, x, training=True)
    with pytest.raises(ValueError, match="expects parameters"):
        net.forward([{}, *params[1:]], state, x, training=True)
    with pytest.raises(ValueError, match="reshape"):
        net.init(x[:, 0])
    bad = Additive([([0], Dense(1)), ([1], Dense(2))])
    with pytest.raises(ValueError, match="same number of outputs"):
        bad.init(x)
    with pytest.raises(ValueError, match="out of range"):
        Additive([([5], Dense(1))]).init(x)


def test_duck_typed_custom_layer_composes(fd_grad, rel_error):
    class Scale:
        """y = x · a, one learnable scale per column (a plain class, not a dataclass)."""

        def init(self, rng, in_features):
            return in_features, {"a": np.ones(in_features)}, {}

        def forward(self, params, state, x, *, training):
            return x * params["a"], state, (x, params["a"])

        def backward(self, dy, cache):
            x, a = cache
            return dy * a, {"a": np.sum(dy * x, axis=0)}

    rng = np.random.default_rng(14)
    net = Sequential([Dense(3, bias=False), BatchNorm(), Scale(), Tanh(), Dense(1)])
    x, y = rng.normal(size=(8, 2)), rng.normal(size=8)
    params, state = randomize(*net.init(x), rng)
    check_network_grads(net, params, state, x, y, loss="sse", training=True,
                        fd_grad=fd_grad, rel_error=rel_error, h=1e-4)


# --------------------------------------------------------------------------- docs
DOC = Path(__file__).resolve().parents[1] / "docs" / "networks.md"


def test_networks_guide_examples_run(tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/networks.md runs, in order, in one namespace,
    and prints what the guide says it prints."""
    if not DOC.exists():
        pytest.skip("docs/networks.md not present")
    monkeypatch.chdir(tmp_path)
    check_doc_examples(DOC, capsys)


def test_eps_zero_is_exact_and_names_a_constant_column():
    """DESIGN's example, BatchNorm(ddof=1, eps=0.0), standardizes exactly (R's scale())."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 3))
    net = Sequential([BatchNorm(ddof=1, eps=0.0)])
    params, state = net.init(x, seed=0)
    y, _, _ = net.forward(params, state, x, training=True)
    np.testing.assert_allclose(np.std(y, axis=0, ddof=1), 1.0, rtol=1e-12)
    x[:, 2] = 4.0
    with pytest.raises(ValueError, match="column 2"):
        net.forward(params, state, x, training=True)
