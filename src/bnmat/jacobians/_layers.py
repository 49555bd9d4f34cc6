"""Explicit Jacobians of the dense and batch-norm ops (training and inference), first and second order."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
from scipy.linalg import block_diag

from ._vec import _check_eps, _check_size, _matrix, _ones_blocks, _vector, vec

__all__ = ["DenseJacobians", "BatchNormJacobians", "BatchNormBackwardJacobians",
           "dense_jacobians", "batchnorm_jacobians", "batchnorm_inference_jacobians",
           "batchnorm_backward_jacobians"]


class DenseJacobians(NamedTuple):
    jx: np.ndarray             # (N·q, N·p)  Wᵀ ⊗ I_N
    jw: np.ndarray             # (N·q, p·q)  I_q ⊗ X
    jb: Optional[np.ndarray]   # (N·q, q)    I_q ⊗ 1_N, or None without bias


class BatchNormJacobians(NamedTuple):
    jx: np.ndarray       # (N·p, N·p)  blockdiag_j(γ_j s_j (C − ẑ_j ẑ_jᵀ/(N − ddof)))
    jgamma: np.ndarray   # (N·p, p)    diag(vec Ẑ)(I_p ⊗ 1_N)
    jbeta: np.ndarray    # (N·p, p)    I_p ⊗ 1_N


class BatchNormBackwardJacobians(NamedTuple):
    """Jacobians of the first-order batch-norm backward ``(dX, dγ, dβ)(G, X, γ)``."""

    dx_dy: np.ndarray      # (N·p, N·p)  blockdiag_j(γ_j s_j P_j)
    dx_dx: np.ndarray      # (N·p, N·p)  blockdiag_j(K_j)
    dx_dgamma: np.ndarray  # (N·p, p)    diag(vec(P(G) diag(s)))(I_p ⊗ 1_N)
    dgamma_dy: np.ndarray  # (p, N·p)    (I_p ⊗ 1_N)ᵀ diag(vec X̂)
    dgamma_dx: np.ndarray  # (p, N·p)    blockdiag_j(s_j g_jᵀ P_j)
    dbeta_dy: np.ndarray   # (p, N·p)    (I_p ⊗ 1_N)ᵀ


# --------------------------------------------------------------------------- layers


def dense_jacobians(x, w, b=None) -> DenseJacobians:
    """Jacobians of the affine map ``Y = X W + 1 bᵀ``.

    Formula (X is N×p, W is p×q)::

        vec(XW) = (Wᵀ ⊗ I_N) vec(X) = (I_q ⊗ X) vec(W)
        jx = ∂vec(Y)/∂vec(X)ᵀ = Wᵀ ⊗ I_N
        jw = ∂vec(Y)/∂vec(W)ᵀ = I_q ⊗ X
        jb = ∂vec(Y)/∂bᵀ      = I_q ⊗ 1_N

    Parameters
    ----------
    x : array, shape (N, p)
    w : array, shape (p, q)
    b : array, shape (q,), optional
        Only its presence matters (Y is affine in b); ``jb`` is None without it,
        as ``db`` is in :class:`bnmat.ops.DenseGrads`.

    Returns
    -------
    DenseJacobians
        ``jx`` (N·q, N·p), ``jw`` (N·q, p·q), ``jb`` (N·q, q) or None; float64.
    """
    x = _matrix(x, "x")
    w = _matrix(w, "w")
    n, p = x.shape
    if w.shape[0] != p:
        raise ValueError(
            f"w must have shape ({p}, q) to multiply x of shape {x.shape}; got shape {w.shape}"
        )
    q = w.shape[1]
    _check_size("dense_jacobians", n * q, n * p, p * q)
    jb = None
    if b is not None:
        _vector(b, "b", q)
        jb = _ones_blocks(n, q)
    return DenseJacobians(jx=np.kron(w.T, np.eye(n)), jw=np.kron(np.eye(q), x), jb=jb)


def batchnorm_jacobians(
    x, gamma, beta, *, eps: float = 1e-5, ddof: int = 0
) -> BatchNormJacobians:
    """Jacobians of batch normalization in training mode (batch statistics).

    With ``C = I_N − 11ᵀ/N`` (formed here: this is the small-size reference),
    ``σ² = diag(ZᵀCZ)/(N − ddof)``, ``s = (σ² + ε)^(−1/2)``, ``Ẑ = C Z diag(s)``
    and ``B = Ẑ diag(γ) + 1βᵀ``::

        jx     = ∂vec(B)/∂vec(Z)ᵀ = blockdiag_j(γ_j s_j (C − ẑ_j ẑ_jᵀ/(N − ddof)))
        jgamma = ∂vec(B)/∂γᵀ      = diag(vec Ẑ)(I_p ⊗ 1_N)
        jbeta  = ∂vec(B)/∂βᵀ      = I_p ⊗ 1_N

    Column j of B depends on column j of Z only, hence the block-diagonal jx.
    Each block is symmetric and annihilates 1; when ε = 0 it also annihilates
    ẑ_j, and ``C − ẑ_j ẑ_jᵀ/(N − ddof)`` is the orthogonal projection onto the
    complement of span{1, ẑ_j}. The formula holds for every ε ≥ 0 and ddof.

    Parameters
    ----------
    x : array, shape (N, p)
        Z, the input of the layer; converted to float64.
    gamma : array, shape (p,)
    beta : array, shape (p,)
        Does not enter the Jacobians (B is affine in β); accepted so that the
        call mirrors :func:`bnmat.ops.batchnorm_forward`.
    eps : float, default 1e-5
        ε ≥ 0; with ε = 0 a constant column raises ``ValueError``.
    ddof : int, default 0
        The variance divides by N − ddof.

    Returns
    -------
    BatchNormJacobians
        ``jx`` (N·p, N·p), ``jgamma`` (N·p, p), ``jbeta`` (N·p, p); float64.
    """
    _check_eps(eps)
    if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer; got {ddof!r}")
    z = _matrix(x, "x")
    n, p = z.shape
    if n < 2 or n - ddof < 1:
        raise ValueError(
            f"batch statistics need at least {max(2, ddof + 1)} rows with ddof={ddof}; got N={n}"
        )
    gamma = _vector(gamma, "gamma", p)
    _vector(beta, "beta", p)
    _check_size("batchnorm_jacobians", n * p)
    constant = np.ptp(z, axis=0) == 0
    if eps == 0 and np.any(constant):
        raise ValueError(
            f"column {int(np.flatnonzero(constant)[0])} of x has zero variance and eps=0: "
            "the standardization divides by zero"
        )

    c = np.eye(n) - np.ones((n, n)) / n
    # C1 = 0 exactly; without this, rounding in C z_j would give a constant column
    # a spurious direction ẑ_j of size ~1e-16·s_j instead of 0.
    cz = np.where(constant, 0.0, c @ z)
    # diag(ZᵀCZ) = diag((CZ)ᵀ(CZ)) since C is a symmetric projection; the second is
    # a sum of squares, free of the cancellation in Zᵀ(CZ).
    var = np.sum(cz * cz, axis=0) / (n - ddof)
    s = 1.0 / np.sqrt(var + eps)
    z_hat = cz * s
    blocks = [
        gamma[j] * s[j] * (c - np.outer(z_hat[:, j], z_hat[:, j]) / (n - ddof)) for j in range(p)
    ]
    ones_blocks = _ones_blocks(n, p)
    return BatchNormJacobians(
        jx=block_diag(*blocks),
        jgamma=np.diag(vec(z_hat)) @ ones_blocks,
        jbeta=ones_blocks,
    )


def batchnorm_inference_jacobians(
    x, gamma, beta, mean, var, *, eps: float = 1e-5
) -> BatchNormJacobians:
    """Jacobians of batch normalization with stored statistics (inference mode).

    With ``s = (v + ε)^(−1/2)``, ``X̂ = (X − 1mᵀ) diag(s)`` and
    ``B = X̂ diag(γ) + 1βᵀ`` (m and v constants)::

        jx     = ∂vec(B)/∂vec(X)ᵀ = diag(γ ∘ s) ⊗ I_N
        jgamma = ∂vec(B)/∂γᵀ      = diag(vec X̂)(I_p ⊗ 1_N)
        jbeta  = ∂vec(B)/∂βᵀ      = I_p ⊗ 1_N

    Parameters
    ----------
    x : array, shape (N, p)
        Any N ≥ 1.
    gamma, beta : array, shape (p,)
        β does not enter the Jacobians; it mirrors the forward's signature.
    mean, var : array, shape (p,)
        The stored statistics m and v; ``v + ε > 0``.
    eps : float, default 1e-5

    Returns
    -------
    BatchNormJacobians
        ``jx`` (N·p, N·p), diagonal; ``jgamma`` and ``jbeta`` (N·p, p); float64.
    """
    _check_eps(eps)
    x = _matrix(x, "x")
    n, p = x.shape
    gamma = _vector(gamma, "gamma", p)
    _vector(beta, "beta", p)
    mean = _vector(mean, "mean", p)
    var = _vector(var, "var", p)
    if np.any(var + eps <= 0):
        raise ValueError(f"var + eps must be positive in every column; got var={var}, eps={eps}")
    _check_size("batchnorm_inference_jacobians", n * p)
    s = 1.0 / np.sqrt(var + eps)
    x_hat = (x - mean) * s
    ones_blocks = _ones_blocks(n, p)
    return BatchNormJacobians(
        jx=np.kron(np.diag(gamma * s), np.eye(n)),
        jgamma=np.diag(vec(x_hat)) @ ones_blocks,
        jbeta=ones_blocks,
    )


def batchnorm_backward_jacobians(
    dy, x, gamma, *, eps: float = 1e-5, ddof: int = 0, weights=None
) -> BatchNormBackwardJacobians:
    """Jacobians of the batch-norm backward pass: the second-order reference.

    The first-order backward maps (G, X, γ) to ``dX = P(G) diag(γ ∘ s)``,
    ``dγ = 1ᵀ(G ∘ X̂)``, ``dβ = 1ᵀG`` (``docs/derivation.md`` §11.2; §12 with
    weights). Per column j, with n = 1ᵀw, n′ = n − ddof, W = diag(w),
    ``Q_j = C_w − x̂_j (W x̂_j)ᵀ/n′`` (``C_w = I − 1wᵀ/n``; without weights
    ``Q_j = P_j = C − x̂_j x̂_jᵀ/n′``) and ``dγ_j = x̂_jᵀ g_j``::

        dx_dy     = blockdiag_j( γ_j s_j Q_jᵀ )
        dx_dx     = blockdiag_j( K_j ),
                    K_j = −(γ_j s_j²/n′)[ (Q_jᵀ g_j)(W x̂_j)ᵀ + dγ_j W Q_j
                                          + W x̂_j g_jᵀ Q_j ]
        dx_dgamma = diag(vec(Qᵀ(G) diag(s))) (I_p ⊗ 1_N)
        dgamma_dy = (I_p ⊗ 1_N)ᵀ diag(vec X̂)
        dgamma_dx = blockdiag_j( s_j g_jᵀ Q_j )
        dbeta_dy  = (I_p ⊗ 1_N)ᵀ

    The double backward (:func:`bnmat.ops.batchnorm_double_backward`) is the
    transpose of these applied to the cotangents.

    Parameters
    ----------
    dy : array, shape (N, p)
        G, the upstream gradient.
    x : array, shape (N, p)
    gamma : array, shape (p,)
    eps : float, default 1e-5
    ddof : int, default 0
    weights : array, shape (N,), optional
        Frequency weights (§12 of the derivation).

    Returns
    -------
    BatchNormBackwardJacobians
        Dense float64 matrices (fields and shapes in the class).
    """
    _check_eps(eps)
    if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer; got {ddof!r}")
    z = _matrix(x, "x")
    n_rows, p = z.shape
    g = _matrix(dy, "dy")
    if g.shape != z.shape:
        raise ValueError(f"dy must have shape {z.shape}; got {g.shape}")
    gamma = _vector(gamma, "gamma", p)
    w = np.ones(n_rows) if weights is None else _vector(weights, "weights", n_rows)
    n = float(w.sum())
    if n - ddof <= 0:
        raise ValueError(f"the total weight minus ddof must be positive; got {n - ddof}")
    _check_size("batchnorm_backward_jacobians", n_rows * p)
    n_eff = n - ddof
    c_w = np.eye(n_rows) - np.outer(np.ones(n_rows), w) / n
    u = c_w @ z
    var = (w @ (u * u)) / n_eff
    if eps == 0 and np.any(var == 0):
        raise ValueError("a column of x has zero variance and eps=0")
    s = 1.0 / np.sqrt(var + eps)
    x_hat = u * s
    wm = np.diag(w)
    blocks_dy, blocks_dx, qtg, rows_dgx = [], [], [], []
    for j in range(p):
        xh, gj = x_hat[:, j], g[:, j]
        q = c_w - np.outer(xh, w * xh) / n_eff
        dg = xh @ gj
        blocks_dy.append(gamma[j] * s[j] * q.T)
        blocks_dx.append(-(gamma[j] * s[j] ** 2 / n_eff) * (
            np.outer(q.T @ gj, w * xh) + dg * (wm @ q) + np.outer(w * xh, gj @ q)))
        qtg.append(q.T @ gj * s[j])
        rows_dgx.append((s[j] * (gj @ q))[None, :])
    ones_blocks = _ones_blocks(n_rows, p)
    return BatchNormBackwardJacobians(
        dx_dy=block_diag(*blocks_dy),
        dx_dx=block_diag(*blocks_dx),
        dx_dgamma=np.diag(np.concatenate(qtg)) @ ones_blocks,
        dgamma_dy=ones_blocks.T @ np.diag(vec(x_hat)),
        dgamma_dx=block_diag(*rows_dgx),
        dbeta_dy=ones_blocks.T,
    )
