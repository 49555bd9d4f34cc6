"""``bnmat fit`` and ``bnmat predict``: CSV in, model file (and predictions) out.

A model file written by ``bnmat fit`` is an ordinary :func:`bnmat.io.save`
file whose metadata also holds what the command line needs to predict new
rows: the feature columns, the target, the dropped columns, the standardization
of X (and of y for regression), the class labels for classification.

Feature columns must be numeric: a cell that is not a number is an error naming
the file, line and column (drop identifier columns with ``--drop``; encode
categories as numbers first). Missing values are errors, never imputed.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from ..datasets import WAGE_PANEL_DROP, _decimal_hint, read_table, table_columns, wage_panel_path
from ..layers._mlp import Scaling, auto_batch_size, build_mlp, fit_scaling
from ._chunked import (CHUNK_ROWS, one_blas_thread, population_statistics_chunked,
                       predict_chunked)
from ._common import UsageError

__all__ = ["run_fit", "run_predict"]

#: Version of the command line's metadata layout in model files.
CLI_FORMAT = 1


# -------------------------------------------------------------------- data


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


def _split(n: int, fraction: float, seed: int):
    """Random training and validation row indices (the validation part may be empty)."""
    if not 0 <= fraction < 1:
        raise UsageError(f"--validation-fraction must be in [0, 1); got {fraction}")
    n_val = int(round(fraction * n))
    if fraction > 0:
        n_val = max(n_val, 1)
    if n - n_val < 2:
        need = 2 + (1 if fraction > 0 else 0)
        raise UsageError(
            f"the data have {n} row(s); training with batch statistics needs at least 2 "
            f"rows{' plus 1 for validation' if fraction > 0 else ''}, so at least {need}"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


# ----------------------------------------------------------------- metrics


def _r2(y, y_hat) -> float:
    ss_tot = float(np.sum((y - np.mean(y, axis=0)) ** 2))
    return 1.0 - float(np.sum((y - y_hat) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


def _fmt_metric(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.4f}"


# --------------------------------------------------------------------- fit


#: Options that only a panel model (``--entity``) reads.
_PANEL_ONLY = (("time", "--time"), ("linear", "--linear"), ("effects", "--effects"),
               ("holdout", "--holdout"), ("group_batchnorm", "--group-batchnorm"))


def run_fit(args) -> int:
    """``bnmat fit``: train, print metrics, write the model (and the plot).

    With ``--entity`` the model is a fixed-effects network
    (:func:`bnmat.cli.panel.run_fit_panel`).
    """
    _check_training_options(args)
    if getattr(args, "distributed", False):   # mpiexec -n K bnmat fit ... --distributed
        from .distributed import run_fit_distributed

        return run_fit_distributed(args)
    if getattr(args, "entity", None) is not None:
        from .panel import run_fit_panel

        return run_fit_panel(args)
    given = [flag for name, flag in _PANEL_ONLY if getattr(args, name, None)]
    if given:
        raise UsageError(f"{given[0]} is an option of panel models: it needs --entity COL "
                         "(the column of unit labels)")
    return _run_fit_plain(args)


def _check_training_options(args) -> None:
    """Checks shared by the plain and the panel fit, all made before reading data."""
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1; got {args.epochs}")
    if args.batch_size is not None and args.batch_size < 2:
        raise UsageError(f"--batch-size must be >= 2 (batch statistics); got {args.batch_size}")
    if any(h < 1 for h in args.hidden):
        raise UsageError(f"--hidden widths must be >= 1; got {args.hidden}")
    if args.learning_rate is not None and not args.learning_rate > 0:
        raise UsageError(f"--learning-rate must be > 0; got {args.learning_rate}")
    if not args.alpha >= 0:
        raise UsageError(f"--alpha must be >= 0; got {args.alpha}")
    if args.early_stopping is not None and args.early_stopping < 1:
        raise UsageError(f"--early-stopping needs a patience >= 1; got {args.early_stopping}")
    if args.early_stopping is not None and not args.validation_fraction > 0:
        raise UsageError("--early-stopping needs a validation split (--validation-fraction > 0)")
    _check_writable(args.output, "--output")
    if args.plot:
        _check_writable(args.plot, "--plot")
        _check_plotting()


def _run_fit_plain(args) -> int:
    from .. import optim, train

    table, target, drop, features, label = _load_training_table(args)
    if table.n_rows == 0:
        raise UsageError(f"{table.source}: the file has a header but no rows")
    table = apply_missing_policy(table, [*features, target], args.dropna)
    n = table.n_rows
    if n == 0:
        raise UsageError(f"{table.source}: no rows are left after --dropna")
    x, inputs, levels = design_matrix(table, features, {c: [] for c in args.categorical})
    classify = args.classify or _is_label_column(table, target)
    if classify:
        classes, codes = _class_labels(table.column(target))
        if len(classes) < 2:
            raise UsageError(f"the target {target!r} has a single class ({classes[0]!r}); "
                             "classification needs at least 2")
        y = np.eye(len(classes))[codes]
    else:
        classes = None
        y = table.numeric([target], what="target column")
    tr, va = _split(n, args.validation_fraction, args.seed)
    if args.solver == "auto":
        # A plain fit has no held-out stopping by default: Adam's mini-batches for
        # --epochs epochs overfit less than as many full L-BFGS iterations.
        args.solver = "adam"

    x_scaling = fit_scaling(x[tr])
    if classify:
        y_scaling = Scaling(np.zeros(y.shape[1]), np.ones(y.shape[1]))
    else:
        y_scaling = fit_scaling(y[tr])
    del table   # the parsed columns are in x and y now
    # Standardized training and validation rows; nothing of size N is kept twice.
    xs_tr, xs_va = x_scaling.apply(x[tr]), x_scaling.apply(x[va])
    ys_tr, ys_va = y_scaling.apply(y[tr]), y_scaling.apply(y[va])
    n_inputs = x.shape[1]
    del x
    loss = "softmax_cross_entropy" if classify else "mse"
    net = build_mlp(args.hidden, args.activation, y.shape[1])
    params, state = net.init(xs_tr, seed=args.seed)
    l2 = (1.0 if classify else 2.0) * args.alpha / len(tr)

    task = "classification" if classify else "regression"
    widths = " → ".join(str(w) for w in [n_inputs, *args.hidden, y.shape[1]])
    onehot = (f" ({len(levels)} categorical, one-hot: {n_inputs} inputs)" if levels else "")
    print(f"bnmat fit: {label}, target {target!r} ({task}"
          f"{f', {len(classes)} classes' if classify else ''}), {len(features)} features"
          f"{onehot}")
    exact = not args.hidden and not classify
    if not args.hidden:
        shape = ("linear model (no hidden layer), solved by least squares" if exact else
                 f"linear model (no hidden layer, softmax regression); solver {args.solver}")
    else:
        shape = f"network {widths} (BatchNorm, {args.activation}); solver {args.solver}"
    print(f"  {len(tr)} training rows, {len(va)} validation rows; {shape}")
    sys.stdout.flush()
    # The validation loss, the final population statistics and the metrics are
    # computed in row chunks (bnmat.cli._chunked), so that a file of millions of
    # rows never has a whole-data activation matrix in memory.
    validation = (xs_va, ys_va) if len(va) else None
    if exact:
        result = _least_squares_fit(params, state, xs_tr, ys_tr)
    elif args.solver == "lbfgs":
        result = train.fit_lbfgs(net, params, state, xs_tr, ys_tr, loss=loss, l2=l2,
                                 max_iter=args.epochs, population_stats=False)
    else:
        lr = args.learning_rate or (1e-3 if args.solver == "adam" else 1e-2)
        optimizer = optim.adam(lr) if args.solver == "adam" else optim.sgd(lr, momentum=0.9,
                                                                           nesterov=True)
        batch = min(args.batch_size or auto_batch_size(len(tr)), len(tr))
        with one_blas_thread():   # mini-batch products are small: see bnmat._chunked
            result = train.fit(
                net, params, state, xs_tr, ys_tr, loss=loss, optimizer=optimizer,
                epochs=args.epochs, batch_size=batch, l2=l2, validation_data=validation,
                early_stopping=args.early_stopping is not None,
                patience=args.early_stopping or 10, seed=args.seed, progress=not args.no_progress,
                population_stats=False, validation_batch_size=CHUNK_ROWS,
            )
    params, state = result.params, result.state
    best_epoch, stopped = result.best_epoch, result.stopped_early
    try:
        state = population_statistics_chunked(net, params, state, xs_tr)
    except ValueError as exc:
        if not train._fit.is_nonfinite_error(exc):
            raise
        raise train.DivergenceError(
            f"training diverged: the network's output overflows with the final parameters "
            f"({exc}). Lower --learning-rate", epoch=len(result.history["epoch"]),
            params=params, state=state, history=result.history) from None
    history = result.history

    def metric(xs_rows, ys_rows):
        if not len(xs_rows):
            return float("nan")
        out = predict_chunked(net, params, state, xs_rows)
        if classify:
            return float(np.mean(np.argmax(out, axis=1) == np.argmax(ys_rows, axis=1)))
        # R² is invariant to y's affine rescaling: computed on the standardized
        # scale, sums of squares cannot overflow for a target near 1e160.
        return _r2(ys_rows, out)

    name = "accuracy" if classify else "R²"
    m_train, m_val = metric(xs_tr, ys_tr), metric(xs_va, ys_va)
    epochs = len(result.history["loss"])
    unit = "iterations" if args.solver == "lbfgs" else "epochs"
    stop = f" (stopped early, best epoch {best_epoch})" if stopped else ""
    done = "least-squares solution" if exact else f"after {epochs} {unit}{stop}"
    print(f"{done}: training {name} = {_fmt_metric(m_train)}, "
          f"validation {name} = {_fmt_metric(m_val)}")

    metadata = {
        "bnmat_cli": CLI_FORMAT,
        "task": task,
        "target": target,
        "features": features,
        "categorical": levels,
        "inputs": inputs,
        "dropped": drop,
        "x_mean": x_scaling.mean.tolist(),
        "x_scale": x_scaling.scale.tolist(),
        "y_mean": y_scaling.mean.tolist(),
        "y_scale": y_scaling.scale.tolist(),
        "classes": classes,
        "training_rows": int(len(tr)),
        "validation_rows": int(len(va)),
        "metrics": {"train": _json_float(m_train), "validation": _json_float(m_val),
                    "name": "accuracy" if classify else "r2"},
        "data": "bundled:wage_panel.csv.gz" if args.data is None else str(args.data),
    }
    from .. import io as bnio

    out = Path(args.output)
    bnio.save(out, net, params, state, metadata=metadata)
    print(f"model written to {out.resolve()}")
    if args.plot:
        _plot(history, args.plot, loss, task)
        print(f"loss plot written to {Path(args.plot).resolve()}")
    return 0


def _least_squares_fit(params, state, xs, ys):
    """The network without hidden layers is ``ŷ = X W + 1bᵀ``: its least-squares fit, exactly.

    ``[b; W] = lstsq([1 X], Y)`` in float64 (the training objective's minimizer
    when ``--alpha`` is 0; with a penalty the minimizer differs by O(α/N),
    and the exact unpenalized solution is what "the linear model" means).
    """
    from ..train import FitResult

    design = np.column_stack([np.ones(xs.shape[0]), np.asarray(xs, dtype=np.float64)])
    coef = np.linalg.lstsq(design, np.asarray(ys, dtype=np.float64), rcond=None)[0]
    layer = dict(params[0])
    layer["w"] = coef[1:].astype(np.asarray(layer["w"]).dtype)
    layer["b"] = coef[0].astype(np.asarray(layer["b"]).dtype)
    loss = float(np.mean((ys - design @ coef) ** 2))
    return FitResult([layer], state, {"epoch": [1], "loss": [loss], "val_loss": []}, 1,
                           False)


def _json_float(v: float):
    return float(v) if np.isfinite(v) else None


def _check_writable(path, option: str) -> None:
    """Fail before training (or predicting), not after, when the output cannot be written.

    Besides the folder's existence, a file is created in it and removed, which
    is what writing the output atomically (a temporary name, then a rename)
    will need; permissions, read-only mounts and ACLs all show up here.
    """
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {str(folder)!r} does not exist; "
                         "create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write in the folder {str(folder)!r} "
                         f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"{option} {path}: the file exists and is read-only")


def write_atomically(path, write) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    A failure (or Ctrl-C) leaves ``path`` as it was and no temporary file;
    the error names ``path``, not the temporary name.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                               dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_plotting() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib (pip install bnmat[plot])")


def _plot(history, path, loss: str, task: str, ylabel: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = list(history["epoch"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(epochs, history["loss"], label="training")
    val = [v for v in history.get("val_loss", []) if v is not None]
    if val and len(val) == len(epochs):
        ax.plot(epochs, val, label="validation")
    ax.set_xlabel("epoch")
    if ylabel is None:
        ylabel = ("cross-entropy" if loss == "softmax_cross_entropy"
                  else "mean squared error (standardized target)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"bnmat fit: loss curves ({task})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


# ----------------------------------------------------------------- predict


def run_predict(args) -> int:
    """``bnmat predict``: predictions for the rows of a CSV file."""
    from .. import io as bnio

    if args.output:
        _check_writable(args.output, "--output")
    saved = bnio.load(args.model)
    meta = saved.metadata or {}
    if "panel" in meta:
        from .panel import run_predict_panel

        return run_predict_panel(args, meta)
    if meta.get("bnmat_cli") != CLI_FORMAT:
        raise UsageError(
            f"{args.model}: this model was not written by bnmat fit (it lacks the feature "
            "names and standardization that bnmat predict needs)")
    features, target = list(meta["features"]), meta["target"]
    categorical = dict(meta.get("categorical") or {})
    columns = table_columns(args.data, sep=args.sep)
    missing = [c for c in features if c not in columns]
    if missing:
        raise UsageError(f"{args.data}: missing column(s) {', '.join(map(repr, missing))}; "
                         f"the model needs {', '.join(features)}")
    ignorable = {target, *meta.get("dropped", [])}
    extra = [c for c in columns if c not in features and c not in ignorable]
    if extra:
        raise UsageError(f"{args.data}: unexpected column(s) {', '.join(map(repr, extra))}; "
                         f"the model was trained on {', '.join(features)}")
    # Only the model's columns are parsed: the target and dropped ones may be anything.
    table = read_table(args.data, usecols=features, sep=args.sep, decimal=args.decimal)
    if not table.n_rows:
        raise UsageError(f"{table.source}: the file has a header but no rows")
    x = design_matrix(table, features, categorical)[0]
    scaling = Scaling(np.asarray(meta["x_mean"]), np.asarray(meta["x_scale"]))
    xs = scaling.apply(x)
    del x, table
    out = predict_chunked(saved.net, saved.params, saved.state, xs)
    del xs
    if meta["task"] == "classification":
        labels = np.asarray(meta["classes"], dtype=object)[np.argmax(out, axis=1)]
    else:
        y_scaling = Scaling(np.asarray(meta["y_mean"]), np.asarray(meta["y_scale"]))
        labels = y_scaling.invert(out)[:, 0]

    write_predictions(target, labels, args.output)
    return 0


def _csv_lines(name: str, values, chunk: int = 1 << 16):
    """The CSV text of one column, header first, in pieces of ``chunk`` rows.

    Floats are written with ``repr`` (the shortest text that reads back as
    the same float64); text through the csv module (quoted when needed).
    """
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([name])
    yield buffer.getvalue()
    numbers = isinstance(values, np.ndarray) and values.dtype.kind == "f"
    for start in range(0, len(values), chunk):
        part = values[start:start + chunk]
        if numbers:
            yield "\n".join(map(repr, part.tolist())) + "\n"
        else:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows([v] for v in part)
            yield buffer.getvalue()


def write_predictions(name: str, values, output) -> None:
    """One CSV column ``name`` to the file ``output`` (atomically), or to standard output."""
    if output:
        def write(tmp):
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.writelines(_csv_lines(name, values))

        write_atomically(output, write)
        print(f"{len(values)} predictions written to {Path(output).resolve()}",
              file=sys.stderr)
    else:
        sys.stdout.writelines(_csv_lines(name, values))
