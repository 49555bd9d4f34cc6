"""Double backward of batch normalization in training mode (plain and weighted).

The first-order backward (:func:`bnmat.ops.batchnorm_backward`) maps the
upstream gradient G to ``(dX, dγ, dβ)``; it depends on G linearly and on X and γ
nonlinearly. Its own backward ("double backward") takes cotangents
``(ddX, ddγ, ddβ)`` of those three outputs and returns the gradients of::

    S = ⟨ddX, dX⟩ + ⟨ddγ, dγ⟩ + ⟨ddβ, dβ⟩

with respect to G, X and γ (β does not enter the backward). This is the piece
a Hessian-vector product needs (:func:`bnmat.hvp`). The proofs are in
``docs/derivation.md``, section "Double backward of batch norm".
"""

from __future__ import annotations

from typing import NamedTuple

from .._array_api import Array, as_float, get_namespace
from .batchnorm import _accumulator

__all__ = ["BatchNormDoubleGrads", "batchnorm_double_backward"]


class BatchNormDoubleGrads(NamedTuple):
    ddy: Array       # (N, p)  ∂S/∂G
    dx: Array        # (N, p)  ∂S/∂X
    dgamma: Array    # (p,)    ∂S/∂γ


def _colsum(xp, a, acc):
    return xp.astype(xp.sum(a, axis=0, dtype=acc), a.dtype)


def batchnorm_double_backward(ddx, ddgamma, ddbeta, dy, cache) -> BatchNormDoubleGrads:
    """Backward of :func:`bnmat.ops.batchnorm_backward` (training mode).

    With n = 1ᵀw (N without weights), n′ = n − ddof, W = diag(w) (I without
    weights), X̂ and s from the forward pass, G = dy, dγ = 1ᵀ(G ∘ X̂) and the
    column-wise operators (applied to every column j with its own s_j, x̂_j)::

        Q m  = m − 1 (wᵀm)/n − x̂ (x̂ᵀW m)/n′
        Qᵀm  = m − w (1ᵀm)/n − W x̂ (x̂ᵀ m)/n′

    (Q = Qᵀ = C − x̂x̂ᵀ/n′ without weights), so that dX = Qᵀ G diag(γ ∘ s) and
    dX̂ = Q dX diag(s). For cotangents A = ddx, c = ddgamma, e = ddbeta::

        q        = 1ᵀ(QA ∘ G)                                  (p,)
        ∂S/∂G    = QA diag(γ ∘ s) + X̂ diag(c) + 1 eᵀ
        ∂S/∂γ    = s ∘ q
        ∂S/∂X    = Qᵀ[ G diag(c) − (W A diag(dγ) + G diag(1ᵀ(X̂ ∘ WA))) diag(γ∘s)/n′ ] diag(s)
                   − W X̂ diag(γ ∘ s² ∘ q)/n′

    It holds for every ε ≥ 0 and ddof, with or without (frequency) weights.

    Parameters
    ----------
    ddx : array, shape (N, p)
        Cotangent of dX.
    ddgamma, ddbeta : array, shape (p,), or None
        Cotangents of dγ and dβ; None means zero.
    dy : array, shape (N, p)
        The upstream gradient G the first-order backward was applied to.
    cache : BatchNormCache
        From :func:`bnmat.ops.batchnorm_forward` (any path: the kernel cache
        recomputes X̂; a weighted cache carries its weights).

    Returns
    -------
    BatchNormDoubleGrads
        ``(ddy, dx, dgamma)`` of shapes (N, p), (N, p), (p,).
    """
    x_hat, s, gamma, ddof = cache.x_hat, cache.inv_std, cache.gamma, cache.ddof
    w = getattr(cache, "weights", None)
    xp = get_namespace(dy, x_hat)
    shape = tuple(x_hat.shape)
    for a, name in ((dy, "dy"), (ddx, "ddx")):
        if tuple(a.shape) != shape:
            raise ValueError(f"{name} must have shape {shape}; got {tuple(a.shape)}")
    dt = x_hat.dtype
    g = xp.astype(as_float(dy, "dy", xp), dt, copy=False)
    a = xp.astype(as_float(ddx, "ddx", xp), dt, copy=False)
    acc = _accumulator(xp, dt)
    p = shape[1]
    c = xp.zeros(p, dtype=dt) if ddgamma is None else xp.astype(ddgamma, dt, copy=False)
    e = xp.zeros(p, dtype=dt) if ddbeta is None else xp.astype(ddbeta, dt, copy=False)

    if w is None:
        n = float(shape[0])
        wmul = lambda m: m  # noqa: E731
        w_col = None
    else:
        w_col = xp.reshape(xp.astype(w, dt, copy=False), (-1, 1))
        n = float(xp.sum(w_col))
        wmul = lambda m: w_col * m  # noqa: E731
    n_eff = n - ddof

    def q_op(m):                    # Q m, column-wise
        return (m - _colsum(xp, wmul(m), acc) / n
                - x_hat * (_colsum(xp, x_hat * wmul(m), acc) / n_eff))

    def qt_op(m):                   # Qᵀ m, column-wise
        mean_part = _colsum(xp, m, acc) / n
        return (m - (mean_part if w_col is None else w_col * mean_part)
                - wmul(x_hat) * (_colsum(xp, x_hat * m, acc) / n_eff))

    gs = gamma * s
    dgamma_fwd = _colsum(xp, g * x_hat, acc)
    qa = q_op(a)
    q = _colsum(xp, qa * g, acc)
    ddy = qa * gs + x_hat * c + e
    d_gamma = s * q
    wa = wmul(a)
    inner = g * c - (wa * dgamma_fwd + g * _colsum(xp, x_hat * wa, acc)) * (gs / n_eff)
    d_x = qt_op(inner) * s - wmul(x_hat) * (gs * s * q / n_eff)
    return BatchNormDoubleGrads(ddy=ddy, dx=d_x, dgamma=d_gamma)
