"""Group-wise batch normalization: statistics per group of rows, shared γ and β.

With D the N×G group indicator (row i in group k), n_k the group sizes,
ν_k = n_k − ddof, and the within-group annihilator ``M_D = I − D(DᵀD)⁻¹Dᵀ``
(ordinary batch norm's centering ``C`` is the case ``D = 1_N``)::

    μ  = (DᵀD)⁻¹ Dᵀ Z                               G×p, group means
    Σ² = diag(ν)⁻¹ Dᵀ((M_D Z) ∘ (M_D Z))            G×p, group variances
    S  = (Σ² + ε)^∘(−1/2)                           G×p, s_kj
    Ẑ  = (M_D Z) ∘ (D S)
    B  = Ẑ diag(γ) + 1 βᵀ

Neither D nor M_D is formed: ``Dᵀ A`` is a segment sum (:mod:`bnmat.panel`)
and ``D S`` a row gather ``S[codes]``. These ops compute with NumPy only
(segment sums use ``scipy.sparse``); other array namespaces raise ``TypeError``.
Ghost batch norm is the case ``groups = bnmat.panel.ghost_batch_labels(N, k)``.
Inference with stored per-group statistics is in
:mod:`bnmat.ops.group_batchnorm_inference`. The proofs are in ``docs/derivation.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._array_api import Array, as_float, check_2d, check_vector, get_namespace, is_numpy
from .._segments import GroupIndex, group_index, segment_sum
from .batchnorm import BatchNormGrads, check_ddof, check_eps

__all__ = [
    "GroupBatchNormCache",
    "group_batchnorm_forward",
    "group_batchnorm_backward",
    "group_batchnorm_jacobians",
]


class GroupBatchNormCache(NamedTuple):
    x_hat: Array         # (N, p)  Ẑ = (M_D Z) ∘ (D S)
    inv_std: Array       # (G, p)  S, s_kj = (σ²_kj + ε)^(−1/2)
    gamma: Array         # (p,)
    mean: Array          # (G, p)  μ_k, rows in the order of index.labels
    var: Array           # (G, p)  σ²_k with ddof
    pooled_mean: Array   # (p,)    mean of all N rows
    pooled_var: Array    # (p,)    variance of all N rows, Σ(z − mean)²/(N − ddof)
    index: GroupIndex    # labels (G,), codes (N,), counts (G,), Dᵀ
    ddof: int


def _numpy_float(x, name):
    xp = get_namespace(x)
    if not is_numpy(xp):
        raise TypeError(
            f"group-wise batch norm computes with NumPy (segment sums via scipy.sparse); "
            f"{name} is a {type(x).__module__}.{type(x).__name__}. Convert it with np.asarray "
            "(or bnmat._array_api.to_numpy) first."
        )
    return np.asarray(as_float(x, name))


def _label(labels, k):
    """A label as a plain Python value, for messages (``5``, not ``np.int64(5)``)."""
    value = labels[k]
    return value.item() if isinstance(value, np.generic) else value


def _param(v, name, p, dtype):
    return check_vector(_numpy_float(v, name), name, p).astype(dtype, copy=False)


def _group_moments(x, index: GroupIndex, ddof: int):
    """Per-group means and variances by the corrected two-pass algorithm, in float64.

    As :func:`bnmat.ops.batchnorm.column_moments`, per group: a float64 shift
    (the group mean), then sums of ``d = x − shift`` and ``d²`` in float64 with
    Björck's correction for the rounding of the shift.
    """
    n_k = index.counts[:, None].astype(np.float64)
    shift = segment_sum(x, index) / n_k
    d = x - shift.astype(x.dtype)[index.codes]
    s1 = segment_sum(d, index)
    s2 = segment_sum(d * d, index)
    delta = s1 / n_k
    mean = shift + delta
    var = np.maximum((s2 - s1 * delta) / (n_k - ddof), 0.0)
    centered = d - delta.astype(x.dtype)[index.codes]
    return mean, var, centered


def group_batchnorm_forward(x, groups, gamma, beta, *, eps: float = 1e-5, ddof: int = 0):
    """Group-wise batch normalization in training mode, with per-group statistics.

    Formula (D the N×G indicator of ``groups``, ν_k = n_k − ddof)::

        μ_k  = mean of the rows of group k,   σ²_kj = Σ_{i∈k} (z_ij − μ_kj)² / ν_k
        s_kj = (σ²_kj + ε)^(−1/2)
        Ẑ = (M_D Z) ∘ (D S),   Y = Ẑ diag(γ) + 1 βᵀ

    With a single group this is :func:`bnmat.ops.batchnorm_forward`.

    Parameters
    ----------
    x : ndarray, shape (N, p)
        Pre-activations; integers become float64, float16 float32.
    groups : array_like of shape (N,), or bnmat.panel.GroupIndex
        A group label per row (any integers or strings; the rows of a group need
        not be contiguous). Encode once with :func:`bnmat.panel.group_index` to
        reuse across calls.
    gamma, beta : ndarray, shape (p,)
        Scale and shift, shared by all groups.
    eps : float, default 1e-5
        ε ≥ 0; with ``eps=0`` a group with a constant column raises ValueError.
    ddof : int, default 0
        Each group's variance divides by ``n_k − ddof``.

    Returns
    -------
    y : ndarray, shape (N, p)
        x's dtype (statistics accumulate in float64).
    cache : GroupBatchNormCache
        Holds per-group ``mean`` and ``var`` (G, p), ``pooled_mean`` and
        ``pooled_var`` (p,) and the group ``index``; see :func:`group_statistics`.

    Raises
    ------
    ValueError
        A group with fewer than ``max(2, ddof + 1)`` rows (naming its label);
        NaN or infinity in x; a constant column within a group with ``eps=0``
        (naming the group and column); non-conforming shapes.
    TypeError
        Non-NumPy arrays.
    """
    eps, ddof = check_eps(eps), check_ddof(ddof)
    x = check_2d(_numpy_float(x, "x"), "x")
    n, p = x.shape
    index = group_index(groups, n)
    need = max(2, ddof + 1)
    small = np.flatnonzero(index.counts < need)
    if small.size:
        k = small[0]
        raise ValueError(
            f"group {_label(index.labels, k)!r} has {index.counts[k]} row(s); group-wise "
            f"batch norm needs at least {need} rows in every group (ddof={ddof} divides the "
            f"variance by n_k - {ddof}). {small.size} group(s) are too small: merge them "
            "with others or drop them."
        )
    gamma = _param(gamma, "gamma", p, x.dtype)
    beta = _param(beta, "beta", p, x.dtype)

    with np.errstate(invalid="ignore", over="ignore"):  # non-finite input: reported below
        mean, var, centered = _group_moments(x, index, ddof)
    bad = ~(np.isfinite(mean) & np.isfinite(var))
    if bad.any():
        k, j = np.argwhere(bad)[0]
        raise ValueError(
            f"Input x contains NaN or infinity (group {_label(index.labels, k)!r}, column {j})."
        )
    if eps == 0 and (var == 0).any():
        k, j = np.argwhere(var == 0)[0]
        raise ValueError(
            f"column {j} of x is constant within group {_label(index.labels, k)!r} and eps=0: the "
            "standardization divides by zero. Use eps > 0 or drop the column."
        )
    inv_std = (1.0 / np.sqrt(var + eps)).astype(x.dtype)
    x_hat = centered * inv_std[index.codes]
    y = x_hat * gamma + beta

    # Statistics of all rows, by the law of total variance (float64 group moments).
    w = index.counts[:, None] / n
    pooled_mean = np.sum(w * mean, axis=0)
    ss = np.sum((index.counts[:, None] - ddof) * var + index.counts[:, None]
                * (mean - pooled_mean) ** 2, axis=0)
    pooled_var = ss / (n - ddof)
    cache = GroupBatchNormCache(
        x_hat=x_hat, inv_std=inv_std, gamma=gamma,
        mean=mean.astype(x.dtype), var=var.astype(x.dtype),
        pooled_mean=pooled_mean.astype(x.dtype), pooled_var=pooled_var.astype(x.dtype),
        index=index, ddof=ddof,
    )
    return y, cache


def group_batchnorm_backward(dy, cache: GroupBatchNormCache) -> BatchNormGrads:
    """Backward pass of :func:`group_batchnorm_forward` (training mode).

    Formula (G = dy, ν = n − ddof; proof in docs/derivation.md §8)::

        dβ = 1ᵀ G
        dγ = 1ᵀ (G ∘ Ẑ)
        dZ = [M_D G − Ẑ ∘ D diag(ν)⁻¹ Dᵀ(G ∘ Ẑ)] ∘ (D S) diag(γ)

    i.e. for row i of group k, with ḡ_k the group mean of G and p_k = Σ_{l∈k} g_l ∘ ẑ_l::

        dz_i = γ ∘ s_k ∘ (g_i − ḡ_k − ẑ_i ∘ p_k/ν_k)

    It accounts for the dependence of every μ_k and σ²_k on Z, for any ε ≥ 0
    and ddof. Invariants: ``Dᵀ dZ = 0`` (group sums vanish, so anything constant
    within groups before the op gets no gradient) and, when ε = 0,
    ``Dᵀ(dZ ∘ Ẑ) = 0``.

    Parameters
    ----------
    dy : ndarray, shape (N, p)
    cache : GroupBatchNormCache

    Returns
    -------
    BatchNormGrads
        ``dx`` (N, p), ``dgamma`` and ``dbeta`` (p,), in x's dtype (sums in float64).
    """
    x_hat, inv_std, gamma = cache.x_hat, cache.inv_std, cache.gamma
    index, ddof = cache.index, cache.ddof
    dy = _numpy_float(dy, "dy")
    if dy.shape != x_hat.shape:
        raise ValueError(f"dy must have shape {x_hat.shape}; got {dy.shape}")
    dy = dy.astype(x_hat.dtype, copy=False)
    n_k = index.counts[:, None].astype(np.float64)
    dbeta_k = segment_sum(dy, index)             # DᵀG
    dgamma_k = segment_sum(dy * x_hat, index)    # Dᵀ(G∘Ẑ)
    scale = inv_std * gamma                      # S diag(γ), G×p
    codes = index.codes
    dx = (dy - (dbeta_k / n_k).astype(dy.dtype)[codes]
          - x_hat * (dgamma_k / (n_k - ddof)).astype(dy.dtype)[codes]) * scale[codes]
    return BatchNormGrads(
        dx=dx,
        dgamma=dgamma_k.sum(axis=0).astype(dy.dtype),
        dbeta=dbeta_k.sum(axis=0).astype(dy.dtype),
    )


def group_batchnorm_jacobians(x, groups, gamma, beta, *, eps: float = 1e-5, ddof: int = 0):
    """Explicit Jacobians of group-wise batch norm, in the vec/Kronecker form (small sizes).

    Built densely from the definitions, independently of the forward and
    backward code (column-major ``vec``)::

        ∂vec(B)/∂βᵀ     = I_p ⊗ 1_N
        ∂vec(B)/∂γᵀ     = diag(vec Ẑ)(I_p ⊗ 1_N)
        ∂vec(B)/∂vec(Z)ᵀ = blockdiag_j(J_j),
        J_j = γ_j diag(D s_j) [M_D − diag(ẑ_j) D diag(ν)⁻¹ Dᵀ diag(ẑ_j)]

    Within column j the block is zero between groups; for the rows of group k
    it is ``γ_j s_kj (C_{n_k} − ẑ_kj ẑ_kjᵀ/ν_k)``. Then ``vec(dZ) = Jᵀ vec(G)``.

    Parameters
    ----------
    x : ndarray, shape (N, p), with N·p ≤ 4096
    groups : array_like, shape (N,)
    gamma, beta : ndarray, shape (p,)
    eps, ddof
        As in :func:`group_batchnorm_forward`.

    Returns
    -------
    jx : ndarray, shape (N·p, N·p)
    jgamma, jbeta : ndarray, shape (N·p, p)
    """
    eps, ddof = check_eps(eps), check_ddof(ddof)
    x = check_2d(_numpy_float(x, "x"), "x").astype(np.float64)
    n, p = x.shape
    if n * p > 4096:
        raise ValueError(
            f"explicit Jacobians are for small sizes (N·p ≤ 4096); got N·p = {n * p}"
        )
    gamma = _param(gamma, "gamma", p, np.float64)
    _param(beta, "beta", p, np.float64)
    labels = np.asarray(groups)
    uniq = np.unique(labels)
    d = (labels[:, None] == uniq[None, :]).astype(np.float64)       # N×G, dense here only
    counts = d.sum(axis=0)
    nu = counts - ddof
    if np.any(counts < max(2, ddof + 1)):
        raise ValueError(f"every group needs at least {max(2, ddof + 1)} rows")
    m_d = np.eye(n) - d @ np.diag(1.0 / counts) @ d.T
    zc = m_d @ x
    s = (np.diag(1.0 / nu) @ d.T @ (zc * zc) + eps) ** -0.5           # G×p
    z_hat = zc * (d @ s)
    jx = np.zeros((n * p, n * p))
    for j in range(p):
        zj = np.diag(z_hat[:, j])
        block = gamma[j] * np.diag(d @ s[:, j]) @ (m_d - zj @ d @ np.diag(1.0 / nu) @ d.T @ zj)
        jx[j * n:(j + 1) * n, j * n:(j + 1) * n] = block
    jbeta = np.kron(np.eye(p), np.ones((n, 1)))
    jgamma = np.diag(z_hat.reshape(-1, order="F")) @ jbeta
    return jx, jgamma, jbeta
