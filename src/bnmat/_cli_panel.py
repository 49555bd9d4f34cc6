"""``bnmat fit --entity COL`` and ``bnmat predict`` for fixed-effects networks on panel data.

The model, for unit i in period t, is ::

    y_it = α_i (+ τ_t) + x_lin,itᵀ b + f(x_nn,it) + e_it

fitted by :func:`bnmat.panel_table.fit_panel_from_table` (the within
estimator of :mod:`bnmat.panel_model`) and written by
:func:`bnmat.panel_table.save_panel_model`. The command line adds what a
script would do around them:

* a validation split made for panel data: the **last periods** of every unit
  when ``--time`` is given (``--holdout periods``), otherwise **whole units**
  drawn with ``--seed`` (``--holdout units``);
* the **within R²** ``1 − ‖M(y − ŷ)‖²/‖My‖²`` on the training and the
  validation rows, M removing the effects the model has (unit means, or unit
  and period means), so that the effects themselves earn no credit;
* the linear coefficients by name, the number of recovered effects, and
  one-line errors (exit status 2) for bad columns and labels.

``bnmat predict`` on a panel model adds α̂_i (and τ̂_t) for units (periods)
seen in training; rows of other units get the average unit's prediction,
``intercept + x_linᵀb + f(x_nn)``, and a note on stderr says how many rows
that concerns.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

from .cli import UsageError
from .datasets import MISSING
from .ops.group_batchnorm_inference import UnseenGroupWarning
from .panel_model import within_r2_score
from .panel_table import fit_panel_from_table, load_panel_model, save_panel_model

__all__ = ["run_fit_panel", "run_predict_panel"]

#: Version of the command line's panel entries in a model file's metadata.
PANEL_CLI_FORMAT = 1

#: Python names in messages of :mod:`bnmat.panel_model`, and their options here.
_OPTION_NAMES = (("linear_features", "--linear"),
                 ("or set group_batchnorm=False", "or leave out --group-batchnorm"),
                 ("group_batchnorm", "--group-batchnorm"))


# ------------------------------------------------------------------ labels


def _label_cells(table, name: str, role: str) -> list:
    """The stripped cells of a label column; a missing cell is an error naming its line."""
    cells = [c.strip() for c in table.column(name)]
    for i in range(len(cells)):
        if cells[i].lower() in MISSING:
            raise UsageError(f"{table.source}, line {i + 2}: the {role} column {name!r} has "
                             f"a missing value ({cells[i]!r}); every row needs a label")
    return cells


def _as_int(cell: str):
    try:
        return int(cell)
    except ValueError:
        return None


def _parse_labels(cells) -> np.ndarray:
    """Integers when every cell is one, else the strings (as the table reader does)."""
    ints = [_as_int(c) for c in cells]
    if all(v is not None for v in ints):
        return np.array(ints, dtype=np.int64)
    return np.array(cells, dtype=str)


def _model_labels(cells, known) -> np.ndarray:
    """Cells as labels of the dtype the model was fitted with.

    A model fitted on integer labels cannot know a unit whose label is text:
    such a cell becomes an integer outside ``known``, so that the row is read
    as a new unit instead of failing on a mixed dtype.
    """
    known = np.asarray(known)
    if known.dtype.kind not in "biu":
        return np.array(cells, dtype=str)
    absent = int(known.min()) - 1 if known.size else -1
    ints = [_as_int(c) for c in cells]
    return np.array([absent if v is None else v for v in ints], dtype=np.int64)


def _codes(labels) -> np.ndarray:
    return np.unique(np.asarray(labels), return_inverse=True)[1].reshape(-1)


# ------------------------------------------------------------------ columns


def _panel_columns(args, table, target: str, drop: list):
    """Entity, time, linear columns, features and the non-feature columns, checked."""
    entity, time = args.entity, args.time
    for option, name in (("--entity", entity), ("--time", time)):
        if name is not None and name not in table.columns:
            raise UsageError(f"{table.source}: no column {name!r} (the {option}); the columns "
                             f"are {', '.join(table.columns)}")
    if entity == target or time == target:
        which = "--entity" if entity == target else "--time"
        raise UsageError(f"the target {target!r} cannot also be the {which} column")
    if time is not None and time == entity:
        raise UsageError(f"--entity and --time name the same column {entity!r}")
    linear = list(args.linear)
    unknown = [c for c in linear if c not in table.columns]
    if unknown:
        raise UsageError(f"{table.source}: no column {unknown[0]!r} for --linear; the columns "
                         f"are {', '.join(table.columns)}")
    twice = sorted({c for c in linear if linear.count(c) > 1})
    if twice:
        raise UsageError(f"--linear lists {twice[0]!r} twice")
    for c in linear:
        if c in (target, entity, time):
            role = "target" if c == target else ("--entity" if c == entity else "--time")
            raise UsageError(f"--linear {c!r} is the {role} column; it cannot enter linearly")
        if c in drop:
            raise UsageError(f"--linear {c!r} is also in --drop")
    drop = [c for c in drop if c not in (entity, time)]
    excluded = {target, entity, time, *drop}
    features = [c for c in table.columns if c not in excluded]
    if not features:
        raise UsageError(f"{table.source}: no feature columns are left besides the target, "
                         f"the label columns and --drop")
    return entity, time, linear, features, drop


# -------------------------------------------------------------------- split


def _holdout(args) -> str:
    holdout = args.holdout or ("periods" if args.time else "units")
    if holdout == "periods" and args.time is None:
        raise UsageError("--holdout periods needs --time COL (the column of periods)")
    return holdout


def _split_panel(holdout: str, fraction: float, seed: int, ent, per, time_name):
    """Training and validation rows, and a phrase saying what was held out."""
    if not 0 <= fraction < 1:
        raise UsageError(f"--validation-fraction must be in [0, 1); got {fraction}")
    n = ent.shape[0]
    if fraction == 0:
        return np.arange(n), np.arange(0), ""
    if holdout == "periods":
        periods = np.unique(per)
        k = max(1, round(fraction * periods.size))
        if periods.size - k < 2:
            raise UsageError(
                f"--time {time_name!r} has {periods.size} period(s); holding out the last {k} "
                "leaves fewer than 2 for training. Lower --validation-fraction, use "
                "--holdout units, or pass --validation-fraction 0")
        held = periods[-k:]
        va = np.flatnonzero(np.isin(per, held))
        what = (f"{time_name} {held[0]}, the last period" if k == 1 else
                f"{time_name} {held[0]} to {held[-1]}, the last {k} periods")
    else:
        units = np.unique(ent)
        k = max(1, round(fraction * units.size))
        if units.size - k < 1:
            raise UsageError(f"the data have {units.size} unit(s); holding out {k} leaves none "
                             "for training. Lower --validation-fraction or pass 0")
        held = np.random.default_rng(seed).permutation(units)[:k]
        va = np.flatnonzero(np.isin(ent, held))
        what = f"{k} whole units"
    tr = np.setdiff1d(np.arange(n), va)
    if tr.size < 2:
        raise UsageError(f"the split leaves {tr.size} training row(s); at least 2 are needed")
    return tr, va, what


# ---------------------------------------------------------------------- fit


def _learning_rate(args) -> float:
    return args.learning_rate or (1e-3 if args.solver == "adam" else 1e-2)


def _fit(args, table, target, entity, time, linear, features, effects):
    options = {
        "hidden": tuple(args.hidden), "activation": args.activation, "solver": args.solver,
        "alpha": args.alpha, "batch_size": args.batch_size or 200,
        "learning_rate": _learning_rate(args), "max_iter": args.epochs, "seed": args.seed,
        "progress": not args.no_progress, "group_batchnorm": args.group_batchnorm,
    }
    if args.solver == "lbfgs":
        # With a network, fit_lbfgs's default (as bnmat fit without --entity). Without
        # one the objective is the convex least squares of the within regression, whose
        # exact minimizer (PanelOLS's coefficients) is what the user asks for.
        options["tol"] = 1e-7 if set(features) - set(linear) else 1e-14
    if args.early_stopping is not None:
        options.update(early_stopping=True, patience=args.early_stopping,
                       validation_fraction=args.validation_fraction)
    try:
        with warnings.catch_warnings():
            # early stopping with --group-batchnorm scores its held-out units with the
            # pooled statistics; the documentation says so, once is not news here.
            warnings.simplefilter("ignore", UnseenGroupWarning)
            return fit_panel_from_table(table, target, entity=entity, time=time,
                                        linear=linear, features=features, effects=effects,
                                        **options)
    except ValueError as exc:
        text = str(exc)
        for python, option in _OPTION_NAMES:
            text = text.replace(python, option)
        raise UsageError(text) from None


def _predict(model, x, ent_cells, per_cells):
    """``model.predict`` with the labels cast to the model's; no unseen-unit warning."""
    ent = None if model.entity_labels is None else _model_labels(ent_cells, model.entity_labels)
    per = None
    if per_cells is not None and model.time_labels is not None:
        per = _model_labels(per_cells, model.time_labels)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnseenGroupWarning)   # reported by the caller
        return model.predict(x, ent, per)


def _within_r2(model, x, y, ent_cells, per_cells, rows) -> float:
    if rows.size == 0:
        return float("nan")
    ent = [ent_cells[i] for i in rows]
    per = None if per_cells is None else [per_cells[i] for i in rows]
    y_hat = _predict(model, x[rows], ent, per)
    groups = _codes(ent) if model.effects == "entity" else [_codes(ent), _codes(per)]
    return within_r2_score(y[rows], y_hat, groups)


def run_fit_panel(args) -> int:
    """``bnmat fit --entity COL``: a fixed-effects network; metrics, coefficients, model file."""
    from ._cli_fit import _fmt_metric, _json_float, _load_training_table, _plot

    if args.classify:
        raise UsageError("--classify cannot be used with --entity: panel models are "
                         "regressions (fixed effects of a numeric target)")
    effects = args.effects or ("twoway" if args.time else "entity")
    if effects == "twoway" and args.time is None:
        raise UsageError("--effects twoway needs --time COL (the column of periods)")
    holdout = _holdout(args)

    table, target, drop, _, label = _load_training_table(args)
    if not table.rows:
        raise UsageError(f"{table.source}: the file has a header but no rows")
    entity, time, linear, features, drop = _panel_columns(args, table, target, drop)
    # Parse every cell now, so that an error names its line in the whole file.
    x = table.numeric(features, what="feature column")
    y = table.numeric([target], what="target column")[:, 0]
    ent_cells = _label_cells(table, entity, "--entity")
    per_cells = _label_cells(table, time, "--time") if time else None
    ent = _parse_labels(ent_cells)
    per = None if per_cells is None else _parse_labels(per_cells)
    tr, va, held = _split_panel(holdout, args.validation_fraction, args.seed, ent, per, time)
    if args.group_batchnorm:
        units, counts = np.unique(ent[tr], return_counts=True)
        small = units[counts < 2]
        if small.size:
            raise UsageError(
                f"--group-batchnorm needs at least 2 training rows per unit; {small.size} "
                f"unit(s) of --entity {entity!r} have 1, e.g. {small[:5].tolist()}. Drop "
                "them, or leave out --group-batchnorm")

    network = [c for c in features if c not in linear]
    shape = ("no network (every feature is linear): the linear within regression"
             if not network else
             f"network {' → '.join(str(w) for w in [len(network), *args.hidden, 1])} "
             f"({'GroupBatchNorm' if args.group_batchnorm else 'BatchNorm'}, "
             f"{args.activation})" + (f" + {len(linear)} linear" if linear else ""))
    kind = ("unit and period effects" if effects == "twoway" else "unit effects")
    print(f"bnmat fit: {label}, target {target!r}, {kind} ({entity!r}"
          f"{f', {time!r}' if effects == 'twoway' else ''}), {len(features)} features")
    rows = f"{va.size} validation rows ({held})" if va.size else "no validation rows"
    print(f"  {tr.size} training rows ({np.unique(ent[tr]).size} units), {rows}; {shape}; "
          f"solver {args.solver}")
    sys.stdout.flush()

    sub = table._replace(rows=[table.rows[i] for i in tr])
    model = _fit(args, sub, target, entity, time, linear, features, effects)

    r2_train = _within_r2(model, x, y, ent_cells, per_cells, tr)
    r2_val = _within_r2(model, x, y, ent_cells, per_cells, va)
    epochs = len(model.history["loss"])
    unit = "iterations" if args.solver == "lbfgs" else "epochs"
    stop = ""
    if model.stopped_early:   # fit_panel stops on a stalled training loss by default
        on = ("within loss of the held-out training units" if args.early_stopping
              else "training loss")
        stop = f" (stopped: the {on} stalled; best epoch {model.best_epoch} kept)"
    removed = "unit and period means" if effects == "twoway" else "unit means"
    print(f"after {epochs} {unit}{stop}: within R² ({removed} removed): training "
          f"{_fmt_metric(r2_train)}, validation {_fmt_metric(r2_val)}")
    if va.size and not np.isfinite(r2_val):
        one_period = per is not None and np.unique(per[va]).size == 1
        why = "a single held-out period" if one_period else "each held-out unit has one row"
        print(f"  (validation n/a: {why}, so no variation within units is left to explain; "
              "hold out more with --validation-fraction)")
    if holdout == "units" and va.size and args.group_batchnorm:
        print("  (the held-out units are normalized with the pooled statistics)")
    if linear:
        print("linear coefficients (original scales):")
        width = max(len(c) for c in linear)
        for name, b in model.coef_linear.items():
            print(f"  {name:<{width}}  {b: .6g}")
    n_effects = f"{len(model.entity_labels)} unit effects"
    if model.time_effects is not None:
        n_effects += f" and {len(model.time_labels)} period effects"
    print(f"recovered {n_effects} (mean 0 over the training rows); intercept "
          f"{model.intercept:.6g}")

    metadata = {
        "bnmat_cli_panel": PANEL_CLI_FORMAT,
        "entity": entity, "time": time, "target": target,
        "features": features, "linear": linear, "dropped": drop,
        "holdout": holdout if va.size else None,
        "training_rows": int(tr.size), "validation_rows": int(va.size),
        "metrics": {"name": "within_r2", "train": _json_float(r2_train),
                    "validation": _json_float(r2_val)},
        "data": "bundled:wage_panel.csv.gz" if args.data is None else str(args.data),
    }
    out = save_panel_model(Path(args.output), model, metadata=metadata)
    print(f"model written to {Path(out).resolve()}")
    if args.plot:
        _plot(model.history, args.plot, "within_mse", "panel, fixed effects",
              ylabel="within mean squared error (standardized target)")
        print(f"loss plot written to {Path(args.plot).resolve()}")
    return 0


# ------------------------------------------------------------------ predict


def _unseen_note(cells, known, what: str) -> str | None:
    labels = _model_labels(cells, known)
    unseen = ~np.isin(labels, np.asarray(known))
    if not unseen.any():
        return None
    shown = list(dict.fromkeys(c for c, u in zip(cells, unseen) if u))
    example = ", ".join(shown[:3]) + (", …" if len(shown) > 3 else "")
    return (f"{int(unseen.sum())} of {len(cells)} row(s) are of {len(shown)} {what}(s) not "
            f"seen in training ({example}): predicted without a {what} effect, as the "
            f"average {what}")


def run_predict_panel(args, meta) -> int:
    """``bnmat predict`` with a panel model: effects for seen units, f alone for new ones."""
    from ._cli_fit import write_predictions

    entity, time = meta.get("entity"), meta.get("time")
    if not entity:
        raise UsageError(
            f"{args.model}: a panel model whose metadata lacks the name of its entity column; "
            "write it with save_panel_model(path, model, metadata={'entity': COL, 'time': "
            "COL or None, 'target': COL}) or with bnmat fit --entity")
    model = load_panel_model(args.model)
    target = meta.get("target") or "prediction"
    from .datasets import read_table

    table = read_table(args.data)
    features = list(model.feature_names)
    needed = features + [entity] + ([time] if model.effects == "twoway" else [])
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise UsageError(f"{table.source}: missing column(s) {', '.join(map(repr, missing))}; "
                         f"the model needs {', '.join(needed)}")
    if "dropped" in meta:   # written by bnmat fit: anything else is likely a mistake
        ignorable = {target, entity, time, *meta["dropped"]}
        extra = [c for c in table.columns if c not in features and c not in ignorable]
        if extra:
            raise UsageError(f"{table.source}: unexpected column(s) "
                             f"{', '.join(map(repr, extra))}; the model was trained on "
                             f"{', '.join(features)} with --entity {entity!r}")
    if not table.rows:
        raise UsageError(f"{table.source}: the file has a header but no rows")
    x = table.numeric(features, what="feature column")
    ent_cells = _label_cells(table, entity, "entity")
    per_cells = None
    if time and time in table.columns and model.time_labels is not None:
        per_cells = _label_cells(table, time, "time")
    y_hat = _predict(model, x, ent_cells, per_cells)

    notes = [_unseen_note(ent_cells, model.entity_labels, "unit")]
    if per_cells is not None:
        notes.append(_unseen_note(per_cells, model.time_labels, "period"))
    for note in filter(None, notes):
        print(f"bnmat: note: {note}", file=sys.stderr)
    if notes[0] and model.group_batchnorm:
        print("bnmat: note: the rows of new units are normalized with the pooled batch "
              "statistics", file=sys.stderr)
    write_predictions(target, [repr(float(v)) for v in y_hat], args.output)
    return 0
