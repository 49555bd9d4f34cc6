"""``mpiexec -n K bnmat fit ... --distributed``: every rank reads and trains on its own rows.

Rank r of K reads rows ``[⌊rN/K⌋, ⌊(r+1)N/K⌋)`` of the CSV file (every rank
streams through the file, but keeps only its slice); the training and
validation split, the standardization of X and y, the network's initial
weights, the mini-batches and every step are those of one process on the whole
file, so the model file that rank 0 writes equals (within rounding) the one
``bnmat fit`` writes without ``--distributed``. Any rank's error ends every
rank (``MPI_Abort``) with that rank's message; none is left waiting.

Regression only (a numeric target); classification and panel models
(``--entity``) are refused with a usage error.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import numpy as np

from .. import optim, train
from ..layers._mlp import auto_batch_size, build_mlp
from ..layers._sync_scaling import sync_scaling
from ._common import UsageError
from ..datasets import WAGE_PANEL_DROP, read_table, wage_panel_path

__all__ = ["run_fit_distributed", "read_slice"]


def read_slice(path, rank: int, size: int, *, source: str | None = None):
    """The header and rank ``rank``'s share of the data rows of a CSV file.

    Every rank parses the file with :func:`bnmat.datasets.read_table` (pandas'
    C reader, the same checks as one process) and keeps the rows
    ``[⌊rN/K⌋, ⌊(r+1)N/K⌋)``; memory beyond the slice is freed when this
    returns. (Reading only the slice's bytes is left for files that do not
    fit on one machine; see docs/scaling.md.)

    Returns
    -------
    table : bnmat.datasets.Table
        The slice's rows.
    lo, n : int
        Index of the slice's first row among all rows, and N.
    """
    table = read_table(path, source=source)
    n = table.n_rows
    lo, hi = rank * n // size, (rank + 1) * n // size
    keep = np.zeros(n, dtype=bool)
    keep[lo:hi] = True
    return table.take(keep), lo, n


def _reducer():
    from ..distributed import MPIReducer

    return MPIReducer()


def run_fit_distributed(args) -> int:
    """``bnmat fit --distributed`` on this rank; rank 0 prints and writes the model."""
    red = _reducer()
    try:
        return _run(args, red)
    except SystemExit:
        raise
    except BaseException as exc:         # any rank's failure ends every rank
        detail = traceback.format_exc() if not isinstance(exc, (UsageError, ValueError,
                                                                OSError)) else ""
        red.abort(f"bnmat: error (rank {red.rank} of {red.size}): "
                  f"{' '.join(str(exc).split()) or type(exc).__name__}\n{detail}".rstrip())


def _global_r2(red, y, y_hat) -> float:
    from ..layers._sync import sync_moments

    n, mean, var = sync_moments(red, [y], 0)
    sse = red.allreduce(np.asarray([float(np.sum((y - y_hat) ** 2))]))[0]
    ss_tot = float(np.sum(var) * n)
    return 1.0 - sse / ss_tot if ss_tot > 0 else float("nan")


def _run(args, red) -> int:
    from ._common import CLI_FORMAT, _fmt_metric, _json_float, _split

    if getattr(args, "entity", None) is not None:
        raise UsageError("--distributed trains the plain network; panel models (--entity) "
                         "are not distributed yet")
    if args.classify:
        raise UsageError("--distributed supports regression (a numeric target) only")
    if args.plot:
        raise UsageError("--plot is not available with --distributed")
    if args.solver == "auto":
        args.solver = "adam"        # as one process does for a plain fit
    if args.data is None:
        table, lo, n = read_slice(wage_panel_path(), red.rank, red.size,
                                  source="wage_panel.csv.gz (bundled)")
        target = args.target or "lwage"
        drop = list(args.drop) or list(WAGE_PANEL_DROP)
        label = "the bundled Vella–Verbeek (1998) wage panel"
    else:
        if not args.target:
            raise UsageError("--target COL is required with a CSV file (the column to predict)")
        table, lo, n = read_slice(args.data, red.rank, red.size)
        target, drop, label = args.target, list(args.drop), args.data
    if target not in table.columns:
        raise UsageError(f"{table.source}: no column {target!r} (the --target)")
    unknown = [c for c in drop if c not in table.columns]
    if unknown:
        raise UsageError(f"{table.source}: no column(s) {', '.join(map(repr, unknown))} to --drop")
    features = [c for c in table.columns if c != target and c not in drop]
    if not features:
        raise UsageError(f"{table.source}: no feature columns left besides the target")
    if n == 0:
        raise UsageError(f"{table.source}: the file has a header but no rows")
    if table.missing([target]).any():
        raise UsageError(f"{table.source}: the target {target!r} has a missing value")
    x = table.numeric(features, what="feature column")
    y = table.numeric([target], what="target column")

    # The same split as one process: global row indices, this rank's part of each.
    tr, va = _split(n, args.validation_fraction, args.seed)
    hi = lo + x.shape[0]
    tr_local = tr[(tr >= lo) & (tr < hi)] - lo
    va_local = va[(va >= lo) & (va < hi)] - lo
    x_scaling, y_scaling = sync_scaling(red, x[tr_local]), sync_scaling(red, y[tr_local])
    xs, ys = x_scaling.apply(x), y_scaling.apply(y)
    net = build_mlp(args.hidden, args.activation, y.shape[1])
    params, state = net.init(np.zeros((1, len(features))), seed=args.seed)
    l2 = 2.0 * args.alpha / len(tr)
    loud = red.rank == 0
    widths = " → ".join(str(w) for w in [len(features), *args.hidden, y.shape[1]])
    if loud:
        print(f"bnmat fit: {label}, target {target!r} (regression), {len(features)} features")
        print(f"  {len(tr)} training rows, {len(va)} validation rows on {red.size} ranks; "
              f"network {widths} (BatchNorm, {args.activation}); solver {args.solver}")
        sys.stdout.flush()
    validation = (xs[va_local], ys[va_local]) if len(va) else None
    if args.solver == "lbfgs":
        result = train.fit_lbfgs(net, params, state, xs[tr_local], ys[tr_local], loss="mse",
                                 l2=l2, max_iter=args.epochs, reducer=red)
    else:
        lr = args.learning_rate or (1e-3 if args.solver == "adam" else 1e-2)
        optimizer = optim.adam(lr) if args.solver == "adam" else optim.sgd(lr, momentum=0.9,
                                                                           nesterov=True)
        batch = min(args.batch_size or auto_batch_size(len(tr)), len(tr))
        result = train.fit(
            net, params, state, xs[tr_local], ys[tr_local], loss="mse", optimizer=optimizer,
            epochs=args.epochs, batch_size=batch, l2=l2, validation_data=validation,
            early_stopping=args.early_stopping is not None,
            patience=args.early_stopping or 10, seed=args.seed,
            progress=loud and not args.no_progress, reducer=red)
    params, state = result.params, result.state

    def metric(rows, total):
        if not total:
            return float("nan")
        out = np.asarray(net.predict(params, state, xs[rows])) if len(rows) else y[rows]
        return _global_r2(red, y[rows], y_scaling.invert(out))

    m_train, m_val = metric(tr_local, len(tr)), metric(va_local, len(va))
    if not loud:
        return 0
    epochs = len(result.history["loss"])
    unit = "iterations" if args.solver == "lbfgs" else "epochs"
    stop = f" (stopped early, best epoch {result.best_epoch})" if result.stopped_early else ""
    print(f"after {epochs} {unit}{stop}: training R² = {_fmt_metric(m_train)}, "
          f"validation R² = {_fmt_metric(m_val)}")
    metadata = {
        "bnmat_cli": CLI_FORMAT, "task": "regression", "target": target,
        "features": features, "dropped": drop,
        "x_mean": x_scaling.mean.tolist(), "x_scale": x_scaling.scale.tolist(),
        "y_mean": y_scaling.mean.tolist(), "y_scale": y_scaling.scale.tolist(),
        "classes": None, "training_rows": int(len(tr)), "validation_rows": int(len(va)),
        "metrics": {"train": _json_float(m_train), "validation": _json_float(m_val),
                    "name": "r2"},
        "data": "bundled:wage_panel.csv.gz" if args.data is None else str(args.data),
    }
    from .. import io as bnio

    out = Path(args.output)
    bnio.save(out, net, params, state, metadata=metadata)
    print(f"model written to {out.resolve()}")
    return 0
