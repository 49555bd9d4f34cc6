"""``bnmat fit --entity COL`` and ``bnmat predict`` for fixed-effects networks on panel data.

The model, for unit i in period t, is ::

    y_it = α_i (+ τ_t) + x_lin,itᵀ b + f(x_nn,it) + e_it

fitted by :func:`bnmat.panel.model.fit_panel` (the within estimator) on the
columns of the CSV file, and written by :func:`bnmat.panel.table.save_panel_model`.
The command line adds what a script would do around them:

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

import math
import sys
from pathlib import Path

import numpy as np

from ..datasets import MISSING
from ..ops.group_batchnorm_inference import quiet_unseen_groups
from ..panel._inputs import canonical_integers, label_codes
from ..panel.model import SmallGroupsError, fit_panel, within_r2_score
from ..panel.table import load_panel_model, save_panel_model
from ._common import UsageError

__all__ = ["run_fit_panel", "run_predict_panel"]

#: Version of the command line's panel entries in a model file's metadata.
PANEL_CLI_FORMAT = 1


# ------------------------------------------------------------------ labels


def _labels(table, name: str, role: str) -> np.ndarray:
    """A label column: integers when every cell is one, else the stripped text.

    A missing cell is an error naming its line. A model fitted on integer
    labels still finds them in a column that also has text (and the reverse):
    :meth:`bnmat.panel.model.PanelModel.predict` matches an integer and its
    decimal text.
    """
    cells = [c.strip() for c in table.column(name)]
    for i in range(len(cells)):
        if cells[i].lower() in MISSING:
            raise UsageError(f"{table.source}, line {i + 2}: the {role} column {name!r} has "
                             f"a missing value ({cells[i]!r}); every row needs a label")
    # Integers only when every cell is written as one canonically: int() would
    # also read "01", "+1" and "1_0" as 1 and merge distinct units.
    values = canonical_integers(cells)
    return np.array(cells, dtype=str) if values is None else values


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
    if getattr(args, "features", None):
        clash = [c for c in args.features if c in (entity, time)]
        if clash:
            raise UsageError(f"--features lists {clash[0]!r}, a label column (--entity/--time)")
        wanted = set(args.features) | set(linear)
        features = [c for c in table.columns if c in wanted]
    else:
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


def _options(args, n: int) -> dict:
    """fit_panel's keyword arguments from the command line (n training rows)."""
    from ..layers._mlp import auto_batch_size

    options = {
        "hidden": tuple(args.hidden), "activation": args.activation, "solver": args.solver,
        "alpha": args.alpha, "batch_size": args.batch_size or auto_batch_size(n),
        "learning_rate": _learning_rate(args), "max_iter": args.epochs, "seed": args.seed,
        "progress": not args.no_progress, "group_batchnorm": args.group_batchnorm,
        "start_linear": True,
    }
    if args.early_stopping is not None:
        options.update(early_stopping=True, patience=args.early_stopping,
                       validation_fraction=args.validation_fraction,
                       linear_fallback=not getattr(args, "no_linear_fallback", False))
    return options


def _fit(args, x, y, ent, per, effects, linear, features, entity_name):
    """fit_panel on the given training rows, with the command line's options."""
    options = _options(args, x.shape[0])
    try:
        # early stopping with --group-batchnorm scores its held-out units with the
        # pooled statistics; the documentation says so, once is not news here.
        with quiet_unseen_groups():
            return fit_panel(x, y, ent, per, effects=effects, linear_features=linear,
                             feature_names=features, **options)
    except SmallGroupsError as exc:
        raise UsageError(
            f"--group-batchnorm needs at least {exc.need} training rows per unit; "
            f"{exc.units.size} unit(s) of --entity {entity_name!r} have fewer, e.g. "
            f"{exc.units[:5].tolist()}. Drop them, or leave out --group-batchnorm") from None


def _predict(model, x, ent, per):
    """``model.predict`` without the unseen-unit warning (the caller reports new units)."""
    with quiet_unseen_groups():
        return model.predict(x, ent, per)


def _within_r2(model, x, y, ent, per, rows) -> float:
    if rows.size == 0:
        return float("nan")
    ent, per = ent[rows], None if per is None else per[rows]
    y_hat = _predict(model, x[rows], ent, per)
    groups = _codes(ent) if model.effects == "entity" else [_codes(ent), _codes(per)]
    return within_r2_score(y[rows], y_hat, groups)


def run_fit_panel(args) -> int:
    """``bnmat fit --entity COL``: a fixed-effects network; metrics, coefficients, model file."""
    from ._common import _fmt_metric, _json_float, _plot
    from ._table import _load_training_table, apply_missing_policy, design_matrix

    # before any training, so that a typo costs no minutes
    if not (math.isfinite(args.crossfit_alpha) and args.crossfit_alpha >= 0):
        raise UsageError(f"--crossfit-alpha must be a finite number >= 0; got "
                         f"{args.crossfit_alpha}")
    if args.n_rep < 1:
        raise UsageError(f"--n-rep must be at least 1; got {args.n_rep}")
    if args.classify:
        raise UsageError("--classify cannot be used with --entity: panel models are "
                         "regressions (fixed effects of a numeric target)")
    effects = args.effects or ("twoway" if args.time else "entity")
    if effects == "twoway" and args.time is None:
        raise UsageError("--effects twoway needs --time COL (the column of periods)")
    holdout = _holdout(args)

    both = [c for c in args.categorical if c in args.linear]
    if both:
        raise UsageError(f"--categorical {both[0]!r} is also in --linear: categorical columns "
                         "enter the network (their one-hot columns sum to one, which the unit "
                         "effects absorb)")
    table, target, drop, _, label = _load_training_table(args)
    if not table.rows:
        raise UsageError(f"{table.source}: the file has a header but no rows")
    entity, time, linear, features, drop = _panel_columns(args, table, target, drop)
    table = apply_missing_policy(table, [*features, target, entity, *([time] if time else [])],
                                 args.dropna)
    if table.n_rows == 0:
        raise UsageError(f"{table.source}: no rows are left after --dropna")
    # Parse every cell now, so that an error names its line in the whole file.
    x, inputs, levels = design_matrix(table, features, {c: [] for c in args.categorical})
    y = table.numeric([target], what="target column")[:, 0]
    ent = _labels(table, entity, "--entity")
    per = _labels(table, time, "--time") if time else None
    tr, va, held = _split_panel(holdout, args.validation_fraction, args.seed, ent, per, time)
    if args.solver == "auto":
        from ..layers._mlp import auto_solver

        # L-BFGS only when held-out units can stop it: otherwise --epochs full
        # iterations overfit the within variation more than Adam's epochs do.
        args.nuisance_solver = auto_solver(tr.size)
        args.solver = auto_solver(tr.size) if args.early_stopping is not None else "adam"

    network = [c for c in inputs if c not in linear]
    shape = ("no network (every feature is linear): the linear within regression, solved "
             "by least squares" if not network else
             f"{len(network)} column(s) in a linear network part (no hidden layer)"
             + (f" + {len(linear)} linear" if linear else "") + f"; solver {args.solver}"
             if not args.hidden else
             f"network {' → '.join(str(w) for w in [len(network), *args.hidden, 1])} "
             f"({'GroupBatchNorm' if args.group_batchnorm else 'BatchNorm'}, "
             f"{args.activation})" + (f" + {len(linear)} linear" if linear else "")
             + f"; solver {args.solver}")
    kind = ("unit and period effects" if effects == "twoway" else "unit effects")
    print(f"bnmat fit: {label}, target {target!r}, {kind} ({entity!r}"
          f"{f', {time!r}' if effects == 'twoway' else ''}), {len(features)} features")
    rows = f"{va.size} validation rows ({held})" if va.size else "no validation rows"
    print(f"  {tr.size} training rows ({np.unique(ent[tr]).size} units), {rows}; {shape}")
    sys.stdout.flush()

    model = _fit(args, x[tr], y[tr], ent[tr], None if per is None else per[tr], effects,
                 linear, inputs, entity)

    r2_train = _within_r2(model, x, y, ent, per, tr)
    r2_val = _within_r2(model, x, y, ent, per, va)
    if not network:
        done = "least-squares solution"
    else:
        done = (f"after {len(model.history['loss'])} "
                f"{'iterations' if args.solver == 'lbfgs' else 'epochs'}")
        if model.stopped_early:   # fit_panel stops on a stalled training loss by default
            on = ("within loss of the held-out training units" if args.early_stopping
                  else "training loss")
            done += f" (stopped: the {on} stalled; best epoch {model.best_epoch} kept)"
    if model.history.get("selected") == "linear" and network:
        print(f"  kept the linear within regression on {len(model.linear_columns)} column(s): "
              "the network did not predict the held-out training units clearly better "
              f"(within MSE {model.history['val_network']:.4g} vs linear "
              f"{model.history['val_linear']:.4g}; --no-linear-fallback keeps the network)")
    removed = "unit and period means" if effects == "twoway" else "unit means"
    print(f"{done}: within R² ({removed} removed): training "
          f"{_fmt_metric(r2_train)}, validation {_fmt_metric(r2_val)}")
    if va.size and not np.isfinite(r2_val):
        one_period = per is not None and np.unique(per[va]).size == 1
        why = "a single held-out period" if one_period else "each held-out unit has one row"
        print(f"  (validation n/a: {why}, so no variation within units is left to explain; "
              "hold out more with --validation-fraction)")
    if holdout == "units" and va.size and args.group_batchnorm:
        print("  (the held-out units are normalized with the pooled statistics)")
    if linear:
        info = _linear_inference(args, model, x[tr], y[tr], ent[tr],
                                 None if per is None else per[tr], effects, linear, features)
        if info is not None:
            print(info.summary(title="linear part (original scales)"))
        else:
            print("linear coefficients (original scales; no standard errors beside a jointly "
                  "trained network: pass --inference crossfit):")
            width = max(len(c) for c in model.coef_linear)
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
        "features": features, "linear": linear, "dropped": drop, "categorical": levels,
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


def _linear_inference(args, model, x, y, ent, per, effects, linear, features):
    """The table's estimates: within (no network), cross-fitted (--inference crossfit), or None."""
    from ..panel._linear_report import nuisance_fitter
    from ..panel.inference import crossfit_inference, within_inference

    codes = _codes(ent)
    t_codes = _codes(per) if effects == "twoway" else None
    names = list(linear)
    lin = [features.index(c) for c in names]
    network = [j for j in range(len(features)) if j not in lin]
    if network and args.inference == "crossfit":
        options = _options(args, x.shape[0])
        # The nuisance fits are penalized and never stopped early, so --solver auto
        # gives them L-BFGS on small data (the rule of PanelBNMLPRegressor).
        options["solver"] = getattr(args, "nuisance_solver", args.solver)
        fit_nuisance = nuisance_fitter(options, effects=effects, alpha=args.crossfit_alpha)
        return crossfit_inference(x, y, codes, t_codes, lin=tuple(lin), nn=tuple(network),
                                  names=names, effects=effects, fit_nuisance=fit_nuisance,
                                  cv=args.cv, seed=args.seed, cov_type=args.cov_type,
                                  n_rep=args.n_rep)[0]
    if model.network_columns:
        return None
    # No network (asked for, or kept by the linear fallback): the within regression.
    cols = list(model.linear_columns)
    coef = [model.coef_linear[model.feature_names[j]] for j in cols]
    return within_inference(x[:, cols], y, np.array(coef),
                            names=[model.feature_names[j] for j in cols], effects=effects,
                            entity_codes=codes, time_codes=t_codes, cov_type=args.cov_type)


# ------------------------------------------------------------------ predict


def _unseen_note(labels, known, what: str) -> str | None:
    unseen = label_codes(known, labels, what, missing=-1) < 0
    if not unseen.any():
        return None
    shown = list(dict.fromkeys(labels[unseen].tolist()))
    example = ", ".join(map(str, shown[:3])) + (", …" if len(shown) > 3 else "")
    return (f"{int(unseen.sum())} of {len(labels)} row(s) are of {len(shown)} {what}(s) not "
            f"seen in training ({example}): predicted without a {what} effect, as the "
            f"average {what}")


def run_predict_panel(args, meta) -> int:
    """``bnmat predict`` with a panel model: effects for seen units, f alone for new ones."""
    from ._common import write_predictions

    entity, time = meta.get("entity"), meta.get("time")
    if not entity:
        raise UsageError(
            f"{args.model}: a panel model whose metadata lacks the name of its entity column; "
            "write it with save_panel_model(path, model, metadata={'entity': COL, 'time': "
            "COL or None, 'target': COL}) or with bnmat fit --entity")
    model = load_panel_model(args.model)
    target = meta.get("target") or "prediction"
    from ..datasets import read_table

    table = read_table(args.data, text_columns=[c for c in (entity, time) if c],
                       sep=args.sep, decimal=args.decimal)
    levels = dict(meta.get("categorical") or {})
    # With categorical columns the model's inputs are their one-hot columns; the
    # file has the columns themselves.
    features = list(meta["features"]) if levels else list(model.feature_names)
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
    if levels:
        from ._table import design_matrix

        x = design_matrix(table, features, levels)[0]
    else:
        x = table.numeric(features, what="feature column")
    ent = _labels(table, entity, "entity")
    per = None
    if time and time in table.columns and model.time_labels is not None:
        per = _labels(table, time, "time")
    y_hat = _predict(model, x, ent, per)

    notes = [_unseen_note(ent, model.entity_labels, "unit")]
    if per is not None:
        notes.append(_unseen_note(per, model.time_labels, "period"))
    for note in filter(None, notes):
        print(f"bnmat: note: {note}", file=sys.stderr)
    if notes[0] and model.group_batchnorm:
        print("bnmat: note: the rows of new units are normalized with the pooled batch "
              "statistics", file=sys.stderr)
    write_predictions(target, np.asarray(y_hat, dtype=np.float64), args.output)
    return 0
