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
import sys
from pathlib import Path

import numpy as np

from . import optim, train
from ._mlp import Scaling, auto_batch_size, build_mlp, fit_scaling
from .cli import UsageError
from .datasets import MISSING, WAGE_PANEL_DROP, read_table, wage_panel_path

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
    must not silently turn a regression into a classification); so is a
    missing cell.
    """
    cells = table.column(target)
    numeric = []
    for i, cell in enumerate(cells):
        if cell.strip().lower() in MISSING:
            raise UsageError(f"{table.source}, line {i + 2}: the target {target!r} has a "
                             f"missing value ({cell!r}); remove or fill the row first")
        numeric.append(_numeric_column([cell]))
    if all(numeric):
        return False
    if any(numeric):
        i = numeric.index(False)
        raise UsageError(
            f"{table.source}, line {i + 2}: the target {target!r} has {cells[i]!r}, which is "
            "not a number, while other rows are numbers; fix the cell, or pass --classify "
            "to treat every value as a class label")
    return True


def _class_labels(cells):
    """Sorted distinct labels (numerically when they all are numbers) and row codes."""
    labels = sorted(set(c.strip() for c in cells))
    if _numeric_column(labels):
        labels = sorted(labels, key=float)
    index = {label: k for k, label in enumerate(labels)}
    return labels, np.array([index[c.strip()] for c in cells], dtype=np.intp)


def _load_training_table(args):
    if args.data is None:
        table = read_table(wage_panel_path(), source="wage_panel.csv.gz (bundled)")
        target = args.target or "lwage"
        drop = list(args.drop) or list(WAGE_PANEL_DROP)
        label = "the bundled Vella–Verbeek (1998) wage panel"
    else:
        if not args.target:
            raise UsageError("--target COL is required with a CSV file (the column to predict)")
        table = read_table(args.data)
        target, drop, label = args.target, list(args.drop), args.data
    if target not in table.columns:
        raise UsageError(f"{table.source}: no column {target!r} (the --target); the columns are "
                         f"{', '.join(table.columns)}")
    unknown = [c for c in drop if c not in table.columns]
    if unknown:
        raise UsageError(f"{table.source}: no column(s) {', '.join(map(repr, unknown))} to --drop")
    if target in drop:
        raise UsageError(f"the target {target!r} is also in --drop")
    features = [c for c in table.columns if c != target and c not in drop]
    if not features:
        raise UsageError(f"{table.source}: no feature columns left besides the target {target!r}")
    return table, target, drop, features, label


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
    (:func:`bnmat._cli_panel.run_fit_panel`).
    """
    _check_training_options(args)
    if getattr(args, "entity", None) is not None:
        from ._cli_panel import run_fit_panel

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
    table, target, drop, features, label = _load_training_table(args)
    n = len(table.rows)
    if n == 0:
        raise UsageError(f"{table.source}: the file has a header but no rows")
    x = table.numeric(features, what="feature column")
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
    xs, ys = x_scaling.apply(x), y_scaling.apply(y)
    loss = "softmax_cross_entropy" if classify else "mse"
    net = build_mlp(args.hidden, args.activation, y.shape[1])
    params, state = net.init(xs[tr], seed=args.seed)
    l2 = (1.0 if classify else 2.0) * args.alpha / len(tr)

    task = "classification" if classify else "regression"
    widths = " → ".join(str(w) for w in [len(features), *args.hidden, y.shape[1]])
    print(f"bnmat fit: {label}, target {target!r} ({task}"
          f"{f', {len(classes)} classes' if classify else ''}), {len(features)} features")
    exact = not args.hidden and not classify
    if not args.hidden:
        shape = ("linear model (no hidden layer), solved by least squares" if exact else
                 f"linear model (no hidden layer, softmax regression); solver {args.solver}")
    else:
        shape = f"network {widths} (BatchNorm, {args.activation}); solver {args.solver}"
    print(f"  {len(tr)} training rows, {len(va)} validation rows; {shape}")
    sys.stdout.flush()
    validation = (xs[va], ys[va]) if len(va) else None
    if exact:
        result = _least_squares_fit(params, state, xs[tr], ys[tr])
    elif args.solver == "lbfgs":
        result = train.fit_lbfgs(net, params, state, xs[tr], ys[tr], loss=loss, l2=l2,
                                 max_iter=args.epochs)
    else:
        lr = args.learning_rate or (1e-3 if args.solver == "adam" else 1e-2)
        optimizer = optim.adam(lr) if args.solver == "adam" else optim.sgd(lr, momentum=0.9,
                                                                           nesterov=True)
        batch = min(args.batch_size or auto_batch_size(len(tr)), len(tr))
        result = train.fit(
            net, params, state, xs[tr], ys[tr], loss=loss, optimizer=optimizer,
            epochs=args.epochs, batch_size=batch, l2=l2, validation_data=validation,
            early_stopping=args.early_stopping is not None,
            patience=args.early_stopping or 10, seed=args.seed, progress=not args.no_progress,
        )
    params, state = result.params, result.state  # with population statistics of xs[tr]

    def metric(rows):
        if not len(rows):
            return float("nan")
        out = np.asarray(net.predict(params, state, xs[rows]))
        if classify:
            return float(np.mean(np.argmax(out, axis=1) == np.argmax(y[rows], axis=1)))
        return _r2(y[rows], y_scaling.invert(out))

    name = "accuracy" if classify else "R²"
    m_train, m_val = metric(tr), metric(va)
    epochs = len(result.history["loss"])
    unit = "iterations" if args.solver == "lbfgs" else "epochs"
    stop = f" (stopped early, best epoch {result.best_epoch})" if result.stopped_early else ""
    done = "least-squares solution" if exact else f"after {epochs} {unit}{stop}"
    print(f"{done}: training {name} = {_fmt_metric(m_train)}, "
          f"validation {name} = {_fmt_metric(m_val)}")

    metadata = {
        "bnmat_cli": CLI_FORMAT,
        "task": task,
        "target": target,
        "features": features,
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
    from . import io as bnio

    out = Path(args.output)
    bnio.save(out, net, params, state, metadata=metadata)
    print(f"model written to {out.resolve()}")
    if args.plot:
        _plot(result.history, args.plot, loss, task)
        print(f"loss plot written to {Path(args.plot).resolve()}")
    return 0


def _least_squares_fit(params, state, xs, ys) -> train.FitResult:
    """The network without hidden layers is ``ŷ = X W + 1bᵀ``: its least-squares fit, exactly.

    ``[b; W] = lstsq([1 X], Y)`` in float64 (the training objective's minimizer
    when ``--alpha`` is 0; with a penalty the minimizer differs by O(α/N),
    and the exact unpenalized solution is what "the linear model" means).
    """
    design = np.column_stack([np.ones(xs.shape[0]), np.asarray(xs, dtype=np.float64)])
    coef = np.linalg.lstsq(design, np.asarray(ys, dtype=np.float64), rcond=None)[0]
    layer = dict(params[0])
    layer["w"] = coef[1:].astype(np.asarray(layer["w"]).dtype)
    layer["b"] = coef[0].astype(np.asarray(layer["b"]).dtype)
    loss = float(np.mean((ys - design @ coef) ** 2))
    return train.FitResult([layer], state, {"epoch": [1], "loss": [loss], "val_loss": []}, 1,
                           False)


def _json_float(v: float):
    return float(v) if np.isfinite(v) else None


def _check_writable(path, option: str) -> None:
    """Fail before training, not after, when the output cannot be written."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {str(folder)!r} does not exist")


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
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


# ----------------------------------------------------------------- predict


def run_predict(args) -> int:
    """``bnmat predict``: predictions for the rows of a CSV file."""
    from . import io as bnio

    saved = bnio.load(args.model)
    meta = saved.metadata or {}
    if "panel" in meta:
        from ._cli_panel import run_predict_panel

        return run_predict_panel(args, meta)
    if meta.get("bnmat_cli") != CLI_FORMAT:
        raise UsageError(
            f"{args.model}: this model was not written by bnmat fit (it lacks the feature "
            "names and standardization that bnmat predict needs)")
    features, target = list(meta["features"]), meta["target"]
    table = read_table(args.data)
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise UsageError(f"{table.source}: missing column(s) {', '.join(map(repr, missing))}; "
                         f"the model needs {', '.join(features)}")
    ignorable = {target, *meta.get("dropped", [])}
    extra = [c for c in table.columns if c not in features and c not in ignorable]
    if extra:
        raise UsageError(f"{table.source}: unexpected column(s) {', '.join(map(repr, extra))}; "
                         f"the model was trained on {', '.join(features)}")
    if not table.rows:
        raise UsageError(f"{table.source}: the file has a header but no rows")
    x = table.numeric(features, what="feature column")
    scaling = Scaling(np.asarray(meta["x_mean"]), np.asarray(meta["x_scale"]))
    out = np.asarray(saved.net.predict(saved.params, saved.state, scaling.apply(x)))
    if meta["task"] == "classification":
        labels = np.asarray(meta["classes"], dtype=object)[np.argmax(out, axis=1)]
    else:
        y_scaling = Scaling(np.asarray(meta["y_mean"]), np.asarray(meta["y_scale"]))
        labels = [repr(float(v)) for v in y_scaling.invert(out)[:, 0]]

    write_predictions(target, labels, args.output)
    return 0


def write_predictions(name: str, values, output) -> None:
    """One CSV column ``name`` to the file ``output``, or to standard output."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([name])
    writer.writerows([v] for v in values)
    if output:
        Path(output).write_text(buffer.getvalue(), encoding="utf-8")
        print(f"{len(values)} predictions written to {Path(output).resolve()}",
              file=sys.stderr)
    else:
        sys.stdout.write(buffer.getvalue())
