#!/usr/bin/env python
"""Largest relative error of each second-order / normalization-family op against each oracle.

Usage (from the repository root; not collected by pytest; needs torch)::

    PYTHONPATH=src python tools/second_order_accuracy.py [--seeds 5]

For every op and random case (float64, random cotangents and upstream
gradients, several ddof and ε), the error is normwise,
``max|ours − oracle| / max|oracle|``, maximised over the op's outputs and the
cases. Oracles: torch.autograd (double backward through the op written in
torch), float64 4-point finite differences of bnmat's *first-order* backward
(never of the formula checked), and, for batch norm, the explicit Jacobians of
``bnmat.jacobians.batchnorm_backward_jacobians``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _oracles import central_difference_grad as fd  # noqa: E402

import bnmat  # noqa: E402
from bnmat import jacobians, ops  # noqa: E402
from bnmat._tree import tree_leaves, tree_map  # noqa: E402


def rel(ours, oracle):
    ours, oracle = np.ravel(np.asarray(ours)), np.ravel(np.asarray(oracle))
    return float(np.abs(ours - oracle).max() / max(np.abs(oracle).max(), 1e-300))


def T(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=grad)


def torch_bn(x, g, b, eps, ddof, w=None):
    w = torch.ones(x.shape[0], dtype=x.dtype) if w is None else w
    w = w.reshape(-1, 1)
    n = w.sum()
    mu = (w * x).sum(0) / n
    var = (w * (x - mu) ** 2).sum(0) / (n - ddof)
    return (x - mu) / torch.sqrt(var + eps) * g + b


def bn_case(rng, weights, ddof, eps, n=7, p=3):
    x = rng.normal(size=(n, p)) * rng.uniform(0.5, 3, size=p) + rng.normal(size=p)
    g, b = rng.normal(size=p), rng.normal(size=p)
    dy, a, c, e = (rng.normal(size=(n, p)), rng.normal(size=(n, p)), rng.normal(size=p),
                   rng.normal(size=p))
    w = None
    if weights == "real":
        w = rng.uniform(0.2, 3, size=n)
    elif weights == "integer":
        w = rng.integers(1, 4, size=n).astype(float)
    kw = {} if w is None else {"weights": w}
    _, cache = ops.batchnorm_forward(x, g, b, eps=eps, ddof=ddof, **kw)
    got = ops.batchnorm_double_backward(a, c, e, dy, cache)
    tx, tg, tb, tdy = T(x, True), T(g, True), T(b, True), T(dy, True)
    y = torch_bn(tx, tg, tb, eps, ddof, None if w is None else T(w))
    dx, dg, db = torch.autograd.grad(y, (tx, tg, tb), tdy, create_graph=True)
    s = (dx * T(a)).sum() + (dg * T(c)).sum() + (db * T(e)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tg))
    e_torch = max(rel(o, t.numpy()) for o, t in zip(got, want))

    def s_of(x_, g_, dy_):
        _, c_ = ops.batchnorm_forward(x_, g_, b, eps=eps, ddof=ddof, **kw)
        r = ops.batchnorm_backward(dy_, c_)
        return float(np.sum(r.dx * a) + r.dgamma @ c + r.dbeta @ e)

    e_fd = max(rel(got.ddy, fd(lambda d: s_of(x, g, d), dy)),
               rel(got.dx, fd(lambda z: s_of(z, g, dy), x)),
               rel(got.dgamma, fd(lambda q: s_of(x, q, dy), g)))
    jac = jacobians.batchnorm_backward_jacobians(dy, x, g, eps=eps, ddof=ddof, weights=w)
    va = jacobians.vec(a)
    e_jac = max(rel(jacobians.vec(got.ddy), jac.dx_dy.T @ va + jac.dgamma_dy.T @ c
                    + jac.dbeta_dy.T @ e),
                rel(jacobians.vec(got.dx), jac.dx_dx.T @ va + jac.dgamma_dx.T @ c),
                rel(got.dgamma, jac.dx_dgamma.T @ va))
    return e_torch, e_fd, e_jac


def weighted_backward_case(rng, ddof, eps):
    x = rng.normal(size=(7, 3)) * 2 + 1
    g, b, w = rng.normal(size=3), rng.normal(size=3), rng.uniform(0.2, 3, size=7)
    dy = rng.normal(size=(7, 3))
    _, cache = ops.batchnorm_forward(x, g, b, eps=eps, ddof=ddof, weights=w)
    got = ops.batchnorm_backward(dy, cache)
    tx, tg, tb = T(x, True), T(g, True), T(b, True)
    want = torch.autograd.grad(torch_bn(tx, tg, tb, eps, ddof, T(w)), (tx, tg, tb), T(dy))
    e_t = max(rel(o, t.numpy()) for o, t in zip(got, want))

    def r(x_):
        return float(np.sum(ops.batchnorm_forward(x_, g, b, eps=eps, ddof=ddof,
                                                  weights=w)[0] * dy))

    return e_t, rel(got.dx, fd(r, x))


def dense_case(rng):
    x, w, b = rng.normal(size=(5, 4)), rng.normal(size=(4, 3)), rng.normal(size=3)
    dy, ddx, ddw, ddb = (rng.normal(size=(5, 3)), rng.normal(size=(5, 4)),
                         rng.normal(size=(4, 3)), rng.normal(size=3))
    _, cache = ops.dense_forward(x, w, b)
    got = ops.dense_double_backward(ddx, ddw, ddb, dy, cache)
    tx, tw, tb, tdy = T(x, True), T(w, True), T(b, True), T(dy, True)
    gx, gw, gb = torch.autograd.grad(tx @ tw + tb, (tx, tw, tb), tdy, create_graph=True)
    s = (gx * T(ddx)).sum() + (gw * T(ddw)).sum() + (gb * T(ddb)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tw))
    e_t = max(rel(o, t.numpy()) for o, t in zip(got, want))

    def s_of(x_, w_, dy_):
        r = ops.dense_backward(dy_, ops.dense_forward(x_, w_, b)[1])
        return float(np.sum(r.dx * ddx) + np.sum(r.dw * ddw) + r.db @ ddb)

    e_fd = max(rel(got.ddy, fd(lambda d: s_of(x, w, d), dy)),
               rel(got.dx, fd(lambda z: s_of(z, w, dy), x)),
               rel(got.dw, fd(lambda q: s_of(x, q, dy), w)))
    return e_t, e_fd


TORCH_ACT = {"relu": torch.relu, "leaky_relu": lambda z: torch.nn.functional.leaky_relu(z, 0.01),
             "tanh": torch.tanh, "sigmoid": torch.sigmoid,
             "softplus": torch.nn.functional.softplus, "identity": lambda z: z * 1.0}


def activation_case(rng, name):
    x = rng.normal(size=(6, 3)) * 2
    x = np.where(np.abs(x) < 0.1, 0.5, x)
    dy, dd = rng.normal(size=x.shape), rng.normal(size=x.shape)
    fwd, bwd = ops.ACTIVATIONS[name]
    got = ops.activation_double_backward(name, dd, dy, fwd(x)[1])
    tx, tdy = T(x, True), T(dy, True)
    (gx,) = torch.autograd.grad(TORCH_ACT[name](tx), tx, tdy, create_graph=True)
    want = torch.autograd.grad((gx * T(dd)).sum(), (tdy, tx), allow_unused=True)
    want = [np.zeros_like(x) if t is None else t.numpy() for t in want]
    # the second derivative of relu, leaky relu and identity is 0: compare absolutely
    e_t = max(rel(o, t) if np.abs(t).max() > 0 else float(np.abs(o).max())
              for o, t in zip(got, want))

    def s_of(x_, dy_):
        return float(np.sum(bwd(dy_, fwd(x_)[1]) * dd))

    fd_dx = fd(lambda z: s_of(z, dy), x)
    e_fd = max(rel(got.ddy, fd(lambda d: s_of(x, d), dy)),
               rel(got.dx, fd_dx) if np.abs(fd_dx).max() > 1e-8
               else float(np.abs(got.dx - fd_dx).max()))
    return e_t, e_fd


def loss_case(rng, name):
    yp = rng.normal(size=(6, 3))
    y = (rng.dirichlet(np.ones(3), size=6) if name == "softmax_cross_entropy"
         else rng.normal(size=(6, 3)))
    dd = rng.normal(size=yp.shape)
    fwd, bwd = ops.LOSSES[name]
    got = ops.loss_double_backward(name, dd, 1.0, fwd(yp, y)[1]).dy_pred
    tp = T(yp, True)
    r = {"sse": lambda: ((tp - T(y)) ** 2).sum(), "mse": lambda: ((tp - T(y)) ** 2).mean(),
         "softmax_cross_entropy": lambda: -(T(y) * torch.log_softmax(tp, 1)).sum() / 6}[name]()
    (g,) = torch.autograd.grad(r, tp, create_graph=True)
    (want,) = torch.autograd.grad((g * T(dd)).sum(), tp)
    return rel(got, want.numpy()), rel(got, fd(lambda q: float(np.sum(bwd(1.0, fwd(q, y)[1])
                                                                       * dd)), yp))


def layernorm_case(rng, ddof, eps):
    x = rng.normal(size=(5, 4)) * rng.uniform(0.5, 2, size=(5, 1))
    g, b = rng.normal(size=4), rng.normal(size=4)
    dy, a, c, e = (rng.normal(size=(5, 4)), rng.normal(size=(5, 4)), rng.normal(size=4),
                   rng.normal(size=4))
    _, cache = ops.layernorm_forward(x, g, b, eps=eps, ddof=ddof)
    got = ops.layernorm_double_backward(a, c, e, dy, cache)
    tx, tg, tb, tdy = T(x, True), T(g, True), T(b, True), T(dy, True)
    mu = tx.mean(1, keepdim=True)
    var = ((tx - mu) ** 2).sum(1, keepdim=True) / (4 - ddof)
    y = (tx - mu) / torch.sqrt(var + eps) * tg + tb
    dx, dg, db = torch.autograd.grad(y, (tx, tg, tb), tdy, create_graph=True)
    s = (dx * T(a)).sum() + (dg * T(c)).sum() + (db * T(e)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tg))
    e_t = max(rel(o, t.numpy()) for o, t in zip(got, want))

    def s_of(x_, g_, dy_):
        r = ops.layernorm_backward(dy_, ops.layernorm_forward(x_, g_, b, eps=eps, ddof=ddof)[1])
        return float(np.sum(r.dx * a) + r.dgamma @ c + r.dbeta @ e)

    e_fd = max(rel(got.ddy, fd(lambda d: s_of(x, g, d), dy)),
               rel(got.dx, fd(lambda z: s_of(z, g, dy), x)),
               rel(got.dgamma, fd(lambda q: s_of(x, q, dy), g)))
    return e_t, e_fd


def renorm_case(rng, ddof):
    n, p = 7, 3
    x = rng.normal(size=(n, p)) * 2 + 1
    g, b, m, v = (rng.normal(size=p), rng.normal(size=p), rng.normal(size=p),
                  rng.uniform(0.3, 4, size=p))
    dy, a, c, e = (rng.normal(size=(n, p)), rng.normal(size=(n, p)), rng.normal(size=p),
                   rng.normal(size=p))
    kw = dict(r_max=1.5, d_max=0.5, eps=1e-3, ddof=ddof)
    _, cache = ops.batch_renorm_forward(x, g, b, m, v, **kw)
    got = ops.batch_renorm_double_backward(a, c, e, dy, cache)
    tx, tg, tb, tdy = T(x, True), T(g, True), T(b, True), T(dy, True)
    mu = tx.mean(0)
    sb = torch.sqrt(((tx - mu) ** 2).sum(0) / (n - ddof) + 1e-3)
    sig = torch.sqrt(T(v) + 1e-3)
    r = torch.clamp(sb / sig, 1 / 1.5, 1.5).detach()
    d = torch.clamp((mu - T(m)) / sig, -0.5, 0.5).detach()
    y = ((tx - mu) / sb * r + d) * tg + tb
    dx, dg, db = torch.autograd.grad(y, (tx, tg, tb), tdy, create_graph=True)
    s = (dx * T(a)).sum() + (dg * T(c)).sum() + (db * T(e)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tg))
    e_t = max(rel(o, t.numpy()) for o, t in zip(got, want))
    rf, df = cache.r, cache.d

    def s_frozen(x_, g_, dy_):
        _, cb = ops.batchnorm_forward(x_, g_ * rf, np.zeros(p), eps=1e-3, ddof=ddof)
        dxx, dgb, dbb = ops.batchnorm_backward(dy_, cb)
        return float(np.sum(dxx * a) + (rf * dgb + df * dbb) @ c + dbb @ e)

    e_fd = max(rel(got.ddy, fd(lambda q: s_frozen(x, g, q), dy)),
               rel(got.dx, fd(lambda z: s_frozen(z, g, dy), x)),
               rel(got.dgamma, fd(lambda q: s_frozen(x, q, dy), g)))
    return e_t, e_fd


def inference_stats_case(rng, eps):
    x = rng.normal(size=(6, 3)) * 2 + 1
    g, b, m, v = (rng.normal(size=3), rng.normal(size=3), rng.normal(size=3),
                  rng.uniform(0.5, 2, size=3))
    dy = rng.normal(size=(6, 3))
    got = ops.batchnorm_inference_stats_backward(dy, x, g, b, m, v, eps=eps)
    args = [T(q, True) for q in (x, g, b, m, v)]
    y = (args[0] - args[3]) / torch.sqrt(args[4] + eps) * args[1] + args[2]
    want = torch.autograd.grad(y, args, T(dy))
    e_t = max(rel(o, t.numpy()) for o, t in zip(got, want))

    def r(m_, v_):
        return float(np.sum(ops.batchnorm_inference_forward(x, g, b, m_, v_, eps=eps)[0] * dy))

    return e_t, max(rel(got.dmean, fd(lambda q: r(q, v), m)),
                    rel(got.dvar, fd(lambda q: r(m, q), v, h=1e-4)))


def hvp_case(rng, weighted):
    net = bnmat.Sequential([bnmat.Dense(5, bias=False), bnmat.BatchNorm(eps=0.1), bnmat.Tanh(),
                            bnmat.Dense(3, bias=False), bnmat.BatchNorm(ddof=1, eps=0.0),
                            bnmat.Softplus(), bnmat.Dense(1)])
    x, y = rng.normal(size=(10, 7)), rng.normal(size=10)
    params, state = net.init(x, seed=int(rng.integers(1000)))
    params = tree_map(lambda q: q + 0.3 * rng.normal(size=np.shape(q)), params)
    v = tree_map(lambda q: rng.normal(size=np.shape(q)), params)
    w = rng.integers(1, 4, size=10) if weighted else None
    ours = np.concatenate([np.ravel(q) for q in tree_leaves(
        bnmat.hvp(net, params, state, x, y, v, sample_weight=w), like=params)])
    rep = np.repeat(np.arange(10), w) if weighted else np.arange(10)
    tp = tree_map(lambda q: torch.tensor(q, requires_grad=True), params)
    flat = tree_leaves(tp)
    h = T(x[rep])
    for layer, p in zip(net.layers, tp):
        kind = type(layer).__name__
        if kind == "Dense":
            h = h @ p["w"] + (p["b"] if "b" in p else 0)
        elif kind == "BatchNorm":
            h = torch_bn(h, p["gamma"], p["beta"], layer.eps, layer.ddof)
        elif kind == "Tanh":
            h = torch.tanh(h)
        else:
            h = torch.nn.functional.softplus(h)
    r = ((h[:, 0] - T(y[rep])) ** 2).sum()
    g = torch.autograd.grad(r, flat, create_graph=True)
    vs = [torch.tensor(q) for q in tree_leaves(v, like=params)]
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, vs)), flat)
    want = np.concatenate([t.numpy().ravel() for t in hv])

    def grad_at(t):
        p = tree_map(lambda q, d: q + t * d, params, v)
        return np.concatenate([np.ravel(q) for q in tree_leaves(
            bnmat.value_and_grad(net, p, state, x, y, "sse", sample_weight=w)[1], like=params)])

    hh = 1e-3
    fd_hv = (-grad_at(2 * hh) + 8 * grad_at(hh) - 8 * grad_at(-hh) + grad_at(-2 * hh)) / (12 * hh)
    return rel(ours, want), rel(ours, fd_hv)


def group_case(rng, ddof, eps):
    n, p = 11, 3
    groups = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 2])
    x = rng.normal(size=(n, p)) * 2 + groups[:, None]
    g, b = rng.normal(size=p), rng.normal(size=p)
    dy, a, c, e = (rng.normal(size=(n, p)), rng.normal(size=(n, p)), rng.normal(size=p),
                   rng.normal(size=p))
    _, cache = ops.group_batchnorm_forward(x, groups, g, b, eps=eps, ddof=ddof)
    got = ops.group_batchnorm_double_backward(a, c, e, dy, cache)
    tx, tg, tb, tdy = T(x, True), T(g, True), T(b, True), T(dy, True)
    y = torch.zeros(n, p, dtype=torch.float64)
    for k in range(3):
        rows = np.flatnonzero(groups == k)
        y = y.index_put((torch.tensor(rows),), torch_bn(tx[rows], tg, tb, eps, ddof))
    dx, dg, db = torch.autograd.grad(y, (tx, tg, tb), tdy, create_graph=True)
    s = (dx * T(a)).sum() + (dg * T(c)).sum() + (db * T(e)).sum()
    want = torch.autograd.grad(s, (tdy, tx, tg))
    e_t = max(rel(o, t.numpy()) for o, t in zip(got, want))

    def s_of(x_, g_, dy_):
        _, c_ = ops.group_batchnorm_forward(x_, groups, g_, b, eps=eps, ddof=ddof)
        r = ops.group_batchnorm_backward(dy_, c_)
        return float(np.sum(r.dx * a) + r.dgamma @ c + r.dbeta @ e)

    e_fd = max(rel(got.ddy, fd(lambda d: s_of(x, g, d), dy)),
               rel(got.dx, fd(lambda z: s_of(z, g, dy), x)),
               rel(got.dgamma, fd(lambda q: s_of(x, q, dy), g)))
    return e_t, e_fd


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args(argv)
    table: dict = {}

    def record(name, *errors):
        row = table.setdefault(name, [float("nan")] * len(errors))
        for i, e in enumerate(errors):
            if e == e:          # nan: no such oracle for this op
                row[i] = e if row[i] != row[i] else max(row[i], e)

    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        for ddof in (0, 1, 2):
            for eps in (0.0, 1e-5, 0.5):
                for weights in (None, "real", "integer"):
                    name = ("batchnorm_double_backward" if weights is None
                            else "batchnorm_double_backward (weighted)")
                    record(name, *bn_case(rng, weights, ddof, eps))
        for ddof in (0, 1):
            record("batchnorm_backward (weighted)", *weighted_backward_case(rng, ddof, 1e-3),
                   float("nan"))
            record("batch_renorm_double_backward", *renorm_case(rng, ddof), float("nan"))
            for eps in (0.0, 0.3):
                record("layernorm_double_backward", *layernorm_case(rng, ddof, eps),
                       float("nan"))
        for ddof, eps in ((0, 0.0), (1, 1e-3)):
            record("group_batchnorm_double_backward", *group_case(rng, ddof, eps),
                   float("nan"))
        record("dense_double_backward", *dense_case(rng), float("nan"))
        for name in sorted(TORCH_ACT):
            record(f"activation_double_backward[{name}]", *activation_case(rng, name),
                   float("nan"))
        for name in ("sse", "mse", "softmax_cross_entropy"):
            record(f"loss_double_backward[{name}]", *loss_case(rng, name), float("nan"))
        for eps in (0.0, 1e-3):
            record("batchnorm_inference_stats_backward", *inference_stats_case(rng, eps),
                   float("nan"))
        record("hvp (2 BN layers, tanh, softplus)", *hvp_case(rng, False), float("nan"))
        record("hvp, integer sample_weight (torch on repeated rows)", *hvp_case(rng, True),
               float("nan"))

    print(f"{'op':<52} {'vs torch':>10} {'vs FD':>10} {'vs Jacobians':>13}")
    for name, (e_t, e_fd, e_j) in table.items():
        j = "-" if e_j != e_j else f"{e_j:.1e}"
        print(f"{name:<52} {e_t:>10.1e} {e_fd:>10.1e} {j:>13}")
    print("(max over outputs and cases of max|ours − oracle|/max|oracle|; activations whose "
          "second derivative is 0 report the absolute value)")


if __name__ == "__main__":
    main()
