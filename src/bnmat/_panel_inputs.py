"""Input checks for panel models: unit and period labels, feature columns, identification.

Shared by :mod:`bnmat.panel_model` and :mod:`bnmat.panel_table`; NumPy only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .panel import demean

__all__ = ["encode_labels", "label_codes", "lookup_effects", "resolve_columns",
           "check_identified"]


# ----------------------------------------------------------------- labels
def _label_array(labels, n: int, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must hold one label per row ({n} rows); got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise TypeError(f"{name} must hold integer or string labels; got non-integer floats")
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "O":
        arr = arr.astype(str)
    if arr.dtype.kind not in "biuUS":
        raise TypeError(f"{name} must hold integer or string labels; got dtype {arr.dtype}")
    return arr


def encode_labels(labels, n: int, name: str):
    """Sorted distinct labels and the code (position) of every row."""
    arr = _label_array(labels, n, name)
    uniq, codes = np.unique(arr, return_inverse=True)
    return uniq, codes.reshape(-1).astype(np.int64)


def label_codes(known: np.ndarray, labels, name: str, missing: int) -> np.ndarray:
    """Positions of ``labels`` in the sorted array ``known``; ``missing`` where absent."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one label per row; got shape {arr.shape}")
    arr = _label_array(arr, arr.shape[0], name)
    numeric = {k.dtype.kind in "biu" for k in (arr, known)}
    if len(numeric) == 2:
        raise TypeError(f"{name} labels have dtype {arr.dtype}, but the model was fitted with "
                        f"labels of dtype {known.dtype}")
    pos = np.minimum(np.searchsorted(known, arr), known.shape[0] - 1)
    return np.where(known[pos] == arr, pos, missing).astype(np.int64)


def lookup_effects(known, values, labels, name) -> np.ndarray:
    codes = label_codes(known, labels, name, missing=-1)
    return np.where(codes >= 0, np.asarray(values)[np.maximum(codes, 0)], 0.0)


# ----------------------------------------------------------------- columns
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
    none); a column whose demeaned norm is below 1e-8 of its centered norm
    (or that is constant) is absorbed, like a time-invariant regressor under
    unit effects (``linearmodels`` raises ``AbsorbingEffectError`` then); a
    demeaned matrix with a condition number above 1e8 has collinear columns.
    Neither has an identified coefficient.
    """
    centered = x_lin - x_lin.mean(axis=0)
    m = centered if factors is None else demean(x_lin, factors)[0]
    before = np.linalg.norm(centered, axis=0)
    after = np.linalg.norm(m, axis=0)
    absorbed = [names[k] for k in range(x_lin.shape[1])
                if before[k] == 0 or after[k] <= 1e-8 * before[k]]
    if absorbed:
        by = "the intercept (constant columns)" if factors is None else "the fixed effects"
        raise ValueError(
            f"linear feature(s) {absorbed} are absorbed by {by}: they do not vary within "
            "units (or periods), so their coefficients are not identified. Remove them from "
            "linear_features (they may still enter the network)."
        )
    sv = np.linalg.svd(m / after, compute_uv=False)
    if sv[-1] <= 1e-8 * sv[0]:
        raise ValueError(
            f"the linear features {list(names)} are collinear after removing the effects "
            f"(condition number {sv[0] / max(sv[-1], 1e-300):.3g}); their coefficients are "
            "not identified. Drop one of the collinear columns."
        )
