"""Batch renormalization (Ioffe 2017) as a layer."""

from __future__ import annotations

from dataclasses import dataclass

from .. import ops
from ..ops.batch_renorm import BatchRenormCache
from ._checks import check_generator, check_keys, finite_float, normalize_bn_fields, positive_int
from ._registry import register_layer
from .batchnorm import BatchNorm

__all__ = ["BatchRenorm"]


@register_layer
@dataclass(frozen=True)
class BatchRenorm:
    """Batch renormalization: batch norm corrected towards the stored statistics.

    Training mode (:func:`bnmat.ops.batch_renorm_forward`), with the running
    statistics m, v of the state and σ = (v + ε)^(1/2)::

        r = clip(σ_B/σ, 1/r_max, r_max),   d = clip((μ_B − m)/σ, −d_max, d_max)
        Y = (C X diag(s_B) diag(r) + 1dᵀ) diag(γ) + 1βᵀ

    r and d are treated as constants in the gradient (as in the paper), so the
    backward is batch norm's with the scale γ ∘ r. Inference mode is batch
    norm's with the stored statistics. Running statistics are updated as in
    :class:`BatchNorm` (same ``decay`` and ``count`` rule), and
    :func:`bnmat.train.population_statistics` sets them to exact full-data
    statistics (on which r = 1 and d = 0, so training and inference agree).

    Parameters
    ----------
    eps, ddof, decay
        As in :class:`BatchNorm`.
    r_max : float ≥ 1, default 3
    d_max : float ≥ 0, default 5
        ``r_max=1, d_max=0`` is batch norm (the usual warm-up setting).
    """

    eps: float = 1e-5
    ddof: int = 0
    decay: float = 0.9
    r_max: float = 3.0
    d_max: float = 5.0

    def __post_init__(self):
        normalize_bn_fields(self)
        r_max, d_max = finite_float(self.r_max, "r_max"), finite_float(self.d_max, "d_max")
        if r_max < 1:
            raise ValueError(f"r_max must be >= 1; got {self.r_max!r}")
        if d_max < 0:
            raise ValueError(f"d_max must be >= 0; got {self.d_max!r}")
        object.__setattr__(self, "r_max", r_max)
        object.__setattr__(self, "d_max", d_max)

    def _bn(self):
        return BatchNorm(eps=self.eps, ddof=self.ddof, decay=self.decay)

    def init(self, rng, in_features):
        """Parameters and state as :class:`BatchNorm`'s."""
        check_generator(rng)
        positive_int(in_features, "in_features")
        return self._bn().init(rng, in_features)

    def forward(self, params, state, x, *, training: bool):
        """Renormalized batch statistics (training) or stored statistics (inference).

        Returns ``(y, new_state, cache)`` as :meth:`BatchNorm.forward`.
        """
        if not training:
            return self._bn().forward(params, state, x, training=False)
        check_keys(params, ("gamma", "beta"), self)
        check_keys(state, ("mean", "var"), self, "state", optional=("count",))
        y, cache = ops.batch_renorm_forward(
            x, params["gamma"], params["beta"], state["mean"], state["var"],
            r_max=self.r_max, d_max=self.d_max, eps=self.eps, ddof=self.ddof)
        return y, self._bn()._updated_state(state, cache.bn.mean, cache.bn.var), cache

    def backward(self, dy, cache):
        """``(dx, {"gamma", "beta"})`` of the mode the cache came from."""
        if isinstance(cache, BatchRenormCache):
            dx, dgamma, dbeta = ops.batch_renorm_backward(dy, cache)
            return dx, {"gamma": dgamma, "beta": dbeta}
        return self._bn().backward(dy, cache)

    def double_backward(self, ddx, v, dy, cache):
        """``(ddY, ∂S/∂X, {"gamma", "beta"})`` in training mode (r, d constant)."""
        out = ops.batch_renorm_double_backward(ddx, v.get("gamma"), v.get("beta"), dy, cache)
        return out.ddy, out.dx, {"gamma": out.dgamma, "beta": 0 * out.dgamma}

    def population_state(self, params, state, xs):
        """Exact full-data statistics, as :meth:`BatchNorm.population_state`."""
        return self._bn().population_state(params, state, xs)
