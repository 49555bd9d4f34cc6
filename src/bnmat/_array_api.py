"""Array-namespace plumbing shared by every op.

The ops are written once against the Python array API standard and run on any
namespace that :mod:`array_api_compat` knows (NumPy, PyTorch, CuPy, JAX,
``array_api_strict``). This module finds the namespace of the inputs, converts
dtypes to the ones the ops compute in, and validates shapes with messages that
say what was expected.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import array_api_compat

Array = Any  # an array of any array-API namespace

__all__ = [
    "Array",
    "get_namespace",
    "to_numpy",
    "is_numpy",
    "as_float",
    "check_2d",
    "check_vector",
    "check_finite",
]


def get_namespace(*arrays, xp=None):
    """Return the array-API namespace shared by ``arrays``.

    Parameters
    ----------
    *arrays : arrays or None
        Arrays from one namespace; ``None`` and Python scalars are ignored.
        Lists, tuples and other non-array objects are treated as NumPy input.
    xp : namespace, optional
        Use this namespace instead of inferring one.

    Returns
    -------
    xp : namespace
        An array-API compatible namespace (``array_api_compat`` wraps NumPy
        and PyTorch so that they follow the standard).
    """
    if xp is not None:
        return xp
    found = [a for a in arrays if a is not None and not isinstance(a, (int, float, bool))]
    found = [a for a in found if array_api_compat.is_array_api_obj(a)]
    if not found:
        return array_api_compat.array_namespace(np.empty(0))
    return array_api_compat.array_namespace(*found)


def is_numpy(xp) -> bool:
    """True when ``xp`` is NumPy (plain or wrapped by array_api_compat)."""
    return array_api_compat.is_numpy_namespace(xp)


def to_numpy(x) -> np.ndarray:
    """Copy any array (NumPy, torch, CuPy, JAX, array_api_strict) to NumPy on the host."""
    if isinstance(x, np.ndarray):
        return x
    if array_api_compat.is_torch_array(x):
        return x.detach().cpu().numpy()
    if array_api_compat.is_cupy_array(x):
        return x.get()
    try:
        return np.asarray(x)
    except (TypeError, ValueError, RuntimeError):
        # array_api_strict and others without __array__ support DLPack.
        return np.from_dlpack(x)


def as_float(x, name: str, xp=None):
    """Return ``x`` as a floating array of the dtype the ops compute in.

    float32 and float64 are kept; integers and booleans become float64 (as
    scikit-learn does); float16 becomes float32, since batch statistics must not
    be accumulated in half precision. Complex input is rejected, and so are NumPy
    masked arrays (``TypeError``: a mask has no meaning to the formulas).
    Non-arrays (lists, scalars) become NumPy float64 arrays; NumPy arrays in a
    non-native byte order are converted to the native one.

    Parameters
    ----------
    x : array_like
    name : str
        Used in error messages.
    xp : namespace, optional

    Returns
    -------
    array
        Same namespace and shape as ``x``; never a view that the ops write into
        (ops never write into their inputs).
    """
    if not array_api_compat.is_array_api_obj(x):
        if hasattr(x, "toarray") and hasattr(x, "nnz"):
            raise TypeError(
                f"{name} is a sparse matrix; only the first dense layer accepts sparse "
                "input (x @ w); convert it with .toarray() for this op"
            )
        try:
            x = np.asarray(x)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} could not be converted to an array: {exc}") from None
        if x.dtype == object:
            raise TypeError(f"{name} has dtype object; expected numbers")
    if isinstance(x, np.ma.MaskedArray):
        # NumPy's reductions skip masked entries but divide by every row, so
        # the statistics would match neither "all rows" nor "unmasked rows".
        raise TypeError(
            f"{name} is a NumPy masked array; bnmat does not interpret masks. Drop the "
            f"masked rows ({name}[~{name}.mask.any(axis=1)]) or fill them "
            f"({name}.filled(value)) first"
        )
    xp = get_namespace(x, xp=xp)
    if isinstance(x, np.ndarray) and not x.dtype.isnative:
        # Big-endian data (e.g. read from a file written elsewhere): one byte
        # order for every code path (NumPy reductions with dtype= and the
        # kernels both need the machine's own).
        x = x.astype(x.dtype.newbyteorder("="))
    if isinstance(x, np.ndarray) and not x.flags.c_contiguous:
        # Reductions sum in an order set by the memory layout; one layout makes
        # results bitwise identical for C, Fortran and strided input.
        x = np.ascontiguousarray(x)
    dtype = x.dtype
    if xp.isdtype(dtype, "real floating"):
        f16 = getattr(xp, "float16", None)
        if f16 is not None and dtype == f16:
            return xp.astype(x, xp.float32)
        bf16 = getattr(xp, "bfloat16", None)
        if bf16 is not None and dtype == bf16:
            return xp.astype(x, xp.float32)
        return x
    if xp.isdtype(dtype, "complex floating"):
        raise TypeError(f"{name} is complex ({dtype}); bnmat works with real numbers")
    if xp.isdtype(dtype, ("integral", "bool")):
        return xp.astype(x, xp.float64)
    raise TypeError(f"{name} has unsupported dtype {dtype}; expected real numbers")


def check_2d(x, name: str, *, min_rows: int = 0):
    """Raise ``ValueError`` unless ``x`` is 2-D with at least one column.

    Parameters
    ----------
    x : array, shape (N, p)
    name : str
    min_rows : int
        Smallest acceptable N; the message says why when it is above 1.
    """
    if x.ndim != 2:
        hint = ""
        if x.ndim == 1:
            hint = (
                "; reshape your data with x.reshape(-1, 1) if it has a single feature "
                "or x.reshape(1, -1) if it is a single sample"
            )
        raise ValueError(
            f"{name} must be a 2-D array of shape (N, p); got shape {tuple(x.shape)}{hint}"
        )
    if x.shape[1] == 0:
        raise ValueError(
            f"{name} has 0 columns (shape {tuple(x.shape)}); at least one feature is required"
        )
    if x.shape[0] < min_rows:
        raise ValueError(
            f"{name} has {x.shape[0]} row(s) (shape {tuple(x.shape)}); at least {min_rows} required"
        )
    return x


def check_vector(v, name: str, size: int):
    """Raise ``ValueError`` unless ``v`` is 1-D of length ``size``."""
    if v.ndim != 1 or v.shape[0] != size:
        raise ValueError(f"{name} must have shape ({size},); got shape {tuple(v.shape)}")
    return v


def check_finite(value, name: str, xp=None) -> None:
    """Raise ``ValueError`` in scikit-learn's words when ``value`` has NaN or infinity.

    Parameters
    ----------
    value : array, any shape
    name : str
        Usually ``"X"`` or ``"y"``; the message reads
        ``"Input X contains NaN (first at row 4, column 1)."``.
    """
    xp = get_namespace(value, xp=xp)
    if bool(xp.all(xp.isfinite(value))):
        return
    host = to_numpy(value)
    what = "NaN" if np.isnan(host).any() else f"infinity or a value too large for {value.dtype}"
    where = np.argwhere(~np.isfinite(host))[0]
    place = ", ".join(f"{axis} {i}" for axis, i in zip(("row", "column"), where))
    raise ValueError(f"Input {name} contains {what} (first at {place}).")
