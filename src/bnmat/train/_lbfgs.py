"""Full-batch training by L-BFGS-B with exact gradients."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._data import check_xy
from ._fit import final_statistics
from ._result import FitResult, divergence_error, positive_int
from ._grad import check_l2, resolve_loss, value_and_grad
from ._flat import FlatParams, IterationLog, finite_objective
from ._groups import as_factors, for_loss

__all__ = ["fit_lbfgs"]


def fit_lbfgs(net, params, state, x, y, *, loss="mse", l2: float = 0.0, max_iter: int = 200,
              tol: float = 1e-7, callback: Callable | None = None,
              population_stats: bool = True, groups=None, reducer=None,
              sample_weight=None) -> FitResult:
    """Full-batch training by L-BFGS-B (:func:`scipy.optimize.minimize`) with exact gradients.

    The parameters are flattened into one float64 vector θ; each evaluation
    runs the training-mode forward on all rows and the closed-form backward,
    ``(R(θ), ∇R(θ))``. Batch statistics of the full batch make R a
    deterministic function of θ, as a quasi-Newton method needs. Afterwards the
    batch norms get the exact statistics of ``x`` (:func:`population_statistics`),
    so ``net.predict`` on ``x`` reproduces the training output.

    Parameters
    ----------
    net, params, state, x, y, loss, l2, groups
        As in :func:`fit` (all rows form one batch; ``groups`` reaches the
        layers that read labels and the within losses).
    max_iter : int, default 200
        Maximum number of L-BFGS iterations.
    tol : float, default 1e-7
        Passed to ``minimize(tol=...)`` (SciPy's ``ftol`` and ``gtol``).
    callback : callable, optional
        ``callback(iteration, logs)`` after each iteration with ``logs``
        ``{"loss", "val_loss": None, "params", "state"}``; returning True stops.
    population_stats : bool, default True
    reducer : bnmat.distributed reducer, optional
        ``x`` and ``y`` are this rank's rows; the objective and its gradient
        are those of all ranks' rows, so every rank takes the same iterates
        (checked at every evaluation). See :mod:`bnmat.distributed`.
    sample_weight : array_like, shape (N,), optional
        Frequency weights, as in :func:`value_and_grad`; the population
        statistics are weighted too.

    Returns
    -------
    FitResult
        ``history["epoch"]`` counts iterations; ``best_epoch`` is the last one.

    Raises
    ------
    DivergenceError
        The optimum found has non-finite parameters.
    """
    from scipy.optimize import minimize

    if reducer is not None:
        from ._distributed import is_distributed
        from ._distributed_fit import distributed_fit_lbfgs
        if is_distributed(reducer):
            if sample_weight is not None:
                raise ValueError("sample_weight cannot be combined with a distributed reducer")
            return distributed_fit_lbfgs(net, params, state, x, y, loss=loss,
                                         l2=check_l2(l2),
                                         max_iter=positive_int(max_iter, "max_iter"), tol=tol,
                                         callback=callback, population_stats=population_stats,
                                         groups=groups, reducer=reducer)
    x, y = check_xy(x, y)
    max_iter = positive_int(max_iter, "max_iter")
    l2 = check_l2(l2)
    factors = as_factors(groups, x.shape[0])
    resolve_loss(loss, for_loss(factors))
    if sample_weight is not None:
        from ._weighted import check_sample_weight
        sample_weight = check_sample_weight(sample_weight, x.shape[0])
    flat = FlatParams(params)
    unflatten, flatten = flat.unflatten, flat.flatten

    def evaluate(theta):
        value, grads, _ = value_and_grad(net, unflatten(theta), state, x, y, loss, l2=l2,
                                         groups=factors, sample_weight=sample_weight)
        return value, flatten(grads)

    objective = finite_objective(evaluate)

    on_iteration = IterationLog(flat, state, callback)
    history = on_iteration.history

    theta0 = flatten(params)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        result = minimize(objective, theta0, jac=True, method="L-BFGS-B", tol=tol,
                          callback=on_iteration, options={"maxiter": max_iter})
    if not np.all(np.isfinite(result.x)):
        raise divergence_error(len(history["epoch"]) + 1, params, state, history)
    new_params = unflatten(result.x)
    if population_stats:
        state = final_statistics(net, new_params, state, x, None, factors,
                                 len(history["epoch"]) + 1, history, (params, state),
                                 sample_weight=sample_weight)
    return FitResult(new_params, state, history, len(history["epoch"]), on_iteration.stopped)
