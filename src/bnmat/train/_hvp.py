"""Hessian-vector products of the training loss, by reverse-over-reverse closed forms.

For a chain ``X₀ = x, X_{l+1} = f_l(X_l, θ_l)``, loss ``R = ℓ(X_L)``, the
first-order backward computes ``G_L = ℓ′(X_L)`` and
``(G_l, ∂R/∂θ_l) = b_l(G_{l+1}; X_l, θ_l)``. The Hessian-vector product
``H v = ∇_θ ⟨v, ∇_θ R⟩`` is the gradient of ``S = Σ_l ⟨v_l, ∂R/∂θ_l⟩`` and is
computed in two sweeps:

1. Through the backward, in the order it ran (l = 0, 1, …, L−1): the double
   backward of b_l with cotangents ``(ddX, ddθ) = (c_l, v_l)`` (``c_0 = 0``)
   gives ``c_{l+1} = ∂S/∂G_{l+1}``, and direct terms ``x̄_l = ∂S/∂X_l``,
   ``θ̄_l = ∂S/∂θ_l``.
2. The loss's double backward turns ``c_L`` into ``a_L = ℓ″(X_L) c_L``, and the
   ordinary backward runs once more: ``(a_l, ∂θ_l) = b_l(a_{l+1})``, adding
   ``x̄_l`` to ``a_l`` and ``θ̄_l`` to ``∂θ_l``; ``(H v)_l = ∂θ_l + θ̄_l``.

So a Hessian-vector product costs about three backward passes and no
finite-difference step. Batch norm is in training mode (batch statistics), so
its mean and variance are differentiated through, as in the loss ``fit`` and
``fit_lbfgs`` minimize.
"""

from __future__ import annotations

import numpy as np

from .. import ops
from .._array_api import get_namespace
from ..layers.activations import Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from ..layers.batchnorm import BatchNorm
from ..layers.dense import Dense
from ..layers.sequential import Sequential
from ._grad import _match_target, check_l2

__all__ = ["hvp", "value_grad_hvp"]

_ACTIVATION_NAMES = {ReLU: "relu", LeakyReLU: "leaky_relu", Tanh: "tanh", Sigmoid: "sigmoid",
                     Softplus: "softplus", Identity: "identity"}
_HVP_LOSSES = ("sse", "mse", "softmax_cross_entropy")


def _leaf_layers(net, params, v, path=(), state=None):
    """Flatten nested Sequentials into ``(layer, params, v, path, state)`` in forward order."""
    if isinstance(net, Sequential):
        if not isinstance(params, (list, tuple)) or len(params) != len(net.layers):
            raise ValueError(f"params must be a list with one entry per layer ({len(net.layers)})")
        if not isinstance(v, (list, tuple)) or len(v) != len(net.layers):
            raise ValueError("v must have the structure of params (one entry per layer)")
        states = state if isinstance(state, (list, tuple)) else [None] * len(net.layers)
        out = []
        for i, (layer, p, vi, si) in enumerate(zip(net.layers, params, v, states)):
            out += _leaf_layers(layer, p, vi, path + (i,), si)
        return out
    supported = (Dense, BatchNorm, *_ACTIVATION_NAMES, *_extra_layers())
    if not isinstance(net, supported):
        raise TypeError(
            f"hvp supports Sequential networks of Dense, BatchNorm, LayerNorm, BatchRenorm "
            f"and the activation layers; got {type(net).__name__}"
        )
    if set(v) != set(params):
        raise ValueError(f"v at layer {path} must have the keys {sorted(params)}; got {sorted(v)}")
    return [(net, params, v, path, {} if state is None else state)]


def _extra_layers():
    return tuple(_norm_family().keys())


def _norm_family():
    """Layers whose op modules provide forward/backward/double backward (issue 12)."""
    from ..layers.batch_renorm import BatchRenorm
    from ..layers.layernorm import LayerNorm

    return {LayerNorm: "layernorm", BatchRenorm: "batch_renorm"}


def _forward(layer, p, x, w=None, s=None):
    if isinstance(layer, Dense):
        return ops.dense_forward(x, p["w"], p.get("b"))
    if isinstance(layer, BatchNorm):
        return _batchnorm_forward(layer, p, x, w)
    if type(layer) in _ACTIVATION_NAMES:
        name = _ACTIVATION_NAMES[type(layer)]
        if name == "leaky_relu":
            return ops.leaky_relu_forward(x, layer.negative_slope)
        return ops.ACTIVATIONS[name][0](x)
    y, _, cache = layer.forward(p, {} if s is None else s, x, training=True)
    return y, cache


def _batchnorm_forward(layer, p, x, w=None):
    gamma, beta = _bn_affine(layer, p, x)
    weights = {} if w is None else {"weights": w}
    return ops.batchnorm_forward(x, gamma, beta, eps=layer.eps, ddof=layer.ddof, **weights)


def _bn_affine(layer, p, x):
    """γ and β, with the fixed 1 and 0 of a layer built with scale/center off."""
    xp = get_namespace(x)
    width = x.shape[1]
    gamma = p["gamma"] if "gamma" in p else xp.ones(width, dtype=x.dtype)
    beta = p["beta"] if "beta" in p else xp.zeros(width, dtype=x.dtype)
    return gamma, beta


def _backward(layer, dy, cache, p):
    """``(dX, grads dict)`` of one layer's first-order backward."""
    if isinstance(layer, Dense):
        dx, dw, db = ops.dense_backward(dy, cache)
        return dx, ({"w": dw, "b": db} if "b" in p else {"w": dw})
    if isinstance(layer, BatchNorm):
        dx, dgamma, dbeta = ops.batchnorm_backward(dy, cache)
        return dx, _bn_grads(p, dgamma, dbeta)
    if type(layer) in _ACTIVATION_NAMES:
        name = _ACTIVATION_NAMES[type(layer)]
        return ops.ACTIVATIONS[name][1](dy, cache), {}
    return layer.backward(dy, cache)


def _bn_grads(p, dgamma, dbeta):
    out = {}
    if "gamma" in p:
        out["gamma"] = dgamma
    if "beta" in p:
        out["beta"] = dbeta
    return out


def _double_backward(layer, ddx, v, dy, cache, p):
    """``(ddY, x̄, θ̄ dict)`` of one layer's double backward; ddx None means zero."""
    xp = get_namespace(dy)
    if isinstance(layer, Dense):
        out = ops.dense_double_backward(ddx, v["w"], v.get("b"), dy, cache)
        grads = {"w": out.dw}
        if "b" in p:
            grads["b"] = xp.zeros_like(p["b"])
        return out.ddy, out.dx, grads
    x_shape = _input_shape(layer, cache, dy)
    if ddx is None:
        ddx = xp.zeros(x_shape, dtype=dy.dtype)
    if isinstance(layer, BatchNorm):
        out = ops.batchnorm_double_backward(ddx, v.get("gamma"), v.get("beta"), dy, cache)
        grads = {}
        if "gamma" in p:
            grads["gamma"] = out.dgamma
        if "beta" in p:
            grads["beta"] = xp.zeros_like(p["beta"])
        return out.ddy, out.dx, grads
    if type(layer) in _ACTIVATION_NAMES:
        out = ops.activation_double_backward(_ACTIVATION_NAMES[type(layer)], ddx, dy, cache)
        return out.ddy, out.dx, {}
    return layer.double_backward(ddx, v, dy, cache)


def _input_shape(layer, cache, dy):
    return tuple(dy.shape)          # every non-Dense layer here maps (N, p) to (N, p)


def _set(tree, path, value):
    for i in path[:-1]:
        tree = tree[i]
    tree[path[-1]] = value


def _empty_like(net):
    if isinstance(net, Sequential):
        return [_empty_like(layer) for layer in net.layers]
    return None


def value_grad_hvp(net, params, state, x, y, v, *, loss="sse", l2: float = 0.0,
                   sample_weight=None):
    """The training loss, its gradient and its Hessian-vector product, in one pass.

    Parameters
    ----------
    As in :func:`hvp`.

    Returns
    -------
    loss : float
    grads : list
        ∇R, shaped like ``params``.
    hv : list
        H v, shaped like ``params``.
    """
    l2 = check_l2(l2)
    if not isinstance(loss, str) or loss not in _HVP_LOSSES:
        raise ValueError(f"hvp supports the losses {_HVP_LOSSES}; got {loss!r}")
    leaves = _leaf_layers(net, params, v, state=state)
    wx = None
    loss_fwd, loss_bwd = ops.LOSSES[loss]
    if sample_weight is not None:
        from ._weighted import as_weights_like, check_sample_weight, weighted_loss_pair
        sample_weight = check_sample_weight(sample_weight, x.shape[0])
        wx = as_weights_like(sample_weight, x)
        loss_fwd, loss_bwd = weighted_loss_pair(loss, sample_weight)
    # forward (training mode, batch statistics)
    caches, h = [], x
    for layer, p, _, _, s in leaves:
        if wx is not None and not isinstance(layer, (Dense, BatchNorm, *_ACTIVATION_NAMES)):
            raise TypeError(f"hvp with sample weights supports Dense, BatchNorm and "
                            f"activation layers; got {type(layer).__name__}")
        h, cache = _forward(layer, p, h, wx, s)
        caches.append(cache)
    target = _match_target(h, y, loss)
    value, loss_cache = loss_fwd(h, target)
    # first-order backward, keeping every layer's upstream gradient G_{l+1}
    dys, grads = [None] * len(leaves), [None] * len(leaves)
    g = loss_bwd(1.0, loss_cache)
    for i in range(len(leaves) - 1, -1, -1):
        layer, p = leaves[i][:2]
        dys[i] = g
        g, grads[i] = _backward(layer, g, caches[i], p)
    # sweep 1: double backward, in the order the backward ran
    c, xbars, thetabars = None, [None] * len(leaves), [None] * len(leaves)
    for i, (layer, p, vi, _, _) in enumerate(leaves):
        c, xbars[i], thetabars[i] = _double_backward(layer, c, vi, dys[i], caches[i], p)
    # the loss's double backward, then sweep 2: an ordinary backward of a_L
    if wx is None:
        a = ops.loss_double_backward(loss, c, 1.0, loss_cache).dy_pred
    else:  # the weighted backward is W·(scale ratio)·(the unweighted one): linear in c
        inner, wc, scale = loss_cache
        a = ops.loss_double_backward(loss, wc * c * (scale / inner.scale), 1.0,
                                     inner).dy_pred
    hv = [None] * len(leaves)
    for i in range(len(leaves) - 1, -1, -1):
        layer, p, vi = leaves[i][:3]
        a, da = _backward(layer, a, caches[i], p)
        hv[i] = {k: da[k] + thetabars[i][k] for k in p}
        if l2 and "w" in p and isinstance(layer, Dense):
            hv[i]["w"] = hv[i]["w"] + l2 * vi["w"]
        a = a + xbars[i]
    value = float(value)
    if l2:
        for i, (layer, p) in enumerate(leaf[:2] for leaf in leaves):
            if isinstance(layer, Dense):
                xp = get_namespace(p["w"])
                value += 0.5 * l2 * float(xp.sum(p["w"] * p["w"]))
                grads[i] = {**grads[i], "w": grads[i]["w"] + l2 * p["w"]}
    return value, _restore(net, leaves, grads), _restore(net, leaves, hv)


def _restore(net, leaves, values):
    if not isinstance(net, Sequential):
        return values[0]
    tree = _empty_like(net)
    for (_, _, _, path, _), val in zip(leaves, values):
        _set(tree, path, val)
    return tree


def hvp(net, params, state, x, y, v, *, loss: str = "sse", l2: float = 0.0,
        sample_weight=None):
    """Hessian-vector product ``H v`` of the training loss with respect to the parameters.

    ``H = ∂²R/∂θ∂θᵀ`` of the training-mode loss (batch statistics, the mean
    and variance of every batch norm differentiated through), applied to ``v``
    without forming H, by the closed-form double backward of every op (see
    the module docstring of ``bnmat.train._hvp`` and ``docs/derivation.md``).

    Parameters
    ----------
    net : Sequential
        Of Dense, BatchNorm, LayerNorm and activation layers (nested
        Sequentials allowed).
    params : list
        From ``net.init``.
    state : list
        Read only by layers whose training output depends on stored
        statistics (:class:`~bnmat.layers.BatchRenorm`: r and d, held constant).
    x : array, shape (N, p)
    y : array, shape (N,) or (N, k)
    v : list
        A direction shaped like ``params`` (the same keys and shapes).
    loss : {"sse", "mse", "softmax_cross_entropy"}, default "sse"
    l2 : float, default 0
        Adds ``½ l2 Σ‖W‖²`` to the loss and ``l2 v_W`` to H v.
    sample_weight : array_like, shape (N,), optional
        Frequency weights (weighted loss and batch statistics), as in
        :func:`bnmat.value_and_grad`.

    Returns
    -------
    hv : list
        H v, shaped like ``params``.

    Examples
    --------
    >>> import numpy as np, bnmat
    >>> rng = np.random.default_rng(0)
    >>> x, y = rng.normal(size=(10, 3)), rng.normal(size=10)
    >>> net = bnmat.Sequential([bnmat.Dense(4, bias=False), bnmat.BatchNorm(),
    ...                         bnmat.Tanh(), bnmat.Dense(1)])
    >>> params, state = net.init(x, seed=0)
    >>> hv = bnmat.hvp(net, params, state, x, y, params)
    >>> [sorted(h) for h in hv]
    [['w'], ['beta', 'gamma'], [], ['b', 'w']]
    """
    return value_grad_hvp(net, params, state, x, y, v, loss=loss, l2=l2,
                          sample_weight=sample_weight)[2]

