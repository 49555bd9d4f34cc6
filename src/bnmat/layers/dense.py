"""The dense (affine) layer ``Y = X W + 1 bᵀ`` as a configuration object."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ops
from ._checks import check_generator, check_keys, positive_int
from ._registry import register_layer

__all__ = ["Dense"]

_INITS = ("he", "glorot")


@register_layer
@dataclass(frozen=True, init=False)
class Dense:
    """Fully connected layer ``Y = X W + 1 bᵀ`` (weights ``(in, out)``).

    Parameters
    ----------
    units : int
        Number of output columns p_out.
    bias : bool, default True
        Whether the layer has the intercept b. A bias directly before a
        :class:`BatchNorm` is redundant (its gradient is exactly zero), so the
        usual block is ``Dense(k, bias=False), BatchNorm(), ReLU()``.
    weight_init : {"he", "glorot"}, default "he"
        Distribution of the initial W (b starts at 0); may also be passed as
        ``init=`` (the field cannot be called ``init``, which is the method):

        * ``"he"``: ``N(0, 2/p_in)`` (He et al., 2015), for ReLU-type activations;
        * ``"glorot"``: ``U(−a, a)`` with ``a = √(6/(p_in + p_out))`` (Glorot and
          Bengio, 2010), for tanh and sigmoid.

    Notes
    -----
    Parameters ``{"w": (p_in, p_out), "b": (p_out,)}`` (no ``"b"`` without bias);
    no state. Forward and backward are :func:`bnmat.ops.dense_forward` and
    :func:`bnmat.ops.dense_backward`::

        Y = X W + 1 bᵀ
        dX = dY Wᵀ,   dW = Xᵀ dY,   db = 1ᵀ dY
    """

    units: int
    bias: bool = True
    weight_init: str = "he"

    def __init__(self, units, bias=True, weight_init="he", *, init=None):
        if init is not None:
            if weight_init != "he" and weight_init != init:
                raise ValueError(f"init={init!r} and weight_init={weight_init!r} disagree")
            weight_init = init
        object.__setattr__(self, "units", positive_int(units, "units"))
        if not isinstance(bias, bool):
            raise ValueError(f"bias must be True or False; got {bias!r}")
        object.__setattr__(self, "bias", bias)
        if weight_init not in _INITS:
            raise ValueError(f"init must be one of {_INITS}; got {weight_init!r}")
        object.__setattr__(self, "weight_init", weight_init)

    def init(self, rng, in_features):
        """Draw initial parameters.

        Parameters
        ----------
        rng : numpy.random.Generator
        in_features : int
            p_in, the number of input columns.

        Returns
        -------
        out_features : int
            ``units``.
        params : dict
            ``{"w": (p_in, units), "b": (units,)}`` float64 (``"b"`` only with bias).
        state : dict
            Empty.
        """
        check_generator(rng)
        p_in = positive_int(in_features, "in_features")
        if self.weight_init == "he":
            w = rng.normal(0.0, math.sqrt(2.0 / p_in), size=(p_in, self.units))
        else:
            a = math.sqrt(6.0 / (p_in + self.units))
            w = rng.uniform(-a, a, size=(p_in, self.units))
        params = {"w": w}
        if self.bias:
            params["b"] = np.zeros(self.units)
        return self.units, params, {}

    def forward(self, params, state, x, *, training: bool):
        """``Y = X W + 1 bᵀ`` (the same in training and inference).

        Parameters
        ----------
        params : dict
            ``{"w": (p_in, p_out)[, "b": (p_out,)]}``.
        state : dict
            Unused (empty); returned as is.
        x : array, shape (N, p_in)
        training : bool
            Ignored.

        Returns
        -------
        y : array, shape (N, p_out)
        new_state : dict
        cache : DenseCache
        """
        check_keys(params, ("w", "b") if self.bias else ("w",), self)
        y, cache = ops.dense_forward(x, params["w"], params["b"] if self.bias else None)
        return y, state, cache

    def backward(self, dy, cache):
        """Gradients ``dX = dY Wᵀ``, ``dW = Xᵀ dY``, ``db = 1ᵀ dY``.

        Parameters
        ----------
        dy : array, shape (N, p_out)
        cache : DenseCache

        Returns
        -------
        dx : array, shape (N, p_in)
        grads : dict
            ``{"w": (p_in, p_out)[, "b": (p_out,)]}``.
        """
        dx, dw, db = ops.dense_backward(dy, cache)
        grads = {"w": dw}
        if self.bias:
            grads["b"] = db
        return dx, grads
