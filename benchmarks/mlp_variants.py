"""One SGD training step of 64 → Dense 256 → BN → ReLU → Dense 256 → BN → ReLU → Dense 1.

MSE loss, learning rate 0.01, float32, batch statistics (eps 1e-5). Each factory
takes ``(params, X, Y)`` (weights stored (in, out), so Z = X W + b) and returns
``(step, get_params)``: ``step()`` does forward, backward and the update in
place of the model's state and returns the loss; ``get_params()`` returns the
current parameters as NumPy arrays, for the correctness check.

The bnmat variants drop the biases b1, b2 of the two Dense layers in front of
batch norm: batch norm subtracts the column mean, so ``BN(Z + 1bᵀ) = BN(Z)``
exactly and the gradient of such a bias is exactly 0 (the closed form
``1ᵀ ∂R/∂Z = 0``). They compute the same function as the torch model, whose
b1, b2 receive gradients of rounding size; ``torch_eager_nobias`` is torch with
those biases removed as well.
"""

from __future__ import annotations

import numpy as np

LR = 0.01
EPS = 1e-5
P0, H = 64, 256
PARAM_NAMES = ["W1", "b1", "g1", "be1", "W2", "b2", "g2", "be2", "W3", "b3"]


def make_params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)

    def dense(i, o):
        lim = 1.0 / np.sqrt(i)
        return (rng.uniform(-lim, lim, (i, o)).astype(dtype),
                rng.uniform(-lim, lim, (o,)).astype(dtype))
    W1, b1 = dense(P0, H)
    W2, b2 = dense(H, H)
    W3, b3 = dense(H, 1)
    return dict(W1=W1, b1=b1, g1=np.ones(H, dtype), be1=np.zeros(H, dtype),
                W2=W2, b2=b2, g2=np.ones(H, dtype), be2=np.zeros(H, dtype), W3=W3, b3=b3)


def make_data(n, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, P0)).astype(dtype)
    Y = (np.sin(X[:, :1]) + 0.1 * rng.standard_normal((n, 1))).astype(dtype)
    return X, Y


def make_bnmat_ops(params, X, Y):
    """The step written with bnmat.ops and the fused kernels, buffers reused.

    Per batch-norm layer: one fused BN+ReLU forward into a reused buffer, one
    fused backward that overwrites its upstream gradient with dZ. The matmuls
    write into reused buffers too (``np.matmul(..., out=)``), so a step in the
    steady state allocates no N×256 array.
    """
    from bnmat import _kernels

    P = {k: v.copy() for k, v in params.items()}
    n = X.shape[0]
    buf = {k: np.empty((n, H), X.dtype) for k in ("z1", "h1", "z2", "h2", "d1", "d2")}
    running = {"m1": np.zeros(H), "v1": np.ones(H), "m2": np.zeros(H), "v2": np.ones(H)}

    def update_running(i, cache):
        # torch's convention: weight 0.1 on the new batch, unbiased variance
        running[f"m{i}"] *= 0.9
        running[f"m{i}"] += 0.1 * cache.bn.mean
        running[f"v{i}"] *= 0.9
        running[f"v{i}"] += (0.1 * n / (n - 1)) * cache.bn.var

    def sgd(name, grad):
        P[name] -= LR * grad

    def step():
        z1 = np.matmul(X, P["W1"], out=buf["z1"])
        h1, c1 = _kernels.batchnorm_relu_forward(z1, P["g1"], P["be1"], eps=EPS, out=buf["h1"])
        z2 = np.matmul(h1, P["W2"], out=buf["z2"])
        h2, c2 = _kernels.batchnorm_relu_forward(z2, P["g2"], P["be2"], eps=EPS, out=buf["h2"])
        out = h2 @ P["W3"]
        out += P["b3"]
        diff = out - Y
        loss = float(np.mean(diff * diff))
        dout = diff * np.float32(2.0 / diff.size)
        dW3 = h2.T @ dout
        db3 = dout.sum(axis=0)
        # an outer product (k = 1): a broadcast multiply, 3× faster than sgemm here
        dh2 = np.multiply(dout, P["W3"][:, 0], out=buf["d2"])
        dz2, dg2, dbe2 = _kernels.batchnorm_relu_backward(dh2, c2, out=dh2)
        dW2 = h1.T @ dz2
        dh1 = np.matmul(dz2, P["W2"].T, out=buf["d1"])
        dz1, dg1, dbe1 = _kernels.batchnorm_relu_backward(dh1, c1, out=dh1)
        dW1 = X.T @ dz1
        update_running(1, c1)
        update_running(2, c2)
        for name, g in (("W1", dW1), ("g1", dg1), ("be1", dbe1), ("W2", dW2), ("g2", dg2),
                        ("be2", dbe2), ("W3", dW3), ("b3", db3)):
            sgd(name, g)
        return loss

    return step, lambda: {k: P[k].copy() for k in PARAM_NAMES}


def make_bnmat_train(params, X, Y):
    """The network API: Sequential + bnmat.train.value_and_grad + bnmat.optim.sgd."""
    import bnmat
    from bnmat.optim import sgd
    from bnmat.train import value_and_grad

    net = bnmat.Sequential([
        bnmat.Dense(H, bias=False), bnmat.BatchNorm(eps=EPS), bnmat.ReLU(),
        bnmat.Dense(H, bias=False), bnmat.BatchNorm(eps=EPS), bnmat.ReLU(),
        bnmat.Dense(1)])
    p, s = net.init(X, seed=0)
    p[0]["w"], p[3]["w"], p[6]["w"], p[6]["b"] = (params[k].copy() for k in ("W1", "W2", "W3", "b3"))
    p[1]["gamma"], p[1]["beta"] = params["g1"].copy(), params["be1"].copy()
    p[4]["gamma"], p[4]["beta"] = params["g2"].copy(), params["be2"].copy()
    opt = sgd(LR)
    st = {"params": p, "state": s, "opt": opt.init(p)}
    y = Y[:, 0]

    def step():
        loss, grads, st["state"] = value_and_grad(net, st["params"], st["state"], X, y,
                                                  loss="mse")
        st["params"], st["opt"] = opt.update(grads, st["opt"], st["params"])
        return loss

    def get_params():
        q = st["params"]
        return dict(W1=q[0]["w"], b1=params["b1"], g1=q[1]["gamma"], be1=q[1]["beta"],
                    W2=q[3]["w"], b2=params["b2"], g2=q[4]["gamma"], be2=q[4]["beta"],
                    W3=q[6]["w"], b3=q[6]["b"])
    return step, get_params


def make_torch_mlp(params, X, Y, bias=True):
    import torch
    import torch.nn.functional as F
    from torch import nn

    model = nn.Sequential(nn.Linear(P0, H, bias=bias), nn.BatchNorm1d(H, eps=EPS), nn.ReLU(),
                          nn.Linear(H, H, bias=bias), nn.BatchNorm1d(H, eps=EPS), nn.ReLU(),
                          nn.Linear(H, 1))
    with torch.no_grad():
        for li, (w, b) in zip((0, 3, 6), (("W1", "b1"), ("W2", "b2"), ("W3", "b3"))):
            model[li].weight.copy_(torch.from_numpy(params[w].T.copy()))
            if model[li].bias is not None:
                model[li].bias.copy_(torch.from_numpy(params[b]))
        for li, (g, be) in zip((1, 4), (("g1", "be1"), ("g2", "be2"))):
            model[li].weight.copy_(torch.from_numpy(params[g]))
            model[li].bias.copy_(torch.from_numpy(params[be]))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(Xt), Yt)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def get_params():
        out = {}
        for li, (w, b) in zip((0, 3, 6), (("W1", "b1"), ("W2", "b2"), ("W3", "b3"))):
            out[w] = model[li].weight.detach().numpy().T.copy()
            out[b] = (model[li].bias.detach().numpy().copy() if model[li].bias is not None
                      else params[b])
        for li, (g, be) in zip((1, 4), (("g1", "be1"), ("g2", "be2"))):
            out[g] = model[li].weight.detach().numpy().copy()
            out[be] = model[li].bias.detach().numpy().copy()
        return out
    return step, get_params


def make_jax_mlp(params, X, Y):
    import jax
    import jax.numpy as jnp

    def bn(z, g, b):
        mean = jnp.mean(z, axis=0)
        zc = z - mean
        return g * (zc * jax.lax.rsqrt(jnp.mean(zc * zc, axis=0) + EPS)) + b

    def loss_fn(p, X, Y):
        h = jax.nn.relu(bn(X @ p["W1"] + p["b1"], p["g1"], p["be1"]))
        h = jax.nn.relu(bn(h @ p["W2"] + p["b2"], p["g2"], p["be2"]))
        return jnp.mean((h @ p["W3"] + p["b3"] - Y) ** 2)

    @jax.jit
    def train_step(p, X, Y):
        loss, g = jax.value_and_grad(loss_fn)(p, X, Y)
        return jax.tree_util.tree_map(lambda a, b: a - LR * b, p, g), loss

    st = {"p": {k: jax.device_put(v.copy()) for k, v in params.items()}}
    Xj, Yj = jax.device_put(X), jax.device_put(Y)

    def step():
        st["p"], loss = train_step(st["p"], Xj, Yj)
        return float(jax.block_until_ready(loss))
    return step, lambda: {k: np.asarray(v).copy() for k, v in st["p"].items()}


VARIANTS = {
    "bnmat_ops": make_bnmat_ops,
    "bnmat_train": make_bnmat_train,
    "torch_eager": make_torch_mlp,
    "torch_eager_nobias": lambda P, X, Y: make_torch_mlp(P, X, Y, bias=False),
    "jax_jit": make_jax_mlp,
}

DESCRIPTIONS = {
    "bnmat_ops": "bnmat.ops + fused BN+ReLU kernels, buffers reused (no b1, b2: BN cancels them)",
    "bnmat_train": "bnmat.Sequential + bnmat.train.value_and_grad + bnmat.optim.sgd",
    "torch_eager": "nn.Sequential + F.mse_loss + backward + optim.SGD (the anchor's model)",
    "torch_eager_nobias": "the same without the biases in front of batch norm",
    "jax_jit": "jit(value_and_grad + SGD)",
}
