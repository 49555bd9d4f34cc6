"""Input checks and row selection shared by the training loops."""

from __future__ import annotations

import numpy as np
import array_api_compat

from .._array_api import as_float, check_2d, check_finite, get_namespace, is_numpy


def _is_sparse(x) -> bool:
    return hasattr(x, "toarray") and hasattr(x, "nnz")


def check_x(x, name="X"):
    if _is_sparse(x):
        if len(x.shape) != 2 or x.shape[1] == 0 or x.shape[0] == 0:
            raise ValueError(f"{name} must be 2-D with at least one row and column; got {x.shape}")
        if not np.all(np.isfinite(x.data)):
            check_finite(np.asarray(x.data), name)
        return x
    x = check_2d(as_float(x, name), name, min_rows=1)
    check_finite(x, name)
    return x


def check_xy(x, y, what=""):
    x = check_x(x, "X" + what)
    if not array_api_compat.is_array_api_obj(y):      # lists, pandas Series, ...
        y = np.asarray(y)
    if y.ndim not in (1, 2) or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y{what} must have shape (N,) or (N, k) with N = {x.shape[0]} (the rows of "
            f"X{what}); got shape {tuple(y.shape)}"
        )
    if not (is_numpy(get_namespace(y)) and np.issubdtype(np.asarray(y).dtype, np.integer)):
        y = as_float(y, "y" + what)
    check_finite(y, "y" + what)
    return x, y


def take_rows(a, idx):
    if idx is None:
        return a
    if isinstance(a, np.ndarray) or _is_sparse(a):
        return a[idx]
    xp = get_namespace(a)
    return xp.take(a, xp.asarray(idx, device=array_api_compat.device(a)), axis=0)


def row_chunks(n: int, size, order=None, drop_last: str = "merge"):
    """Row-index arrays of consecutive chunks of ``order`` (default 0..n−1)."""
    if size is None or size >= n:
        return [None] if order is None else [order]
    if order is None:
        order = np.arange(n)
    parts = [order[i:i + size] for i in range(0, n, size)]
    if len(parts) > 1 and len(parts[-1]) < size:
        if drop_last == "merge" and len(parts[-1]) < 2:
            parts[-2:] = [np.concatenate(parts[-2:])]
        elif drop_last == "drop":
            parts.pop()
    return parts


def check_batch_size(batch_size):
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer or None; got {batch_size!r}")
    return int(batch_size)
