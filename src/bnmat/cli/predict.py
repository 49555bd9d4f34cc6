"""``bnmat predict``: predictions for the rows of a CSV file from a ``bnmat fit`` model."""

from __future__ import annotations

import numpy as np

from ..datasets import read_table, table_columns
from ..layers._mlp import Scaling
from ._chunked import predict_chunked
from ._common import CLI_FORMAT, UsageError, _check_writable, write_predictions
from ._table import design_matrix

__all__ = ["run_predict"]


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
