"""Elementwise activation layers ``H = a(B)``, each a thin wrapper of its op pair.

No parameters, no state, the same in training and inference mode. Backward is
``dB = dH ∘ a′(B)`` with the derivative stated in each op's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ops
from ._checks import check_generator, check_keys, finite_float, positive_int
from ._registry import register_layer

__all__ = ["ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softplus", "Identity"]


class _Activation:
    """Shared protocol methods; subclasses name their op pair in ``_ops``."""

    _ops: tuple = ()

    def init(self, rng, in_features):
        """No parameters: returns ``(in_features, {}, {})``."""
        check_generator(rng)
        return positive_int(in_features, "in_features"), {}, {}

    def _forward_op(self, x):
        return self._ops[0](x)

    def forward(self, params, state, x, *, training: bool):
        """``H = a(X)``; returns ``(h, state, cache)`` (state unchanged).

        Parameters
        ----------
        params, state : dict
            Empty.
        x : array, any shape (N, p)
        training : bool
            Ignored.
        """
        check_keys(params, (), self)
        y, cache = self._forward_op(x)
        return y, state, cache

    def backward(self, dy, cache):
        """``dX = dH ∘ a′(X)``; returns ``(dx, {})``."""
        return self._ops[1](dy, cache), {}


@register_layer
@dataclass(frozen=True)
class ReLU(_Activation):
    """``a(B) = max(B, 0)``, ``a′(B) = 1[B > 0]`` (0 at B = 0)."""

    _ops = (ops.relu_forward, ops.relu_backward)

    def backward(self, dy, cache):
        """``dX = dH ∘ 1[X > 0]``; returns ``(dx, {})``.

        Also accepts the cache of a ReLU that a :class:`Sequential` fused into
        the batch norm before it (the mask is then recomputed from that cache).
        """
        from ._fused_relu import FusedReLUCache, relu_backward_from_batchnorm

        if isinstance(cache, FusedReLUCache):
            return relu_backward_from_batchnorm(dy, cache), {}
        return super().backward(dy, cache)


@register_layer
@dataclass(frozen=True)
class LeakyReLU(_Activation):
    """``a(B) = B`` for B > 0, ``α B`` otherwise; ``a′(B) = 1[B > 0] + α 1[B ≤ 0]``.

    Parameters
    ----------
    negative_slope : float, default 0.01
        α, the slope for B ≤ 0.
    """

    negative_slope: float = 0.01
    _ops = (ops.leaky_relu_forward, ops.leaky_relu_backward)

    def __post_init__(self):
        object.__setattr__(self, "negative_slope", finite_float(self.negative_slope,
                                                               "negative_slope"))

    def _forward_op(self, x):
        return ops.leaky_relu_forward(x, self.negative_slope)


@register_layer
@dataclass(frozen=True)
class Tanh(_Activation):
    """``a(B) = tanh(B)``, ``a′(B) = 1 − tanh²(B)``."""

    _ops = (ops.tanh_forward, ops.tanh_backward)


@register_layer
@dataclass(frozen=True)
class Sigmoid(_Activation):
    """``a(B) = 1/(1 + e^(−B))``, ``a′(B) = a(B)(1 − a(B))``."""

    _ops = (ops.sigmoid_forward, ops.sigmoid_backward)


@register_layer
@dataclass(frozen=True)
class Softplus(_Activation):
    """``a(B) = log(1 + e^B)``, ``a′(B) = 1/(1 + e^(−B))``."""

    _ops = (ops.softplus_forward, ops.softplus_backward)


@register_layer
@dataclass(frozen=True)
class Identity(_Activation):
    """``a(B) = B``, ``a′(B) = 1``."""

    _ops = (ops.identity_forward, ops.identity_backward)
