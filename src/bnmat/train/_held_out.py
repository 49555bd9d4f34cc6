"""Full-batch L-BFGS stopped on held-out rows: the estimators' early stopping for L-BFGS."""

from __future__ import annotations

import math

from ..ops.group_batchnorm_inference import quiet_unseen_groups
from ._grad import loss_value
from ._groups import take_factors
from ._lbfgs import fit_lbfgs
from ._result import FitResult
from ._statistics import population_statistics

__all__ = ["lbfgs_held_out"]


def lbfgs_held_out(net, params, state, xs, ys, loss, l2, groups, split, max_iter, tol,
                    patience) -> FitResult:
    """L-BFGS on the training rows, stopped on the held-out rows' loss; the best iterate.

    ``split = (train rows, held-out rows)`` (whole units for panels);
    ``groups`` (None or a list of factors) is split along. Returns a
    :class:`bnmat.train.FitResult` with the held-out losses in
    ``history["val_loss"]`` and the statistics of the training rows.
    """
    tr, va = split
    g_tr, g_va = take_factors(groups, tr), take_factors(groups, va)
    x_tr, y_tr, x_va, y_va = xs[tr], ys[tr], xs[va], ys[va]
    best = {"loss": math.inf, "params": params, "it": 0}
    val_curve = []

    def watch(it, logs):
        st = population_statistics(net, logs["params"], state, x_tr, groups=g_tr)
        with quiet_unseen_groups():
            value = loss_value(net, logs["params"], st, x_va, y_va, loss, groups=g_va)
        val_curve.append(float(value))
        if value < best["loss"] - tol:
            best.update(loss=value, params=logs["params"], it=it)
        return it - best["it"] >= patience

    result = fit_lbfgs(net, params, state, x_tr, y_tr, loss=loss, l2=l2,
                             max_iter=max_iter, tol=tol, groups=g_tr, callback=watch)
    st = population_statistics(net, best["params"], state, x_tr, groups=g_tr)
    history = dict(result.history)
    history["val_loss"] = val_curve
    return FitResult(best["params"], st, history, max(best["it"], 1),
                           result.stopped_early)
