"""Batch norm (training mode) forward + backward, one call per variant.

Each factory takes NumPy ``x (N, p), gamma (p,), beta (p,), dy (N, p)`` and
returns a zero-argument callable that runs ONE forward and ONE backward pass and
returns ``(y, dx, dgamma, dbeta)`` (finished: JAX results are blocked on).
eps = 1e-5, ddof = 0, batch statistics.
"""

from __future__ import annotations

import os

import numpy as np

EPS = 1e-5


def make_bnmat(x, gamma, beta, dy):
    """The public ops, as a user calls them: kernels for NumPy, fresh outputs."""
    from bnmat import ops

    def run():
        y, cache = ops.batchnorm_forward(x, gamma, beta, eps=EPS)
        dx, dgamma, dbeta = ops.batchnorm_backward(dy, cache)
        return y, dx, dgamma, dbeta
    return run


def make_bnmat_1t(x, gamma, beta, dy):
    """The public ops with numba limited to one thread (compare torch_native_1t)."""
    import numba

    run = make_bnmat(x, gamma, beta, dy)
    default = numba.get_num_threads()
    run.enter = lambda: numba.set_num_threads(1)
    run.leave = lambda: numba.set_num_threads(default)
    return run


def make_bnmat_out(x, gamma, beta, dy):
    """The kernels with output buffers reused across calls (a training loop)."""
    from bnmat import _kernels

    y_buf, dx_buf = np.empty_like(x), np.empty_like(x)

    def run():
        y, cache = _kernels.batchnorm_forward(x, gamma, beta, eps=EPS, out=y_buf)
        dx, dgamma, dbeta = _kernels.batchnorm_backward(dy, cache, out=dx_buf)
        return y, dx, dgamma, dbeta
    return run


def make_bnmat_reference(x, gamma, beta, dy):
    """The array-API reference formulas (kernels disabled for the block)."""
    from bnmat import ops
    from bnmat._kernels import DISABLE_ENV

    def run():
        y, cache = ops.batchnorm_forward(x, gamma, beta, eps=EPS)
        dx, dgamma, dbeta = ops.batchnorm_backward(dy, cache)
        return y, dx, dgamma, dbeta

    def enter():
        os.environ[DISABLE_ENV] = "1"

    def leave():
        os.environ.pop(DISABLE_ENV, None)
    run.enter, run.leave = enter, leave
    return run


def make_torch_eager(x, gamma, beta, dy):
    import torch
    import torch.nn.functional as F

    xt = torch.from_numpy(x).requires_grad_(True)
    gt = torch.from_numpy(gamma).requires_grad_(True)
    bt = torch.from_numpy(beta).requires_grad_(True)
    dyt = torch.from_numpy(dy)

    def run():
        y = F.batch_norm(xt, None, None, gt, bt, training=True, momentum=0.1, eps=EPS)
        dx, dg, db = torch.autograd.grad(y, (xt, gt, bt), dyt)
        return y.detach(), dx, dg, db
    return run


def make_torch_native(x, gamma, beta, dy, threads=None):
    """aten.native_batch_norm + native_batch_norm_backward (torch's CPU kernels)."""
    import torch

    fwd = torch.ops.aten.native_batch_norm
    bwd = torch.ops.aten.native_batch_norm_backward
    xt, gt, bt, dyt = (torch.from_numpy(a) for a in (x, gamma, beta, dy))

    def run():
        y, mean, invstd = fwd(xt, gt, bt, None, None, True, 0.1, EPS)
        dx, dg, db = bwd(dyt, xt, gt, None, None, mean, invstd, True, EPS, [True] * 3)
        return y, dx, dg, db

    if threads is not None:
        default = torch.get_num_threads()
        run.enter = lambda: torch.set_num_threads(threads)
        run.leave = lambda: torch.set_num_threads(default)
    return run


def make_jax_fused(x, gamma, beta, dy):
    """jit(vjp(bn)): forward and backward in one XLA program."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def bn(x, g, b):
        mean = jnp.mean(x, axis=0)
        xc = x - mean
        return g * (xc * jax.lax.rsqrt(jnp.mean(xc * xc, axis=0) + EPS)) + b

    @jax.jit
    def step(x, g, b, dy):
        y, vjp = jax.vjp(bn, x, g, b)
        return (y, *vjp(dy))

    args = [jax.device_put(a) for a in (x, gamma, beta, dy)]
    return lambda: jax.block_until_ready(step(*args))


VARIANTS = {
    "bnmat": make_bnmat,
    "bnmat_out": make_bnmat_out,
    "bnmat_1t": make_bnmat_1t,
    "bnmat_ref": make_bnmat_reference,
    "torch_native": make_torch_native,
    "torch_native_1t": lambda *a: make_torch_native(*a, threads=1),
    "torch_eager": make_torch_eager,
    "jax_fused": make_jax_fused,
}

DESCRIPTIONS = {
    "bnmat": "bnmat.ops.batchnorm_forward/backward (fused numba kernels), fresh outputs",
    "bnmat_out": "bnmat._kernels with out= buffers reused across calls",
    "bnmat_1t": "bnmat.ops with numba.set_num_threads(1)",
    "bnmat_ref": "bnmat.ops reference formulas (array API on NumPy; kernels disabled)",
    "torch_native": "aten.native_batch_norm + native_batch_norm_backward",
    "torch_native_1t": "the same with torch.set_num_threads(1)",
    "torch_eager": "F.batch_norm(training=True) + torch.autograd.grad",
    "jax_fused": "jax.jit(jax.vjp(bn))",
}


def make_inputs(n, p, dtype, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    x = (rng.standard_normal((n, p)) * 2.0 + 3.0).astype(dtype)
    dy = rng.standard_normal((n, p)).astype(dtype)
    gamma = (1.0 + 0.1 * rng.standard_normal(p)).astype(dtype)
    beta = (0.1 * rng.standard_normal(p)).astype(dtype)
    return x, gamma, beta, dy


def to_numpy(a):
    if isinstance(a, np.ndarray):
        return a
    if hasattr(a, "detach"):
        return a.detach().numpy()
    return np.asarray(a)
