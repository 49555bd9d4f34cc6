"""Double backward of dense layers, activations and losses.

Each ``*_double_backward`` is the backward of the op's first-order backward:
given cotangents of the backward's outputs, it returns the gradients of their
inner product with those outputs with respect to the backward's inputs (the
upstream gradient and the forward's inputs). Together with
:func:`bnmat.ops.batchnorm_double_backward` these give Hessian-vector products
by reverse-over-reverse differentiation (:func:`bnmat.hvp`). Proofs:
``docs/derivation.md``, section "Double backward".
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from .._array_api import Array, as_float, get_namespace
from .activations import _sigmoid

__all__ = [
    "DenseDoubleGrads",
    "dense_double_backward",
    "ActivationDoubleGrads",
    "activation_double_backward",
    "LossDoubleGrads",
    "loss_double_backward",
]


class DenseDoubleGrads(NamedTuple):
    ddy: Array               # (N, p_out)  ∂S/∂dY
    dx: Array                # (N, p_in)   ∂S/∂X
    dw: Array                # (p_in, p_out) ∂S/∂W


def dense_double_backward(ddx, ddw, ddb, dy, cache) -> DenseDoubleGrads:
    """Backward of :func:`bnmat.ops.dense_backward`.

    The backward is ``dX = dY Wᵀ, dW = Xᵀ dY, db = 1ᵀ dY`` — bilinear, so for
    ``S = ⟨ddX, dX⟩ + ⟨ddW, dW⟩ + ⟨ddb, db⟩``::

        ∂S/∂dY = ddX W + X ddW + 1 ddbᵀ
        ∂S/∂X  = dY ddWᵀ
        ∂S/∂W  = ddXᵀ dY

    (b does not enter the backward.)

    Parameters
    ----------
    ddx : array, shape (N, p_in), or None (zero)
    ddw : array, shape (p_in, p_out), or None (zero)
    ddb : array, shape (p_out,), or None (zero, or a layer without bias)
    dy : array, shape (N, p_out)
    cache : DenseCache

    Returns
    -------
    DenseDoubleGrads
        ``(ddy, dx, dw)``.
    """
    x, w, has_bias = cache
    xp = get_namespace(dy, w)
    ddy = xp.zeros_like(dy)
    dx = None
    dw = xp.zeros_like(w)
    if ddx is not None:
        ddy = ddy + ddx @ w
        dw = dw + xp.matrix_transpose(ddx) @ dy
    if ddw is not None:
        ddy = ddy + x @ ddw               # a SciPy sparse X gives a dense product
        dx = dy @ xp.matrix_transpose(ddw)
    if ddb is not None and has_bias:
        ddy = ddy + ddb
    if dx is None:
        dx = xp.zeros((dy.shape[0], w.shape[0]), dtype=dy.dtype)
    return DenseDoubleGrads(ddy=ddy, dx=dx, dw=dw)


class ActivationDoubleGrads(NamedTuple):
    ddy: Array     # ∂S/∂dH, shape of x
    dx: Array      # ∂S/∂B,  shape of x


def _second_derivative(name, saved, slope, xp):
    """``(a′(B), a″(B))`` from what the activation's cache holds."""
    zero = xp.zeros_like(saved)
    if name == "relu":
        return xp.where(saved > 0, xp.ones_like(saved), zero), zero
    if name == "leaky_relu":
        return xp.where(saved > 0, xp.ones_like(saved), slope + zero), zero
    if name == "identity":
        return xp.ones_like(saved), zero
    if name == "tanh":                    # saved = H = tanh(B)
        d1 = 1.0 - saved * saved
        return d1, -2.0 * saved * d1
    if name == "sigmoid":                 # saved = H = σ(B)
        d1 = saved * (1.0 - saved)
        return d1, d1 * (1.0 - 2.0 * saved)
    if name == "softplus":                # saved = B
        sig = _sigmoid(saved, xp)
        return sig, sig * (1.0 - sig)
    raise ValueError(f"unknown activation {name!r}")


def activation_double_backward(name: str, ddx, dy, cache) -> ActivationDoubleGrads:
    """Backward of an activation's backward ``dB = G ∘ a′(B)``.

    For ``S = ⟨ddB, G ∘ a′(B)⟩``::

        ∂S/∂G = ddB ∘ a′(B)
        ∂S/∂B = ddB ∘ G ∘ a″(B)

    with a″ = 0 for relu, leaky_relu and identity (almost everywhere),
    a″ = −2 tanh(B)(1 − tanh²(B)) for tanh, σ(1 − σ)(1 − 2σ) for sigmoid and
    σ(B)(1 − σ(B)) for softplus.

    Parameters
    ----------
    name : str
        A key of :data:`bnmat.ops.ACTIVATIONS`.
    ddx : array
        Cotangent of dB, shape of x.
    dy : array
        G, the upstream gradient the backward was applied to.
    cache : ActivationCache
        From the activation's forward.

    Returns
    -------
    ActivationDoubleGrads
        ``(ddy, dx)``, both of x's shape.
    """
    saved = cache.saved
    xp = get_namespace(dy, saved)
    if tuple(dy.shape) != tuple(saved.shape) or tuple(ddx.shape) != tuple(saved.shape):
        raise ValueError(f"dy and ddx must have shape {tuple(saved.shape)}")
    d1, d2 = _second_derivative(name, saved, cache.slope, xp)
    return ActivationDoubleGrads(ddy=ddx * d1, dx=ddx * dy * d2)


class LossDoubleGrads(NamedTuple):
    dy_pred: Array          # ∂S/∂ŷ, shape of ŷ
    ddloss: Optional[float]  # ∂S/∂dloss


def loss_double_backward(name: str, ddy_pred, dloss, cache) -> LossDoubleGrads:
    """Backward of a loss's backward ``∂R/∂ŷ · dloss``.

    For ``S = ⟨ddŶ, ∂R/∂ŷ⟩ · dloss``, with the loss's constant k (1 for
    ``"sse"``, 1/(N·k) for ``"mse"``, 1/N for cross-entropy)::

        sse, mse:  ∂S/∂ŷ = 2k ddŶ · dloss
        softmax cross-entropy, row i (P = softmax(Ŷ), mᵢ = Σⱼ Yᵢⱼ):
                   ∂S/∂ŷᵢ = k mᵢ (pᵢ ∘ ddŷᵢ − pᵢ (pᵢᵀ ddŷᵢ)) · dloss
        all:       ∂S/∂dloss = ⟨ddŶ, ∂R/∂ŷ⟩ at dloss = 1

    Parameters
    ----------
    name : {"sse", "mse", "softmax_cross_entropy"}
    ddy_pred : array, shape of ŷ
    dloss : float
    cache : LossCache

    Returns
    -------
    LossDoubleGrads
    """
    from .losses import LOSSES

    k = cache.scale
    xp = get_namespace(cache.residual)
    dd = xp.astype(as_float(ddy_pred, "ddy_pred", xp), cache.residual.dtype, copy=False)
    if tuple(dd.shape) != tuple(cache.residual.shape):
        raise ValueError(f"ddy_pred must have shape {tuple(cache.residual.shape)}")
    first = LOSSES[name][1](1.0, cache)
    ddloss = float(xp.sum(dd * first))
    if name in ("sse", "mse"):
        return LossDoubleGrads(2.0 * k * float(dloss) * dd, ddloss)
    if name == "softmax_cross_entropy":
        p, y = cache.residual, cache.y
        mass = xp.sum(y, axis=1, keepdims=True)
        pd = p * dd
        out = (pd - p * xp.sum(pd, axis=1, keepdims=True)) * mass * (k * float(dloss))
        return LossDoubleGrads(out, ddloss)
    raise ValueError(f"no double backward for loss {name!r}")
