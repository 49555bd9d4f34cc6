"""Elementwise activations ``H = a(B)`` and their backward ``dB = dH ∘ a′(B)``.

Each backward returns the one gradient array itself (activations have a single
differentiable input). The caches hold what the derivative is cheapest to
compute from: the input for ReLU, leaky ReLU and softplus, the output for tanh
and sigmoid.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from .._array_api import as_float, get_namespace
from ._types import ActivationCache

__all__ = [
    "ACTIVATIONS",
    "relu_forward", "relu_backward",
    "leaky_relu_forward", "leaky_relu_backward",
    "tanh_forward", "tanh_backward",
    "sigmoid_forward", "sigmoid_backward",
    "softplus_forward", "softplus_backward",
    "identity_forward", "identity_backward",
]


def _prepare(x):
    xp = get_namespace(x)
    return xp, as_float(x, "x", xp)


def _check_dy(dy, saved, xp):
    if tuple(dy.shape) != tuple(saved.shape):
        raise ValueError(f"dy must have shape {tuple(saved.shape)}; got {tuple(dy.shape)}")
    return xp.astype(as_float(dy, "dy", xp), saved.dtype, copy=False)


def _sigmoid(x, xp):
    # exp of a non-positive number never overflows.
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


class _Rule(NamedTuple):
    """One activation: a(B), and G ∘ a′(B) written from what the cache holds."""

    value: Callable      # (x, xp, slope) -> a(x)
    backward: Callable   # (g, saved, xp, slope) -> G ∘ a′(B)
    saves: str           # "input" (B) or "output" (H = a(B)): what the cache holds


# Masks by xp.where, never bool × float (not portable across array libraries);
# tanh and sigmoid differentiate from their output, the others from their input.
_RULES = {
    "relu": _Rule(lambda x, xp, s: xp.where(x > 0, x, xp.zeros_like(x)),
                  lambda g, b, xp, s: xp.where(b > 0, g, xp.zeros_like(g)), "input"),
    "leaky_relu": _Rule(lambda x, xp, s: xp.where(x > 0, x, s * x),
                        lambda g, b, xp, s: xp.where(b > 0, g, s * g), "input"),
    "tanh": _Rule(lambda x, xp, s: xp.tanh(x),
                  lambda g, h, xp, s: g * (1.0 - h * h), "output"),
    "sigmoid": _Rule(lambda x, xp, s: _sigmoid(x, xp),
                     lambda g, h, xp, s: g * h * (1.0 - h), "output"),
    "softplus": _Rule(lambda x, xp, s: (xp.where(x > 0, x, xp.zeros_like(x))
                                        + xp.log1p(xp.exp(-xp.abs(x)))),
                      lambda g, b, xp, s: g * _sigmoid(b, xp), "input"),
    "identity": _Rule(lambda x, xp, s: x, lambda g, b, xp, s: g, "input"),
}


def _forward(name: str, x, slope: float = 0.0):
    rule = _RULES[name]
    xp, x = _prepare(x)
    y = rule.value(x, xp, slope)
    return y, ActivationCache(y if rule.saves == "output" else x, float(slope))


def _backward(name: str, dy, cache):
    xp = get_namespace(dy, cache.saved)
    return _RULES[name].backward(_check_dy(dy, cache.saved, xp), cache.saved, xp, cache.slope)


def relu_forward(x):
    """ReLU, ``a(B) = max(B, 0)``.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    y : array, same shape
    cache : ActivationCache (holds x)
    """
    from .. import _kernels  # one-pass CPU kernel for NumPy input

    if _kernels.relu_forward_applies(x):
        return _kernels.relu_forward(x)
    return _forward("relu", x)


def relu_backward(dy, cache):
    """Backward of :func:`relu_forward`.

    Formula::

        dB = G ∘ 1[B > 0]

    The derivative at 0 is taken as 0. (Not "negatives to 0, then everything
    ≥ 0 to 1": that returns all ones.)

    Parameters
    ----------
    dy : array, same shape as x
    cache : ActivationCache

    Returns
    -------
    dx : array, same shape as x
    """
    from .. import _kernels  # one-pass CPU kernel for NumPy input

    if _kernels.relu_backward_applies(dy, cache):
        return _kernels.relu_backward(dy, cache)
    return _backward("relu", dy, cache)


def leaky_relu_forward(x, negative_slope: float = 0.01):
    """Leaky ReLU, ``a(B) = B`` where B > 0, else ``negative_slope · B``.

    Parameters
    ----------
    x : array, any shape
    negative_slope : float, default 0.01

    Returns
    -------
    y : array, same shape
    cache : ActivationCache (holds x and the slope)
    """
    return _forward("leaky_relu", x, negative_slope)


def leaky_relu_backward(dy, cache):
    """Backward of :func:`leaky_relu_forward`.

    Formula::

        dB = G ∘ (1[B > 0] + α 1[B ≤ 0])

    Parameters
    ----------
    dy : array, same shape as x
    cache : ActivationCache

    Returns
    -------
    dx : array
    """
    return _backward("leaky_relu", dy, cache)


def tanh_forward(x):
    """Hyperbolic tangent.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    y : array, same shape
    cache : ActivationCache (holds y)
    """
    return _forward("tanh", x)


def tanh_backward(dy, cache):
    """Backward of :func:`tanh_forward`.

    Formula::

        dB = G ∘ (1 − H∘H),   H = tanh(B)

    Parameters
    ----------
    dy : array
    cache : ActivationCache

    Returns
    -------
    dx : array
    """
    return _backward("tanh", dy, cache)


def sigmoid_forward(x):
    """Logistic sigmoid ``1 / (1 + exp(−B))``, computed without overflow.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    y : array, same shape
    cache : ActivationCache (holds y)
    """
    return _forward("sigmoid", x)


def sigmoid_backward(dy, cache):
    """Backward of :func:`sigmoid_forward`.

    Formula::

        dB = G ∘ H ∘ (1 − H),   H = sigmoid(B)

    Parameters
    ----------
    dy : array
    cache : ActivationCache

    Returns
    -------
    dx : array
    """
    return _backward("sigmoid", dy, cache)


def softplus_forward(x):
    """Softplus ``log(1 + exp(B))``, computed as ``max(B, 0) + log1p(exp(−|B|))``.

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    y : array, same shape
    cache : ActivationCache (holds x)
    """
    return _forward("softplus", x)


def softplus_backward(dy, cache):
    """Backward of :func:`softplus_forward`.

    Formula::

        dB = G ∘ sigmoid(B)

    Parameters
    ----------
    dy : array
    cache : ActivationCache

    Returns
    -------
    dx : array
    """
    return _backward("softplus", dy, cache)


def identity_forward(x):
    """Identity, ``a(B) = B`` (a linear output layer).

    Parameters
    ----------
    x : array, any shape

    Returns
    -------
    y : array, the same values
    cache : ActivationCache (holds x, for its shape)
    """
    return _forward("identity", x)


def identity_backward(dy, cache):
    """Backward of :func:`identity_forward`: ``dB = G``.

    Parameters
    ----------
    dy : array
    cache : ActivationCache

    Returns
    -------
    dx : array
    """
    return _backward("identity", dy, cache)


#: name -> (forward, backward); leaky_relu takes ``negative_slope`` as a keyword.
ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "softplus": (softplus_forward, softplus_backward),
    "identity": (identity_forward, identity_backward),
}
