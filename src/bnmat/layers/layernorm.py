"""Layer normalization as a layer: each row standardized over its features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops
from ._checks import check_generator, check_keys, finite_float, positive_int
from ._registry import register_layer

__all__ = ["LayerNorm"]


@register_layer
@dataclass(frozen=True)
class LayerNorm:
    """Layer normalization ``Y = diag(s) X C_p diag(γ) + 1βᵀ`` (row statistics).

    Parameters
    ----------
    eps : float, default 1e-5
        ε ≥ 0 added to each row's variance.
    ddof : int, default 0
        Row variances divide by p − ddof.

    Notes
    -----
    Parameters ``{"gamma": (p,), "beta": (p,)}`` start at ones and zeros; no
    state. Rows are independent, so training and inference are the same map
    (any number of rows, one included). Forward, backward and double backward
    are :func:`bnmat.ops.layernorm_forward`, :func:`bnmat.ops.layernorm_backward`
    and :func:`bnmat.ops.layernorm_double_backward`::

        dβ = 1ᵀG,  dγ = 1ᵀ(G ∘ X̂),  dX = diag(s)[Ĝ C_p − diag(rowsums(Ĝ∘X̂)) X̂/(p − ddof)]

    with Ĝ = G diag(γ).
    """

    eps: float = 1e-5
    ddof: int = 0

    def __post_init__(self):
        eps = finite_float(self.eps, "eps")
        if eps < 0:
            raise ValueError(f"LayerNorm needs eps >= 0; got {self.eps!r}")
        ddof = self.ddof
        if isinstance(ddof, bool) or not isinstance(ddof, (int, np.integer)) or ddof < 0:
            raise ValueError(f"ddof must be a non-negative integer; got {ddof!r}")
        object.__setattr__(self, "eps", eps)
        object.__setattr__(self, "ddof", int(ddof))

    def init(self, rng, in_features):
        """``(p, {"gamma": ones(p), "beta": zeros(p)}, {})``."""
        check_generator(rng)
        p = positive_int(in_features, "in_features")
        return p, {"gamma": np.ones(p), "beta": np.zeros(p)}, {}

    def forward(self, params, state, x, *, training: bool):
        """``(y, state, cache)``; the same in training and inference mode.

        Parameters
        ----------
        params : dict
            ``{"gamma": (p,), "beta": (p,)}``.
        state : dict
            Empty; returned as is.
        x : array, shape (N, p)
        training : bool
            Ignored.
        """
        check_keys(params, ("gamma", "beta"), self)
        y, cache = ops.layernorm_forward(x, params["gamma"], params["beta"], eps=self.eps,
                                         ddof=self.ddof)
        return y, state, cache

    def backward(self, dy, cache):
        """``(dx, {"gamma": dγ, "beta": dβ})``."""
        dx, dgamma, dbeta = ops.layernorm_backward(dy, cache)
        return dx, {"gamma": dgamma, "beta": dbeta}

    def double_backward(self, ddx, v, dy, cache):
        """``(ddY, ∂S/∂X, {"gamma", "beta"})`` for Hessian-vector products (β: zero)."""
        out = ops.layernorm_double_backward(ddx, v.get("gamma"), v.get("beta"), dy, cache)
        return out.ddy, out.dx, {"gamma": out.dgamma, "beta": 0 * out.dgamma}
