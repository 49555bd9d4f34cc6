"""Panel data: unit (and period) structure around a network.

Everything for data with a unit label per row lives here:

=====================  =========================================================
``bnmat.panel``        group indices, segment sums, within transforms (demeaning,
                       effects recovery) — re-exported from :mod:`bnmat._segments`,
                       the leaf module the batch-norm ops use too
``panel.model``        :func:`fit_panel`, :class:`PanelModel`, :func:`within_r2_score`,
                       the identification errors
``panel.estimator``    :class:`PanelBNMLPRegressor` (scikit-learn API)
``panel.table``        fitting and predicting from a table; panel model files
``panel._inputs``      label encoding and input checks shared by the above
=====================  =========================================================

The names of ``panel.model``, ``panel.estimator`` and ``panel.table`` are
importable from ``bnmat.panel`` directly; they load on first use, so
``import bnmat.panel`` needs neither scikit-learn nor the training code.
"""

from importlib import import_module

from .._segments import (
    ConvergenceWarning,
    GroupIndex,
    demean,
    ghost_batch_labels,
    group_index,
    recover_effects,
    segment_mean,
    segment_sum,
)

# public name -> submodule of bnmat.panel that defines it
_LAZY = {
    "fit_panel": "model", "within_r2_score": "model", "PanelModel": "model", "EFFECTS": "model",
    "NotIdentifiedError": "model", "AbsorbedFeaturesError": "model",
    "CollinearFeaturesError": "model", "SmallGroupsError": "model",
    "PanelBNMLPRegressor": "estimator",
    "fit_panel_from_table": "table", "predict_panel_table": "table",
    "save_panel_model": "table", "load_panel_model": "table",
}

__all__ = [
    "GroupIndex", "ConvergenceWarning", "group_index", "segment_sum", "segment_mean",
    "ghost_batch_labels", "demean", "recover_effects", *_LAZY,
]


def __getattr__(name):
    if name in _LAZY:
        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bnmat.panel' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
