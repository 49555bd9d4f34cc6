"""Tests of bnmat.optim: each optimizer against its update equation written out here
step by step, purity (inputs never change), nested trees, dtypes, schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bnmat import optim
from bnmat.optim import tree_leaves, tree_map


def make_tree(rng, dtype=np.float64):
    """A parameter tree shaped like a network's: list of dicts, one nested list."""
    return [
        {"w": rng.normal(size=(3, 2)).astype(dtype), "b": rng.normal(size=2).astype(dtype)},
        {},
        [{"gamma": rng.normal(size=4).astype(dtype)}, {"w": rng.normal(size=(2, 1)).astype(dtype)}],
    ]


def leaves(tree):
    return [np.array(a, copy=True) for a in tree_leaves(tree)]


def run(opt, params, grad_seq):
    """Apply ``opt`` to a sequence of gradient trees; return every iterate."""
    state = opt.init(params)
    out = []
    for g in grad_seq:
        params, state = opt.update(g, state, params)
        out.append(params)
    return out, state


@pytest.fixture
def problem(rng):
    params = make_tree(rng)
    grads = [make_tree(rng) for _ in range(4)]
    return params, grads


def test_sgd_plain(problem):
    params, grads = problem
    iterates, state = run(optim.sgd(0.1), params, grads)
    theta = leaves(params)
    for it, g in zip(iterates, grads):
        theta = [t - 0.1 * gi for t, gi in zip(theta, leaves(g))]
        for a, b in zip(tree_leaves(it), theta):
            np.testing.assert_allclose(a, b, rtol=1e-15, atol=1e-15)
    assert state.step == 4 and state.velocity is None


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_and_weight_decay(problem, nesterov):
    params, grads = problem
    lr, mu, lam = 0.05, 0.9, 0.01
    iterates, _ = run(optim.sgd(lr, momentum=mu, nesterov=nesterov, weight_decay=lam),
                      params, grads)
    theta = leaves(params)
    vel = [np.zeros_like(t) for t in theta]
    for it, g in zip(iterates, grads):
        new_theta = []
        for k, (t, gi) in enumerate(zip(theta, leaves(g))):
            gi = gi + lam * t
            vel[k] = mu * vel[k] + gi
            d = gi + mu * vel[k] if nesterov else vel[k]
            new_theta.append(t - lr * d)
        theta = new_theta
        for a, b in zip(tree_leaves(it), theta):
            np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adam(problem, weight_decay):
    params, grads = problem
    lr, b1, b2, eps = 0.01, 0.8, 0.95, 1e-6
    iterates, state = run(optim.adam(lr, b1, b2, eps, weight_decay), params, grads)
    theta = leaves(params)
    m = [np.zeros_like(t) for t in theta]
    v = [np.zeros_like(t) for t in theta]
    for t_step, (it, g) in enumerate(zip(iterates, grads), start=1):
        new_theta = []
        for k, (t, gi) in enumerate(zip(theta, leaves(g))):
            m[k] = b1 * m[k] + (1 - b1) * gi
            v[k] = b2 * v[k] + (1 - b2) * gi ** 2
            m_hat = m[k] / (1 - b1 ** t_step)
            v_hat = v[k] / (1 - b2 ** t_step)
            new_theta.append(t - lr * (m_hat / (np.sqrt(v_hat) + eps) + weight_decay * t))
        theta = new_theta
        for a, b in zip(tree_leaves(it), theta):
            np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    assert state.step == 4


def test_adam_first_step_is_learning_rate_times_sign(rng):
    """With m̂ = g and v̂ = g² after one step, the step is η g/(|g| + ε) ≈ η sign(g)."""
    params = {"w": rng.normal(size=(4, 3))}
    g = {"w": rng.normal(size=(4, 3)) * 100}
    new, _ = optim.adam(0.01, eps=1e-12).update(g, optim.adam(0.01).init(params), params)
    np.testing.assert_allclose(params["w"] - new["w"], 0.01 * np.sign(g["w"]), rtol=1e-9)


@pytest.mark.parametrize("make", [
    lambda: optim.sgd(0.1),
    lambda: optim.sgd(0.1, momentum=0.5, nesterov=True, weight_decay=0.1),
    lambda: optim.adam(0.1, weight_decay=0.1),
])
def test_updates_are_pure(problem, make):
    params, grads = problem
    opt = make()
    state = opt.init(params)
    before_p, before_g = leaves(params), leaves(grads[0])
    before_s = leaves([x for x in state if not isinstance(x, int)])
    new_params, new_state = opt.update(grads[0], state, params)
    new_params2, _ = opt.update(grads[0], state, params)   # same inputs, same result
    for a, b in zip(tree_leaves(params), before_p):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(tree_leaves(grads[0]), before_g):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(leaves([x for x in state if not isinstance(x, int)]), before_s):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(tree_leaves(new_params), tree_leaves(new_params2)):
        np.testing.assert_array_equal(a, b)
    assert new_state.step == state.step + 1
    assert isinstance(new_params, list) and new_params[1] == {}
    assert set(new_params[0]) == {"w", "b"}


@pytest.mark.parametrize("make", [lambda: optim.sgd(0.1, momentum=0.9), lambda: optim.adam(0.1)])
def test_float32_stays_float32(rng, make):
    params = make_tree(rng, np.float32)
    opt = make()
    new, state = opt.update(make_tree(rng, np.float32), opt.init(params), params)
    assert all(a.dtype == np.float32 for a in tree_leaves([new, state[1:]]))


def test_grads_with_other_key_order_are_matched_by_key(rng):
    params = {"w": np.ones(2), "b": np.zeros(3)}
    grads = {"b": np.ones(3), "w": np.full(2, 2.0)}
    new, _ = optim.sgd(1.0).update(grads, optim.sgd(1.0).init(params), params)
    np.testing.assert_array_equal(new["w"], -np.ones(2))
    np.testing.assert_array_equal(new["b"], -np.ones(3))


def test_structure_mismatch_is_an_error():
    message = r"tree structures differ at 0: a dict with keys \[.w.\] versus"
    with pytest.raises(ValueError, match=message):
        tree_map(lambda a, b: a + b, [{"w": np.ones(2)}], [{"b": np.ones(2)}])


def test_schedules():
    exp = optim.exponential_decay(0.1, 0.5, 10)
    assert exp(0) == pytest.approx(0.1) and exp(10) == pytest.approx(0.05)
    assert exp(5) == pytest.approx(0.1 * 0.5 ** 0.5)
    stair = optim.exponential_decay(0.1, 0.5, 10, staircase=True)
    assert stair(9) == pytest.approx(0.1) and stair(10) == pytest.approx(0.05)
    cos = optim.cosine_decay(1.0, 100, alpha=0.1)
    assert cos(0) == pytest.approx(1.0) and cos(100) == pytest.approx(0.1)
    assert cos(50) == pytest.approx(0.9 * 0.5 + 0.1) and cos(1000) == pytest.approx(0.1)
    assert optim.constant_schedule(0.3)(123) == 0.3


def test_schedule_drives_the_step(rng):
    params = {"w": rng.normal(size=3)}
    g = {"w": np.ones(3)}
    opt = optim.sgd(lambda step: 0.1 / (1 + step))
    state = opt.init(params)
    p = params
    for step in range(3):
        p, state = opt.update(g, state, p)
    expected = params["w"] - sum(0.1 / (1 + k) for k in range(3))
    np.testing.assert_allclose(p["w"], expected, rtol=1e-15)


@pytest.mark.parametrize("make, match", [
    (lambda: optim.sgd(-0.1), "learning_rate"),
    (lambda: optim.sgd(0.0), "learning_rate"),
    (lambda: optim.sgd(math.nan), "learning_rate"),
    (lambda: optim.sgd(0.1, momentum=1.0), "momentum"),
    (lambda: optim.sgd(0.1, nesterov=True), "nesterov"),
    (lambda: optim.sgd(0.1, weight_decay=-1), "weight_decay"),
    (lambda: optim.adam(b1=1.0), "b1"),
    (lambda: optim.adam(eps=0.0), "eps"),
    (lambda: optim.exponential_decay(0.1, 1.5, 10), "decay_rate"),
    (lambda: optim.cosine_decay(0.1, 0), "decay_steps"),
])
def test_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_schedule_value_is_reported(rng):
    opt = optim.sgd(lambda step: float("nan"))
    params = {"w": np.ones(2)}
    with pytest.raises(ValueError, match="schedule gave nan at step 0"):
        opt.update(params, opt.init(params), params)
