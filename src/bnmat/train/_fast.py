"""The lean training step that :func:`bnmat.train.fit` uses for plain NumPy networks.

Where the users are — thousands of rows, tens of columns, mini-batches of a few
hundred — a training step is a few dozen small array operations, and the Python
around them (validation, namespace look-ups, cache tuples, tree walks) costs more
than the arithmetic. :func:`bnmat.train.value_and_grad` pays that on every call,
because every call may be the first. ``fit`` knows better: it validated x and y
once, the network and the optimizer do not change between steps. For a
:class:`~bnmat.layers.Sequential` of Dense, BatchNorm and parameter-free
activation layers trained on NumPy arrays with a built-in loss and optimizer,
:class:`FastStep` therefore

* checks everything once, when it is built (:func:`fast_step`);
* keeps all parameters in one flat array (the Dense weights first), so the
  optimizer's elementwise update, the L2 penalty and the finiteness check are
  each one operation on one array instead of one per leaf; the per-layer dicts
  it hands back are views into that array (a new array every step: nothing a
  caller holds is ever written);
* writes gradients into one reused flat buffer and activations into buffers
  reused across steps of the same batch size;
* runs batch norm + ReLU on the fused kernels' compiled functions directly (no
  wrapper, no validation), or, without the kernels, as a few in-place NumPy
  operations.

It computes the same formulas as the layers' own ``forward``/``backward`` (the
reference it is tested against: ``tests/test_fast_path.py``), with the same
float64 accumulation. Whenever a step meets anything unusual — a non-finite
statistic or loss, a variance outside the range where the kernels' arithmetic
matches the reference's — it hands that step to :func:`value_and_grad`, which
then gives the reference's result or raises the reference's error.
"""

from __future__ import annotations

import math

import numpy as np

from .._kernels import _config
from .._kernels._batchnorm import _nchunks, _rows4
from ..layers import BatchNorm, Dense, Identity, LeakyReLU, ReLU, Sequential, Sigmoid, Softplus
from ..layers import Tanh

__all__ = ["FastStep", "fast_step"]

_ACTIVATIONS = (ReLU, Identity, Tanh, Sigmoid, LeakyReLU, Softplus)
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _builtin_elementwise(optimizer) -> bool:
    """bnmat's own sgd and adam: updates elementwise, so one flat leaf is exact."""
    update = getattr(optimizer, "update", None)
    return (getattr(update, "__module__", None) == "bnmat.optim"
            and getattr(update, "__qualname__", "") in ("sgd.<locals>.update",
                                                         "adam.<locals>.update"))


def fast_step(net, params, state, x, y, loss, optimizer, l2, factors):
    """A :class:`FastStep` for this fit, or None when the general path must run.

    Parameters are those of :func:`bnmat.train.fit` after its validation; y is
    already of shape (N,) or (N, k).
    """
    if os_disabled():
        return None
    if type(net) is not Sequential or factors is not None or loss not in ("mse", "sse"):
        return None
    if not _builtin_elementwise(optimizer):
        return None
    if type(x) is not np.ndarray or x.dtype not in _FLOATS or x.ndim != 2:
        return None
    # y of another float dtype is cast to x's per batch, as the losses do
    # (float16 → float32 → float64 is exact, so one cast equals their two)
    if type(y) is not np.ndarray or y.dtype.kind != "f" or y.ndim not in (1, 2):
        return None
    if not isinstance(params, list) or not isinstance(state, list):
        return None
    layers = net.layers
    if len(params) != len(layers) or len(state) != len(layers):
        return None
    width = x.shape[1]
    for layer, p, s in zip(layers, params, state):
        kind = type(layer)
        if kind is Dense:
            keys = ("w", "b") if layer.bias else ("w",)
            if not (isinstance(p, dict) and set(p) == set(keys)):
                return None
            w = p["w"]
            if not (type(w) is np.ndarray and w.dtype == x.dtype and w.ndim == 2
                    and w.shape[0] == width):
                return None
            width = w.shape[1]
            if layer.bias and not (type(p["b"]) is np.ndarray and p["b"].dtype == x.dtype
                                   and p["b"].shape == (width,)):
                return None
        elif kind is BatchNorm:
            # default switches only (a layer without centring/scaling, without
            # running statistics, or with sample weights runs its own forward)
            if not all(getattr(layer, switch, True) is True
                       for switch in ("center", "scale", "track_running_stats")):
                return None
            if not (isinstance(p, dict) and set(p) == {"gamma", "beta"} and isinstance(s, dict)
                    and {"mean", "var"} <= set(s) <= {"mean", "var", "count"}):
                return None
            for a in (p["gamma"], p["beta"], s["mean"], s["var"]):
                if not (type(a) is np.ndarray and a.dtype == x.dtype and a.shape == (width,)):
                    return None
        elif kind in _ACTIVATIONS:
            if p != {}:
                return None
        else:
            return None
    k = 1 if y.ndim == 1 else y.shape[1]
    if width != k:
        return None
    return FastStep(net, params, x.dtype, loss, optimizer, l2)


def os_disabled() -> bool:
    import os

    return os.environ.get("BNMAT_DISABLE_FAST_STEP", "").strip().lower() in ("1", "true", "yes")


class _Buffers:
    """Activation buffers for one batch size, reused across steps."""

    def __init__(self, n, widths, dtype):
        self.z = [np.empty((n, w), dtype) for w in widths]       # each layer's output
        self.g = [np.empty((n, w), dtype) for w in widths]       # gradient w.r.t. it


class FastStep:
    """One training step of :func:`bnmat.train.fit` on flat parameters (see module)."""

    def __init__(self, net, params, dtype, loss, optimizer, l2):
        self.net = net
        self.layers = net.layers
        self.dtype = np.dtype(dtype)
        self.loss = loss
        self.optimizer = optimizer
        self.l2 = float(l2)
        # Flat layout: every Dense weight first (the L2 penalty is one slice),
        # then the biases and batch-norm parameters, in layer order.
        entries = []
        for i, p in enumerate(params):
            if "w" in p:
                entries.append((i, "w", p["w"].shape))
        for i, p in enumerate(params):
            for key in p:
                if key != "w":
                    entries.append((i, key, p[key].shape))
        offsets, pos = [], 0
        for i, key, shape in entries:
            size = int(np.prod(shape))
            offsets.append((i, key, shape, pos, pos + size))
            pos += size
        self.entries = offsets
        self.size = pos
        self.n_weights = sum(b - a for _, key, _, a, b in offsets if key == "w")
        self.widths = [p["w"].shape[1] if "w" in p else None for p in params]
        w = None
        for i in range(len(self.widths)):
            if self.widths[i] is None:
                self.widths[i] = w
            w = self.widths[i]
        self.grad = np.zeros(pos, self.dtype)
        self.grad_views = self.unflatten(self.grad)
        self.buffers = {}
        self.theta = None
        self.tree = None
        # (BatchNorm index, fused with the ReLU after it)
        self.fuse = [type(layer) is BatchNorm and i + 1 < len(self.layers)
                     and type(self.layers[i + 1]) is ReLU for i, layer in enumerate(self.layers)]
        self.bn_size = max([self.widths[i] for i, layer in enumerate(self.layers)
                            if type(layer) is BatchNorm] or [0])
        # batch statistics need N ≥ 2 and N − ddof ≥ 1; smaller batches go to
        # value_and_grad, which raises the op's error
        self.min_rows = max([max(2, layer.ddof + 1) for layer in self.layers
                             if type(layer) is BatchNorm] or [1])

    # ------------------------------------------------------------- flat ↔ tree
    def flatten(self, tree):
        flat = np.empty(self.size, self.dtype)
        for i, key, _, a, b in self.entries:
            flat[a:b] = np.ravel(tree[i][key])
        return flat

    def unflatten(self, flat):
        tree = [{} for _ in self.layers]
        for i, key, shape, a, b in self.entries:
            tree[i][key] = flat[a:b].reshape(shape)
        # dicts in the layers' own key order
        return tree

    def adopt(self, params):
        """Make ``params`` the current point; returns the tree of views handed out."""
        if params is not self.tree:
            self.theta = self.flatten(params)
            self.tree = self.unflatten(self.theta)
        return self.tree

    def init_optimizer(self, params):
        self.adopt(params)
        return self.optimizer.init(self.theta)

    # ------------------------------------------------------------------- step
    def _buffers(self, n):
        buf = self.buffers.get(n)
        if buf is None:
            buf = self.buffers[n] = _Buffers(n, self.widths, self.dtype)
        return buf

    def step(self, xb, yb, params, state, opt_state):
        """One step on the batch ``(xb, yb)``.

        Returns
        -------
        value : float or None
            The batch objective; None when the step must run on the general
            path (:func:`value_and_grad`) instead.
        new_params, new_state, new_opt_state
        """
        tree = self.adopt(params)
        if xb.shape[0] < self.min_rows:
            return None, params, state, opt_state
        use_kernels = (self.bn_size and xb.shape[0] * self.bn_size >= _config.MIN_ELEMENTS
                       and _config.enabled())
        if use_kernels:
            k = _config.load_kernels()
            if xb.shape[0] * self.bn_size < _config.PARALLEL_MIN_ELEMENTS:
                # the serial builds: bitwise the parallel ones, no thread switch
                self.bn_forward, self.bn_backward = k.forward_serial, k.backward_serial
                out = self._forward_backward(xb, yb, tree, state, True)
            else:
                self.bn_forward, self.bn_backward = k.forward, k.backward
                with _config.kernel_call(xb.shape[0] * self.bn_size):
                    out = self._forward_backward(xb, yb, tree, state, True)
        else:
            out = self._forward_backward(xb, yb, tree, state, False)
        if out is None:
            return None, params, state, opt_state
        value, new_state = out
        if self.l2:
            w = self.theta[:self.n_weights]
            value += 0.5 * self.l2 * float(np.dot(w, w))
            self.grad[:self.n_weights] += self.l2 * w
        new_theta, opt_state = self.optimizer.update(self.grad, opt_state, self.theta)
        self.theta = new_theta
        self.tree = self.unflatten(new_theta)
        return value, self.tree, new_state, opt_state

    def finite(self) -> bool:
        return bool(np.isfinite(self.theta).all())

    def grads_from_tree(self, grads):
        """Copy a gradient tree (from :func:`value_and_grad`) into the flat buffer."""
        for i, key, _, a, b in self.entries:
            self.grad[a:b] = np.ravel(grads[i][key])

    def _forward_backward(self, xb, yb, tree, state, kernels):
        layers = self.layers
        n = xb.shape[0]
        buf = self._buffers(n)
        gv = self.grad_views
        dt = self.dtype
        caches = [None] * len(layers)
        new_state = list(state)
        h = xb
        i = 0
        while i < len(layers):
            layer = layers[i]
            kind = type(layer)
            p = tree[i]
            if kind is Dense:
                z = buf.z[i]
                np.matmul(h, p["w"], out=z)
                if layer.bias:
                    z += p["b"]
                caches[i] = h
                h = z
                i += 1
            elif kind is BatchNorm:
                fused = self.fuse[i]
                z = buf.z[i + 1] if fused else buf.z[i]
                if not h.flags.c_contiguous:
                    h = np.ascontiguousarray(h)
                if kernels:
                    c = self._bn_kernel_forward(h, p, layer, fused, z)
                else:
                    c = self._bn_numpy_forward(h, p, layer, fused, z)
                if c is None:
                    return None
                caches[i] = c
                new_state[i] = _updated(layer, state[i], c[0], c[1])
                h = z
                i += 2 if fused else 1
            else:
                h, _, c = layer.forward({}, state[i], h, training=True)
                caches[i] = c
                i += 1
        # the loss, R = Σ r² (sse) or Σ r²/(N·k) (mse), r = ŷ − y
        y = yb.reshape(n, -1) if yb.ndim == 1 else yb
        if y.dtype != dt:
            y = y.astype(dt)
        g = buf.g[len(layers) - 1]
        np.subtract(h, y, out=g)
        value = float(np.dot(g.ravel(), g.ravel()))
        scale = 1.0 if self.loss == "sse" else 1.0 / g.size
        value *= scale
        if not math.isfinite(value):
            return None
        g *= 2.0 * scale
        # backward, in reverse
        i = len(layers) - 1
        while i >= 0:
            layer = layers[i]
            kind = type(layer)
            if kind is Dense:
                x_in = caches[i]
                np.matmul(x_in.T, g, out=gv[i]["w"])
                if layer.bias:
                    np.add.reduce(g, axis=0, out=gv[i]["b"])
                if i == 0:
                    break
                w = tree[i]["w"]
                dx = buf.g[i - 1]
                if w.shape[1] == 1:
                    np.multiply(g, w[:, 0], out=dx)
                else:
                    # W's transpose copied to C order first: OpenBLAS's threaded
                    # path for a transposed operand at these sizes can take 10×
                    # as long (1.6 ms against 0.14 ms at 200×64·64×64, 2 cores).
                    np.matmul(g, np.ascontiguousarray(w.T), out=dx)
                g = dx
                i -= 1
            elif kind is ReLU and i >= 1 and self.fuse[i - 1]:
                j = i - 1
                dz = buf.g[j - 1] if j >= 1 else np.empty_like(g)
                if kernels:
                    ok = self._bn_kernel_backward(g, caches[j], tree[j], gv[j], True, dz)
                else:
                    ok = self._bn_numpy_backward(g, caches[j], tree[j], gv[j], True, dz)
                if not ok:
                    return None
                g = dz
                i -= 2
            elif kind is BatchNorm:
                dz = buf.g[i - 1] if i >= 1 else np.empty_like(g)
                if kernels:
                    ok = self._bn_kernel_backward(g, caches[i], tree[i], gv[i], False, dz)
                else:
                    ok = self._bn_numpy_backward(g, caches[i], tree[i], gv[i], False, dz)
                if not ok:
                    return None
                g = dz
                i -= 1
            else:
                g, _ = layer.backward(g, caches[i])
                if type(g) is not np.ndarray or g.dtype != dt:
                    return None
                i -= 1
        return value, new_state

    # ---------------------------------------------------- batch norm, kernels
    def _bn_kernel_forward(self, z, p, layer, relu, out):
        n = z.shape[0]
        rows4 = _rows4(z)
        _, var, inv_std64, mean_hi, mean_lo, scale, status, _ = self.bn_forward(
            z, p["gamma"], p["beta"], layer.eps, layer.ddof, relu, z.dtype == np.float64,
            rows4, _nchunks(n), out)
        if status != 0:     # includes statistics outside the kernels' exact range
            return None
        return (mean_hi, var.astype(z.dtype), z, mean_lo, scale, inv_std64, rows4, layer.ddof)

    def _bn_kernel_backward(self, g, cache, p, grads, relu, out):
        mean_hi, _, z, mean_lo, scale, inv_std64, rows4, ddof = cache
        n = z.shape[0]
        a = p["gamma"] * inv_std64      # float64: γ ∘ s
        dgamma, dbeta = self.bn_backward(
            g, z, mean_hi, mean_lo, scale, p["beta"], relu, inv_std64, a,
            float(n - ddof), rows4, _nchunks(n), out)
        # one check for both (a finite sum that overflows only sends the step
        # to the reference, which is never wrong)
        if not math.isfinite(float(dgamma.sum()) + float(dbeta.sum())):
            return False
        grads["gamma"][...] = dgamma
        grads["beta"][...] = dbeta
        return True

    # ------------------------------------------------------ batch norm, NumPy
    def _bn_numpy_forward(self, z, p, layer, relu, out):
        """``X̂ = (Z − 1μᵀ) diag(s)``, ``B = X̂ diag(γ) + 1βᵀ`` (through ReLU), in place.

        μ and σ² by the corrected two-pass formula with float64 sums, as
        :func:`bnmat.ops.column_moments`; X̂ is kept for the backward pass.
        """
        n = z.shape[0]
        dt = z.dtype
        ddof = layer.ddof
        shift = np.add.reduce(z, axis=0, dtype=np.float64) / n
        x_hat = np.subtract(z, shift.astype(dt))
        s1 = np.add.reduce(x_hat, axis=0, dtype=np.float64)
        s2 = np.einsum("ij,ij->j", x_hat, x_hat, dtype=np.float64) if dt == np.float32 else \
            np.einsum("ij,ij->j", x_hat, x_hat)
        delta = s1 / n
        var = np.maximum((s2 - s1 * delta) / (n - ddof), 0.0)
        mean = shift + delta
        if not (np.isfinite(var).all() and np.isfinite(mean).all()):
            return None
        pos = var[var > 0]
        if pos.size and (float(pos.min()) < (1e-30 if dt == np.float32 else 1e-250)):
            return None     # squares near underflow: the reference decides
        inv_std = (1.0 / np.sqrt(var + layer.eps)).astype(dt)
        if not np.isfinite(inv_std).all() or not np.isfinite(var.astype(dt)).all():
            return None
        x_hat -= delta.astype(dt)
        x_hat *= inv_std
        np.multiply(x_hat, p["gamma"], out=out)
        out += p["beta"]
        mask = None
        if relu:
            mask = out > 0
            np.multiply(out, mask, out=out)
        return (mean.astype(dt), var.astype(dt), x_hat, inv_std, mask, ddof)

    def _bn_numpy_backward(self, g, cache, p, grads, relu, out):
        """Batch norm's backward, in place::

            dβ = 1ᵀG,   dγ = 1ᵀ(G∘X̂),   dZ = [G − 1dβᵀ/N − X̂ diag(dγ)/(N − ddof)] diag(γ∘s)
        """
        _, _, x_hat, inv_std, mask, ddof = cache
        n = x_hat.shape[0]
        dt = x_hat.dtype
        if relu:
            g = g * mask
        dbeta = np.add.reduce(g, axis=0, dtype=np.float64)
        np.multiply(g, x_hat, out=out)
        dgamma = np.add.reduce(out, axis=0, dtype=np.float64)
        if not (np.isfinite(dgamma).all() and np.isfinite(dbeta).all()):
            return False
        np.multiply(x_hat, (dgamma / (n - ddof)).astype(dt), out=out)
        np.subtract(g, out, out=out)
        out -= (dbeta / n).astype(dt)
        out *= p["gamma"] * inv_std
        grads["gamma"][...] = dgamma
        grads["beta"][...] = dbeta
        return True


def _updated(layer, state, batch_mean, batch_var):
    """``BatchNorm._updated_state`` without its checks (done once by fast_step)."""
    if "count" in state:
        count = int(state["count"])
        w = min(layer.decay, count / (count + 1.0))
        extra = {"count": np.asarray(count + 1, dtype=np.int64)}
    else:
        w, extra = layer.decay, {}
    if w == 0.0:
        return {"mean": batch_mean, "var": batch_var, **extra}
    return {"mean": w * state["mean"] + (1.0 - w) * batch_mean,
            "var": w * state["var"] + (1.0 - w) * batch_var, **extra}
