"""Explicit Jacobians in vec/Kronecker form, for small sizes.

The compact backward formulas in :mod:`bnmat.ops` are proved by writing each
op as a map between vectorized matrices and reading off its Jacobian (Magnus &
Neudecker's convention). Here those Jacobians are built as dense NumPy float64
matrices, straight from their Kronecker and block-diagonal expressions::

    dense:  ∂vec(XW)/∂vec(X)ᵀ = Wᵀ ⊗ I_N,     ∂vec(XW)/∂vec(W)ᵀ = I_q ⊗ X
    BN, β:  ∂vec(B)/∂βᵀ = I_p ⊗ 1_N
    BN, γ:  ∂vec(B)/∂γᵀ = diag(vec Ẑ)(I_p ⊗ 1_N)
    BN, Z:  ∂vec(B)/∂vec(Z)ᵀ = blockdiag_j( γ_j s_j (C − ẑ_j ẑ_jᵀ/(N − ddof)) )
    act.:   ∂vec(a(B))/∂vec(B)ᵀ = diag(vec a′(B))

``vec`` stacks columns, so entry (i, j) of an N×p matrix sits at position
``i + j·N`` of its vec. With a Jacobian J of an op and an upstream gradient G,
the chain rule gives ``vec(∂R/∂θ) = Jᵀ vec(G)`` (:func:`vjp_from_jacobian`),
which is what the tests compare the compact backward passes against.

Nothing here calls a backward pass of :mod:`bnmat.ops`; the matrices are
independent references. They are dense (the BN Jacobian is Np × Np), so every
function refuses sizes with more than :data:`MAX_DIM` rows or columns: these are
small-size references for checking derivations, not a way to train.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import numpy as np
from scipy.linalg import block_diag
from scipy.special import expit

from ._array_api import check_2d, check_finite, to_numpy

__all__ = [
    "MAX_DIM",
    "DenseJacobians",
    "BatchNormJacobians",
    "vec",
    "unvec",
    "commutation_matrix",
    "dense_jacobians",
    "batchnorm_jacobians",
    "batchnorm_inference_jacobians",
    "BatchNormBackwardJacobians",
    "batchnorm_backward_jacobians",
    "activation_jacobian",
    "loss_jacobian",
    "vjp_from_jacobian",
]

#: Largest number of rows or columns of a Jacobian built here (a 4096 × 4096
#: float64 matrix takes 128 MiB).
MAX_DIM = 4096


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


# --------------------------------------------------------------------------- helpers


def _float64(a, name: str) -> np.ndarray:
    """``a`` as a NumPy float64 array (from any namespace); complex is refused."""
    a = to_numpy(a)
    if np.iscomplexobj(a):
        raise TypeError(f"{name} is complex ({a.dtype}); bnmat works with real numbers")
    try:
        return np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} could not be converted to a float64 array: {exc}") from None


def _matrix(a, name: str) -> np.ndarray:
    a = check_2d(_float64(a, name), name, min_rows=1)
    check_finite(a, name)
    return a


def _vector(v, name: str, size: int) -> np.ndarray:
    v = _float64(v, name)
    if v.shape != (size,):
        raise ValueError(f"{name} must have shape ({size},); got shape {v.shape}")
    check_finite(v, name)
    return v


def _check_size(what: str, *dims: int) -> None:
    if max(dims) > MAX_DIM:
        shape = " × ".join(str(d) for d in dims)
        raise ValueError(
            f"{what} would be a dense {shape} matrix, above MAX_DIM = {MAX_DIM} rows or "
            "columns. bnmat.jacobians builds explicit Jacobians as small-size references "
            "for checking derivations; use the backward functions in bnmat.ops for real sizes."
        )


def _check_eps(eps) -> None:
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")


def _ones_blocks(n: int, p: int) -> np.ndarray:
    """``I_p ⊗ 1_N``, shape (N·p, p): column j is 1 on the rows that hold column j."""
    return np.kron(np.eye(p), np.ones((n, 1)))


# --------------------------------------------------------------------------- vec algebra


def vec(a) -> np.ndarray:
    """Stack the columns of a matrix into one vector (column-major).

    Formula::

        vec(A) = [a_1; a_2; …; a_n],   A = [a_1 … a_n]  (m × n)

    so ``A[i, j]`` is ``vec(A)[i + j·m]``.

    Parameters
    ----------
    a : array, shape (m, n), (m,) or ()
        A vector is its own vec; a scalar becomes a vector of length 1.

    Returns
    -------
    v : ndarray of float64, shape (m·n,)
        A new array (never a view of ``a``).
    """
    a = _float64(a, "a")
    if a.ndim > 2:
        raise ValueError(f"vec is defined for matrices and vectors; got shape {a.shape}")
    return np.reshape(a, -1, order="F").copy()


def unvec(v, shape) -> np.ndarray:
    """Inverse of :func:`vec`: refill a matrix column by column.

    Parameters
    ----------
    v : array, shape (m·n,), or a single row or column of that length
    shape : int or tuple of int
        ``(m, n)``, ``(m,)`` or ``m``.

    Returns
    -------
    a : ndarray of float64, shape ``shape``
        With ``vec(a) == v``.
    """
    v = _float64(v, "v")
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(d) for d in shape)
    if len(shape) > 2:
        raise ValueError(f"unvec builds matrices and vectors; got shape {shape}")
    if v.ndim > 2 or (v.ndim == 2 and 1 not in v.shape):
        raise ValueError(f"v must be a vector (or a single row or column); got shape {v.shape}")
    if v.size != math.prod(shape):
        raise ValueError(
            f"v has {v.size} entries but shape {shape} needs {math.prod(shape)}"
        )
    return np.reshape(v, shape, order="F").copy()


def commutation_matrix(m: int, n: int) -> np.ndarray:
    """The commutation matrix ``K_mn``, which turns ``vec(A)`` into ``vec(Aᵀ)``.

    Formula::

        K_mn vec(A) = vec(Aᵀ)   for A of shape m × n
        K_mn = Σ_ij E_ij ⊗ E_ijᵀ  (E_ij the m × n unit matrices);  K_mnᵀ = K_mn⁻¹ = K_nm

    Parameters
    ----------
    m, n : int
        Shape of A; both ≥ 1.

    Returns
    -------
    K : ndarray of float64, shape (m·n, m·n)
        A permutation matrix.
    """
    for name, d in (("m", m), ("n", n)):
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
            raise ValueError(f"{name} must be a positive integer; got {d!r}")
    m, n = int(m), int(n)
    _check_size("commutation_matrix(m, n)", m * n, m * n)
    # position[i, j] = where A[i, j] sits in vec(A); read in the order of vec(Aᵀ).
    position = np.arange(m * n).reshape((m, n), order="F")
    source = np.reshape(position.T, -1, order="F")
    return np.eye(m * n)[source]


def vjp_from_jacobian(j, g, shape=None) -> np.ndarray:
    """Pull an upstream gradient back through a Jacobian: ``Jᵀ vec(G)``.

    If ``J = ∂vec(Y)/∂vec(θ)ᵀ`` and ``G = ∂R/∂Y``, the chain rule reads::

        vec(∂R/∂θ) = Jᵀ vec(G)

    Parameters
    ----------
    j : array, shape (r, c)
        A Jacobian from this module (r outputs, c inputs).
    g : array with r entries, or a scalar when r = 1
        The upstream gradient, vectorized column-major.
    shape : int or tuple of int, optional
        Shape of θ; when given the result is :func:`unvec`'d to it.

    Returns
    -------
    ndarray of float64, shape (c,) or ``shape``
    """
    j = _float64(j, "j")
    if j.ndim != 2:
        raise ValueError(f"j must be a 2-D Jacobian; got shape {j.shape}")
    g = vec(g)
    if g.shape[0] != j.shape[0]:
        raise ValueError(
            f"g has {g.shape[0]} entries but the Jacobian has {j.shape[0]} rows (outputs)"
        )
    out = j.T @ g
    return out if shape is None else unvec(out, shape)


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
