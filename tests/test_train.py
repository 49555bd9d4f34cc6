"""Tests of bnmat.train: value_and_grad conventions, population statistics, fit and
fit_lbfgs (loss reduction, exact inference after full-batch training, early
stopping, divergence, determinism, progress output), against independent oracles
where there is one (least squares and ridge in closed form)."""

from __future__ import annotations

import numpy as np
import pytest

import bnmat
from bnmat import optim, train
from bnmat.layers import BatchNorm, Dense, ReLU, Sequential, Tanh, tree_leaves


def bn_mlp(width=8, ddof=0, out=1):
    return Sequential([Dense(width, bias=False), BatchNorm(ddof=ddof), ReLU(),
                       Dense(width, bias=False), BatchNorm(ddof=ddof), Tanh(), Dense(out)])


@pytest.fixture
def regression(rng):
    x = rng.normal(size=(120, 3))
    y = np.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=120)
    return x, y


def equal_trees(a, b):
    la, lb = tree_leaves(a), tree_leaves(b)
    return len(la) == len(lb) and all(np.array_equal(u, v) for u, v in zip(la, lb))


# --------------------------------------------------------------------------- value_and_grad
def test_target_vector_matches_column_output(regression):
    x, y = regression
    net = bn_mlp()
    params, state = net.init(x)
    v1, g1, _ = train.value_and_grad(net, params, state, x, y, "mse")
    v2, g2, _ = train.value_and_grad(net, params, state, x, y[:, None], "mse")
    out = net.forward(params, state, x, training=True)[0]
    assert v1 == v2 == pytest.approx(np.mean((out[:, 0] - y) ** 2), rel=1e-13)
    assert equal_trees(g1, g2)
    with pytest.raises(ValueError, match="different numbers of rows"):
        train.value_and_grad(net, params, state, x, y[:-1])


def test_cross_entropy_labels_equal_one_hot(rng):
    x = rng.normal(size=(30, 4))
    labels = rng.integers(0, 3, size=30)
    net = bn_mlp(out=3)
    params, state = net.init(x)
    v1, g1, _ = train.value_and_grad(net, params, state, x, labels, "softmax_cross_entropy")
    v2, g2, _ = train.value_and_grad(net, params, state, x, np.eye(3)[labels],
                                     "softmax_cross_entropy")
    assert v1 == v2
    assert equal_trees(g1, g2)
    with pytest.raises(ValueError, match="class labels"):
        train.value_and_grad(net, params, state, x, labels + 5, "softmax_cross_entropy")


def test_l2_penalty_value_and_gradient(regression, fd_grad, rel_error):
    x, y = regression
    x, y = x[:20], y[:20]
    net = Sequential([Dense(4), BatchNorm(), Tanh(), Dense(1)])
    params, state = net.init(x, seed=1)
    lam = 0.3
    v0, g0, _ = train.value_and_grad(net, params, state, x, y, "sse")
    v, g, _ = train.value_and_grad(net, params, state, x, y, "sse", l2=lam)
    penalty = 0.5 * lam * (np.sum(params[0]["w"] ** 2) + np.sum(params[3]["w"] ** 2))
    assert v == pytest.approx(v0 + penalty, rel=1e-13)
    np.testing.assert_allclose(g[0]["w"] - g0[0]["w"], lam * params[0]["w"], atol=1e-12)
    np.testing.assert_array_equal(g[1]["gamma"], g0[1]["gamma"])   # γ, β, b not penalized
    np.testing.assert_array_equal(g[3]["b"], g0[3]["b"])

    w = params[3]["w"]

    def f(w_new):
        p = [params[0], params[1], params[2], {"w": w_new, "b": params[3]["b"]}]
        return train.value_and_grad(net, p, state, x, y, "sse", l2=lam)[0]

    assert rel_error(g[3]["w"], fd_grad(f, w, h=1e-4)) < 1e-8


def test_custom_loss_pair(regression):
    """A Huber-like loss given as a (forward, backward) pair."""
    x, y = regression
    net = bn_mlp()
    params, state = net.init(x)

    def forward(y_pred, y):
        r = y_pred - y
        return np.sum(np.log(np.cosh(r))), r

    def backward(dloss, r):
        return dloss * np.tanh(r)

    v, g, _ = train.value_and_grad(net, params, state, x, y, (forward, backward))
    out, _, cache = net.forward(params, state, x, training=True)
    assert v == pytest.approx(np.sum(np.log(np.cosh(out[:, 0] - y))), rel=1e-13)
    _, g_direct = net.backward(np.tanh(out - y[:, None]), cache)
    assert equal_trees(g, g_direct)
    with pytest.raises(ValueError, match="unknown loss"):
        train.value_and_grad(net, params, state, x, y, "hinge")


# --------------------------------------------------------------------------- fit
def test_fit_reduces_the_loss(regression):
    x, y = regression
    net = bn_mlp()
    params, state = net.init(x)
    result = train.fit(net, params, state, x, y, optimizer=optim.adam(0.01), epochs=150,
                       batch_size=32, progress=False)
    start = train.loss_value(net, params, train.population_statistics(net, params, state, x),
                             x, y, "mse")
    end = train.loss_value(net, result.params, result.state, x, y, "mse")
    assert end < 0.25 * start
    assert end < 0.25 * np.var(y)
    assert result.history["epoch"] == list(range(1, 151))
    assert result.history["loss"][-1] < result.history["loss"][0]
    assert result.history["val_loss"] == [] and not result.stopped_early


@pytest.mark.parametrize("ddof", [0, 1])
def test_full_batch_fit_then_predict_reproduces_training_output(regression, ddof):
    x, y = regression
    net = bn_mlp(ddof=ddof)
    params, state = net.init(x)
    result = train.fit(net, params, state, x, y, optimizer=optim.sgd(0.05, momentum=0.9),
                       epochs=30, progress=False)
    training_out = net.forward(result.params, result.state, x, training=True)[0]
    np.testing.assert_allclose(net.predict(result.params, result.state, x), training_out,
                               rtol=1e-12, atol=1e-12)
    # the inputs were not modified
    assert equal_trees(params, net.init(x)[0]) and equal_trees(state, net.init(x)[1])


def test_fit_is_deterministic(regression):
    x, y = regression
    net = bn_mlp()
    params, state = net.init(x)
    kwargs = dict(epochs=5, batch_size=16, validation_fraction=0.2, progress=False)
    a = train.fit(net, params, state, x, y, seed=3, **kwargs)
    b = train.fit(net, params, state, x, y, seed=3, **kwargs)
    c = train.fit(net, params, state, x, y, seed=4, **kwargs)
    assert equal_trees(a.params, b.params) and equal_trees(a.state, b.state)
    assert a.history == b.history
    assert not equal_trees(a.params, c.params)


def test_early_stopping_restores_the_best_epoch(regression, rng):
    """Validation targets unrelated to X: the validation loss soon rises."""
    x, y = regression
    x_val, y_val = x[:40] + 0.5, rng.normal(size=40) * 3
    net = bn_mlp()
    params, state = net.init(x)
    seen = {}

    def remember(epoch, logs):
        seen[epoch] = logs["params"]

    result = train.fit(net, params, state, x, y, optimizer=optim.adam(0.03), epochs=300,
                       validation_data=(x_val, y_val), early_stopping=True, patience=5,
                       callback=remember, progress=False)
    vals = result.history["val_loss"]
    assert result.stopped_early and len(vals) < 300
    assert result.best_epoch == 1 + int(np.argmin(vals))
    assert len(vals) - result.best_epoch <= 5      # patience counts from the last real gain
    assert equal_trees(result.params, seen[result.best_epoch])
    assert not equal_trees(result.params, seen[len(vals)])
    # state: population statistics of the training rows for the best parameters
    expected = train.population_statistics(net, result.params, result.state, x)
    for a, b in zip(tree_leaves(result.state), tree_leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-13)


def test_callback_can_stop_training(regression):
    x, y = regression
    net = bn_mlp()
    calls = []

    def stop_at_three(epoch, logs):
        calls.append((epoch, sorted(logs)))
        return epoch == 3

    result = train.fit(net, *net.init(x), x, y, epochs=50, callback=stop_at_three,
                       progress=False)
    assert [c[0] for c in calls] == [1, 2, 3]
    assert calls[0][1] == ["loss", "params", "state", "val_loss"]
    assert result.stopped_early and result.history["epoch"] == [1, 2, 3]


def test_divergence_names_the_epoch_and_keeps_finite_params(regression):
    x, y = regression
    net = Sequential([Dense(8), ReLU(), Dense(1)])
    params, state = net.init(x)
    with pytest.raises(train.DivergenceError, match=r"diverged at epoch \d+") as info:
        train.fit(net, params, state, x, y * 1e3, optimizer=optim.sgd(1e3), epochs=100,
                  progress=False)
    err = info.value
    assert isinstance(err, ValueError)
    assert f"epoch {err.epoch}" in str(err)
    assert err.epoch == len(err.history["epoch"]) + 1
    assert all(np.all(np.isfinite(a)) for a in tree_leaves(err.params))


def test_divergence_inside_batchnorm(regression):
    x, y = regression
    net = bn_mlp()
    with pytest.raises(train.DivergenceError, match="epoch"):
        train.fit(net, *net.init(x), x, y * 1e200, optimizer=optim.sgd(1e200), epochs=20,
                  progress=False)


def test_minibatch_trailing_row_is_merged(rng):
    x, y = rng.normal(size=(33, 2)), rng.normal(size=33)
    net = bn_mlp(width=3)
    params, state = net.init(x)
    train.fit(net, params, state, x, y, epochs=2, batch_size=16, progress=False)
    train.fit(net, params, state, x, y, epochs=2, batch_size=16, drop_last="drop",
              progress=False)
    with pytest.raises(ValueError, match="at least 2 rows"):
        train.fit(net, params, state, x, y, epochs=1, batch_size=16, drop_last="keep",
                  progress=False)


def test_one_row_training_set_raises(rng):
    net = bn_mlp(width=3)
    x = rng.normal(size=(1, 2))
    with pytest.raises(ValueError, match="at least 2 rows"):
        train.fit(net, *net.init(x), x, np.zeros(1), epochs=1, progress=False)


def test_bad_input_is_rejected(regression):
    x, y = regression
    net = bn_mlp()
    params, state = net.init(x)
    x_nan = x.copy()
    x_nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        train.fit(net, params, state, x_nan, y, progress=False)
    with pytest.raises(ValueError, match="y must have shape"):
        train.fit(net, params, state, x, y[:-2], progress=False)
    for kwargs, match in [({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"),
                          ({"validation_fraction": 1.0}, "validation_fraction"),
                          ({"drop_last": "x"}, "drop_last"), ({"l2": -1.0}, "l2")]:
        with pytest.raises(ValueError, match=match):
            train.fit(net, params, state, x, y, progress=False, **kwargs)


def test_validation_split_and_float32(regression):
    x, y = regression
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    net = bn_mlp()
    params, state = net.init(x32)
    result = train.fit(net, params, state, x32, y32, epochs=3, validation_fraction=0.25,
                       progress=False)
    assert len(result.history["val_loss"]) == 3
    assert all(a.dtype == np.float32 for a in tree_leaves([result.params, result.state])
               if a.dtype.kind == "f")
    assert net.predict(result.params, result.state, x32).dtype == np.float32


def test_progress_output(regression, capsys, monkeypatch):
    x, y = regression
    net = bn_mlp()
    params, state = net.init(x)
    train.fit(net, params, state, x, y, epochs=3, progress=False)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(train._result, "_tqdm", lambda: None)   # as if tqdm were not installed
    train.fit(net, params, state, x, y, epochs=3, validation_fraction=0.2, progress=True)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and err[0].startswith("epoch 1/3  loss ") and "val_loss" in err[0]


def test_progress_bar_with_tqdm(regression, capsys):
    pytest.importorskip("tqdm")
    x, y = regression
    net = bn_mlp()
    train.fit(net, *net.init(x), x, y, epochs=2, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "2/2" in captured.err


# --------------------------------------------------------------------------- L-BFGS
def test_lbfgs_reaches_least_squares_and_ridge(rng):
    """A Dense(1) network is linear regression: compare with the closed forms."""
    n = 50
    x = rng.normal(size=(n, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 + 0.1 * rng.normal(size=n)
    net = Sequential([Dense(1)])
    params, state = net.init(x)
    result = train.fit_lbfgs(net, params, state, x, y, loss="mse", tol=1e-12)
    coef, *_ = np.linalg.lstsq(np.column_stack([x, np.ones(n)]), y, rcond=None)
    np.testing.assert_allclose(result.params[0]["w"][:, 0], coef[:4], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.params[0]["b"], coef[4:], rtol=1e-6, atol=1e-7)
    # mse + ½λ‖w‖² (intercept free): w = (XcᵀXc + (Nλ/2) I)⁻¹ Xcᵀ yc
    lam = 0.4
    ridge = train.fit_lbfgs(net, params, state, x, y, loss="mse", l2=lam, tol=1e-12)
    xc, yc = x - x.mean(axis=0), y - y.mean()
    w = np.linalg.solve(xc.T @ xc + n * lam / 2 * np.eye(4), xc.T @ yc)
    np.testing.assert_allclose(ridge.params[0]["w"][:, 0], w, rtol=1e-6, atol=1e-7)


def test_lbfgs_batchnorm_network(regression):
    x, y = regression
    net = bn_mlp()
    params, state = net.init(x)
    calls = []
    result = train.fit_lbfgs(net, params, state, x, y, max_iter=40,
                             callback=lambda it, logs: calls.append(it))
    assert calls == result.history["epoch"] and 0 < len(calls) <= 40
    assert result.history["loss"][-1] < 0.3 * result.history["loss"][0]
    training_out = net.forward(result.params, result.state, x, training=True)[0]
    np.testing.assert_allclose(net.predict(result.params, result.state, x), training_out,
                               rtol=1e-12, atol=1e-12)
    stopped = train.fit_lbfgs(net, params, state, x, y, max_iter=40,
                              callback=lambda it, logs: it == 2)
    assert stopped.stopped_early and stopped.history["epoch"] == [1, 2]


def test_public_names():
    assert bnmat.value_and_grad is train.value_and_grad
    assert bnmat.fit is train.fit
    assert bnmat.population_statistics is train.population_statistics
