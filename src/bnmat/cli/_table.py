"""The training table of ``bnmat fit``: columns chosen, missing values, labels, one-hot levels.

Feature columns are numeric, or categorical with ``--categorical`` (one-hot,
the levels stored in the model so that ``predict`` encodes new rows the same
way). Missing values are an error that counts the rows, or dropped with
``--dropna``; never imputed.
"""

from __future__ import annotations

import numpy as np

from ..datasets import WAGE_PANEL_DROP, _decimal_hint, read_table, wage_panel_path
from ._common import UsageError

__all__ = ["apply_missing_policy", "design_matrix"]


def _numeric_column(cells) -> bool:
    try:
        for c in cells:
            float(c)
    except ValueError:
        return False
    return True


def _is_label_column(table, target: str) -> bool:
    """True when no cell of the target is a number (then it holds class labels).

    A target with numbers in some rows and text in others is an error (a typo
    must not silently turn a regression into a classification).
    """
    if not table.is_text(target):
        return False
    cells = table.column(target)
    numeric = [bool(c) and _numeric_column([c]) for c in cells]
    if not any(numeric):
        return True
    i = next((i for i, (c, ok) in enumerate(zip(cells, numeric)) if c and not ok), None)
    if i is None:
        return False
    raise UsageError(
        f"{table.source}, line {table.line(i)}: the target {target!r} has {cells[i]!r}, which "
        "is not a number, while other rows are numbers; fix the cell, or pass --classify "
        "to treat every value as a class label")


def _label_text(cell: str) -> str:
    """A class label as text; numbers in one canonical form, so "1" and "1.0" are one class."""
    cell = cell.strip()
    try:
        value = float(cell)
    except ValueError:
        return cell
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def _class_labels(cells):
    """Sorted distinct labels (numerically when they all are numbers) and row codes.

    Numbers are compared as numbers: "1", "1.0" and "1e0" are one class,
    named "1".
    """
    texts = [_label_text(c) for c in cells]
    labels = sorted(set(texts))
    if _numeric_column(labels):
        labels = sorted(labels, key=float)
    index = {label: k for k, label in enumerate(labels)}
    return labels, np.array([index[c] for c in texts], dtype=np.intp)


def _load_training_table(args):
    """Read the training table: the columns needed (all without --features), labels as text."""
    features = list(getattr(args, "features", None) or [])
    entity, time = getattr(args, "entity", None), getattr(args, "time", None)
    if args.data is None:
        path, source = wage_panel_path(), "wage_panel.csv.gz (bundled)"
        target = args.target or "lwage"
        drop = list(args.drop) or ([] if features else list(WAGE_PANEL_DROP))
        label = "the bundled Vella–Verbeek (1998) wage panel"
    else:
        if not args.target:
            raise UsageError("--target COL is required with a CSV file (the column to predict)")
        path, source = args.data, None
        target, drop, label = args.target, list(args.drop), args.data
    if features and args.drop:
        raise UsageError("give either --features (the columns to use) or --drop (the columns "
                         "to leave out), not both")
    twice = sorted({c for c in features if features.count(c) > 1})
    if twice:
        raise UsageError(f"--features lists {twice[0]!r} twice")
    if target in features:
        raise UsageError(f"the target {target!r} is also in --features")
    labels = [c for c in (entity, time) if c]
    usecols = None
    if features:
        usecols = list(dict.fromkeys([target, *features, *labels,
                                      *getattr(args, "linear", [])]))
    table = read_table(path, source=source, usecols=usecols, text_columns=labels,
                       sep=getattr(args, "sep", ","), decimal=getattr(args, "decimal", "."))
    if target not in table.columns:
        raise UsageError(f"{table.source}: no column {target!r} (the --target); the columns are "
                         f"{', '.join(table.columns)}")
    unknown = [c for c in drop if c not in table.columns]
    if unknown:
        raise UsageError(f"{table.source}: no column(s) {', '.join(map(repr, unknown))} to --drop")
    if target in drop:
        raise UsageError(f"the target {target!r} is also in --drop")
    if not features:
        features = [c for c in table.columns if c != target and c not in drop]
    if not features:
        raise UsageError(f"{table.source}: no feature columns left besides the target {target!r}")
    categorical = list(getattr(args, "categorical", None) or [])
    strays = [c for c in categorical if c not in features]
    if strays:
        raise UsageError(f"--categorical {strays[0]!r} is not a feature column")
    return table, target, drop, features, label


def apply_missing_policy(table, columns, dropna: bool):
    """The table without rows that miss a value in ``columns`` (with ``--dropna``), else checked.

    Without ``dropna`` any missing cell is an error that counts the rows of
    every column concerned (one run lists them all). With it, those rows are
    dropped and a note on stdout says how many, per column.
    """
    columns = list(dict.fromkeys(columns))
    mask = table.missing(columns)
    bad = mask.any(axis=1)
    k = int(bad.sum())
    if not k:
        return table
    counts = mask.sum(axis=0)
    per = "; ".join(
        f"column {c!r} in {int(n)} row(s)"
        + ("" if dropna else f", the first at line {table.line(int(np.argmax(m)))}")
        for c, n, m in zip(columns, counts, mask.T) if n)
    if not dropna:
        raise UsageError(
            f"{table.source}: missing values in {k} of {table.n_rows} row(s): {per}. Fill "
            "them, or pass --dropna to drop those rows")
    print(f"--dropna: dropped {k} of {table.n_rows} row(s) with missing values ({per})")
    return table.take(~bad)


def design_matrix(table, features, categorical: dict):
    """The model's inputs: numeric features as they are, categorical ones one-hot.

    Parameters
    ----------
    table : bnmat.datasets.Table
    features : list of str
        Feature columns, in order.
    categorical : dict of str -> list of str
        Levels of each categorical column (its one-hot columns, in order);
        an empty list means "learn the levels here" (training).

    Returns
    -------
    x : ndarray, shape (N, q), float64
    names : list of str, length q
        ``col`` for a numeric column, ``col=level`` for each level.
    levels : dict of str -> list of str
        The levels used (those learned, in training).

    Raises
    ------
    UsageError
        A text column not declared categorical (with the options that fix
        it), or a level not seen in training.
    """
    numeric = [c for c in features if c not in categorical]
    for c in numeric:
        if table.is_text(c):
            cells = table.column(c)
            if not any(cell and _numeric_column([cell]) for cell in cells):
                i = next(i for i, cell in enumerate(cells) if cell)
                if _decimal_hint([cell for cell in cells[:50] if cell]):
                    raise UsageError(
                        f"{table.source}, line {table.line(i)}: feature column {c!r} has "
                        f"{cells[i]!r}, which is not a number: decimal commas? pass "
                        "--decimal ,")
                raise UsageError(
                    f"{table.source}: feature column {c!r} holds text ({cells[i]!r} at line "
                    f"{table.line(i)}); pass --categorical {c} to one-hot encode it, --drop "
                    f"{c} to leave it out, or --entity {c} if it identifies units")
    blocks, names, levels = [], [], {}
    x_num = table.numeric(numeric, what="feature column") if numeric else None
    for c in features:
        if c not in categorical:
            j = numeric.index(c)
            blocks.append(x_num[:, j:j + 1])
            names.append(c)
            continue
        cells = [_label_text(v) for v in table.column(c)]
        known = categorical[c] or sorted(set(cells))
        index = {v: k for k, v in enumerate(known)}
        codes = np.array([index.get(v, -1) for v in cells], dtype=np.intp)
        unseen = np.flatnonzero(codes < 0)
        if unseen.size:
            new = list(dict.fromkeys(cells[i] for i in unseen))
            raise UsageError(
                f"{table.source}: categorical column {c!r} has {len(new)} level(s) not seen in "
                f"training, in {unseen.size} row(s): {', '.join(map(repr, new[:5]))} (first at "
                f"line {table.line(int(unseen[0]))}); the model knows "
                f"{', '.join(map(repr, known[:10]))}{', …' if len(known) > 10 else ''}")
        onehot = np.zeros((len(cells), len(known)))
        onehot[np.arange(len(cells)), codes] = 1.0
        blocks.append(onehot)
        names += [f"{c}={v}" for v in known]
        levels[c] = list(known)
    return np.hstack(blocks), names, levels
