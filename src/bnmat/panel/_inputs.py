"""Input checks for panel models: unit and period labels, feature columns, identification.

Shared by :mod:`bnmat.panel.model` and :mod:`bnmat.panel.table`; NumPy only.

The errors about the model's specification are :class:`ValueError` subclasses
that carry what went wrong (the columns, the units) and whose messages name no
function argument or command-line option, so that every front end (the Python
API, ``bnmat fit``) can show them as they are or word its own advice from the
attributes.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from .._segments import demean

__all__ = ["encode_labels", "label_codes", "canonical_integers", "check_finite_rows",
           "lookup_effects", "resolve_columns",
           "check_identified", "check_group_sizes", "NotIdentifiedError",
           "AbsorbedFeaturesError", "CollinearFeaturesError", "SmallGroupsError"]


# ----------------------------------------------------------------- errors
class NotIdentifiedError(ValueError):
    """The coefficients of some linear features are not identified.

    Attributes
    ----------
    columns : tuple of str
        The linear features concerned.
    effects : {"entity", "twoway", "none"}
        The effects removed before the check.
    """

    def __init__(self, message: str, columns, effects: str):
        super().__init__(message)
        self.columns = tuple(columns)
        self.effects = effects


class AbsorbedFeaturesError(NotIdentifiedError):
    """Linear features that the effects (or the intercept) absorb completely.

    Under unit effects a column constant within units; under unit and period
    effects also one that is a unit level plus a trend common to all units
    (experience growing by one a year for everyone). ``columns`` lists them.
    """


class CollinearFeaturesError(NotIdentifiedError):
    """Linear features that are collinear once the effects are removed.

    Attributes
    ----------
    condition_number : float
        Of the demeaned columns, each scaled to unit norm.
    """

    def __init__(self, message: str, columns, effects: str, condition_number: float):
        super().__init__(message, columns, effects)
        self.condition_number = float(condition_number)


class SmallGroupsError(ValueError):
    """Units with too few rows for group-wise batch norm.

    Attributes
    ----------
    units : ndarray
        Labels of the units with fewer than ``need`` rows.
    need : int
        ``max(2, ddof + 1)``.
    """

    def __init__(self, message: str, units, need: int):
        super().__init__(message)
        self.units = np.asarray(units)
        self.need = int(need)


# ----------------------------------------------------------------- labels
def _is_missing(v) -> bool:
    """None, NaN, pandas' NA or NaT: a missing label, never a unit named "nan"."""
    if v is None:
        return True
    try:
        return bool(v != v)
    except TypeError:        # pandas.NA: its comparisons are NA, whose truth is an error
        return True


def _check_no_missing(arr: np.ndarray, name: str) -> None:
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(np.isnan(arr))
    elif arr.dtype.kind == "O":
        bad = np.flatnonzero([_is_missing(v) for v in arr.tolist()])
    else:
        return
    if bad.size:
        raise ValueError(
            f"{name} has {bad.size} missing label(s) (None or NaN), the first in row "
            f"{int(bad[0])}; every row needs a label: drop those rows or give them one")


def _label_array(labels, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must hold one label per row ({n} rows); got shape {arr.shape}")
    _check_no_missing(arr, name)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise TypeError(f"{name} must hold integer or string labels; got non-integer floats")
        arr = arr.astype(np.int64)
    if arr.dtype.kind in "OS":
        arr = arr.astype(str)
    if arr.dtype.kind not in "biuU":
        raise TypeError(f"{name} must hold integer or string labels; got dtype {arr.dtype}")
    return arr


def encode_labels(labels, n: int, name: str):
    """Sorted distinct labels and the code (position) of every row."""
    arr = _label_array(labels, n, name)
    uniq, codes = np.unique(arr, return_inverse=True)
    return uniq, codes.reshape(-1).astype(np.int64)


#: An integer written the one way ``str(int)`` writes it: "01", "+1", "1_0" and " 1"
#: are other labels (two people with ids "01" and "1" are two people).
_INTEGER = re.compile(r"-?(0|[1-9][0-9]*)")


def canonical_integers(cells):
    """int64 labels when every string is a canonical integer literal, else None.

    Parameters
    ----------
    cells : sequence of str, length N

    Returns
    -------
    ndarray of int64, shape (N,), or None
        None when some cell is not written as ``str(int(cell))`` (leading
        zeros, a sign "+", underscores, spaces) or is out of int64's range:
        then the labels are text, and "01" and "1" stay two labels.
    """
    values = np.empty(len(cells), dtype=np.int64)
    for i, s in enumerate(cells):
        if not _INTEGER.fullmatch(s):
            return None
        v = int(s)
        if not -2**63 <= v < 2**63:
            return None
        values[i] = v
    return values


def _as_integers(text: np.ndarray):
    """Text labels read as integers where they are integer literals: (values, ok)."""
    values = np.zeros(text.shape[0], dtype=np.int64)
    ok = np.zeros(text.shape[0], dtype=bool)
    for i, s in enumerate(text.tolist()):
        if _INTEGER.fullmatch(s) and -2**63 <= int(s) < 2**63:
            values[i], ok[i] = int(s), True
    return values, ok


def label_codes(known: np.ndarray, labels, name: str, missing: int) -> np.ndarray:
    """Positions of ``labels`` in the sorted array ``known``; ``missing`` where absent.

    Labels of the other kind than ``known`` (text against integers, or the
    reverse) are compared as text: an integer and its decimal text are one
    label, as they are when NumPy reads a mixed list of training labels, and
    as they are in a CSV file whose column also has text. Any other label of
    the other kind is simply not among ``known`` (a new unit), never an error.

    Parameters
    ----------
    known : ndarray, shape (G,)
        Sorted distinct training labels (integers or text).
    labels : array_like, shape (N,)
    name : str
        For error messages.
    missing : int
        The code of a label not in ``known``.

    Returns
    -------
    ndarray of int64, shape (N,)
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one label per row; got shape {arr.shape}")
    arr = _label_array(arr, arr.shape[0], name)
    known = np.asarray(known)
    found = np.ones(arr.shape[0], dtype=bool)
    if (arr.dtype.kind == "U") != (known.dtype.kind == "U"):
        if known.dtype.kind == "U":
            arr = arr.astype(str)
        else:
            arr, found = _as_integers(arr)
    if known.shape[0] == 0:
        return np.full(arr.shape[0], missing, dtype=np.int64)
    pos = np.minimum(np.searchsorted(known, arr), known.shape[0] - 1)
    return np.where(found & (known[pos] == arr), pos, missing).astype(np.int64)


def lookup_effects(known, values, labels, name) -> np.ndarray:
    """``values[k]`` for the rows whose label is ``known[k]``; 0 for labels not in ``known``."""
    codes = label_codes(known, labels, name, missing=-1)
    return np.where(codes >= 0, np.asarray(values)[np.maximum(codes, 0)], 0.0)


def check_group_sizes(labels: np.ndarray, codes: np.ndarray, ddof: int) -> None:
    """Raise :class:`SmallGroupsError` when a unit has fewer than ``max(2, ddof + 1)`` rows.

    Parameters
    ----------
    labels : ndarray, shape (G,)
        The distinct units; ``codes`` index into it.
    codes : ndarray of int, shape (N,)
    ddof : int
        The batch norm's variance convention.
    """
    need = max(2, int(ddof) + 1)
    counts = np.bincount(codes, minlength=labels.shape[0])
    small = labels[counts < need]
    if small.size:
        raise SmallGroupsError(
            f"group-wise batch norm (ddof={int(ddof)}) needs at least {need} rows per unit; "
            f"{small.size} unit(s) have fewer, e.g. {small[:5].tolist()}. Drop or merge "
            "them, or normalize with the statistics of all rows (ordinary batch norm).",
            small, need)


# ----------------------------------------------------------------- columns
def check_finite_rows(a: np.ndarray, name: str, names=None) -> None:
    """Raise ``ValueError`` naming how many rows of ``a`` hold NaN or infinity, and the first.

    Parameters
    ----------
    a : ndarray, shape (N,) or (N, p)
    name : str
        "x" or "y", for the message.
    names : sequence of str, optional
        Column names of ``a``, to name the first bad column.
    """
    finite = np.isfinite(a)
    if finite.all():
        return
    rows = ~finite if a.ndim == 1 else ~finite.all(axis=1)
    bad = np.flatnonzero(rows)
    i = int(bad[0])
    where = f"row {i}"
    if a.ndim == 2:
        j = int(np.flatnonzero(~finite[i])[0])
        where += f", column {names[j]!r}" if names is not None else f", column {j}"
    value = a[i] if a.ndim == 1 else a[i, j]
    kind = "NaN" if np.isnan(value) else "infinity"
    raise ValueError(f"{name} contains NaN or infinity in {bad.size} row(s); the first is "
                     f"{where} ({kind}). Drop or fill those rows first")


def resolve_columns(spec, p: int, names: Sequence[str], what: str) -> tuple:
    """Column positions from indices or names (a single name or index is allowed)."""
    if spec is None:
        return ()
    if isinstance(spec, (str, int, np.integer)):
        spec = [spec]
    out = []
    for c in spec:
        if isinstance(c, str):
            if c not in names:
                raise ValueError(f"{what}: no feature named {c!r}; the features are "
                                 f"{list(names)}")
            out.append(list(names).index(c))
        elif isinstance(c, (int, np.integer)) and not isinstance(c, bool):
            if not -p <= c < p:
                raise ValueError(f"{what}: column {c} is out of range for {p} features")
            out.append(int(c) % p)
        else:
            raise ValueError(f"{what} must be column indices or feature names; got {c!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} lists a column twice: {spec!r}")
    return tuple(out)


def check_identified(x_lin, factors, names) -> None:
    """Raise when a linear feature is absorbed by the effects or the features are collinear.

    ``x_lin`` (N, k) is demeaned by the effects (centered when there are
    none). A column whose demeaned norm is below 1e-8 of its centered norm
    (or that is constant) is absorbed: under unit effects it is constant
    within units (a time-invariant regressor; ``linearmodels`` raises
    ``AbsorbingEffectError`` then), under unit and period effects it may
    also vary within units but be a unit level plus a common period trend.
    A demeaned matrix with a condition number above 1e8 has collinear
    columns. Neither has an identified coefficient.

    Parameters
    ----------
    x_lin : ndarray, shape (N, k), float64
    factors : None, or a list of one or two ndarrays of int, shape (N,)
        The unit codes (and the period codes).
    names : sequence of str, length k

    Raises
    ------
    AbsorbedFeaturesError, CollinearFeaturesError
        Both :class:`NotIdentifiedError`, a ``ValueError``.
    """
    effects = "none" if factors is None else ("entity" if len(factors) == 1 else "twoway")
    centered = x_lin - x_lin.mean(axis=0)
    m = centered if factors is None else demean(x_lin, factors)[0]
    before = np.linalg.norm(centered, axis=0)
    after = np.linalg.norm(m, axis=0)
    absorbed = [names[k] for k in range(x_lin.shape[1])
                if before[k] == 0 or after[k] <= 1e-8 * before[k]]
    if absorbed:
        by = {
            "none": "the intercept (they are constant)",
            "entity": "the fixed effects (they are constant within units)",
            "twoway": "the fixed effects (each is constant within units, or a unit level "
                      "plus a period trend common to all units)",
        }[effects]
        raise AbsorbedFeaturesError(
            f"linear feature(s) {absorbed} are absorbed by {by}, so their coefficients are "
            "not identified. Take them out of the linear part (they may still enter the "
            "network).", absorbed, effects)
    sv = np.linalg.svd(m / after, compute_uv=False)
    if sv[-1] <= 1e-8 * sv[0]:
        cond = sv[0] / max(sv[-1], 1e-300)
        after_what = "centering" if factors is None else "removing the effects"
        raise CollinearFeaturesError(
            f"the linear features {list(names)} are collinear after {after_what} (condition "
            f"number {cond:.3g}), so their coefficients are not identified. Take one of the "
            "collinear columns out of the linear part.", names, effects, cond)
