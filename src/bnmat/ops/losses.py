"""Losses ``R(ŷ, y)`` and their gradient with respect to the prediction ŷ.

Each forward returns the loss as a 0-d array in the prediction's dtype; each
backward takes the scalar upstream gradient ``dloss`` (1.0 for the loss itself)
and returns ``∂R/∂ŷ`` as one array of ŷ's shape.
"""

from __future__ import annotations

from typing import NamedTuple

from .._array_api import Array, as_float, check_finite, get_namespace

__all__ = [
    "LOSSES",
    "sse_forward", "sse_backward",
    "mse_forward", "mse_backward",
    "softmax_cross_entropy_forward", "softmax_cross_entropy_backward",
    "log_softmax",
]


class LossCache(NamedTuple):
    residual: Array   # (N,) or (N, k): ŷ − y (squared losses) or softmax(ŷ) (cross-entropy)
    y: Array          # the target, as float
    scale: float      # the loss's normalising constant's inverse (1, 1/(N·k) or 1/N)


def _prepare(y_pred, y):
    xp = get_namespace(y_pred, y)
    y_pred = as_float(y_pred, "y_pred", xp)
    y = xp.astype(as_float(y, "y", xp), y_pred.dtype, copy=False)
    if tuple(y_pred.shape) != tuple(y.shape):
        raise ValueError(
            f"y_pred and y must have the same shape; got {tuple(y_pred.shape)} and "
            f"{tuple(y.shape)}"
        )
    if y_pred.ndim not in (1, 2) or y_pred.shape[0] == 0:
        raise ValueError(
            f"y_pred must have shape (N,) or (N, k) with N >= 1; got {tuple(y_pred.shape)}"
        )
    check_finite(y_pred, "y_pred", xp)
    check_finite(y, "y", xp)
    return xp, y_pred, y


def _checked(loss, xp):
    if not bool(xp.isfinite(loss)):
        raise ValueError(
            f"the loss is not finite ({float(loss)}): the values of y_pred or y overflow"
        )
    return loss


def _scale_dloss(dloss, cache):
    return float(dloss) * cache.scale


def sse_forward(y_pred, y):
    """Sum of squared errors ``R = Σ (y − ŷ)²``.

    Parameters
    ----------
    y_pred : array, shape (N,) or (N, k)
    y : array, same shape

    Returns
    -------
    loss : 0-d array
    cache : LossCache
    """
    xp, y_pred, y = _prepare(y_pred, y)
    r = y_pred - y
    return _checked(xp.sum(r * r), xp), LossCache(r, y, 1.0)


def sse_backward(dloss, cache):
    """Backward of :func:`sse_forward`.

    Formula::

        ∂R/∂ŷ = 2 (ŷ − y) · dloss

    Parameters
    ----------
    dloss : float or 0-d array
    cache : LossCache

    Returns
    -------
    dy_pred : array, shape of y_pred
    """
    return (2.0 * _scale_dloss(dloss, cache)) * cache.residual


def mse_forward(y_pred, y):
    """Mean squared error over all entries, ``R = Σ (y − ŷ)² / (N·k)``.

    For one output (shape (N,) or (N, 1)) this is ``Σ (y − ŷ)²/N``.

    Parameters
    ----------
    y_pred : array, shape (N,) or (N, k)
    y : array, same shape

    Returns
    -------
    loss : 0-d array
    cache : LossCache
    """
    xp, y_pred, y = _prepare(y_pred, y)
    r = y_pred - y
    scale = 1.0 / (r.shape[0] * (r.shape[1] if r.ndim == 2 else 1))
    return _checked(xp.sum(r * r) * scale, xp), LossCache(r, y, scale)


def mse_backward(dloss, cache):
    """Backward of :func:`mse_forward`.

    Formula::

        ∂R/∂ŷ = 2 (ŷ − y) · dloss / (N·k)

    Parameters
    ----------
    dloss : float or 0-d array
    cache : LossCache

    Returns
    -------
    dy_pred : array, shape of y_pred
    """
    return (2.0 * _scale_dloss(dloss, cache)) * cache.residual


def log_softmax(logits, xp=None):
    """Row-wise ``log softmax``, stable for large logits.

    Parameters
    ----------
    logits : array, shape (N, k)

    Returns
    -------
    array, shape (N, k)
    """
    xp = get_namespace(logits, xp=xp)
    shifted = logits - xp.max(logits, axis=1, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=1, keepdims=True))


def softmax_cross_entropy_forward(y_pred, y):
    """Softmax cross-entropy, averaged over rows.

    Formula::

        R = −(1/N) Σ_i Σ_j y_ij log softmax(ŷ_i)_j

    Parameters
    ----------
    y_pred : array, shape (N, k)
        Logits.
    y : array, shape (N, k)
        Targets: one-hot rows or class probabilities.

    Returns
    -------
    loss : 0-d array
    cache : LossCache
    """
    xp, y_pred, y = _prepare(y_pred, y)
    if y_pred.ndim != 2:
        raise ValueError(
            f"softmax cross-entropy needs logits of shape (N, k); got {tuple(y_pred.shape)}"
        )
    logp = log_softmax(y_pred, xp)
    scale = 1.0 / y_pred.shape[0]
    loss = -xp.sum(y * logp) * scale
    return _checked(loss, xp), LossCache(xp.exp(logp), y, scale)


def softmax_cross_entropy_backward(dloss, cache):
    """Backward of :func:`softmax_cross_entropy_forward`.

    Formula (P = softmax(ŷ) row-wise)::

        ∂R/∂ŷ = (P diag-rows(Y1) − Y) · dloss / N

    which is ``(P − Y)·dloss/N`` when each row of Y sums to one.

    Parameters
    ----------
    dloss : float or 0-d array
    cache : LossCache

    Returns
    -------
    dy_pred : array, shape (N, k)
    """
    xp = get_namespace(cache.residual)
    p, y = cache.residual, cache.y
    row_mass = xp.sum(y, axis=1, keepdims=True)
    return _scale_dloss(dloss, cache) * (p * row_mass - y)


#: name -> (forward, backward)
LOSSES = {
    "sse": (sse_forward, sse_backward),
    "mse": (mse_forward, mse_backward),
    "softmax_cross_entropy": (softmax_cross_entropy_forward, softmax_cross_entropy_backward),
}
