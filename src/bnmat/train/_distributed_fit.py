"""Training loops with rows spread over ranks: :func:`bnmat.fit` and :func:`bnmat.fit_lbfgs`
with a reducer (see :mod:`bnmat.train._distributed` for what is reduced and why)."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ._data import row_chunks, take_rows
from ._distributed import (_check_loss, _preflight, check_identical,
                           distributed_loss_value, distributed_population_statistics,
                           distributed_value_and_grad)
from ._groups import as_factors, group_batches, take_factors
from ._flat import FlatParams, IterationLog, finite_objective

__all__ = ["distributed_fit", "distributed_fit_lbfgs"]


def _global_labels(reducer, factors):
    """The first factor of all ranks' rows, concatenated in rank order."""
    parts = reducer.allgather(None if factors is None else np.asarray(factors[0]))
    if any(p is None for p in parts):
        if all(p is None for p in parts):
            return None
        raise ValueError("groups= was given on some ranks and not on others")
    return np.concatenate(parts)


def _local_rows(idx, lo, hi):
    """This rank's rows (local indices) among the global row indices ``idx``, in order."""
    if idx is None:
        return None
    idx = np.asarray(idx)
    return idx[(idx >= lo) & (idx < hi)] - lo


def distributed_fit(net, params, state, x, y, *, loss, optimizer, epochs, batch_size, l2,
                    validation_data, validation_fraction, early_stopping, patience, tol, seed,
                    shuffle, callback, progress, drop_last, population_stats, groups,
                    reducer):
    """:func:`bnmat.fit` over the rows of all ranks (checked arguments; see the module docstring)."""
    from ..optim import adam
    from ._result import (FitResult, _Progress, _all_finite, divergence_error,
                          is_nonfinite_error)

    name = _check_loss(loss)
    if validation_fraction:
        raise ValueError(
            "validation_fraction is not supported with a reducer: hold out rows on each rank "
            "and pass them as validation_data=(x_val, y_val) (each rank its own)")
    x, y, counts = _preflight(reducer, x, y, params, None)
    rank = int(reducer.rank)
    lo = int(sum(counts[:rank]))
    hi = lo + counts[rank]
    n = int(sum(counts))
    factors = as_factors(groups, x.shape[0])
    if factors is not None and len(factors) > 1:
        factors = factors[:1]
    labels_all = _global_labels(reducer, factors)
    optimizer = adam(1e-3) if optimizer is None else optimizer
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    x_val = y_val = g_val = None
    n_val = 0
    if validation_data is not None:
        x_val, y_val, n_val_counts = _preflight(reducer, validation_data[0],
                                                validation_data[1], params, None)
        n_val = int(sum(n_val_counts))
        if len(validation_data) == 3:
            g_val = as_factors(validation_data[2], x_val.shape[0])

    opt_state = optimizer.init(params)
    history = {"epoch": [], "loss": [], "val_loss": []}
    best, best_epoch, best_params, best_state = math.inf, 0, params, state
    wait, stopped_early = 0, False
    bar = _Progress(epochs, progress and rank == 0)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for epoch in range(1, epochs + 1):
                if labels_all is not None:
                    batches = group_batches(labels_all, batch_size, rng, shuffle, drop_last)
                else:
                    order = (rng.permutation(n) if (shuffle and batch_size and batch_size < n)
                             else None)
                    batches = row_chunks(n, batch_size, order, drop_last)
                total, rows = 0.0, 0
                for idx in batches:
                    local = _local_rows(idx, lo, hi)
                    xb, yb = take_rows(x, local), take_rows(y, local)
                    m = n if idx is None else int(np.asarray(idx).shape[0])
                    try:
                        value, grads, new_state = distributed_value_and_grad(
                            net, params, state, xb, yb, name, l2=l2,
                            groups=take_factors(factors, local), reducer=reducer,
                            _counts=[m])
                    except ValueError as exc:
                        if is_nonfinite_error(exc):
                            raise divergence_error(epoch, params, state, history, exc) from exc
                        raise
                    new_params, opt_state = optimizer.update(grads, opt_state, params)
                    if not (math.isfinite(value) and _all_finite(new_params)):
                        raise divergence_error(epoch, params, state, history)
                    check_identical(reducer, new_params)
                    params, state = new_params, new_state
                    total, rows = total + value * m, rows + m
                epoch_loss = total / rows
                val_loss = None
                if x_val is not None:
                    with warnings.catch_warnings():
                        if epoch > 1:
                            warnings.simplefilter("ignore")
                        val_loss = distributed_loss_value(net, params, state, x_val, y_val,
                                                          name, groups=g_val, reducer=reducer,
                                                          n_total=n_val)
                history["epoch"].append(epoch)
                history["loss"].append(epoch_loss)
                if x_val is not None:
                    history["val_loss"].append(val_loss)
                bar.update(epoch, epoch_loss, val_loss)
                metric = val_loss if x_val is not None else epoch_loss
                wait = wait + 1 if metric > best - tol else 0
                if metric < best:
                    best, best_epoch, best_params, best_state = metric, epoch, params, state
                logs = {"loss": epoch_loss, "val_loss": val_loss, "params": params,
                        "state": state}
                stop = callback is not None and callback(epoch, logs) is True
                # the callback runs on every rank; stop when any rank's asks to
                if callback is not None:
                    stop = bool(reducer.allreduce_max(np.asarray([float(stop)]))[0])
                if stop or (early_stopping and wait >= patience):
                    stopped_early = True
                    break
    finally:
        bar.close()

    if early_stopping:
        params, state = best_params, best_state
    if population_stats:
        state = distributed_population_statistics(net, params, state, x,
                                                  batch_size=batch_size, groups=factors,
                                                  reducer=reducer)
    return FitResult(params, state, history, best_epoch, stopped_early)


def distributed_fit_lbfgs(net, params, state, x, y, *, loss, l2, max_iter, tol, callback,
                          population_stats, groups, reducer):
    """:func:`bnmat.fit_lbfgs` over the rows of all ranks.

    Every rank runs SciPy's L-BFGS-B on the same objective values and
    gradients (reduced over ranks), so every rank takes the same iterates;
    they are checked to be identical at every evaluation.
    """
    from scipy.optimize import minimize

    from ._result import FitResult, divergence_error

    name = _check_loss(loss)
    x, y, counts = _preflight(reducer, x, y, params, None)
    factors = as_factors(groups, x.shape[0])
    flat = FlatParams(params)
    unflatten, flatten = flat.unflatten, flat.flatten

    def evaluate(theta):
        p = unflatten(theta)
        check_identical(reducer, p)
        value, grads, _ = distributed_value_and_grad(
            net, p, state, x, y, name, l2=l2, groups=factors, reducer=reducer, _counts=counts)
        return value, flatten(grads)

    objective = finite_objective(evaluate)

    def agree(stop):           # every rank stops when any rank's callback says so
        return bool(reducer.allreduce_max(np.asarray([float(stop)]))[0])

    on_iteration = IterationLog(flat, state, callback, agree)
    history = on_iteration.history

    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        result = minimize(objective, flatten(params), jac=True, method="L-BFGS-B", tol=tol,
                          callback=on_iteration, options={"maxiter": max_iter})
    if not np.all(np.isfinite(result.x)):
        raise divergence_error(len(history["epoch"]) + 1, params, state, history)
    new_params = unflatten(result.x)
    check_identical(reducer, new_params)
    if population_stats:
        state = distributed_population_statistics(net, new_params, state, x, groups=factors,
                                                  reducer=reducer)
    return FitResult(new_params, state, history, len(history["epoch"]), on_iteration.stopped)
