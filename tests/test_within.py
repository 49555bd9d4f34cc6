"""The within (fixed-effects) loss, demeaning and effect recovery, against dense
least-squares oracles (the indicator matrices are formed here, in the tests only)
and float64 finite differences."""

import numpy as np
from _oracles import central_difference_grad
import pytest
from hypothesis import given, settings, strategies as st

from bnmat.ops.within import within_sse_backward, within_sse_forward
from bnmat.panel import ConvergenceWarning, demean, group_index, recover_effects, segment_sum


def fd_grad(f, x):
    """Fourth-order central differences of a scalar function (float64), step 1e-4."""
    return central_difference_grad(f, x, h=1e-4)


def rel_err(a, b):
    return np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-2)


def dummies(*label_arrays):
    """Dense [D1 D2 …] (oracle only)."""
    return np.hstack([(lab[:, None] == np.unique(lab)[None, :]).astype(float)
                      for lab in label_arrays])


def lstsq_residual(a, *label_arrays):
    d = dummies(*label_arrays)
    coef = np.linalg.lstsq(d, a, rcond=None)[0]
    return a - d @ coef


def unbalanced_panel(n_units, n_periods, keep, seed):
    rng = np.random.default_rng(seed)
    unit = np.repeat(np.arange(n_units), n_periods)
    period = np.tile(np.arange(n_periods), n_units)
    mask = rng.random(unit.size) < keep
    mask[::n_periods] = True            # every unit keeps its first period
    unit, period = unit[mask], period[mask]
    perm = rng.permutation(unit.size)   # rows in no particular order
    return unit[perm] * 3 + 100, period[perm] + 1990


# ---------------------------------------------------------------- one-way

def test_one_way_loss_and_gradient():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat([4, -2, 9, 11], [3, 1, 5, 2]))   # includes a singleton
    y, y_pred = rng.normal(size=12 - 1), rng.normal(size=11)
    loss, cache = within_sse_forward(y_pred, y, labels)
    oracle = lstsq_residual(y - y_pred, labels)
    np.testing.assert_allclose(float(loss), np.sum(oracle**2), rtol=1e-13)
    assert cache.n_iter == 1
    dloss = 0.7
    grad = within_sse_backward(dloss, cache)
    np.testing.assert_allclose(grad, -2 * dloss * oracle, rtol=1e-12, atol=1e-14)
    fd = fd_grad(lambda v: dloss * float(within_sse_forward(v, y, labels)[0]), y_pred)
    assert rel_err(grad, fd) < 1e-8
    # the singleton's residual is absorbed by its own effect
    assert grad[labels == -2] == pytest.approx(0.0, abs=1e-15)


def test_one_group_is_sse_around_a_free_intercept():
    rng = np.random.default_rng(1)
    y, y_pred = rng.normal(size=9) + 3.0, rng.normal(size=9)
    loss, cache = within_sse_forward(y_pred, y, np.zeros(9, dtype=int))
    ones = np.ones((9, 1))
    c = np.linalg.lstsq(ones, y - y_pred, rcond=None)[0]        # argmin_c Σ(y − ŷ − c)²
    np.testing.assert_allclose(float(loss), np.sum((y - y_pred - c) ** 2), rtol=1e-13)
    fd = fd_grad(lambda v: float(within_sse_forward(v, y, np.zeros(9, dtype=int))[0]), y_pred)
    assert rel_err(within_sse_backward(1.0, cache), fd) < 1e-8


def test_multi_output_and_float32():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1, 2], 4)
    y, y_pred = rng.normal(size=(12, 2)), rng.normal(size=(12, 2))
    loss, cache = within_sse_forward(y_pred, y, labels)
    np.testing.assert_allclose(float(loss), np.sum(lstsq_residual(y - y_pred, labels) ** 2),
                               rtol=1e-13)
    loss32, cache32 = within_sse_forward(y_pred.astype(np.float32), y.astype(np.float32), labels)
    assert loss32.dtype == np.float32 and cache32.residual.dtype == np.float32
    assert within_sse_backward(1.0, cache32).dtype == np.float32
    np.testing.assert_allclose(float(loss32), float(loss), rtol=1e-5)


# ---------------------------------------------------------------- two-way

@pytest.mark.parametrize("n_units,n_periods,keep", [(6, 4, 0.7), (40, 8, 0.5)])
def test_two_way_demeaning_matches_dense_projection(n_units, n_periods, keep):
    unit, period = unbalanced_panel(n_units, n_periods, keep, seed=3)
    rng = np.random.default_rng(4)
    a = rng.normal(size=unit.size) * 5
    a_tilde, n_iter = demean(a, [unit, period], tol=1e-10)
    assert n_iter > 1
    oracle = lstsq_residual(a, unit, period)
    np.testing.assert_allclose(a_tilde, oracle, atol=1e-8 * np.abs(a).max())
    # the stated stopping rule: every group mean of the result is at most (F−1)·tol·max|a|
    for lab in (unit, period):
        index = group_index(lab)
        means = segment_sum(a_tilde, index) / index.counts
        assert np.max(np.abs(means)) <= 1e-10 * np.abs(a).max() * (1 + 1e-9)
    # (N, F) array input and a 2-D right-hand side give the same projection
    a2 = np.column_stack([a, -2 * a])
    a2_tilde, _ = demean(a2, np.column_stack([unit, period]), tol=1e-10)
    np.testing.assert_allclose(a2_tilde[:, 1], -2 * a_tilde, atol=1e-8 * np.abs(a).max())


def test_two_way_loss_gradient():
    unit, period = unbalanced_panel(5, 4, 0.7, seed=5)
    rng = np.random.default_rng(6)
    y, y_pred = rng.normal(size=unit.size), rng.normal(size=unit.size)
    groups = (unit, period)
    loss, cache = within_sse_forward(y_pred, y, groups, tol=1e-14)
    oracle = lstsq_residual(y - y_pred, unit, period)
    np.testing.assert_allclose(float(loss), np.sum(oracle**2), rtol=1e-10)
    grad = within_sse_backward(1.0, cache)
    np.testing.assert_allclose(grad, -2 * oracle, atol=1e-10)
    fd = fd_grad(lambda v: float(within_sse_forward(v, y, groups, tol=1e-14)[0]), y_pred)
    assert rel_err(grad, fd) < 1e-8
    # Dᵀ ∂R/∂ŷ = 0 for both factors: group constants in ŷ do not change R
    for lab in groups:
        assert np.max(np.abs(segment_sum(grad, group_index(lab)))) < 1e-10


@settings(max_examples=20, deadline=None)
@given(n_units=st.integers(2, 8), n_periods=st.integers(2, 5), keep=st.floats(0.4, 1.0),
       seed=st.integers(0, 2**16))
def test_random_unbalanced_panels(n_units, n_periods, keep, seed):
    unit, period = unbalanced_panel(n_units, n_periods, keep, seed)
    rng = np.random.default_rng(seed)
    y, y_pred = rng.normal(size=unit.size), rng.normal(size=unit.size)
    loss, cache = within_sse_forward(y_pred, y, [unit, period])
    oracle = lstsq_residual(y - y_pred, unit, period)
    np.testing.assert_allclose(within_sse_backward(1.0, cache), -2 * oracle,
                               atol=1e-8 * max(1, np.abs(y - y_pred).max()))


def test_no_convergence_warns():
    unit, period = unbalanced_panel(30, 6, 0.5, seed=7)
    a = np.random.default_rng(8).normal(size=unit.size)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        demean(a, [unit, period], max_iter=2)


# ---------------------------------------------------------------- effects

def test_recover_one_way_effects():
    rng = np.random.default_rng(9)
    labels = rng.permutation(np.repeat(["a", "b", "c"], [4, 2, 5]))
    r = rng.normal(size=11)
    effects = recover_effects(r, labels)
    d = dummies(labels)
    coef = np.linalg.lstsq(d, r, rcond=None)[0]
    assert list(effects) == ["a", "b", "c"]
    np.testing.assert_allclose([effects[k] for k in "abc"], coef, rtol=1e-13)
    assert all(isinstance(v, float) for v in effects.values())
    two_col = recover_effects(np.column_stack([r, 2 * r]), labels)
    np.testing.assert_allclose(two_col["b"], [effects["b"], 2 * effects["b"]], rtol=1e-13)


def test_recover_two_way_effects():
    unit, period = unbalanced_panel(8, 5, 0.7, seed=10)
    rng = np.random.default_rng(11)
    alpha = dict(zip(np.unique(unit).tolist(), rng.normal(size=8) * 3))
    tau = dict(zip(np.unique(period).tolist(), rng.normal(size=5)))
    signal = np.array([alpha[u] + tau[t] for u, t in zip(unit.tolist(), period.tolist())])
    noise = rng.normal(size=unit.size) * 0.1
    unit_fx, period_fx = recover_effects(signal + noise, [unit, period])
    fitted = np.array([unit_fx[u] + period_fx[t] for u, t in zip(unit.tolist(), period.tolist())])
    d = dummies(unit, period)
    oracle_fit = d @ np.linalg.lstsq(d, signal + noise, rcond=None)[0]
    np.testing.assert_allclose(fitted, oracle_fit, atol=1e-8)
    # the stated normalization: count-weighted period effects have mean zero
    counts = {t: np.sum(period == t) for t in period_fx}
    assert abs(sum(counts[t] * v for t, v in period_fx.items())) < 1e-8
    # without noise the effects are recovered up to the constant of the normalization
    unit_fx, period_fx = recover_effects(signal, (unit, period))
    shift = np.array([unit_fx[u] - alpha[u] for u in alpha])
    np.testing.assert_allclose(shift, shift[0], atol=1e-8)
    np.testing.assert_allclose([period_fx[t] - tau[t] for t in tau], -shift[0], atol=1e-8)


def test_recover_two_way_effects_disconnected_panel():
    # two sets of units that share no period: one constant per component
    unit = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3])
    period = np.array([0, 1, 0, 1, 5, 6, 5, 6, 7])
    r = np.random.default_rng(12).normal(size=9)
    unit_fx, period_fx = recover_effects(r, [unit, period])
    fitted = np.array([unit_fx[u] + period_fx[t] for u, t in zip(unit, period)])
    d = dummies(unit, period)
    np.testing.assert_allclose(fitted, d @ np.linalg.lstsq(d, r, rcond=None)[0], atol=1e-8)
    for periods in ([0, 1], [5, 6, 7]):
        w = [np.sum(period == t) for t in periods]
        assert abs(np.dot(w, [period_fx[t] for t in periods])) < 1e-8


# ---------------------------------------------------------------- errors and reuse

def test_errors_and_prebuilt_index():
    rng = np.random.default_rng(13)
    labels = np.repeat([1, 2], 3)
    y, y_pred = rng.normal(size=6), rng.normal(size=6)
    with pytest.raises(ValueError, match="NaN"):
        within_sse_forward(np.where(np.arange(6) == 2, np.nan, y_pred), y, labels)
    with pytest.raises(ValueError, match="same shape"):
        within_sse_forward(y_pred[:5], y, labels)
    with pytest.raises(ValueError, match="5 labels but the data has 6 rows"):
        within_sse_forward(y_pred, y, labels[:5])
    with pytest.raises(TypeError, match="integer"):
        within_sse_forward(y_pred, y, labels.astype(float))
    with pytest.raises(ValueError, match="one or two factors"):
        recover_effects(y, [labels, labels, labels])
    with pytest.raises(ValueError, match="tol"):
        demean(y, [labels, labels], tol=0)
    index = group_index(labels)
    a, _ = within_sse_forward(y_pred, y, labels)
    b, _ = within_sse_forward(y_pred, y, index)
    assert float(a) == float(b)
    y_copy = y.copy()
    demean(y, [labels, np.arange(6) % 2])
    np.testing.assert_array_equal(y, y_copy)
