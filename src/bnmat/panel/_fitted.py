"""A fitted panel network: :class:`PanelModel` (what :func:`bnmat.panel.fit_panel` returns)."""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import numpy as np

from .._tree import tree_leaves
from ..layers._mlp import Scaling
from ..ops.group_batchnorm_inference import (UnseenGroupWarning, quiet_unseen_groups,
                                              unseen_groups_quiet)
from ._inputs import label_codes, lookup_effects

__all__ = ["PanelModel"]


class PanelModel(NamedTuple):
    """A fitted panel network (what :func:`fit_panel` returns).

    Attributes
    ----------
    net : bnmat.Additive
        Branches (linear part, network); see :func:`bnmat.layers.partially_linear`.
    params, state : list
        Trained parameters and exact full-data batch-norm statistics, on the
        standardized scale.
    x_scaling, y_scaling : Scaling
        Standardization of X (all p columns) and of y.
    effects : str
        "entity", "twoway" or "none".
    feature_names : tuple of str, length p
    linear_columns, network_columns : tuple of int
        Positions in X of the linear part's and the network's inputs.
    entity_labels : ndarray or None, shape (G,)
        Sorted training units; row k of ``entity_effects`` is unit k's α̂.
    entity_effects : ndarray or None, shape (G,)
    time_labels, time_effects : ndarray or None, shape (T,)
        Two-way models only.
    offset : float
        Mean residual ``y − ŷ`` over the training rows, added to the network's
        (standardized-scale) output; 0 for ``effects="none"``. The intercept on
        the original scales is the property :attr:`intercept`.
    group_batchnorm : bool
        Whether the network normalizes with per-unit statistics.
    history : dict
        ``"epoch"``, ``"loss"``, ``"val_loss"`` from the training function.
    best_epoch : int
    stopped_early : bool
    """

    net: Any
    params: Any
    state: Any
    x_scaling: Scaling
    y_scaling: Scaling
    effects: str
    feature_names: tuple
    linear_columns: tuple
    network_columns: tuple
    entity_labels: Any
    entity_effects: Any
    time_labels: Any
    time_effects: Any
    offset: float
    group_batchnorm: bool
    history: dict
    best_epoch: int
    stopped_early: bool

    @property
    def coef_linear(self) -> dict:
        """Linear coefficients on the original scales: feature name → b_j.

        ``b_j = s_y β_j / s_j`` with β the coefficients fitted on standardized
        data and s_y, s_j the standard deviations of y and of column j.
        """
        if not self.linear_columns:
            return {}
        beta = np.asarray(self.params[0]["coef"], dtype=np.float64)[:, 0]
        scale_y = float(self.y_scaling.scale[0])
        return {self.feature_names[j]: float(beta[k] * scale_y / self.x_scaling.scale[j])
                for k, j in enumerate(self.linear_columns)}

    @property
    def intercept(self) -> float:
        """The constant in ``ŷ = intercept + x_linᵀ b + f(x_nn) + α̂_i (+ τ̂_t)``.

        b from :attr:`coef_linear` (original scales), f the network branch's
        output times y's standard deviation, effects with row-weighted mean
        zero over the training rows.
        """
        value = float(self.y_scaling.mean[0]) + float(self.offset)
        if self.linear_columns:
            value -= sum(b * float(self.x_scaling.mean[j])
                         for b, j in zip(self.coef_linear.values(), self.linear_columns))
            if "intercept" in self.params[0]:
                value += float(self.y_scaling.scale[0]) * float(
                    np.asarray(self.params[0]["intercept"])[0])
        return value

    @property
    def effects_dict(self) -> dict:
        """Unit label → α̂ (empty without unit effects)."""
        if self.entity_labels is None or self.entity_effects is None:
            return {}
        return dict(zip(np.asarray(self.entity_labels).tolist(),
                        np.asarray(self.entity_effects, dtype=np.float64).tolist()))

    @property
    def time_effects_dict(self) -> dict:
        """Period label → τ̂ (empty unless two-way)."""
        if self.time_labels is None or self.time_effects is None:
            return {}
        return dict(zip(np.asarray(self.time_labels).tolist(),
                        np.asarray(self.time_effects, dtype=np.float64).tolist()))

    def network_output(self, x, entity=None) -> np.ndarray:
        """The network's output times y's standard deviation (no effects, no y mean).

        Equal to ``x_linᵀ b + f(x_nn) + intercept − y_mean − offset``.

        Parameters
        ----------
        x : ndarray, shape (N, p), float
        entity : array_like, shape (N,), optional
            Units, read only by a network with group-wise batch norm (stored
            per-unit statistics; unseen units and ``entity=None`` use the
            pooled ones, unseen units with a warning).

        Returns
        -------
        ndarray, shape (N,)
        """
        xs = self.x_scaling.apply(np.asarray(x))
        dtype = _param_dtype(self.params)
        kw = {}
        if self.group_batchnorm and entity is not None:
            codes = label_codes(self.entity_labels, entity, "entity", missing=-1)
            unseen = np.unique(np.asarray(entity)[codes < 0])
            if unseen.size and not unseen_groups_quiet():
                shown = ", ".join(repr(v) for v in unseen[:5].tolist())
                more = f" and {unseen.size - 5} more" if unseen.size > 5 else ""
                warnings.warn(
                    f"{int(np.sum(codes < 0))} row(s) of {unseen.size} unit(s) not seen in "
                    f"training ({shown}{more}) are normalized with the pooled statistics",
                    UnseenGroupWarning, stacklevel=3)
            kw["groups"] = codes
        with quiet_unseen_groups():   # reported above, by label
            z = np.asarray(self.net.predict(self.params, self.state,
                                            xs.astype(dtype, copy=False), **kw))
        return (z[:, 0] * self.y_scaling.scale[0]).astype(np.float64)

    def predict(self, x, entity=None, time=None) -> np.ndarray:
        """``intercept + α̂_i (+ τ̂_t) + x_linᵀ b + f(x_nn)``.

        Rows of units (periods) not seen in training, and every row when
        ``entity`` (``time``) is None, get no effect: their prediction is that
        of a unit with the average effect (see the module docstring).

        Parameters
        ----------
        x : ndarray, shape (N, p)
        entity, time : array_like, shape (N,), optional

        Returns
        -------
        ndarray, shape (N,), float64
        """
        out = self.network_output(x, entity) + self.offset + self.y_scaling.mean[0]
        if entity is not None and self.entity_effects is not None:
            out = out + lookup_effects(self.entity_labels, self.entity_effects, entity, "entity")
        if time is not None and self.time_effects is not None:
            out = out + lookup_effects(self.time_labels, self.time_effects, time, "time")
        return out


def _param_dtype(params):
    leaves = tree_leaves(params)
    return np.asarray(leaves[0]).dtype if leaves else np.float64
