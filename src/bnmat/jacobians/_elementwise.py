"""Explicit Jacobians of the elementwise activations and of the losses."""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from .._array_api import check_finite
from ._vec import _check_size, _float64, vec

__all__ = ["activation_jacobian", "loss_jacobian"]


# --------------------------------------------------------------------------- activations


def _leaky_relu_prime(x, negative_slope=0.01):
    return np.where(x > 0, 1.0, float(negative_slope))


# a′(x) for each activation, written from the textbook derivative.
_DERIVATIVES = {
    "relu": lambda x: np.where(x > 0, 1.0, 0.0),      # 1[x > 0]; 0 at 0
    "leaky_relu": _leaky_relu_prime,                  # 1[x > 0] + α 1[x ≤ 0]
    "tanh": lambda x: 1.0 - np.tanh(x) ** 2,          # sech²
    "sigmoid": lambda x: expit(x) * expit(-x),        # σ(x)(1 − σ(x))
    "softplus": expit,                                # σ(x)
    "identity": np.ones_like,
}


def activation_jacobian(name: str, x, **kw) -> np.ndarray:
    """Jacobian of an elementwise activation ``H = a(B)``.

    Formula::

        ∂vec(a(B))/∂vec(B)ᵀ = diag(vec a′(B))

    with ``a′`` one of: relu ``1[B > 0]`` (0 at 0), leaky_relu
    ``1[B > 0] + α 1[B ≤ 0]``, tanh ``1 − tanh²(B)``, sigmoid ``σ(B)(1 − σ(B))``,
    softplus ``σ(B)``, identity ``1``.

    Parameters
    ----------
    name : str
        One of ``"relu"``, ``"leaky_relu"``, ``"tanh"``, ``"sigmoid"``,
        ``"softplus"``, ``"identity"``.
    x : array, shape (N, p) or (N,)
        The activation's input B.
    **kw
        ``negative_slope`` (α, default 0.01) for leaky_relu; nothing for the others.

    Returns
    -------
    ndarray of float64, shape (x.size, x.size)
        Diagonal.
    """
    if name not in _DERIVATIVES:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(_DERIVATIVES)}")
    allowed = {"negative_slope"} if name == "leaky_relu" else set()
    if set(kw) - allowed:
        raise TypeError(
            f"activation {name!r} takes {sorted(allowed) or 'no'} keyword arguments; "
            f"got {sorted(kw)}"
        )
    x = _float64(x, "x")
    if x.ndim not in (1, 2):
        raise ValueError(f"x must have shape (N,) or (N, p); got shape {x.shape}")
    check_finite(x, "x")
    _check_size("activation_jacobian", x.size)
    return np.diag(vec(_DERIVATIVES[name](x, **kw)))


# --------------------------------------------------------------------------- losses


def _log_softmax_jacobian(logits: np.ndarray) -> np.ndarray:
    """``∂vec(log softmax(Ŷ))/∂vec(Ŷ)ᵀ`` for row-wise softmax of an N×k matrix.

    ``log softmax(Ŷ) = Ŷ − ℓ 1_kᵀ``, ``dℓ = (1_kᵀ ⊗ I_N) diag(vec P) vec(dŶ)``, so::

        J = I_{Nk} − (1_k ⊗ I_N)(1_kᵀ ⊗ I_N) diag(vec P)
    """
    n, k = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(shifted)
    prob /= prob.sum(axis=1, keepdims=True)
    spread = np.kron(np.ones((k, 1)), np.eye(n))          # 1_k ⊗ I_N, (Nk, N)
    return np.eye(n * k) - spread @ spread.T @ np.diag(vec(prob))


def loss_jacobian(name: str, y_pred, y) -> np.ndarray:
    """Jacobian (a row) of a scalar loss with respect to the prediction.

    Formula (E = Ŷ − Y; Ŷ and Y are N×k, or vectors of length N with k = 1)::

        sse:  R = vec(E)ᵀ vec(E)                   ∂R/∂vec(Ŷ)ᵀ = 2 vec(E)ᵀ
        mse:  R = vec(E)ᵀ vec(E)/(N·k)             ∂R/∂vec(Ŷ)ᵀ = 2 vec(E)ᵀ/(N·k)
        softmax_cross_entropy:
              R = −vec(Y)ᵀ vec(log softmax(Ŷ))/N   ∂R/∂vec(Ŷ)ᵀ = −vec(Y)ᵀ J_ls / N
              J_ls = I_{Nk} − (1_k ⊗ I_N)(1_kᵀ ⊗ I_N) diag(vec P),  P = softmax(Ŷ) by rows

    The conventions are those of :mod:`bnmat.ops.losses`.

    Parameters
    ----------
    name : str
        ``"sse"``, ``"mse"`` or ``"softmax_cross_entropy"``.
    y_pred : array, shape (N,) or (N, k)
        Predictions (logits for the cross-entropy, which needs (N, k)).
    y : array, same shape
        Targets (one-hot rows or class probabilities for the cross-entropy).

    Returns
    -------
    ndarray of float64, shape (1, N·k)
    """
    if name not in ("sse", "mse", "softmax_cross_entropy"):
        raise ValueError(
            f"unknown loss {name!r}; expected 'sse', 'mse' or 'softmax_cross_entropy'"
        )
    y_pred = _float64(y_pred, "y_pred")
    y = _float64(y, "y")
    if y_pred.shape != y.shape:
        raise ValueError(
            f"y_pred and y must have the same shape; got {y_pred.shape} and {y.shape}"
        )
    if y_pred.ndim not in (1, 2) or y_pred.shape[0] == 0:
        raise ValueError(f"y_pred must have shape (N,) or (N, k) with N >= 1; got {y_pred.shape}")
    check_finite(y_pred, "y_pred")
    check_finite(y, "y")
    _check_size("loss_jacobian", y_pred.size)
    n = y_pred.shape[0]
    if name == "softmax_cross_entropy":
        if y_pred.ndim != 2:
            raise ValueError(
                f"softmax cross-entropy needs logits of shape (N, k); got {y_pred.shape}"
            )
        return -(vec(y) @ _log_softmax_jacobian(y_pred))[None, :] / n
    row = 2.0 * vec(y_pred - y)[None, :]
    return row if name == "sse" else row / y_pred.size
