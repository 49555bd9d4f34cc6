"""Vec algebra and the input checks shared by the explicit Jacobians."""

from __future__ import annotations

import math

import numpy as np

from .._array_api import check_2d, check_finite, to_numpy

__all__ = ["MAX_DIM", "vec", "unvec", "commutation_matrix", "vjp_from_jacobian"]

#: Largest number of rows or columns of a Jacobian built here (a 4096 × 4096
#: float64 matrix takes 128 MiB).
MAX_DIM = 4096


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
