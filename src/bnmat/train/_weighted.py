"""Row (sample) weights in training: weighted losses, weighted batch statistics.

Frequency-weight convention throughout: a row of integer weight k counts as k
copies of the row, in the loss and in every batch norm's batch statistics
(:func:`bnmat.ops.batchnorm_forward` with ``weights=``)::

    sse:  R = Σᵢ wᵢ Σⱼ (ŷᵢⱼ − yᵢⱼ)²              ∂R/∂ŷ = 2 W (Ŷ − Y)
    mse:  R = Σᵢ wᵢ Σⱼ (ŷᵢⱼ − yᵢⱼ)² / (1ᵀw · k)    ∂R/∂ŷ = 2 W (Ŷ − Y)/(1ᵀw · k)
    softmax_cross_entropy:
          R = −Σᵢ wᵢ Σⱼ yᵢⱼ log pᵢⱼ / 1ᵀw          ∂R/∂ŷ = W (P diag-rows(Y1) − Y)/1ᵀw

Weighted networks run on the reference path (no fused batch-norm + ReLU kernel).
Supported: :class:`~bnmat.layers.Sequential` (nested) of Dense, BatchNorm,
activation layers and the other layers without batch statistics.
"""

from __future__ import annotations

import numpy as np
import array_api_compat

from .. import ops
from .._array_api import as_float, check_finite, get_namespace, to_numpy
from ..layers.batchnorm import BatchNorm
from ..layers.group_batchnorm import GroupBatchNorm
from ..layers.sequential import Sequential

__all__ = ["check_sample_weight", "weighted_loss_pair", "weighted_forward",
           "weighted_backward", "weighted_population_statistics"]

_WEIGHTED_LOSSES = ("sse", "mse", "softmax_cross_entropy")


def check_sample_weight(sample_weight, n_rows: int):
    """Validate sample weights: (N,), finite, ≥ 0, not all zero; returns float64 NumPy."""
    w = np.asarray(to_numpy(sample_weight) if hasattr(sample_weight, "shape")
                   else sample_weight, dtype=np.float64)
    if w.ndim != 1 or w.shape[0] != n_rows:
        raise ValueError(f"sample_weight must have shape ({n_rows},), one per row of X; got "
                         f"shape {w.shape}")
    check_finite(w, "sample_weight")
    if np.any(w < 0):
        raise ValueError("sample_weight must be >= 0; got a negative weight")
    if not np.sum(w) > 0:
        raise ValueError("sample_weight is zero everywhere (the weights sum to zero): no row "
                         "would count")
    return w


def weighted_loss_pair(name: str, w):
    """``(forward, backward)`` of a weighted loss in the :mod:`bnmat.ops.losses` convention."""
    if name not in _WEIGHTED_LOSSES:
        raise ValueError(f"sample weights support the losses {_WEIGHTED_LOSSES}; got {name!r}")
    base_forward, base_backward = ops.LOSSES[name]

    def forward(y_pred, y):
        xp = get_namespace(y_pred)
        wv = xp.astype(xp.asarray(w, device=array_api_compat.device(y_pred)), y_pred.dtype)
        wc = xp.reshape(wv, (-1,) + (1,) * (y_pred.ndim - 1))
        total = float(np.sum(to_numpy(w)))
        _, cache = base_forward(y_pred, y)          # validation, residuals, softmax
        if name == "sse":
            r = cache.residual
            value = xp.sum(wc * r * r)
            scale = 1.0
        elif name == "mse":
            r = cache.residual
            k = r.shape[1] if r.ndim == 2 else 1
            scale = 1.0 / (total * k)
            value = xp.sum(wc * r * r) * scale
        else:
            logp = ops.log_softmax(y_pred, xp)
            scale = 1.0 / total
            value = -xp.sum(wc * xp.astype(y, y_pred.dtype) * logp) * scale
        return value, (cache, wc, scale)

    def backward(dloss, cache):
        inner, wc, scale = cache
        # the unweighted backward's scale is undone and the weighted one applied
        return wc * (base_backward(dloss, inner) * (scale / inner.scale))

    return forward, backward


def _leaves(net, params, state, path=()):
    if isinstance(net, Sequential):
        out = []
        for i, (layer, p, s) in enumerate(zip(net.layers, params, state)):
            out += _leaves(layer, p, s, path + (i,))
        return out
    if isinstance(net, GroupBatchNorm) or getattr(net, "uses_groups", False):
        raise TypeError("sample weights are not supported with GroupBatchNorm")
    if hasattr(net, "_modules") and not isinstance(net, Sequential):
        raise TypeError(f"sample weights support Sequential networks; got {type(net).__name__}")
    if hasattr(net, "population_state") and not isinstance(net, BatchNorm):
        # its training output depends on the batch, and it has no weighted statistics
        raise TypeError(f"sample weights are not supported with {type(net).__name__} (its "
                        "batch statistics would ignore the weights); use BatchNorm")
    return [(net, params, state, path)]


def _set(tree, path, value):
    for i in path[:-1]:
        tree = tree[i]
    tree[path[-1]] = value


def _skeleton(net):
    if isinstance(net, Sequential):
        return [_skeleton(layer) for layer in net.layers]
    return None


def _restore(net, leaves, values):
    if not isinstance(net, Sequential):
        return values[0]
    tree = _skeleton(net)
    for (_, _, _, path), val in zip(leaves, values):
        _set(tree, path, val)
    return tree


def weighted_forward(net, params, state, x, w, *, training: bool):
    """Forward with weighted batch statistics; returns ``(y, new_state, (leaves, caches))``."""
    leaves = _leaves(net, params, state)
    h, new_states, caches = x, [], []
    for layer, p, s, _ in leaves:
        if isinstance(layer, BatchNorm):   # inference ignores w unless batch statistics
            h, s_new, cache = layer.forward(p, s, h, training=training, sample_weight=w)
        else:
            h, s_new, cache = layer.forward(p, s, h, training=training)
        new_states.append(s_new)
        caches.append(cache)
    return h, _restore(net, leaves, new_states), (leaves, caches)


def weighted_backward(net, dy, cache):
    """Backward of :func:`weighted_forward`; returns the parameter gradients (params' tree)."""
    leaves, caches = cache
    grads = [None] * len(leaves)
    for i in range(len(leaves) - 1, -1, -1):
        dy, grads[i] = leaves[i][0].backward(dy, caches[i])
    return _restore(net, leaves, grads)


def weighted_population_statistics(net, params, state, x, w):
    """Every batch norm's stored statistics set to the weighted statistics of all rows.

    One pass over all rows in training mode with the weights (the weighted
    analogue of :func:`bnmat.train.population_statistics` with one chunk).
    """
    leaves = _leaves(net, params, state)
    h, new_states = x, []
    for layer, p, s, _ in leaves:
        if isinstance(layer, BatchNorm):
            h, s_new, cache = layer.forward(p, s, h, training=True, sample_weight=w)
            s_new = {**s, "mean": cache.mean, "var": cache.var}
        else:
            h, s_new, _ = layer.forward(p, s, h, training=True)
        new_states.append(s_new)
    return _restore(net, leaves, new_states)


def as_weights_like(w, x):
    """Weights as an array of x's namespace and float dtype."""
    xp = get_namespace(x)
    # x[:0, ...]: the array API indexes every axis; the weights on x's device
    w = xp.asarray(np.asarray(to_numpy(w)), device=array_api_compat.device(x))
    return xp.astype(w, as_float(x[:0, ...], "x", xp).dtype)


def weighted_value_and_grad(net, params, state, x, y, loss, *, training, l2, sample_weight):
    """:func:`bnmat.value_and_grad` with row weights (called by it when given)."""
    from ._loss import _add_l2, _match_target, l2_penalty

    if not isinstance(loss, str):
        raise ValueError("sample weights need a named loss ('sse', 'mse' or "
                         "'softmax_cross_entropy')")
    w = check_sample_weight(sample_weight, x.shape[0])
    forward, backward = weighted_loss_pair(loss, w)
    wx = as_weights_like(w, x)
    y_pred, new_state, cache = weighted_forward(net, params, state, x, wx, training=training)
    target = _match_target(y_pred, y, loss)
    value, loss_cache = forward(y_pred, target)
    grads = weighted_backward(net, backward(1.0, loss_cache), cache)
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"the loss is not finite ({value})")
    if l2:
        value += l2_penalty(params, l2)
        grads = _add_l2(grads, params, l2)
    return value, grads, new_state
