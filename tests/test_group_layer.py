"""GroupBatchNorm as a layer, the within losses in training, whole-group mini-batches.

Oracles: float64 finite differences of the whole network's loss (with the
within loss computed, for the oracle, by a dense least-squares projection built
here), numpy group statistics computed with loops over the labels, and ordinary
BatchNorm for the one-group case.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pytest

import bnmat
from bnmat import train
from bnmat.layers import (
    Additive, BatchNorm, Dense, GroupBatchNorm, Linear, ReLU, Sequential, Softplus, Tanh,
    partially_linear, tree_leaves, tree_unflatten, uses_groups,
)
from bnmat.ops import UnseenGroupWarning
from bnmat.train._groups import group_batches


# --------------------------------------------------------------------------- helpers
def uneven_labels(rng, sizes, shuffle=True):
    """Integer labels (not 0..G-1, to catch code/label mix-ups) with the given group sizes."""
    labels = np.repeat(10 * np.arange(1, len(sizes) + 1) + 3, sizes)
    return rng.permutation(labels) if shuffle else labels


def randomize(params, rng):
    """Random parameters (γ away from 1, β away from 0), so no gradient vanishes by symmetry."""
    return tree_unflatten(params, [rng.normal(size=np.shape(a)) + (1.5 if i % 2 else 0.0)
                                   for i, a in enumerate(tree_leaves(params))])


def dense_projection(factors):
    """M = I − F(FᵀF)⁺Fᵀ for F = [D₁ D₂ …], built densely with lstsq (the oracle)."""
    cols = []
    for labels in factors:
        uniq = np.unique(labels)
        cols.append((labels[:, None] == uniq[None, :]).astype(float))
    f = np.hstack(cols)
    n = f.shape[0]
    coef = np.linalg.lstsq(f, np.eye(n), rcond=None)[0]
    return np.eye(n) - f @ coef


def check_network_grads(net, params, state, x, y, loss, groups, fd_grad, rel_error,
                        oracle_loss=None, training=True, tol=1e-7, h=1e-4):
    """Every parameter's gradient (and the input's) against central differences."""
    value, grads, _ = train.value_and_grad(net, params, state, x, y, loss, groups=groups,
                                           training=training)
    leaves = tree_leaves(params)
    flat = np.concatenate([np.ravel(a) for a in leaves])

    def f(theta):
        parts, start = [], 0
        for a in leaves:
            parts.append(theta[start:start + a.size].reshape(a.shape))
            start += a.size
        p = tree_unflatten(params, parts)
        if oracle_loss is not None:
            return oracle_loss(p)
        return train.value_and_grad(net, p, state, x, y, loss, groups=groups,
                                    training=training)[0]

    numeric = fd_grad(f, flat, h=h)
    analytic = np.concatenate([np.ravel(a) for a in tree_leaves(grads, like=params)])
    assert rel_error(analytic, numeric) < tol
    return value


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("ddof", [0, 1])
def test_network_gradients_with_group_batchnorm(rng, fd_grad, rel_error, ddof):
    """Whole-network gradients (training mode) vs finite differences; uneven groups, one of 2."""
    labels = uneven_labels(rng, [2, 5, 3, 7])
    x = rng.normal(size=(labels.size, 3))
    y = rng.normal(size=labels.size)
    net = Sequential([Dense(4, bias=False), GroupBatchNorm(ddof=ddof, eps=1e-3), Softplus(),
                      Dense(3, bias=False), GroupBatchNorm(ddof=ddof), Tanh(), Dense(1)])
    params, state = net.init(x, seed=0)
    params = randomize(params, rng)
    check_network_grads(net, params, state, x, y, "sse", labels, fd_grad, rel_error)


def test_input_gradient_through_group_batchnorm(rng, fd_grad, rel_error):
    labels = uneven_labels(rng, [3, 2, 4])
    x = rng.normal(size=(labels.size, 2))
    net = Sequential([Dense(3, bias=False), GroupBatchNorm(), Tanh(), Dense(1)])
    params, state = net.init(x, seed=1)
    params = randomize(params, rng)
    g = rng.normal(size=(labels.size, 1))          # a random upstream gradient
    out, _, cache = net.forward(params, state, x, training=True, groups=labels)
    dx, _ = net.backward(g, cache)

    def f(xv):
        return float(np.sum(net.forward(params, state, xv, training=True, groups=labels)[0] * g))

    assert rel_error(dx, fd_grad(f, x, h=1e-4)) < 1e-7


def test_inference_gradients_with_stored_group_statistics(rng, fd_grad, rel_error):
    labels = uneven_labels(rng, [4, 2, 5])
    x = rng.normal(size=(labels.size, 3))
    y = rng.normal(size=labels.size)
    net = Sequential([Dense(4, bias=False), GroupBatchNorm(), Tanh(), Dense(1)])
    params, state = net.init(x, seed=2)
    params = randomize(params, rng)
    state = train.population_statistics(net, params, state, x, groups=labels)
    check_network_grads(net, params, state, x, y, "sse", labels, fd_grad, rel_error,
                        training=False)


def test_one_group_equals_batchnorm(rng):
    x = rng.normal(size=(9, 3))
    y = rng.normal(size=9)
    gnet = Sequential([Dense(4, bias=False), GroupBatchNorm(ddof=1), ReLU(), Dense(1)])
    bnet = Sequential([Dense(4, bias=False), BatchNorm(ddof=1), ReLU(), Dense(1)])
    gp, gs = gnet.init(x, seed=3)
    bp, bs = bnet.init(x, seed=3)
    one = np.full(9, 7)
    v1, g1, s1 = train.value_and_grad(gnet, gp, gs, x, y, groups=one)
    v2, g2, s2 = train.value_and_grad(bnet, bp, bs, x, y)
    assert v1 == pytest.approx(v2, rel=1e-12)
    for a, b in zip(tree_leaves(g1), tree_leaves(g2, like=g1)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s1[1]["mean"][0], s2[1]["mean"], rtol=1e-12)
    np.testing.assert_allclose(s1[1]["pooled_var"], s2[1]["var"], rtol=1e-12)


def test_ghost_equals_labels_i_div_k(rng):
    x = rng.normal(size=(11, 2))
    ghost = GroupBatchNorm(ghost=4)
    plain = GroupBatchNorm()
    _, params, state = ghost.init(np.random.default_rng(0), 2)
    y1, _, _ = ghost.forward(params, state, x, training=True)
    # 11 rows in chunks of 4: 4, 4, 3 (a tail of >= 2 rows is kept)
    y2, _, _ = plain.forward(params, state, x, training=True, groups=np.arange(11) // 4)
    np.testing.assert_array_equal(y1, y2)
    assert not uses_groups(ghost) and uses_groups(plain)
    with pytest.raises(TypeError, match="takes no groups"):
        ghost.forward(params, state, x, training=True, groups=np.zeros(11, int))
    with pytest.raises(ValueError, match="too small"):
        GroupBatchNorm(ghost=1)


# --------------------------------------------------------------------------- within loss
def test_within_loss_network_gradients_one_way(rng, fd_grad, rel_error):
    units = uneven_labels(rng, [2, 4, 3, 5])
    x = rng.normal(size=(units.size, 3))
    y = rng.normal(size=units.size)
    net = Sequential([Dense(4, bias=False), BatchNorm(), Softplus(), Dense(1)])
    params, state = net.init(x, seed=4)
    params = randomize(params, rng)
    m = dense_projection([units])

    def oracle(p):
        out = net.forward(p, state, x, training=True)[0][:, 0]
        r = m @ (y - out)
        return float(r @ r)

    value = check_network_grads(net, params, state, x, y, "within_sse", units, fd_grad,
                                rel_error, oracle_loss=oracle)
    assert value == pytest.approx(oracle(params), rel=1e-12)
    # The output bias is a group constant: its gradient vanishes.
    _, grads, _ = train.value_and_grad(net, params, state, x, y, "within_sse", groups=units)
    assert abs(grads[3]["b"][0]) < 1e-12


def test_within_loss_two_way_unbalanced_with_group_batchnorm(rng, fd_grad, rel_error):
    """Two-way effects on an unbalanced panel; GroupBatchNorm reads the first factor."""
    units = np.repeat([1, 2, 3, 4, 5], [3, 4, 2, 4, 3])
    periods = np.concatenate([[0, 1, 2], [0, 1, 2, 3], [1, 3], [0, 1, 2, 3], [0, 2, 3]])
    x = rng.normal(size=(units.size, 3))
    y = rng.normal(size=units.size)
    net = Additive([([0], Linear()),
                    ([1, 2], Sequential([Dense(3, bias=False), GroupBatchNorm(), Tanh(),
                                         Dense(1, bias=False)]))])
    params, state = net.init(x, seed=5)
    params = randomize(params, rng)
    m = dense_projection([units, periods])

    def oracle(p):
        out = net.forward(p, state, x, training=True, groups=units)[0][:, 0]
        r = m @ (y - out)
        return float(r @ r)

    value = check_network_grads(net, params, state, x, y, "within_sse", [units, periods],
                                fd_grad, rel_error, oracle_loss=oracle, tol=1e-7)
    assert value == pytest.approx(oracle(params), rel=1e-9)


def test_within_mse_is_sse_over_n(rng):
    units = uneven_labels(rng, [3, 3, 4])
    x, y = rng.normal(size=(10, 2)), rng.normal(size=10)
    net = Sequential([Dense(1)])
    params, state = net.init(x)
    v1, g1, _ = train.value_and_grad(net, params, state, x, y, "within_sse", groups=units)
    v2, g2, _ = train.value_and_grad(net, params, state, x, y, "within_mse", groups=units)
    assert v2 == pytest.approx(v1 / 10, rel=1e-14)
    np.testing.assert_allclose(g2[0]["w"], g1[0]["w"] / 10, rtol=1e-13)
    with pytest.raises(ValueError, match="needs the group label"):
        train.value_and_grad(net, params, state, x, y, "within_sse")


# --------------------------------------------------------------------------- batches
@dataclass(frozen=True)
class _RecordGroups:
    """Identity layer that records the labels of every training batch it sees."""

    log: list
    uses_groups = True

    def init(self, rng, in_features):
        return in_features, {}, {}

    def forward(self, params, state, x, *, training, groups=None):
        if training:
            self.log.append(np.asarray(groups).copy())
        return x, state, None

    def backward(self, dy, cache):
        return dy, {}


def test_fit_uses_whole_group_mini_batches(rng):
    units = uneven_labels(rng, [2, 5, 3, 7, 4, 6, 2, 3])
    n = units.size
    x, y = rng.normal(size=(n, 2)), rng.normal(size=n)
    log = []
    net = Sequential([_RecordGroups(log), Dense(4, bias=False), GroupBatchNorm(), Tanh(),
                      Dense(1)])
    params, state = net.init(x)
    train.fit(net, params, state, x, y, loss="within_mse", groups=units, batch_size=8,
              epochs=3, progress=False, population_stats=False)
    total = dict(zip(*np.unique(units, return_counts=True)))
    assert len(log) >= 6
    epoch_rows = 0
    for batch in log:
        labels, counts = np.unique(batch, return_counts=True)
        assert all(total[k] == c for k, c in zip(labels, counts))   # whole groups only
        epoch_rows += batch.size
    assert epoch_rows == 3 * n                                       # every row once per epoch


def test_group_batches_cover_rows_once():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(12), [3, 1, 4, 2, 5, 2, 3, 1, 2, 4, 3, 2])
    for drop_last in ("merge", "keep"):
        batches = group_batches(labels, 7, rng, True, drop_last)
        rows = np.sort(np.concatenate(batches))
        np.testing.assert_array_equal(rows, np.arange(labels.size))
        assert all(b.size >= 7 for b in batches[:-1])
        for b in batches:
            for g in np.unique(labels[b]):
                assert np.sum(labels[b] == g) == np.sum(labels == g)
    assert group_batches(labels, None, rng, True, "merge") == [None]


def test_group_too_small_is_an_error_naming_it(rng):
    units = np.array([4, 4, 4, 9, 6, 6])
    x, y = rng.normal(size=(6, 2)), rng.normal(size=6)
    net = Sequential([Dense(2, bias=False), GroupBatchNorm(), Dense(1)])
    params, state = net.init(x)
    with pytest.raises(ValueError, match="group 9 has 1 row"):
        train.fit(net, params, state, x, y, groups=units, epochs=1, progress=False)
    layer = GroupBatchNorm(ddof=2)
    _, p, s = layer.init(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="group 2 has 2 row.*at least 3 rows"):
        layer.forward(p, s, x, training=True, groups=np.array([1, 1, 1, 2, 2, 1]))


def test_training_needs_integer_labels(rng):
    x = rng.normal(size=(6, 2))
    layer = GroupBatchNorm()
    _, p, s = layer.init(np.random.default_rng(0), 2)
    with pytest.raises(ValueError, match="needs the group label of every row"):
        layer.forward(p, s, x, training=True)
    with pytest.raises(TypeError, match="integer group labels"):
        layer.forward(p, s, x, training=True, groups=np.array(list("aabbcc")))


# --------------------------------------------------------------------------- state
def test_running_statistics_per_group(rng):
    layer = GroupBatchNorm(ddof=1, decay=0.9)
    _, p, s = layer.init(np.random.default_rng(0), 3)
    x1, g1 = rng.normal(size=(7, 3)), np.array([5, 5, 5, 2, 2, 2, 2])
    x2, g2 = rng.normal(size=(6, 3)) + 1.0, np.array([2, 2, 8, 8, 8, 2])
    _, s1, _ = layer.forward(p, s, x1, training=True, groups=g1)
    _, s2, _ = layer.forward(p, s1, x2, training=True, groups=g2)

    def stats(x, g, k):
        rows = x[g == k]
        return rows.mean(axis=0), rows.var(axis=0, ddof=1)

    np.testing.assert_array_equal(s2["labels"], [2, 5, 8])
    np.testing.assert_array_equal(s2["count"], [2, 1, 1])
    m1, v1 = stats(x1, g1, 2)
    m2, v2 = stats(x2, g2, 2)
    w = min(0.9, 1 / 2)                                # second update of group 2
    np.testing.assert_allclose(s2["mean"][0], w * m1 + (1 - w) * m2, rtol=1e-12)
    np.testing.assert_allclose(s2["var"][0], w * v1 + (1 - w) * v2, rtol=1e-12)
    np.testing.assert_allclose(s2["mean"][1], stats(x1, g1, 5)[0], rtol=1e-12)
    np.testing.assert_allclose(s2["var"][2], stats(x2, g2, 8)[1], rtol=1e-12)
    pooled = w * x1.mean(axis=0) + (1 - w) * x2.mean(axis=0)
    np.testing.assert_allclose(s2["pooled_mean"], pooled, rtol=1e-12)
    assert int(s2["pooled_count"]) == 2
    assert s["labels"].size == 0                       # the input state is not modified


def test_population_statistics_make_predict_equal_training_output(rng):
    units = uneven_labels(rng, [3, 4, 2, 5])
    x = rng.normal(size=(units.size, 3))
    net = Sequential([Dense(4, bias=False), GroupBatchNorm(), Tanh(), Dense(2, bias=False),
                      GroupBatchNorm(ddof=1), Dense(1)])
    params, state = net.init(x, seed=6)
    params = randomize(params, rng)
    out, _, _ = net.forward(params, state, x, training=True, groups=units)
    full = train.population_statistics(net, params, state, x, groups=units)
    chunked = train.population_statistics(net, params, state, x, groups=units, batch_size=5)
    for st in (full, chunked):
        np.testing.assert_allclose(net.predict(params, st, x, groups=units), out,
                                   rtol=1e-10, atol=1e-12)
    # rows are independent in inference: any subset gives the same rows
    np.testing.assert_allclose(net.predict(params, full, x[3:4], groups=units[3:4]),
                               out[3:4], rtol=1e-10)


def test_unseen_groups_warn_and_use_pooled_statistics(rng):
    units = np.repeat([1, 2, 3], 4)
    x = rng.normal(size=(12, 2))
    net = Sequential([GroupBatchNorm()])
    params, state = net.init(x)
    state = train.population_statistics(net, params, state, x, groups=units)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net.predict(params, state, x, groups=units)            # known groups: no warning
        no_labels = net.predict(params, state, x)                # pooled, by request
    with pytest.warns(UnseenGroupWarning, match="pooled"):
        new = net.predict(params, state, x[:3], groups=np.array([1, 99, 99]))
    np.testing.assert_allclose(new[1:], no_labels[1:3], rtol=1e-14)
    expected = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0) + 1e-5)
    np.testing.assert_allclose(no_labels, expected, rtol=1e-10)


def test_groups_are_ignored_by_plain_layers(rng):
    x, y = rng.normal(size=(10, 3)), rng.normal(size=10)
    net = Sequential([Dense(4, bias=False), BatchNorm(), ReLU(), Dense(1)])
    params, state = net.init(x)
    a = train.value_and_grad(net, params, state, x, y, groups=np.arange(10) // 5)
    b = train.value_and_grad(net, params, state, x, y)
    assert a[0] == b[0]
    assert not uses_groups(net)


# --------------------------------------------------------------------------- linear part
def test_linear_part_is_not_penalized_and_builder_layout(rng):
    x, y = rng.normal(size=(20, 4)), rng.normal(size=20)
    net = partially_linear([0, 1], [2, 3], hidden=(5,), group_batchnorm=True)
    assert [type(m).__name__ for _, m in net.branches] == ["Linear", "Sequential"]
    assert uses_groups(net)
    params, state = net.init(x)
    assert np.all(params[0]["coef"] == 0)
    units = np.arange(20) // 4
    _, g0, _ = train.value_and_grad(net, params, state, x, y, groups=units)
    _, g1, _ = train.value_and_grad(net, params, state, x, y, groups=units, l2=3.0)
    np.testing.assert_array_equal(g0[0]["coef"], g1[0]["coef"])
    np.testing.assert_allclose(g1[1][0]["w"] - g0[1][0]["w"], 3.0 * params[1][0]["w"])
    with pytest.raises(ValueError, match="linear_columns or network_columns"):
        partially_linear([], [])


def test_save_load_round_trip_with_group_batchnorm(rng, tmp_path):
    units = np.repeat([3, 1, 2], [4, 5, 3])
    x, y = rng.normal(size=(12, 3)), rng.normal(size=12)
    net = partially_linear([0], [1, 2], hidden=(4,), group_batchnorm=True)
    params, state = net.init(x)
    res = train.fit_lbfgs(net, params, state, x, y, loss="within_mse", groups=units,
                          max_iter=20)
    path = bnmat.io.save(tmp_path / "m.npz", net, res.params, res.state)
    saved = bnmat.io.load(path)
    assert saved.net == net
    np.testing.assert_array_equal(saved.state[1][1]["labels"], [1, 2, 3])
    np.testing.assert_array_equal(saved.net.predict(saved.params, saved.state, x, groups=units),
                                  net.predict(res.params, res.state, x, groups=units))
    ghost = Sequential([Dense(2, bias=False), GroupBatchNorm(ghost=3, ddof=1)])
    gp, gs = ghost.init(x)
    bnmat.io.save(tmp_path / "g.npz", ghost, gp, gs)
    assert bnmat.io.load(tmp_path / "g.npz").net == ghost


def test_fit_with_groups_validation_holds_out_whole_groups(rng):
    units = np.repeat(np.arange(10), 4)
    x = rng.normal(size=(40, 2))
    y = x[:, 0] + rng.normal(size=10)[units]
    net = Sequential([Dense(4, bias=False), GroupBatchNorm(), Tanh(), Dense(1)])
    params, state = net.init(x)
    with pytest.warns(UnseenGroupWarning) as record:
        res = train.fit(net, params, state, x, y, loss="within_mse", groups=units,
                        validation_fraction=0.2, epochs=4, progress=False)
    assert len(record) == 1                           # said once, not every epoch
    assert len(res.history["val_loss"]) == 4
    assert res.state[1]["labels"].size == 8           # two of ten units held out
    with pytest.raises(ValueError, match="groups_val"):
        train.fit(net, params, state, x, y, groups=units, validation_data=(x, y),
                  epochs=1, progress=False)
