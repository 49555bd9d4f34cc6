"""Dense (affine) layer: ``Y = X W + 1 bᵀ``."""

from __future__ import annotations

from typing import NamedTuple, Optional

from .._array_api import Array, as_float, check_2d, get_namespace

__all__ = ["DenseCache", "DenseGrads", "dense_forward", "dense_backward"]


class DenseCache(NamedTuple):
    x: Array          # (N, p_in)    the input, kept for dW = Xᵀ dY
    w: Array          # (p_in, p_out)
    has_bias: bool


class DenseGrads(NamedTuple):
    dx: Array               # (N, p_in)
    dw: Array               # (p_in, p_out)
    db: Optional[Array]     # (p_out,), or None for a layer without bias


def _is_sparse(x) -> bool:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a required dependency
        return False
    return sp.issparse(x)


def dense_forward(x, w, b=None):
    """Affine map ``Y = X W + 1 bᵀ``.

    Parameters
    ----------
    x : array, shape (N, p_in)
        Rows are observations. A SciPy CSR/CSC matrix is accepted here (and only
        here): the product ``X W`` is dense.
    w : array, shape (p_in, p_out)
    b : array, shape (p_out,), optional
        No bias when omitted.

    Returns
    -------
    y : array, shape (N, p_out)
    cache : DenseCache
    """
    if _is_sparse(x):
        return _sparse_dense_forward(x, w, b)
    xp = get_namespace(x, w, b)
    x = check_2d(as_float(x, "x", xp), "x")
    w = as_float(w, "w", xp)
    if w.ndim != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(
            f"w must have shape ({x.shape[1]}, p_out) to multiply x of shape "
            f"{tuple(x.shape)}; got shape {tuple(w.shape)}"
        )
    w = xp.astype(w, x.dtype, copy=False)
    y = x @ w
    if b is not None:
        b = as_float(b, "b", xp)
        if b.ndim != 1 or b.shape[0] != w.shape[1]:
            raise ValueError(f"b must have shape ({w.shape[1]},); got shape {tuple(b.shape)}")
        y = y + xp.astype(b, x.dtype, copy=False)
    return y, DenseCache(x=x, w=w, has_bias=b is not None)


def dense_backward(dy, cache: DenseCache) -> DenseGrads:
    """Backward pass of :func:`dense_forward`.

    Formula::

        dX = dY Wᵀ          (N, p_in)
        dW = Xᵀ dY          (p_in, p_out)     vec form: (I ⊗ X)ᵀ vec(dY)
        db = 1ᵀ dY          (p_out,)

    Parameters
    ----------
    dy : array, shape (N, p_out)
        Upstream gradient ∂R/∂Y.
    cache : DenseCache

    Returns
    -------
    DenseGrads
        ``(dx, dw, db)``; ``db`` is None when the layer has no bias.
    """
    x, w, has_bias = cache
    if _is_sparse(x):
        dw = (x.T @ dy)
        dx = dy @ w.T
        db = dy.sum(axis=0) if has_bias else None
        return DenseGrads(dx, dw, db)
    xp = get_namespace(dy, x)
    if tuple(dy.shape) != (x.shape[0], w.shape[1]):
        raise ValueError(
            f"dy must have shape {(x.shape[0], w.shape[1])} (the output's); got {tuple(dy.shape)}"
        )
    dx = dy @ xp.matrix_transpose(w)
    dw = xp.matrix_transpose(x) @ dy
    db = xp.sum(dy, axis=0) if has_bias else None
    return DenseGrads(dx, dw, db)


def _sparse_dense_forward(x, w, b):
    import numpy as np

    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"x must be 2-D with at least one column; got shape {x.shape}")
    x = x.tocsr() if x.format not in ("csr", "csc") else x
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    w = np.asarray(w, dtype=x.dtype)
    if w.ndim != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(
            f"w must have shape ({x.shape[1]}, p_out) to multiply x of shape {x.shape}; "
            f"got shape {w.shape}"
        )
    y = np.asarray(x @ w)
    if b is not None:
        b = np.asarray(b, dtype=x.dtype)
        if b.shape != (w.shape[1],):
            raise ValueError(f"b must have shape ({w.shape[1]},); got shape {b.shape}")
        y = y + b
    return y, DenseCache(x=x, w=w, has_bias=b is not None)
