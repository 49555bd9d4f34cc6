"""``bnmat fit``: CSV in, model file out (the plain network; ``--entity`` goes to
:mod:`bnmat.cli.panel`, ``--distributed`` to :mod:`bnmat.cli.distributed`).

A model file written by ``bnmat fit`` is an ordinary :func:`bnmat.io.save`
file whose metadata also holds what :mod:`bnmat.cli.predict` needs for new
rows: the feature columns (and the levels of categorical ones), the target,
the dropped columns, the standardization of X (and of y for regression), the
class labels for classification. Reading the table is :mod:`bnmat.cli._table`'s.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..layers._mlp import Scaling, auto_batch_size, build_mlp, fit_scaling
from ._chunked import (CHUNK_ROWS, one_blas_thread, population_statistics_chunked,
                       predict_chunked)
from ._common import (CLI_FORMAT, UsageError, _check_plotting, _check_writable, _fmt_metric,
                      _json_float, _plot, _r2, _split)
from ._table import (_class_labels, _is_label_column, _load_training_table,
                     apply_missing_policy, design_matrix)

__all__ = ["run_fit"]


# ----------------------------------------------------------------- metrics


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
        with one_blas_thread():   # mini-batch products are small: see bnmat.cli._chunked
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


# ----------------------------------------------------------------- predict


