"""The fixed-effects ("within") loss: squared error after projecting out group effects.

For a model ``y = Dα + f(X) + e`` with a free effect α_k per unit, minimizing
``‖y − Dα − ŷ‖²`` over α (ŷ = f(X)) leaves the profiled loss::

    R(ŷ) = min_α ‖y − ŷ − Dα‖² = ‖M_D (y − ŷ)‖²,    M_D = I − D(DᵀD)⁻¹Dᵀ

and likewise ``M`` = projection onto the orthogonal complement of
``[D₁ D₂ …]`` for unit and period effects (two-way, unbalanced panels allowed).
Training f on R is the within (fixed-effects) estimator with a network in place
of ``Xb``. The effects are recovered afterwards from ``y − ŷ`` with
:func:`bnmat.panel.recover_effects`. NumPy only.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._array_api import Array
from .._segments import demean

__all__ = ["WithinCache", "within_sse_forward", "within_sse_backward"]


class WithinCache(NamedTuple):
    residual: Array   # (N,) or (N, k): M(ŷ − y), the residual with the effects projected out
    n_iter: int       # alternating-projection sweeps used (1 for one factor)


def _prepare(y_pred, y):
    y_pred, y = np.asarray(y_pred), np.asarray(y)
    for a, name in ((y_pred, "y_pred"), (y, "y")):
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be real numbers; got {a.dtype}")
    if y_pred.dtype.kind != "f" or y_pred.dtype == np.float16:
        y_pred = y_pred.astype(np.float32 if y_pred.dtype == np.float16 else np.float64)
    y = y.astype(y_pred.dtype, copy=False)
    if y_pred.shape != y.shape:
        raise ValueError(
            f"y_pred and y must have the same shape; got {y_pred.shape} and {y.shape}"
        )
    if y_pred.ndim not in (1, 2) or y_pred.shape[0] == 0:
        raise ValueError(f"y_pred must have shape (N,) or (N, k) with N >= 1; got {y_pred.shape}")
    for a, name in ((y_pred, "y_pred"), (y, "y")):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"Input {name} contains NaN or infinity.")
    return y_pred, y


def within_sse_forward(y_pred, y, groups, *, tol: float = 1e-10, max_iter: int = 10_000):
    """Sum of squared errors with group effects profiled out, ``R = ‖M(y − ŷ)‖²``.

    One factor (``groups`` a label array): ``M = M_D``, exact. Several factors
    (a sequence of label arrays, e.g. ``(unit, period)``, or an (N, F) array):
    ``M`` is applied by alternating projections to the tolerance ``tol`` of
    :func:`bnmat.panel.demean`. With a single group, R is the sum of squares
    around a free intercept, ``min_c Σ(y − ŷ − c)²``.

    Parameters
    ----------
    y_pred : ndarray, shape (N,) or (N, k)
        Network output ŷ = f(X).
    y : ndarray, same shape
    groups : array_like of shape (N,), (N, F), or sequence of (N,) label arrays
        Integer or string labels, or :class:`bnmat.panel.GroupIndex` objects
        (encode once and reuse).
    tol, max_iter
        Stopping rule of the alternating projections (several factors only).

    Returns
    -------
    loss : 0-d ndarray
        In y_pred's dtype (accumulated in float64).
    cache : WithinCache
    """
    y_pred, y = _prepare(y_pred, y)
    residual, n_iter = demean(y_pred - y, groups, tol=tol, max_iter=max_iter)
    residual = residual.astype(y_pred.dtype, copy=False)
    loss = np.asarray(np.sum(residual * residual, dtype=np.float64), dtype=y_pred.dtype)
    return loss, WithinCache(residual=residual, n_iter=n_iter)


def within_sse_backward(dloss, cache: WithinCache):
    """Backward of :func:`within_sse_forward`.

    Formula (M is symmetric and idempotent, so dR = 2⟨M(ŷ − y), dŷ⟩)::

        ∂R/∂ŷ = −2 M (y − ŷ) · dloss

    Invariant: ``Dᵀ ∂R/∂ŷ = 0`` for every factor (exact for one factor, to the
    tolerance for several): shifting ŷ by a group constant leaves R unchanged,
    so a network's output bias gets no gradient.

    Parameters
    ----------
    dloss : float or 0-d array
    cache : WithinCache

    Returns
    -------
    dy_pred : ndarray, shape of y_pred
    """
    return (2.0 * float(dloss)) * cache.residual
