"""Inference-mode batch norm: gradients with respect to the stored mean and variance too.

:func:`bnmat.ops.batchnorm_inference_backward` returns ``(dx, dgamma, dbeta)``
(the stored statistics are constants there, and its 3-tuple is kept). This
module adds the gradients with respect to the stored m and v, as TensorFlow's
and Chainer's inference-mode batch norm do — for example to propagate the
uncertainty of estimated statistics, or to fit them.
"""

from __future__ import annotations

from typing import NamedTuple

from .._array_api import Array, as_float, check_2d, get_namespace
from .batchnorm import _accumulator
from .batchnorm_inference import batchnorm_inference_forward

__all__ = ["BatchNormInferenceStatsGrads", "batchnorm_inference_stats_backward"]


class BatchNormInferenceStatsGrads(NamedTuple):
    dx: Array        # (N, p)
    dgamma: Array    # (p,)
    dbeta: Array     # (p,)
    dmean: Array     # (p,)
    dvar: Array      # (p,)


def batchnorm_inference_stats_backward(dy, x, gamma, beta, mean, var, *,
                                       eps: float = 1e-5) -> BatchNormInferenceStatsGrads:
    """All gradients of ``Y = (X − 1mᵀ) diag(γ ∘ s) + 1βᵀ``, ``s = (v + ε)^(−1/2)``.

    Formula (G = dy, X̂ = (X − 1mᵀ) diag(s))::

        dX = G diag(γ ∘ s),   dγ = 1ᵀ(G ∘ X̂),   dβ = 1ᵀG
        dm = −γ ∘ s ∘ dβ
        dv = −½ γ ∘ s² ∘ dγ

    Proof in ``docs/derivation.md`` §13. The forward is recomputed from its
    inputs (so any path, kernel or reference, gives the same numbers).

    Parameters
    ----------
    dy : array, shape (N, p)
    x : array, shape (N, p)
    gamma, beta, mean, var : array, shape (p,)
    eps : float, default 1e-5

    Returns
    -------
    BatchNormInferenceStatsGrads
        ``(dx, dgamma, dbeta, dmean, dvar)``.
    """
    xp = get_namespace(dy, x)
    x = check_2d(as_float(x, "x", xp), "x")
    _, cache = batchnorm_inference_forward(x, gamma, beta, mean, var, eps=eps)
    x_hat = cache.x_hat
    if tuple(dy.shape) != tuple(x_hat.shape):
        raise ValueError(f"dy must have shape {tuple(x_hat.shape)}; got {tuple(dy.shape)}")
    dt = x_hat.dtype
    dy = xp.astype(as_float(dy, "dy", xp), dt, copy=False)
    gamma = xp.astype(as_float(gamma, "gamma", xp), dt, copy=False)
    var = xp.astype(as_float(var, "var", xp), dt, copy=False)
    s = 1.0 / xp.sqrt(var + eps)
    acc = _accumulator(xp, dt)
    dbeta = xp.astype(xp.sum(dy, axis=0, dtype=acc), dt)
    dgamma = xp.astype(xp.sum(dy * x_hat, axis=0, dtype=acc), dt)
    return BatchNormInferenceStatsGrads(
        dx=dy * (gamma * s), dgamma=dgamma, dbeta=dbeta,
        dmean=-(gamma * s) * dbeta, dvar=-0.5 * gamma * s * s * dgamma)
