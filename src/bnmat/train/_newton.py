"""Full-batch second-order training: Newton-CG and trust-region methods with exact H v."""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._data import check_xy
from ._fit import final_statistics
from ._flat import FlatParams, IterationLog, finite_objective
from ._loss import check_l2
from ._result import FitResult, divergence_error, positive_int
from ._hvp import _HVP_LOSSES, value_grad_hvp

__all__ = ["fit_newton", "NEWTON_METHODS"]

#: SciPy methods that use a Hessian-vector product (``hessp``).
NEWTON_METHODS = ("trust-ncg", "trust-krylov", "newton-cg")


def fit_newton(net, params, state, x, y, *, loss="mse", l2: float = 0.0,
               method: str = "trust-ncg", max_iter: int = 100, tol: float = 1e-8,
               callback: Callable | None = None, population_stats: bool = True,
               sample_weight=None) -> FitResult:
    """Full-batch training by a Newton-type method with exact Hessian-vector products.

    The sibling of :func:`fit_lbfgs`: θ is flattened into one float64 vector and
    :func:`scipy.optimize.minimize` gets ``(R(θ), ∇R(θ))`` and ``hessp(θ, v) = H v``
    from :func:`bnmat.hvp` (batch norm in training mode on the full batch, so R
    is a deterministic function of θ). ``"trust-ncg"`` (Steihaug's truncated
    conjugate gradient in a trust region) and ``"trust-krylov"`` cope with the
    indefinite Hessians of networks; ``"newton-cg"`` (line search) needs a
    positive definite one near the path and may stall where it is not.

    Parameters
    ----------
    net, params, state, x, y
        As in :func:`fit_lbfgs`; ``net`` is a Sequential that :func:`bnmat.hvp`
        supports.
    loss : {"sse", "mse", "softmax_cross_entropy"}, default "mse"
    l2 : float, default 0
    method : {"trust-ncg", "trust-krylov", "newton-cg"}, default "trust-ncg"
    max_iter : int, default 100
    tol : float, default 1e-8
        Passed to ``minimize(tol=...)`` (the gradient-norm tolerance of the
        trust-region methods).
    callback : callable, optional
        ``callback(iteration, logs)`` with ``logs`` ``{"loss", "val_loss": None,
        "params", "state"}``; returning True stops.
    population_stats : bool, default True
        Set the batch norms' stored statistics to the exact statistics of ``x``.
    sample_weight : array_like, shape (N,), optional
        Frequency weights, as in :func:`bnmat.value_and_grad`.

    Returns
    -------
    FitResult
        ``history["epoch"]`` counts iterations.
    """
    from scipy.optimize import minimize

    if method not in NEWTON_METHODS:
        raise ValueError(f"method must be one of {NEWTON_METHODS}; got {method!r}")
    if not isinstance(loss, str) or loss not in _HVP_LOSSES:
        raise ValueError(f"fit_newton supports the losses {_HVP_LOSSES}; got {loss!r}")
    x, y = check_xy(x, y)
    max_iter = positive_int(max_iter, "max_iter")
    l2 = check_l2(l2)
    if sample_weight is not None:
        from ._weighted import check_sample_weight
        sample_weight = check_sample_weight(sample_weight, x.shape[0])
    flat = FlatParams(params)
    unflatten, flatten = flat.unflatten, flat.flatten
    zero_direction = unflatten(np.zeros(flat.size))

    def evaluate(theta):
        value, grads, _ = value_grad_hvp(net, unflatten(theta), state, x, y, zero_direction,
                                         loss=loss, l2=l2, sample_weight=sample_weight)
        return value, flatten(grads)

    objective = finite_objective(evaluate)

    def hessp(theta, direction):
        _, _, hv = value_grad_hvp(net, unflatten(theta), state, x, y, unflatten(direction),
                                  loss=loss, l2=l2, sample_weight=sample_weight)
        return flatten(hv)

    on_iteration = IterationLog(flat, state, callback)
    history = on_iteration.history

    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        result = minimize(objective, flatten(params), jac=True, hessp=hessp, method=method,
                          tol=tol, callback=on_iteration, options={"maxiter": max_iter})
    if not np.all(np.isfinite(result.x)):
        raise divergence_error(len(history["epoch"]) + 1, params, state, history)
    new_params = unflatten(result.x)
    if population_stats:
        state = final_statistics(net, new_params, state, x, None, None,
                                 len(history["epoch"]) + 1, history, (params, state),
                                 sample_weight=sample_weight)
    return FitResult(new_params, state, history, len(history["epoch"]), on_iteration.stopped)
