"""Panel models from CSV tables, and their model files: what ``bnmat fit --entity`` writes.

:func:`fit_panel_from_table` fits the model of
``bnmat fit DATA.csv --target y --entity COL [--time COL] [--linear COL ...]``
to the columns of a table that :func:`bnmat.datasets.read_table` reads (the
command line parses the same columns itself, to split off validation rows,
and calls :func:`bnmat.panel.model.fit_panel` on the training rows);
:func:`save_panel_model` writes either, and ``bnmat predict`` on such a file
is :func:`load_panel_model` followed by predictions like those of
:func:`predict_panel_table`. Nothing here needs scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..io import load, save
from ..layers._mlp import Scaling
from ._inputs import canonical_integers
from .model import EFFECTS, PanelModel, fit_panel

__all__ = ["fit_panel_from_table", "predict_panel_table", "save_panel_model",
           "load_panel_model", "PANEL_FORMAT"]

#: Version of the ``"panel"`` entry in a model file's metadata.
PANEL_FORMAT = 1


def _labels(table, name: str) -> np.ndarray:
    """A label column: integers when every cell is one, else the stripped strings."""
    cells = [c.strip() for c in table.column(name)]
    for i, c in enumerate(cells):
        if c.lower() in ("", "na", "nan", "n/a", "null", "none", "."):
            raise ValueError(f"{table.source}, line {i + 2}: the label column {name!r} has a "
                             f"missing value ({c!r})")
    # Integers only when every cell is written as one canonically: int() would
    # also read "01", "+1" and "1_0" as 1 and merge distinct units.
    values = canonical_integers(cells)
    return np.array(cells, dtype=str) if values is None else values


def _require(table, names, what):
    missing = [c for c in names if c not in table.columns]
    if missing:
        raise ValueError(f"{table.source}: no column {missing[0]!r} for {what}; the columns are "
                         f"{list(table.columns)}")


def fit_panel_from_table(table, target: str, *, entity: str, time: str | None = None,
                         linear=(), features=None, drop=(), effects: str | None = None,
                         **options) -> PanelModel:
    """Fit a fixed-effects (partially linear) network to the columns of a CSV table.

    Parameters
    ----------
    table : bnmat.datasets.Table
        From :func:`bnmat.datasets.read_table`.
    target : str
        Column of y (numbers).
    entity : str
        Column of unit labels (integers or any strings).
    time : str, optional
        Column of period labels. Given, the default effects are two-way.
    linear : sequence of str, default ()
        Feature columns entering linearly (``--linear``); their coefficients
        are reported by name in ``model.coef_linear``.
    features : sequence of str, optional
        Feature columns; default every column except ``target``, ``entity``,
        ``time`` and ``drop``. The ``linear`` columns are added when missing.
    drop : sequence of str, default ()
        Columns that are not features.
    effects : {"entity", "twoway", "none"}, optional
        Default "twoway" with ``time``, else "entity".
    **options
        Passed to :func:`bnmat.panel.model.fit_panel` (``hidden``,
        ``activation``, ``solver``, ``alpha``, ``batch_size``,
        ``learning_rate``, ``max_iter``, ``seed``, ``group_batchnorm``, …).

    Returns
    -------
    PanelModel
        Its ``feature_names`` are the feature columns, in table order.

    Raises
    ------
    ValueError
        Unknown columns, non-numeric or missing cells (naming the line), and
        every error of :func:`~bnmat.panel.model.fit_panel`.
    """
    linear = [linear] if isinstance(linear, str) else list(linear)
    _require(table, [target, entity] + ([time] if time else []) + list(drop), "the panel")
    if effects is None:
        effects = "twoway" if time else "entity"
    if effects not in EFFECTS:
        raise ValueError(f"effects must be one of {EFFECTS}; got {effects!r}")
    excluded = {target, entity, *(set(drop)), *([time] if time else [])}
    if features is None:
        features = [c for c in table.columns if c not in excluded]
    else:
        features = list(features)
        _require(table, features, "the features")
    _require(table, linear, "--linear")
    bad = [c for c in linear if c in (target, entity, time)]
    if bad:
        raise ValueError(f"{bad[0]!r} is the target or a label column and cannot enter linearly")
    features += [c for c in linear if c not in features]
    features = [c for c in table.columns if c in set(features)]   # table order
    if not features:
        raise ValueError(f"{table.source}: no feature columns are left")
    x = table.numeric(features, what="feature column")
    y = table.numeric([target], what="target")[:, 0]
    ent = _labels(table, entity)
    per = _labels(table, time) if time else None
    return fit_panel(x, y, ent, per, effects=effects, linear_features=linear,
                     feature_names=features, **options)


def predict_panel_table(model: PanelModel, table, *, entity: str | None = None,
                        time: str | None = None) -> np.ndarray:
    """Predictions for the rows of a table, read by the model's feature names.

    Parameters
    ----------
    model : PanelModel
    table : bnmat.datasets.Table
        Must have every feature column; other columns are ignored.
    entity, time : str, optional
        Label columns: rows of units (periods) seen in training get their
        effects, others none (the average unit, see :mod:`bnmat.panel.model`).

    Returns
    -------
    ndarray, shape (N,)
    """
    _require(table, list(model.feature_names), "the model's features")
    x = table.numeric(list(model.feature_names), what="feature column")
    ent = _labels(table, entity) if entity else None
    per = _labels(table, time) if time else None
    return model.predict(x, ent, per)


# ----------------------------------------------------------------- files
def _plain(a):
    return None if a is None else np.asarray(a).tolist()


def save_panel_model(path, model: PanelModel, *, metadata: dict | None = None) -> Path:
    """Write a panel model to one ``.npz`` file (:func:`bnmat.io.save`, no pickle).

    The network, its parameters and state are the file's arrays; everything
    else (scalings, columns, labels and effects) goes into the metadata under
    ``"panel"``, next to the caller's ``metadata``.

    Returns
    -------
    pathlib.Path
    """
    panel = {
        "format": PANEL_FORMAT,
        "effects": model.effects,
        "feature_names": list(model.feature_names),
        "linear_columns": list(model.linear_columns),
        "network_columns": list(model.network_columns),
        "x_mean": _plain(model.x_scaling.mean), "x_scale": _plain(model.x_scaling.scale),
        "y_mean": _plain(model.y_scaling.mean), "y_scale": _plain(model.y_scaling.scale),
        "entity_labels": _plain(model.entity_labels),
        "entity_effects": _plain(model.entity_effects),
        "time_labels": _plain(model.time_labels),
        "time_effects": _plain(model.time_effects),
        "offset": float(model.offset),
        "group_batchnorm": bool(model.group_batchnorm),
    }
    return save(path, model.net, model.params, model.state,
                metadata={**(metadata or {}), "panel": panel})


def _array(values, dtype=None):
    if values is None:
        return None
    return np.asarray(values, dtype=dtype)


def _label_array(values):
    if values is None:
        return None
    arr = np.asarray(values)
    return arr.astype(np.int64) if arr.dtype.kind in "biu" else arr.astype(str)


def load_panel_model(path) -> PanelModel:
    """Read a model written by :func:`save_panel_model`.

    Raises
    ------
    ValueError
        The file is not a bnmat model, or not a panel model.
    """
    saved = load(path)
    panel = saved.metadata.get("panel")
    if not isinstance(panel, dict) or panel.get("format") != PANEL_FORMAT:
        raise ValueError(f"{path}: not a bnmat panel model (no 'panel' metadata of format "
                         f"{PANEL_FORMAT})")
    try:
        return PanelModel(
            net=saved.net, params=saved.params, state=saved.state,
            x_scaling=Scaling(_array(panel["x_mean"], float), _array(panel["x_scale"], float)),
            y_scaling=Scaling(_array(panel["y_mean"], float), _array(panel["y_scale"], float)),
            effects=panel["effects"], feature_names=tuple(panel["feature_names"]),
            linear_columns=tuple(panel["linear_columns"]),
            network_columns=tuple(panel["network_columns"]),
            entity_labels=_label_array(panel["entity_labels"]),
            entity_effects=_array(panel["entity_effects"], float),
            time_labels=_label_array(panel["time_labels"]),
            time_effects=_array(panel["time_effects"], float),
            offset=float(panel["offset"]), group_batchnorm=bool(panel["group_batchnorm"]),
            history={"epoch": [], "loss": [], "val_loss": []}, best_epoch=0,
            stopped_early=False,
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: the panel metadata is corrupt ({exc})") from exc
