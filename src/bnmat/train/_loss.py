"""The training objective's pieces: losses by name, the L2 penalty, the output's shape.

Shared by :func:`bnmat.value_and_grad` and the weighted and distributed paths
that it hands over to, so that none of those imports another.
"""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from .._array_api import as_float, get_namespace, is_numpy, to_numpy
from ..layers._network import uses_groups
from ..layers.sequential import Sequential
from ._groups import for_layers

__all__ = ["WITHIN_LOSSES", "resolve_loss", "net_kwargs", "l2_penalty", "check_l2"]

#: Losses that project out the group effects of ``groups`` (all factors).
WITHIN_LOSSES = ("within_sse", "within_mse")

#: Tolerance and sweep limit of the alternating projections (two or more factors).
WITHIN_TOL, WITHIN_MAX_ITER = 1e-10, 10_000


def _within_pair(name, groups):
    """The (forward, backward) pair of a within loss for the labels of one batch.

    ``within_sse``: ``R = ‖M(y − ŷ)‖²`` (:func:`bnmat.ops.within_sse_forward`);
    ``within_mse``: the same divided by N·k, so its scale does not grow with
    the batch. ``∂R/∂ŷ = −2 M(y − ŷ)`` (divided by N·k for the mean).
    """
    def forward(y_pred, y):
        value, cache = ops.within_sse_forward(y_pred, y, groups, tol=WITHIN_TOL,
                                              max_iter=WITHIN_MAX_ITER)
        scale = 1.0
        if name == "within_mse":
            scale = 1.0 / float(np.prod(np.shape(y_pred)))
        return value * scale, (cache, scale)

    def backward(dloss, cache):
        inner, scale = cache
        return ops.within_sse_backward(float(dloss) * scale, inner)

    return forward, backward


def resolve_loss(loss, groups=None):
    """``(forward, backward, name)`` of a loss; the within losses need ``groups``."""
    names = sorted(ops.LOSSES) + list(WITHIN_LOSSES)
    if isinstance(loss, str):
        if loss in WITHIN_LOSSES:
            if groups is None:
                raise ValueError(
                    f"loss={loss!r} projects out group effects and needs the group label of "
                    "every row: pass groups= (one label array, or (unit, period) arrays)"
                )
            forward, backward = _within_pair(loss, groups)
            return forward, backward, loss
        try:
            forward, backward = ops.LOSSES[loss]
        except KeyError:
            raise ValueError(
                f"unknown loss {loss!r}; use one of {names} or a (forward, backward) pair"
            ) from None
        return forward, backward, loss
    if isinstance(loss, (tuple, list)) and len(loss) == 2 and all(map(callable, loss)):
        return loss[0], loss[1], None
    raise ValueError(
        f"loss must be one of {names} or a (forward, backward) pair in the "
        f"bnmat.ops.losses convention; got {loss!r}"
    )


def net_kwargs(net, factors) -> dict:
    """``{"groups": first factor}`` when the network has a layer that reads labels."""
    if factors is not None and uses_groups(net):
        return {"groups": for_layers(factors)}
    return {}


def _match_target(y_pred, y, loss_name):
    """Bring ``y`` to ``y_pred``'s shape: (N,) → (N, 1); labels → one-hot for cross-entropy."""
    xp = get_namespace(y_pred)
    if not hasattr(y, "shape"):
        y = np.asarray(y)
    if y.shape[0] != y_pred.shape[0]:
        raise ValueError(
            f"x and y have different numbers of rows: the network's output has "
            f"{y_pred.shape[0]} rows, y has {y.shape[0]}"
        )
    if (loss_name == "softmax_cross_entropy" and y.ndim == 1 and y_pred.ndim == 2
            and y_pred.shape[1] > 1):
        labels = to_numpy(y)
        k = y_pred.shape[1]
        if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= k:
            raise ValueError(
                f"1-D targets for softmax_cross_entropy must be integer class labels in "
                f"0..{k - 1}; pass one-hot rows of shape (N, {k}) otherwise"
            )
        one_hot = np.eye(k, dtype=to_numpy(y_pred[:0]).dtype)[labels]
        return one_hot if is_numpy(xp) else xp.asarray(one_hot)
    y = as_float(y, "y")
    if y.ndim == 1 and y_pred.ndim == 2 and y_pred.shape[1] == 1:
        y = get_namespace(y).reshape(y, (-1, 1))
    return y


def l2_penalty(params, l2: float) -> float:
    """``½ λ Σ ‖W‖²`` over every parameter named ``"w"`` (the Dense weights)."""
    if not l2:
        return 0.0
    total = 0.0
    for w in _weights(params):
        xp = get_namespace(w)
        total += float(xp.sum(w * w))
    return 0.5 * l2 * total


def _weights(tree):
    if isinstance(tree, dict):
        for k, v in tree.items():
            if k == "w" and not isinstance(v, (dict, list, tuple)):
                yield v
            else:
                yield from _weights(v)
    elif isinstance(tree, (list, tuple)):
        for v in tree:
            yield from _weights(v)


def _add_l2(grads, params, l2: float):
    """``∂/∂W (½λ‖W‖²) = λW`` added to each ``"w"`` gradient; other entries kept."""
    if isinstance(params, dict):
        return {k: (grads[k] + l2 * v if k == "w" and not isinstance(v, (dict, list, tuple))
                    else _add_l2(grads[k], v, l2)) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return [_add_l2(g, p, l2) for g, p in zip(grads, params)]
    return grads


def check_l2(l2) -> float:
    if isinstance(l2, bool) or not isinstance(l2, (int, float)) or not (
        math.isfinite(l2) and l2 >= 0
    ):
        raise ValueError(f"l2 must be a finite number >= 0; got {l2!r}")
    return float(l2)


def _backward_without_dx(net, dy, cache):
    """``net.backward(dy, cache)`` when only the parameter gradients are needed.

    A :class:`~bnmat.layers.Sequential` then skips ∂R/∂X of its first Dense
    layer (an N × p matmul whose result would be dropped) and frees each
    layer's activations as soon as its backward pass is done (the cache is
    consumed: it must be one nobody else holds); any other network runs its
    own ``backward``. The gradients are the same either way.
    """
    if type(net) is Sequential:
        # the cache was made by value_and_grad and is dropped after this call
        return net._backward(dy, cache, need_dx=False, consume=True)
    return net.backward(dy, cache)
