"""The dense (affine) layer ``Y = X W + 1 bᵀ`` as a configuration object."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .. import ops
from ..ops.dense import DenseCache, DenseGrads
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
        b = params["b"] if self.bias else None
        fast = _numpy_forward(x, params["w"], b)
        if fast is not None:
            return fast[0], state, fast[1]
        y, cache = ops.dense_forward(x, params["w"], b)
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
        return self._backward(dy, cache, need_dx=True)

    def _backward(self, dy, cache, *, need_dx: bool):
        """:meth:`backward`, optionally without dX (None when ``need_dx`` is False).

        The first layer of a network needs no dX = dY Wᵀ (an N × p_in matmul);
        :func:`bnmat.train.value_and_grad` skips it through this method.
        """
        grads = _numpy_backward(dy, cache, need_dx)
        if grads is None:
            grads = ops.dense_backward(dy, cache)
        out = {"w": grads.dw}
        if self.bias:
            out["b"] = grads.db
        return grads.dx, out


# ------------------------------------------------------------------ NumPy fast path
# The op (bnmat.ops.dense_forward / dense_backward) is the reference; for plain
# NumPy float arrays, already of one dtype and C order, the layer computes the same
# products with fewer temporaries. Anything else goes to the op unchanged.

def _plain_float(a, dtype=None) -> bool:
    return (type(a) is np.ndarray and a.dtype in (np.float32, np.float64)
            and (dtype is None or a.dtype == dtype) and a.flags.c_contiguous)


def _numpy_forward(x, w, b):
    """``Y = X W + 1bᵀ`` with the bias added in place into the fresh product.

    ``y = x @ w; y += b`` is bitwise ``x @ w + b`` without its second N × p_out
    array. Returns None when the arguments are not plain NumPy arrays of x's
    float dtype with conforming shapes (the op then validates and converts).
    """
    if not (_plain_float(x) and x.ndim == 2 and x.shape[1] > 0 and _plain_float(w, x.dtype)
            and w.ndim == 2 and w.shape[0] == x.shape[1]):
        return None
    if b is not None and not (_plain_float(b, x.dtype) and b.shape == (w.shape[1],)):
        return None
    if x.shape[0] == 0:
        return None                  # the op says what is wrong with an empty batch
    y = x @ w
    if b is not None:
        y += b
    return y, DenseCache(x=x, w=w, has_bias=b is not None)


def _numpy_backward(dy, cache, need_dx):
    """``dX = dY Wᵀ`` (skipped unless ``need_dx``), ``dW = Xᵀ dY``, ``db = 1ᵀ dY``.

    With one output column (p_out = 1) dY Wᵀ is an outer product, computed as the
    broadcast product ``dY ∘ 1wᵀ``: each entry is the same single product as in
    the matmul, and the broadcast is several times faster than a rank-1 sgemm.
    Returns None unless dy and the cache are plain NumPy arrays of one dtype.
    """
    if not isinstance(cache, DenseCache):
        return None
    x, w, has_bias = cache
    if not (_plain_float(dy) and _plain_float(x, dy.dtype) and _plain_float(w, dy.dtype)
            and x.ndim == 2 and w.ndim == 2
            and tuple(dy.shape) == (x.shape[0], w.shape[1])):
        return None
    if not need_dx:
        dx = None
    elif w.shape[1] == 1:
        dx = dy * w[:, 0]            # (N, 1) ∘ (p_in,) → (N, p_in)
    else:
        # W's transpose in C order: OpenBLAS's threaded path for a transposed
        # operand can take 10× as long at small sizes (docs/performance.md).
        dx = dy @ np.ascontiguousarray(w.T)
    dw = x.T @ dy
    db = dy.sum(axis=0) if has_bias else None
    return DenseGrads(dx, dw, db)
