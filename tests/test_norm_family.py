"""Inference-mode gradients w.r.t. stored statistics, LayerNorm, batch renorm, BatchNorm
switches — each against torch.autograd and finite differences."""

from __future__ import annotations

import numpy as np
import pytest

import bnmat
from bnmat import ops

torch = pytest.importorskip("torch")


def _t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


# ------------------------------------------------------------------ inference statistics
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_inference_stats_gradients(rng, fd_grad, rel_error, eps):
    n, p = 6, 3
    x = rng.normal(size=(n, p)) * 2 + 1
    gamma, beta = rng.normal(size=p), rng.normal(size=p)
    mean, var = rng.normal(size=p), rng.uniform(0.5, 2, size=p)
    dy = rng.normal(size=(n, p))
    got = ops.batchnorm_inference_stats_backward(dy, x, gamma, beta, mean, var, eps=eps)
    # the existing 3-tuple is unchanged and agrees
    _, cache = ops.batchnorm_inference_forward(x, gamma, beta, mean, var, eps=eps)
    dx, dgamma, dbeta = ops.batchnorm_inference_backward(dy, cache)
    for a, b in zip((dx, dgamma, dbeta), got[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)

    args = [_t(a, True) for a in (x, gamma, beta, mean, var)]
    tx, tg, tb, tm, tv = args
    y = (tx - tm) / torch.sqrt(tv + eps) * tg + tb
    want = torch.autograd.grad(y, args, _t(dy))
    for ours, theirs in zip(got, want):
        assert rel_error(ours, theirs.numpy()) < 1e-13

    def r(**kw):
        a = {**dict(x=x, gamma=gamma, beta=beta, mean=mean, var=var), **kw}
        return float(np.sum(ops.batchnorm_inference_forward(
            a["x"], a["gamma"], a["beta"], a["mean"], a["var"], eps=eps)[0] * dy))

    assert rel_error(got.dmean, fd_grad(lambda m: r(mean=m), mean)) < 1e-9
    assert rel_error(got.dvar, fd_grad(lambda v: r(var=v), var, h=1e-4)) < 1e-9
