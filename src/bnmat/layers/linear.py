"""The known linear part of a partially linear model, ``Y = X b`` (+ an intercept)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops
from ._checks import check_generator, check_keys, positive_int
from ._registry import register_layer

__all__ = ["Linear"]


@register_layer
@dataclass(frozen=True)
class Linear:
    """Linear map ``Y = X b`` (``+ 1 cᵀ`` with ``intercept=True``): regression coefficients.

    The same map as :class:`~bnmat.layers.Dense`, for a different role: the
    linear part ``X_lin b`` of a partially linear model
    ``ŷ = X_lin b + f(X_nn)``, whose coefficients are the parameters of
    interest. Hence

    * the coefficients start at zero (not at random), and
    * they are named ``"coef"`` (and ``"intercept"``), not ``"w"``, so the
      ``l2=`` penalty of :func:`bnmat.value_and_grad` and :func:`bnmat.fit`,
      which acts on the Dense weights ``"w"``, leaves them unpenalized, as in
      a regression.

    Parameters
    ----------
    units : int, default 1
        Output columns k.
    intercept : bool, default False
        Add a free intercept c. Leave it off when a network branch beside it
        has one, or when fixed effects absorb the level.

    Notes
    -----
    Parameters ``{"coef": (p, k)[, "intercept": (k,)]}``; no state. Forward and
    backward are :func:`bnmat.ops.dense_forward` and
    :func:`bnmat.ops.dense_backward`::

        Y = X b + 1 cᵀ
        dX = G bᵀ,   db = Xᵀ G,   dc = 1ᵀ G
    """

    units: int = 1
    intercept: bool = False

    def __post_init__(self):
        object.__setattr__(self, "units", positive_int(self.units, "units"))
        if not isinstance(self.intercept, (bool, np.bool_)):
            raise ValueError(f"intercept must be True or False; got {self.intercept!r}")
        object.__setattr__(self, "intercept", bool(self.intercept))

    def _keys(self):
        return ("coef", "intercept") if self.intercept else ("coef",)

    def init(self, rng, in_features):
        """Zero coefficients.

        Parameters
        ----------
        rng : numpy.random.Generator
            Unused; checked for type.
        in_features : int
            p.

        Returns
        -------
        out_features : int
            ``units``.
        params : dict
            ``{"coef": zeros((p, units))[, "intercept": zeros(units)]}``.
        state : dict
            Empty.
        """
        check_generator(rng)
        p = positive_int(in_features, "in_features")
        params = {"coef": np.zeros((p, self.units))}
        if self.intercept:
            params["intercept"] = np.zeros(self.units)
        return self.units, params, {}

    def forward(self, params, state, x, *, training: bool):
        """``Y = X b (+ 1 cᵀ)``, the same in both modes.

        Parameters
        ----------
        params : dict
        state : dict
            Empty; returned as is.
        x : array, shape (N, p)
        training : bool
            Ignored.

        Returns
        -------
        y : array, shape (N, units)
        new_state : dict
        cache : DenseCache
        """
        check_keys(params, self._keys(), self)
        y, cache = ops.dense_forward(x, params["coef"],
                                     params["intercept"] if self.intercept else None)
        return y, state, cache

    def backward(self, dy, cache):
        """``dX = G bᵀ``, ``db = Xᵀ G``, ``dc = 1ᵀ G``.

        Parameters
        ----------
        dy : array, shape (N, units)
        cache : DenseCache

        Returns
        -------
        dx : array, shape (N, p)
        grads : dict
            With the keys of the parameters.
        """
        dx, dw, db = ops.dense_backward(dy, cache)
        grads = {"coef": dw}
        if self.intercept:
            grads["intercept"] = db
        return dx, grads
