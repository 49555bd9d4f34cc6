"""Losses, penalties and whole-network gradients."""

from __future__ import annotations

import math

import numpy as np

from .. import ops
from .._array_api import as_float, get_namespace, is_numpy, to_numpy
from ..optim import Optimizer

__all__ = ["value_and_grad", "loss_value", "l2_penalty", "train_step"]


def resolve_loss(loss):
    if isinstance(loss, str):
        try:
            forward, backward = ops.LOSSES[loss]
        except KeyError:
            raise ValueError(
                f"unknown loss {loss!r}; use one of {sorted(ops.LOSSES)} or a "
                "(forward, backward) pair"
            ) from None
        return forward, backward, loss
    if isinstance(loss, (tuple, list)) and len(loss) == 2 and all(map(callable, loss)):
        return loss[0], loss[1], None
    raise ValueError(
        f"loss must be one of {sorted(ops.LOSSES)} or a (forward, backward) pair in the "
        f"bnmat.ops.losses convention; got {loss!r}"
    )


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


def value_and_grad(net, params, state, x, y, loss="sse", *, training: bool = True,
                   l2: float = 0.0):
    """The loss of a network and its gradient with respect to every parameter.

    Forward through ``net`` (training or inference mode), the loss, then the
    backward passes in reverse order: each layer's closed-form backward applied
    to the upstream gradient.

    Parameters
    ----------
    net : Sequential, Additive or any layer
    params, state : list
        From ``net.init``.
    x : array, shape (N, p)
    y : array, shape (N,) or (N, k)
        A target of shape (N,) is matched to a (N, 1) output. For
        ``"softmax_cross_entropy"`` y is one-hot (N, k) or integer labels (N,).
    loss : {"sse", "mse", "softmax_cross_entropy"} or (forward, backward), default "sse"
        A pair follows the :mod:`bnmat.ops.losses` convention:
        ``forward(y_pred, y) -> (loss, cache)``, ``backward(dloss, cache) -> dy_pred``.
    training : bool, default True
        True: batch statistics (N ≥ 2 rows), the gradient of the training
        objective, running statistics updated in ``new_state``. False: the
        gradient of the inference (``predict``) path, stored statistics held
        fixed, ``new_state`` is ``state``.
    l2 : float, default 0
        Adds ``½ l2 Σ ‖W‖²`` over the Dense weights (entries named ``"w"``) to
        the loss and ``l2 W`` to their gradients.

    Returns
    -------
    loss : float
    grads : list
        Same structure and keys as ``params``.
    new_state : list

    Raises
    ------
    ValueError
        From the ops: a training batch with fewer than 2 rows, non-finite
        values, non-conforming shapes.
    """
    l2 = check_l2(l2)
    forward, backward, name = resolve_loss(loss)
    y_pred, new_state, cache = net.forward(params, state, x, training=training)
    target = _match_target(y_pred, y, name)
    value, loss_cache = forward(y_pred, target)
    dy_pred = backward(1.0, loss_cache)
    _, grads = net.backward(dy_pred, cache)
    value = float(value)
    if l2:
        value += l2_penalty(params, l2)
        grads = _add_l2(grads, params, l2)
    return value, grads, new_state


def loss_value(net, params, state, x, y, loss="sse") -> float:
    """The loss of ``net.predict`` (inference mode, no penalty) on ``(x, y)``."""
    forward, _, name = resolve_loss(loss)
    y_pred = net.predict(params, state, x)
    return float(forward(y_pred, _match_target(y_pred, y, name))[0])


def train_step(net, optimizer: Optimizer, params, state, opt_state, x, y, loss="mse", *,
               l2: float = 0.0):
    """One training-mode gradient step on the batch ``(x, y)``.

    Returns
    -------
    loss : float
        The batch loss before the step (penalty included).
    params, state, opt_state
        Updated (new objects; the inputs are not modified).
    """
    value, grads, state = value_and_grad(net, params, state, x, y, loss, l2=l2)
    params, opt_state = optimizer.update(grads, opt_state, params)
    return value, params, state, opt_state
