"""Parallel branches on column subsets, outputs summed: ``y = Σ_b f_b(X S_b)``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import array_api_compat

from .._array_api import get_namespace, is_numpy
from ._checks import check_generator
from ._network import Network, check_module, group_kwargs, is_sparse, population_forward
from ._registry import register_layer

__all__ = ["Additive", "AdditiveCache"]


class AdditiveCache(NamedTuple):
    columns: list    # per branch, the column indices taken from x
    caches: list     # per branch, that module's cache
    in_features: int


def _normalize_columns(columns, i):
    if isinstance(columns, slice):
        return columns
    arr = np.asarray(columns)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(
            f"branch {i}: columns must be a slice or a non-empty list of integer "
            f"column indices; got {columns!r}"
        )
    return tuple(int(c) for c in arr)


def _resolve_columns(columns, p: int, i: int) -> tuple:
    if isinstance(columns, slice):
        idx = tuple(range(*columns.indices(p)))
    else:
        bad = [c for c in columns if not -p <= c < p]
        if bad:
            raise ValueError(f"branch {i}: column indices {bad} are out of range for {p} columns")
        idx = tuple(c % p for c in columns)
    if not idx:
        raise ValueError(f"branch {i}: the slice {columns} selects no column of {p}")
    return idx


def _take_columns(x, idx):
    if is_sparse(x):
        return x[:, list(idx)]
    xp = get_namespace(x)
    return xp.take(x, xp.asarray(idx), axis=1)


@register_layer
@dataclass(frozen=True)
class Additive(Network):
    """Parallel branches on column subsets of X, outputs summed.

    ``y = Σ_b f_b(X S_b)`` where ``S_b`` is the p × k_b 0/1 matrix that selects
    branch b's columns. A known linear part beside a network,
    ``ŷ = X_lin b + f(X_nn)``, is::

        Additive([(lin_cols, Dense(1, bias=False)),
                  (nn_cols, Sequential([...]))])

    Parameters
    ----------
    branches : sequence of (columns, module)
        ``columns`` is a list of integer column indices or a ``slice``; the
        same column may feed several branches. Every module must produce the
        same number of output columns.

    Notes
    -----
    Backward, with ``G`` = ∂R/∂y and each branch's input gradient ``dX_b``::

        dX = Σ_b dX_b S_bᵀ          (dX_b of branch b is f_b's backward of G)

    Parameters and state are lists with one entry per branch.
    """

    branches: tuple

    def __post_init__(self):
        branches = []
        for i, branch in enumerate(tuple(self.branches)):
            if not (isinstance(branch, (tuple, list)) and len(branch) == 2):
                raise ValueError(f"branch {i} must be a pair (columns, module); got {branch!r}")
            columns, module = branch
            check_module(module, f"branch {i}'s module")
            branches.append((_normalize_columns(columns, i), module))
        if not branches:
            raise ValueError("Additive needs at least one branch")
        object.__setattr__(self, "branches", tuple(branches))

    def _modules(self):
        return tuple(module for _, module in self.branches)

    def _init(self, rng, in_features):
        check_generator(rng)
        params, state, widths = [], [], []
        for i, (columns, module) in enumerate(self.branches):
            idx = _resolve_columns(columns, in_features, i)
            width, p, s = module.init(rng, len(idx))
            widths.append(width)
            params.append(p)
            state.append(s)
        if len(set(widths)) != 1:
            raise ValueError(
                f"the branches of Additive must have the same number of outputs to be "
                f"summed; got {widths}"
            )
        return widths[0], params, state

    def _check_lists(self, params, state):
        n = len(self.branches)
        for name, value in (("params", params), ("state", state)):
            if not isinstance(value, (list, tuple)) or len(value) != n:
                raise ValueError(f"{name} must be a list with one entry per branch ({n})")

    def forward(self, params, state, x, *, training: bool, groups=None):
        """``y = Σ_b f_b(X S_b)``.

        Parameters
        ----------
        params, state : list
            One entry per branch.
        x : array, shape (N, p)
        training : bool
        groups : array_like, shape (N,), optional
            The group label of every row (rows are not subset, only columns),
            passed to the branches that read it.

        Returns
        -------
        y : array, shape (N, k)
        new_state : list
        cache : AdditiveCache
        """
        self._check_lists(params, state)
        p = x.shape[1]
        y, new_state, caches, columns = None, [], [], []
        for i, ((cols, module), pb, sb) in enumerate(zip(self.branches, params, state)):
            idx = _resolve_columns(cols, p, i)
            yb, sb, cb = module.forward(pb, sb, _take_columns(x, idx), training=training,
                                        **group_kwargs(module, groups))
            if y is not None and tuple(yb.shape) != tuple(y.shape):
                raise ValueError(
                    f"branch {i} returned shape {tuple(yb.shape)}; earlier branches "
                    f"{tuple(y.shape)}"
                )
            y = yb if y is None else y + yb
            new_state.append(sb)
            caches.append(cb)
            columns.append(idx)
        return y, new_state, AdditiveCache(columns, caches, p)

    def backward(self, dy, cache):
        """``dX = Σ_b dX_b S_bᵀ``; grads one entry per branch.

        Parameters
        ----------
        dy : array, shape (N, k)
        cache : AdditiveCache

        Returns
        -------
        dx : array, shape (N, p)
        grads : list
        """
        dx, grads = None, []
        for (_, module), idx, cb in zip(self.branches, cache.columns, cache.caches):
            dxb, gb = module.backward(dy, cb)
            xp = get_namespace(dxb)
            # S_bᵀ: row j is the unit vector of column idx[j].
            s_t = xp.asarray(np.eye(cache.in_features)[list(idx)], dtype=dxb.dtype)
            if not is_numpy(xp):
                s_t = xp.asarray(s_t, device=array_api_compat.device(dxb))
            term = dxb @ s_t
            dx = term if dx is None else dx + term
            grads.append(gb)
        return dx, grads

    def population_state(self, params, state, xs, groups=None):
        """Exact full-data statistics in every branch; see :func:`population_forward`.

        ``groups``: a list of label arrays parallel to ``xs``, or None.
        """
        self._check_lists(params, state)
        xs = list(xs)
        p = xs[0].shape[1]
        ys, new_state = None, []
        for i, ((cols, module), pb, sb) in enumerate(zip(self.branches, params, state)):
            idx = _resolve_columns(cols, p, i)
            yb, sb = population_forward(module, pb, sb, [_take_columns(x, idx) for x in xs],
                                        groups)
            ys = yb if ys is None else [a + b for a, b in zip(ys, yb)]
            new_state.append(sb)
        return ys, new_state
