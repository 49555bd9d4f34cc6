"""Group structure of a batch: codes, segment sums, ghost batches, demeaning, effects.

Panel data comes with a label per row (a unit, a period, a ghost batch). In
matrix notation the labels define the N×G indicator matrix ``D`` (``D_ik = 1``
when row i is in group k), the group sizes ``n = diag(DᵀD)`` and the within-group
annihilator::

    M_D = I − D (DᵀD)⁻¹ Dᵀ          (subtract each row's group mean)

Neither ``D`` nor ``M_D`` is ever formed densely here: ``Dᵀ A`` is a segment sum,
computed as a product with the sparse G×N matrix ``Dᵀ`` (scipy's compiled CSR
kernel, the fastest of the options measured: ``np.add.at``, ``np.bincount`` per
column and ``np.add.reduceat`` on sorted rows were 4–7× slower), and ``D B`` is
the gather ``B[codes]``.

With several factors (unit and period effects), ``M`` is the projection onto
the orthogonal complement of the columns of ``[D₁ D₂ …]``; :func:`demean` applies
it by alternating projections (``M = lim (M_{D_F} ⋯ M_{D_1})^t``, von Neumann's
theorem), to a stated tolerance.

This module computes with NumPy (and scipy.sparse) only.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "GroupIndex",
    "ConvergenceWarning",
    "group_index",
    "segment_sum",
    "segment_mean",
    "ghost_batch_labels",
    "demean",
    "recover_effects",
]


class ConvergenceWarning(UserWarning):
    """Alternating projections stopped at ``max_iter`` before reaching ``tol``."""


class GroupIndex(NamedTuple):
    labels: np.ndarray   # (G,)  the distinct labels, sorted; group k has label labels[k]
    codes: np.ndarray    # (N,)  intp, row i belongs to group codes[i]
    counts: np.ndarray   # (G,)  int64, group sizes n_k = diag(DᵀD)
    dt: Any              # (G, N) scipy.sparse CSR matrix Dᵀ (float64), for segment sums

    @property
    def n_groups(self) -> int:
        return int(self.labels.shape[0])


def _label_array(groups, n: int | None, name: str) -> np.ndarray:
    labels = np.asarray(groups)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one label per row; got shape {labels.shape}")
    if n is not None and labels.shape[0] != n:
        raise ValueError(
            f"{name} has {labels.shape[0]} labels but the data has {n} rows; "
            "give one group label per row"
        )
    if labels.dtype.kind == "f":
        raise TypeError(
            f"{name} must hold integer (or string) labels; got {labels.dtype}. "
            "Convert whole-number floats with .astype(int)."
        )
    if labels.dtype.kind not in "biuUSO":
        raise TypeError(f"{name} must hold integer (or string) labels; got {labels.dtype}")
    return labels


def group_index(groups, n: int | None = None, *, name: str = "groups") -> GroupIndex:
    """Encode group labels as codes ``0..G−1`` with sizes and the sparse ``Dᵀ``.

    Parameters
    ----------
    groups : array_like of shape (N,), or GroupIndex
        One label per row: any integers (or strings). An existing
        :class:`GroupIndex` is returned as is (after checking its length), so
        callers can encode the labels once and reuse them.
    n : int, optional
        Expected number of rows N.
    name : str
        Used in error messages.

    Returns
    -------
    GroupIndex
        ``labels`` (G,) sorted distinct labels, ``codes`` (N,) with
        ``labels[codes] == groups``, ``counts`` (G,), ``dt`` the G×N CSR matrix Dᵀ.
    """
    if isinstance(groups, GroupIndex):
        if n is not None and groups.codes.shape[0] != n:
            raise ValueError(
                f"{name} has {groups.codes.shape[0]} labels but the data has {n} rows"
            )
        return groups
    labels = _label_array(groups, n, name)
    if labels.shape[0] == 0:
        raise ValueError(f"{name} is empty; at least one row is required")
    try:
        uniq, codes = np.unique(labels, return_inverse=True)
    except TypeError as exc:  # mixed or unorderable objects
        raise TypeError(f"{name} labels cannot be sorted: {exc}") from None
    import scipy.sparse as sp  # imported here: it doubles the time of ``import bnmat``

    codes = codes.reshape(-1).astype(np.intp, copy=False)
    counts = np.bincount(codes, minlength=uniq.shape[0]).astype(np.int64)
    n_rows = codes.shape[0]
    dt = sp.csr_matrix(
        (np.ones(n_rows), (codes, np.arange(n_rows))), shape=(uniq.shape[0], n_rows)
    )
    return GroupIndex(labels=uniq, codes=codes, counts=counts, dt=dt)


def segment_sum(a, index: GroupIndex) -> np.ndarray:
    """Group sums ``Dᵀ A``, accumulated in float64.

    Parameters
    ----------
    a : ndarray, shape (N,) or (N, p)
    index : GroupIndex

    Returns
    -------
    ndarray, shape (G,) or (G, p), float64
    """
    return index.dt @ np.asarray(a, dtype=np.float64)


def segment_mean(a, index: GroupIndex) -> np.ndarray:
    """Group means ``(DᵀD)⁻¹ Dᵀ A`` in float64; shape (G,) or (G, p)."""
    sums = segment_sum(a, index)
    counts = index.counts if sums.ndim == 1 else index.counts[:, None]
    return sums / counts


def ghost_batch_labels(n: int, k: int, *, min_size: int = 2) -> np.ndarray:
    """Labels ``i // k`` that split N rows into contiguous chunks of k ("ghost batches").

    Ghost batch norm (Hoffer, Hubara & Soudry, 2017) normalizes each chunk of k
    consecutive rows with its own statistics; it is group-wise batch norm with
    these labels.

    Tail rule: when the last chunk would have fewer than ``min_size`` rows
    (with the default 2: a single row, whose variance is undefined), it is
    merged into the previous chunk, which then has ``k + N mod k`` rows. Chunks
    of at least ``min_size`` rows are kept as they are. Use ``min_size=ddof + 1``
    or more when the statistics use ``ddof > 1``.

    Parameters
    ----------
    n : int
        Number of rows N ≥ 1.
    k : int
        Chunk size, at least ``min_size``.
    min_size : int, default 2

    Returns
    -------
    labels : ndarray of int64, shape (N,)
        Non-decreasing labels ``0, …, ⌈N/k⌉ − 1`` (one fewer when the tail merged).
    """
    for value, what in ((n, "n"), (k, "k"), (min_size, "min_size")):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise TypeError(f"{what} must be an integer; got {value!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    if min_size < 1:
        raise ValueError(f"min_size must be at least 1; got {min_size}")
    if k < min_size:
        raise ValueError(
            f"ghost batches of k={k} rows are too small: each needs at least "
            f"min_size={min_size} rows for its statistics"
        )
    labels = np.arange(n, dtype=np.int64) // k
    tail = n % k
    if n > k and 0 < tail < min_size:
        labels[labels == labels[-1]] -= 1
    return labels


def _factor_parts(groups) -> tuple[list, bool]:
    """Split ``groups`` into per-factor label arrays; the flag says "a single 1-D factor"."""
    if isinstance(groups, GroupIndex):
        return [groups], True
    if isinstance(groups, (list, tuple)) and len(groups) > 0 and all(
        isinstance(g, GroupIndex) or np.ndim(g) == 1 for g in groups
    ):
        return list(groups), False
    arr = np.asarray(groups)
    if arr.ndim == 2:
        if arr.shape[1] == 0:
            raise ValueError("groups has 0 columns; give at least one factor")
        return [arr[:, f] for f in range(arr.shape[1])], False
    return [arr], True


def _factors(groups, n: int) -> tuple[list[GroupIndex], bool]:
    """One GroupIndex per factor: a label array, an (N, F) array, or a sequence of them."""
    parts, single = _factor_parts(groups)
    name = (lambda f: "groups") if single else (lambda f: f"groups[{f}]")
    return [group_index(g, n, name=name(f)) for f, g in enumerate(parts)], single


def _check_rows(a, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim not in (1, 2) or a.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N,) or (N, k) with N >= 1; got {a.shape}")
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be real numbers; got {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"Input {name} contains NaN or infinity.")
    return a


def _alternating_projections(a, factors, tol, max_iter):
    """Return ``(Ma, effects, n_iter)`` with ``a − Ma = Σ_f D_f effects[f]``."""
    if not (isinstance(tol, (int, float)) and tol > 0):
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    if not (isinstance(max_iter, (int, np.integer)) and max_iter >= 1):
        raise ValueError(f"max_iter must be a positive integer; got {max_iter!r}")
    r = np.array(a, dtype=np.float64)  # a fresh copy: the input is never written
    effects = [np.zeros((f.n_groups,) + r.shape[1:]) for f in factors]
    if len(factors) == 1:
        mean = segment_mean(r, factors[0])
        return r - mean[factors[0].codes], [mean], 1
    scale = float(np.max(np.abs(r), initial=0.0))
    threshold = tol * scale
    step = np.inf
    for sweep in range(1, max_iter + 1):
        step = 0.0
        for f, index in enumerate(factors):
            mean = segment_mean(r, index)
            r -= mean[index.codes]
            effects[f] += mean
            step = max(step, float(np.max(np.abs(mean))))
        if step <= threshold:
            return r, effects, sweep
    warnings.warn(
        f"alternating projections did not reach tol={tol:g} in max_iter={max_iter} sweeps "
        f"(the last sweep moved an entry by {step:.3g}, {step / scale:.3g} relative to "
        "max|a|); the units and periods may be poorly connected. "
        "Raise max_iter or loosen tol.",
        ConvergenceWarning,
        stacklevel=3,
    )
    return r, effects, max_iter


def demean(a, groups, *, tol: float = 1e-10, max_iter: int = 10_000):
    """Project out one or more sets of group effects: ``ã = M a``.

    One factor (a label array): ``ã = M_D a``, each row minus its group mean,
    exact, in one pass. Several factors (a sequence of label arrays, or an
    (N, F) array, e.g. unit and period): ``M`` is the projection onto the
    orthogonal complement of the columns of ``[D₁ … D_F]``, applied by
    alternating projections (Gauss–Seidel demeaning, one factor after the
    other). Works for unbalanced panels.

    Stopping rule: the first sweep in which no projection moves any entry by
    more than ``tol · max|a|``. Then every group mean of ``ã``, for every
    factor, is at most ``(F − 1)·tol·max|a|`` in absolute value (``ã`` is
    orthogonal to every ``D_f`` to that tolerance) and ``a − ã`` lies in the
    span of the indicators by construction. As for any linearly converging
    iteration, the remaining distance to the exact projection is about the
    last step times ρ/(1 − ρ), with ρ < 1 the rate of convergence; ρ is close
    to 1 only for panels whose units and periods are poorly connected.

    Parameters
    ----------
    a : array_like, shape (N,) or (N, k)
    groups : array_like of shape (N,), array of shape (N, F), or sequence of (N,) arrays
        Labels (integers or strings) or :class:`GroupIndex` objects.
    tol : float, default 1e-10
        Relative tolerance of the stopping rule above.
    max_iter : int, default 10000
        Most sweeps; reaching it issues a :class:`ConvergenceWarning`.

    Returns
    -------
    a_tilde : ndarray, shape of a
        ``M a``, float64 (float32 input gives float32 output).
    n_iter : int
        Sweeps used (1 for one factor).
    """
    a = _check_rows(a, "a")
    factors, _ = _factors(groups, a.shape[0])
    r, _, n_iter = _alternating_projections(a, factors, tol, max_iter)
    return r.astype(np.float32 if a.dtype == np.float32 else np.float64, copy=False), n_iter


def _normalize_two_way(effects, factors):
    """Shift constants from the second factor's effects into the first, per component.

    ``[D₁ D₂]`` has one null direction per connected component of the
    unit–period graph (add c to the units' effects, subtract it from the
    periods'); fix it by giving the second factor's effects a count-weighted
    mean of zero within each component.
    """
    import scipy.sparse as sp
    from scipy.sparse.csgraph import connected_components

    f1, f2 = factors
    g1 = f1.n_groups
    edges = sp.csr_matrix(
        (np.ones(f1.codes.shape[0]), (f1.codes, g1 + f2.codes)),
        shape=(g1 + f2.n_groups, g1 + f2.n_groups),
    )
    n_comp, comp = connected_components(edges, directed=False)
    comp1, comp2 = comp[:g1], comp[g1:]
    alpha, tau = effects
    w = f2.counts.astype(np.float64)
    wsum = np.bincount(comp2, weights=w, minlength=n_comp)
    weighted = (w[:, None] * tau.reshape(tau.shape[0], -1)).T     # one row per output
    shift = np.stack([np.bincount(comp2, weights=c, minlength=n_comp) for c in weighted], axis=1)
    shift = (shift / wsum[:, None]).reshape((n_comp,) + tau.shape[1:])
    return [alpha + shift[comp1], tau - shift[comp2]]


def recover_effects(residual, groups, *, tol: float = 1e-10, max_iter: int = 10_000):
    """Estimate the group effects from residuals ``r = y − f(X)`` (before projection).

    One factor (the within / fixed-effects estimator): ``α̂ = (DᵀD)⁻¹ Dᵀ r``,
    the mean residual of each unit, which minimizes ``‖r − Dα‖²``.

    Two factors (unit i and period t): ``(α̂, τ̂)`` minimize
    ``‖r − D₁α − D₂τ‖²``; they are the group means removed by the alternating
    projections of :func:`demean`, accumulated, with the same tolerance. They are
    identified up to one constant per connected component of the unit–period
    graph (α + c, τ − c); the period effects are normalized to a count-weighted
    mean of zero within each component, so the unit effects carry the level.

    Effects exist for in-sample groups only; predictions for new units must use
    f alone (a zero effect), and callers should say so.

    Parameters
    ----------
    residual : array_like, shape (N,) or (N, k)
    groups : array_like of shape (N,), or a sequence of two (N,) label arrays
    tol, max_iter
        As in :func:`demean` (two factors only).

    Returns
    -------
    dict, or list of two dicts
        label → α̂ (a float, or an array of shape (k,) for 2-D residuals); for two
        factors, ``[unit_effects, period_effects]``.
    """
    r = _check_rows(residual, "residual")
    factors, one_way = _factors(groups, r.shape[0])
    if len(factors) > 2:
        raise ValueError(
            f"recover_effects supports one or two factors; got {len(factors)} (with three "
            "or more, the effects are not identified by a per-component constant alone)"
        )
    _, effects, _ = _alternating_projections(r, factors, tol, max_iter)
    if len(factors) == 2:
        effects = _normalize_two_way(effects, factors)

    def as_dict(values, index):
        keys = index.labels.tolist()
        if values.ndim == 1:
            return {key: float(v) for key, v in zip(keys, values)}
        return {key: v.copy() for key, v in zip(keys, values)}

    dicts = [as_dict(e, f) for e, f in zip(effects, factors)]
    return dicts[0] if one_way else dicts
