"""The op contract of :mod:`bnmat.ops`, driven by one table.

Every row of :data:`CASES` is a forward/backward pair with an input generator
and keyword arguments; the tests run every row, most of them on every available
array namespace (the ``backend`` fixture from conftest.py). The gradient oracles are independent of
bnmat: float64 finite differences of the scalar ``⟨G, forward(...)⟩`` with a
random G, and ``torch.autograd`` applied to a forward written here in torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnmat import ops

FD_RTOL = 1e-8      # backward vs finite differences, float64
TORCH_RTOL = 1e-10  # backward vs torch.autograd, float64 (both exact up to rounding)


# ---------------------------------------------------------------------------
# input generators: rng -> dict of float64 NumPy inputs, in call order


def _dense_inputs(bias):
    def make(rng):
        args = {"x": rng.normal(size=(7, 4)), "w": rng.normal(size=(4, 3))}
        if bias:
            args["b"] = rng.normal(size=3)
        return args

    return make


def _bn_inputs(rng):
    # columns on different scales and offsets, gamma of both signs
    n, p = 9, 4
    x = rng.normal(size=(n, p)) * np.array([1.0, 0.3, 2.5, 1.0]) + np.array([0.0, 3.0, -1.0, 10.0])
    gamma = rng.normal(size=p) + np.array([1.0, -1.0, 0.5, 1.5])
    return {"x": x, "gamma": gamma, "beta": rng.normal(size=p)}


def _bn_inference_inputs(rng):
    n, p = 6, 3
    return {
        "x": rng.normal(size=(n, p)) * 2.0 + 1.0,
        "gamma": rng.normal(size=p),
        "beta": rng.normal(size=p),
        "mean": rng.normal(size=p),
        "var": rng.uniform(0.5, 2.0, size=p),
    }


def _away_from_zero(rng):
    # kinks of relu / leaky_relu sit at 0: keep every entry at least 0.1 away
    size = (6, 4)
    return {"x": rng.choice([-1.0, 1.0], size=size) * rng.uniform(0.1, 2.0, size=size)}


def _smooth_inputs(rng):
    return {"x": rng.normal(size=(6, 4)) * 2.0}


def _regression_inputs(shape):
    def make(rng):
        return {"y_pred": rng.normal(size=shape), "y": rng.normal(size=shape)}

    return make


def _one_hot_inputs(rng):
    n, k = 7, 4
    y = np.zeros((n, k))
    y[np.arange(n), rng.integers(0, k, size=n)] = 1.0
    return {"y_pred": rng.normal(size=(n, k)) * 2.0, "y": y}


def _soft_label_inputs(rng):
    # non-negative targets whose rows do not sum to one (weighted labels)
    n, k = 6, 3
    return {"y_pred": rng.normal(size=(n, k)) * 2.0, "y": rng.uniform(0.0, 1.5, size=(n, k))}


# ---------------------------------------------------------------------------
# the same forwards, written independently in torch (for the autograd oracle)


def _t_dense(t, x, w, b=None):
    return x @ w if b is None else x @ w + b


def _t_batchnorm(t, x, gamma, beta, eps, ddof):
    if ddof == 0 and eps > 0:  # torch refuses eps = 0 in training mode
        return t.nn.functional.batch_norm(x, None, None, gamma, beta, training=True, eps=eps)
    mu = t.mean(x, dim=0)
    var = t.var(x, dim=0, correction=ddof)
    return (x - mu) / t.sqrt(var + eps) * gamma + beta


def _t_batchnorm_inference(t, x, gamma, beta, mean, var, eps):
    return t.nn.functional.batch_norm(x, mean, var, gamma, beta, training=False, eps=eps)


def _t_ce(t, y_pred, y):
    return t.nn.functional.cross_entropy(y_pred, y)


# ---------------------------------------------------------------------------
# the table


@dataclass(frozen=True)
class OpCase:
    """One forward/backward pair under test.

    ``make(rng)`` returns the positional inputs (float64 NumPy) by name, ``wrt``
    names the differentiable ones in the order of the backward's output, and
    ``fields`` are the NamedTuple field names of that output (None when the
    backward returns a single array).
    """

    id: str
    forward: Callable
    backward: Callable
    make: Callable
    wrt: tuple
    fields: Optional[tuple]
    torch_forward: Callable
    kwargs: dict = field(default_factory=dict)
    is_loss: bool = False


def _bn_case(ddof, eps):
    return OpCase(
        f"batchnorm-ddof{ddof}-eps{eps:g}", ops.batchnorm_forward, ops.batchnorm_backward,
        _bn_inputs, ("x", "gamma", "beta"), ("dx", "dgamma", "dbeta"),
        _t_batchnorm, {"eps": eps, "ddof": ddof},
    )


def _activation_case(name, make, torch_forward, **kwargs):
    fwd = getattr(ops, f"{name}_forward")
    bwd = getattr(ops, f"{name}_backward")
    label = name + "".join(f"-{k}{v}" for k, v in kwargs.items())
    return OpCase(label, fwd, bwd, make, ("x",), None, torch_forward, kwargs)


def _loss_case(name, make, torch_forward, label):
    fwd = getattr(ops, f"{name}_forward")
    bwd = getattr(ops, f"{name}_backward")
    return OpCase(label, fwd, bwd, make, ("y_pred",), None, torch_forward, is_loss=True)


CASES = [
    OpCase("dense-bias", ops.dense_forward, ops.dense_backward, _dense_inputs(True),
           ("x", "w", "b"), ("dx", "dw", "db"), _t_dense),
    OpCase("dense-nobias", ops.dense_forward, ops.dense_backward, _dense_inputs(False),
           ("x", "w"), ("dx", "dw", "db"), _t_dense),
    *[_bn_case(ddof, eps) for ddof in (0, 1) for eps in (0.0, 1e-5, 1e-2)],
    OpCase("batchnorm_inference", ops.batchnorm_inference_forward,
           ops.batchnorm_inference_backward, _bn_inference_inputs, ("x", "gamma", "beta"),
           ("dx", "dgamma", "dbeta"), _t_batchnorm_inference, {"eps": 1e-3}),
    _activation_case("relu", _away_from_zero, lambda t, x: t.relu(x)),
    _activation_case("leaky_relu", _away_from_zero,
                     lambda t, x: t.nn.functional.leaky_relu(x, 0.01)),
    _activation_case("leaky_relu", _away_from_zero,
                     lambda t, x, negative_slope: t.nn.functional.leaky_relu(x, negative_slope),
                     negative_slope=0.3),
    _activation_case("tanh", _smooth_inputs, lambda t, x: t.tanh(x)),
    _activation_case("sigmoid", _smooth_inputs, lambda t, x: t.sigmoid(x)),
    _activation_case("softplus", _smooth_inputs, lambda t, x: t.nn.functional.softplus(x)),
    _activation_case("identity", _smooth_inputs, lambda t, x: x * 1.0),
    _loss_case("sse", _regression_inputs((8,)),
               lambda t, y_pred, y: t.sum((y_pred - y) ** 2), "sse-1d"),
    _loss_case("sse", _regression_inputs((8, 3)),
               lambda t, y_pred, y: t.sum((y_pred - y) ** 2), "sse-2d"),
    _loss_case("mse", _regression_inputs((8,)),
               lambda t, y_pred, y: t.nn.functional.mse_loss(y_pred, y), "mse-1d"),
    _loss_case("mse", _regression_inputs((8, 3)),
               lambda t, y_pred, y: t.nn.functional.mse_loss(y_pred, y), "mse-2d"),
    _loss_case("softmax_cross_entropy", _one_hot_inputs, _t_ce, "softmax_ce-onehot"),
    _loss_case("softmax_cross_entropy", _soft_label_inputs, _t_ce, "softmax_ce-soft"),
]

case_params = pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
BN_CASES = [c for c in CASES if c.forward is ops.batchnorm_forward]


# ---------------------------------------------------------------------------
# helpers


def _seed(case):
    # a different but fixed stream per row of the table
    return sum(map(ord, case.id)) * 7919


def _setup(case, seed_offset=0):
    """Inputs, the random upstream gradient G, in float64 NumPy."""
    rng = np.random.default_rng(_seed(case) + seed_offset)
    args = case.make(rng)
    out, _ = case.forward(*args.values(), **case.kwargs)
    if case.is_loss:
        upstream = float(rng.uniform(0.5, 2.0)) * float(rng.choice([-1.0, 1.0]))
    else:
        upstream = rng.normal(size=np.shape(out))
    return args, upstream


def _run(case, backend, args, upstream, dtype=None):
    """Forward and backward on ``backend``; returns (out, cache, grads by name)."""
    inputs = [backend.asarray(a, dtype=dtype) for a in args.values()]
    out, cache = case.forward(*inputs, **case.kwargs)
    dout = upstream if case.is_loss else backend.asarray(upstream, dtype=dtype)
    grads = case.backward(dout, cache)
    return out, cache, grads


class _NumpyBackend:
    """Minimal NumPy stand-in for :func:`_run` in tests without the fixture."""

    @staticmethod
    def asarray(a, dtype=None):
        return None if a is None else np.array(a, dtype=dtype)


_NUMPY = _NumpyBackend()


def _by_name(case, grads):
    """Map each differentiable input's name to its gradient."""
    if case.fields is None:
        return {case.wrt[0]: grads}
    return dict(zip(case.wrt, grads))


def _fd_gradients(case, backend, args, upstream, fd_grad):
    """⟨G, forward⟩ differentiated by the conftest finite-difference helper."""
    expected = {}
    for name in case.wrt:
        def scalar(v, name=name):
            a = dict(args)
            a[name] = v
            out, _ = case.forward(*(backend.asarray(t) for t in a.values()), **case.kwargs)
            return float(np.sum(np.asarray(upstream) * backend.to_numpy(out)))

        expected[name] = fd_grad(scalar, args[name], h=1e-3)
    return expected


# ---------------------------------------------------------------------------
# (a) backward vs finite differences, every namespace


@case_params
def test_backward_matches_finite_differences(case, backend, fd_grad, rel_error):
    args, upstream = _setup(case)
    _, _, grads = _run(case, backend, args, upstream)
    expected = _fd_gradients(case, backend, args, upstream, fd_grad)
    for name, got in _by_name(case, grads).items():
        err = rel_error(backend.to_numpy(got), expected[name])
        assert err <= FD_RTOL, f"{case.id}: d{name} relative error {err:.2e} on {backend.name}"


# ---------------------------------------------------------------------------
# (b) against torch.autograd in float64, with the forward written in torch


@case_params
def test_backward_matches_torch_autograd(case, backend, rel_error):
    torch = pytest.importorskip("torch")
    args, upstream = _setup(case, seed_offset=1)
    tensors = {k: torch.tensor(v, dtype=torch.float64, requires_grad=k in case.wrt)
               for k, v in args.items()}
    t_out = case.torch_forward(torch, **tensors, **case.kwargs)
    t_scalar = torch.sum(torch.as_tensor(upstream, dtype=torch.float64) * t_out)
    t_grads = torch.autograd.grad(t_scalar, [tensors[k] for k in case.wrt])

    out, _, grads = _run(case, backend, args, upstream)
    assert rel_error(backend.to_numpy(out), t_out.detach().numpy()) <= TORCH_RTOL
    for (name, got), want in zip(_by_name(case, grads).items(), t_grads):
        err = rel_error(backend.to_numpy(got), want.numpy())
        assert err <= TORCH_RTOL, f"{case.id}: d{name} vs torch {err:.2e} on {backend.name}"


# ---------------------------------------------------------------------------
# (c) dtype and namespace preserved


@case_params
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dtype_and_namespace_preserved(case, backend, dtype):
    args, upstream = _setup(case)
    out, _, grads = _run(case, backend, args, upstream, dtype=dtype)
    assert backend.owns(out), f"{case.id} returned {type(out)} on {backend.name}"
    assert backend.dtype_name(out) == dtype
    if case.is_loss:
        assert out.ndim == 0
    else:
        assert tuple(out.shape) == tuple(np.shape(upstream))
    for name, g in _by_name(case, grads).items():
        if g is None:
            continue
        assert backend.owns(g), f"{case.id}: d{name} is {type(g)} on {backend.name}"
        assert backend.dtype_name(g) == dtype, f"{case.id}: d{name} is {g.dtype}"
        assert tuple(g.shape) == np.shape(args[name])


def test_batchnorm_cache_statistics_keep_dtype(backend):
    x = np.random.default_rng(3).normal(size=(10, 3))
    for dtype in ("float32", "float64"):
        _, cache = ops.batchnorm_forward(
            backend.asarray(x, dtype), backend.asarray(np.ones(3), dtype),
            backend.asarray(np.zeros(3), dtype))
        for stat in (cache.mean, cache.var):
            assert backend.owns(stat) and backend.dtype_name(stat) == dtype


# ---------------------------------------------------------------------------
# (d) inputs never mutated; read-only NumPy inputs work


@case_params
def test_inputs_not_mutated(case, backend):
    args, upstream = _setup(case)
    inputs = [backend.asarray(a) for a in args.values()]
    dout = upstream if case.is_loss else backend.asarray(upstream)
    before = [backend.to_numpy(a) for a in inputs]
    dout_before = upstream if case.is_loss else backend.to_numpy(dout)

    out, cache = case.forward(*inputs, **case.kwargs)
    case.backward(dout, cache)
    case.backward(dout, cache)  # a second backward reads the same cache

    for name, a, b in zip(args, inputs, before):
        np.testing.assert_array_equal(backend.to_numpy(a), b, err_msg=f"{case.id} wrote {name}")
    if not case.is_loss:
        np.testing.assert_array_equal(backend.to_numpy(dout), dout_before)


@case_params
def test_read_only_numpy_inputs(case):
    args, upstream = _setup(case)
    frozen = {}
    for name, a in args.items():
        a = a.copy()
        a.flags.writeable = False
        frozen[name] = a
    g = upstream if case.is_loss else np.array(upstream)
    if not case.is_loss:
        g.flags.writeable = False
    out, cache = case.forward(*frozen.values(), **case.kwargs)
    grads = case.backward(g, cache)
    ref_out, _, ref_grads = _run(case, _NUMPY, args, upstream)
    np.testing.assert_array_equal(out, ref_out)
    for name, got in _by_name(case, grads).items():
        np.testing.assert_array_equal(got, _by_name(case, ref_grads)[name])
    for name, a in frozen.items():
        np.testing.assert_array_equal(a, args[name])


# ---------------------------------------------------------------------------
# (e) invariants of training batch norm


@pytest.mark.parametrize("case", BN_CASES, ids=[c.id for c in BN_CASES])
def test_batchnorm_gradient_invariants(case, backend):
    args, upstream = _setup(case, seed_offset=2)
    _, _, grads = _run(case, backend, args, upstream)
    dx = backend.to_numpy(grads.dx)
    x = args["x"]
    ddof, eps = case.kwargs["ddof"], case.kwargs["eps"]
    x_hat = (x - x.mean(axis=0)) / np.sqrt(x.var(axis=0, ddof=ddof) + eps)
    n = x.shape[0]
    scale = np.abs(dx).max() * n

    # 1ᵀ dx = 0: a bias before batch norm gets no gradient
    assert np.abs(dx.sum(axis=0)).max() <= 1e-13 * scale
    if eps == 0:
        # 1ᵀ(dx ∘ x̂) = 0: the output is invariant to rescaling a column
        assert np.abs((dx * x_hat).sum(axis=0)).max() <= 1e-13 * scale * np.abs(x_hat).max()


# ---------------------------------------------------------------------------
# (f) property tests: shapes, scales, offsets, ddof, eps, degenerate columns


@st.composite
def _bn_problems(draw):
    n = draw(st.integers(2, 40))
    p = draw(st.integers(1, 8))
    ddof = draw(st.sampled_from([0, 1]))
    eps = draw(st.sampled_from([0.0, 1e-8, 1e-5, 1e-2, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    log_scales = draw(st.lists(st.floats(-3, 3), min_size=p, max_size=p))
    offsets = draw(st.lists(st.floats(-1e3, 1e3), min_size=p, max_size=p))
    # with eps > 0 a column may be constant (variance 0)
    constant = draw(st.lists(st.booleans(), min_size=p, max_size=p)) if eps > 0 else [False] * p
    return n, p, ddof, eps, seed, np.array(log_scales), np.array(offsets), np.array(constant)


# fd_grad and rel_error are pure functions, so sharing them across examples is safe.
@settings(max_examples=30, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(problem=_bn_problems())
def test_batchnorm_backward_property(problem, fd_grad, rel_error):
    n, p, ddof, eps, seed, log_scales, offsets, constant = problem
    rng = np.random.default_rng(seed)
    scales = 10.0 ** log_scales
    x = rng.normal(size=(n, p)) * scales + offsets
    x[:, constant] = offsets[constant]
    gamma = rng.normal(size=p)
    beta = rng.normal(size=p)
    upstream = rng.normal(size=(n, p))

    _, cache = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
    grads = ops.batchnorm_backward(upstream, cache)

    def scalar(x_, gamma_, beta_):
        y, _ = ops.batchnorm_forward(x_, gamma_, beta_, eps=eps, ddof=ddof)
        return float(np.sum(upstream * y))

    # x varies on the scale of its column's spread, or of sqrt(eps) when that is larger
    spread = np.where(constant, 0.0, x.std(axis=0))
    length = np.maximum(spread, np.sqrt(eps))
    fd_dx = fd_grad(lambda v: scalar(v, gamma, beta), x, h=1e-3 * length)
    fd_dgamma = fd_grad(lambda v: scalar(x, v, beta), gamma)
    fd_dbeta = fd_grad(lambda v: scalar(x, gamma, v), beta)

    # Where an exact gradient vanishes (dgamma of a constant column; dx when
    # N = 2 and eps = 0, since the output is then ±γ√((2 − ddof)/2) + β whatever
    # x is), only rounding noise is left: compare on the gradient's usual size.
    inv_std = 1.0 / np.sqrt(x.var(axis=0, ddof=ddof) + eps)
    dx_size = float(np.max(np.abs(gamma) * inv_std)) * float(np.abs(upstream).max())
    assert rel_error(grads.dx, fd_dx, floor=dx_size) <= FD_RTOL
    assert rel_error(grads.dgamma, fd_dgamma, floor=1.0) <= FD_RTOL
    assert rel_error(grads.dbeta, fd_dbeta, floor=1.0) <= FD_RTOL


# ---------------------------------------------------------------------------
# (g) the shape of what backward returns


@case_params
def test_gradient_container(case):
    args, upstream = _setup(case)
    _, _, grads = _run(case, _NUMPY, args, upstream)
    if case.fields is None:
        # activations and losses: the one gradient array itself
        assert isinstance(grads, np.ndarray)
        assert grads.shape == np.shape(args[case.wrt[0]])
    else:
        assert isinstance(grads, tuple) and hasattr(grads, "_fields")
        assert grads._fields == case.fields
        assert grads.dx is grads[0]
        if case.id == "dense-nobias":
            assert grads.db is None
        else:
            assert all(isinstance(g, np.ndarray) for g in grads)


def test_loss_backward_accepts_0d_array_upstream(backend, rel_error):
    rng = np.random.default_rng(5)
    y_pred, y = rng.normal(size=(6, 2)), rng.normal(size=(6, 2))
    _, cache = ops.mse_forward(backend.asarray(y_pred), backend.asarray(y))
    got = ops.mse_backward(backend.asarray(np.array(0.7)), cache)
    assert rel_error(backend.to_numpy(got), 0.7 * 2.0 * (y_pred - y) / y.size) <= 1e-14
