"""First-order training: mini-batches, validation, early stopping, progress."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Callable

import numpy as np

from ..ops.group_batchnorm_inference import quiet_unseen_groups
from ..optim import Optimizer, adam
from ._data import check_batch_size, check_xy, row_chunks, take_rows
from ._fast import fast_step
from ._grad import check_l2, resolve_loss, loss_value, value_and_grad
from ._groups import as_factors, for_loss, group_batches, group_holdout, take_factors
from ._result import (DivergenceError, FitResult, StallWarning, _all_finite, _Progress,
                      _warn_if_still_falling, divergence_error, is_nonfinite_error,
                      positive_int)
from ._statistics import population_statistics

__all__ = ["fit", "FitResult", "DivergenceError", "StallWarning"]

_DROP_LAST = ("merge", "drop", "keep")


def _is_distributed(reducer) -> bool:
    from ._distributed import is_distributed

    return is_distributed(reducer)


def fit(net, params, state, x, y, *, loss="mse", optimizer: Optimizer | None = None,
        epochs: int = 100, batch_size: int | None = None, l2: float = 0.0,
        validation_data=None, validation_fraction: float = 0.0,
        early_stopping: bool = False, patience: int = 10, tol: float = 1e-4,
        seed=0, shuffle: bool = True, callback: Callable | None = None,
        progress: bool = True, drop_last: str = "merge",
        population_stats: bool = True, groups=None, reducer=None,
        sample_weight=None, validation_batch_size: int | None = None) -> FitResult:
    """Train a network with a first-order optimizer, in full or mini-batches.

    Each epoch visits the training rows once, in mini-batches drawn from a
    NumPy generator seeded with ``seed`` (so two runs with the same seed are
    bitwise equal); every batch gives one training-mode gradient step. After
    the last epoch the batch norms' stored statistics are set to the exact
    statistics of the training data (:func:`population_statistics`), so that
    after full-batch training ``net.predict`` on the training rows reproduces
    the training-mode output.

    Parameters
    ----------
    net : Sequential, Additive or any layer
    params, state : list
        Starting values, from ``net.init``; not modified.
    x : array, shape (N, p)
    y : array, shape (N,) or (N, k)
    loss : str or (forward, backward), default "mse"
        As in :func:`value_and_grad`.
    optimizer : Optimizer, default ``adam(1e-3)``
    epochs : int, default 100
    batch_size : int, optional
        Rows per mini-batch; None (or ≥ N) is full batch, without shuffling.
    l2 : float, default 0
        Adds ``½ l2 Σ‖W‖²`` over the Dense weights to the objective.
    validation_data : (x_val, y_val) or (x_val, y_val, groups_val), optional
        With ``groups``, the validation rows need their labels too (for the
        within losses and the layers that read labels).
    validation_fraction : float in [0, 1), default 0
        Without ``validation_data``, hold out ``ceil(fraction · N)`` rows
        chosen by the seeded generator; with ``groups``, hold out
        ``ceil(fraction · G)`` whole groups of the first factor instead (their
        rows in :class:`~bnmat.layers.GroupBatchNorm` then use the pooled
        statistics; the :class:`~bnmat.ops.UnseenGroupWarning` is issued in
        the first epoch only).
    early_stopping : bool, default False
        Stop when the monitored loss (validation loss if there is validation
        data, else the training loss) has not fallen below ``best − tol`` for
        ``patience`` epochs in a row, and return the parameters of the best
        epoch.
    patience : int, default 10
    tol : float, default 1e-4
    seed : int or numpy.random.Generator, default 0
    shuffle : bool, default True
        Reshuffle the rows every epoch (mini-batches only).
    callback : callable, optional
        ``callback(epoch, logs)`` after every epoch, with ``logs`` a dict of
        ``"loss"``, ``"val_loss"`` (None without validation), ``"params"`` and
        ``"state"``. Returning True stops training.
    progress : bool, default True
        A tqdm progress bar (epochs, loss, validation loss) when tqdm is
        installed, else one line per epoch on stderr. False prints nothing.
    drop_last : {"merge", "drop", "keep"}, default "merge"
        What to do with a trailing mini-batch shorter than ``batch_size``:
        "merge" appends it to the previous batch when it has a single row
        (batch statistics need two rows) and keeps it otherwise; "drop" drops
        it; "keep" keeps it (a 1-row batch then fails in batch norm).
    population_stats : bool, default True
        Set exact population statistics at the end (see above); False keeps
        the moving averages.
    groups : array_like, optional
        Group labels of the rows, as in :func:`value_and_grad`: one (N,)
        array, or several factors such as ``(unit, period)``. Mini-batches are
        then made of **whole groups** of the first factor (shuffled groups are
        added to a batch until it has at least ``batch_size`` rows), so that
        per-group statistics (:class:`~bnmat.layers.GroupBatchNorm`, the
        within losses) are those of complete groups. A group too small for its
        statistics (fewer than ``max(2, ddof + 1)`` rows in a
        :class:`~bnmat.layers.GroupBatchNorm`) is an error, raised by the layer
        with the group's label; merge such groups or drop them first. Under a
        within loss a group of one row is allowed and contributes nothing
        (its own effect fits it exactly).
    reducer : bnmat.distributed reducer, optional
        Data-parallel training: ``x``, ``y`` (and ``groups``,
        ``validation_data``) are this rank's rows, rank r holding rows
        ``o_r … o_r + N_r − 1`` of the whole data in rank order. Each step uses
        the loss and gradients of the whole mini-batch (the same rows one
        process would draw with this ``seed``), all ranks take the same step
        (the parameters are checked to be identical after every step), and
        the result equals one process's on the concatenated data. The
        progress bar shows on rank 0 only; ``validation_fraction`` is not
        supported (pass ``validation_data``). See ``docs/scaling.md``.
    sample_weight : array_like, shape (N,), optional
        Frequency weights of the rows, as in :func:`value_and_grad` (weighted
        loss and weighted batch statistics in every mini-batch; the final
        population statistics are weighted too). A validation split by
        ``validation_fraction`` keeps its rows' weights and its loss is
        weighted; an explicit ``validation_data`` is unweighted. Not combined
        with ``groups``.
    validation_batch_size : int, optional
        Compute the validation loss a chunk of this many rows at a time (the
        row-weighted mean of the chunks' losses, exact for losses that are
        means over rows), so that a large validation set never has a
        whole-data activation matrix in memory. None: one pass. Not with
        ``groups``.

    Returns
    -------
    FitResult
        ``(params, state, history, best_epoch, stopped_early)``.
        ``history["loss"]`` is, per epoch, the mean of the mini-batch objectives
        before each step, weighted by rows (for full batch: the objective at the
        epoch's start).

    Raises
    ------
    DivergenceError
        (a ValueError) when the loss or the parameters become non-finite; it
        names the epoch, and its ``.params`` and ``.state`` hold the last finite
        values.
    ValueError
        Bad input (NaN, wrong shapes, a batch of one row in training mode, …).
    """
    distributed = reducer is not None and _is_distributed(reducer)
    if not distributed:
        x, y = check_xy(x, y)
    epochs = positive_int(epochs, "epochs")
    patience = positive_int(patience, "patience")
    batch_size = check_batch_size(batch_size)
    if validation_batch_size is not None:
        validation_batch_size = positive_int(validation_batch_size, "validation_batch_size")
    l2 = check_l2(l2)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0; got {tol!r}")
    if drop_last not in _DROP_LAST:
        raise ValueError(f"drop_last must be one of {_DROP_LAST}; got {drop_last!r}")
    if not (isinstance(validation_fraction, (int, float)) and 0 <= validation_fraction < 1):
        raise ValueError(f"validation_fraction must lie in [0, 1); got {validation_fraction!r}")
    if distributed:
        from ._distributed_fit import distributed_fit

        if sample_weight is not None:
            raise ValueError("sample_weight cannot be combined with a distributed reducer")

        return distributed_fit(
            net, params, state, x, y, loss=loss, optimizer=optimizer, epochs=epochs,
            batch_size=batch_size, l2=l2, validation_data=validation_data,
            validation_fraction=validation_fraction, early_stopping=early_stopping,
            patience=patience, tol=tol, seed=seed, shuffle=shuffle, callback=callback,
            progress=progress, drop_last=drop_last, population_stats=population_stats,
            groups=groups, reducer=reducer)
    factors = as_factors(groups, x.shape[0])
    resolve_loss(loss, for_loss(factors))
    sw = w_val = None
    if sample_weight is not None:
        from ._weighted import check_sample_weight
        if factors is not None:
            raise ValueError("sample_weight and groups cannot be combined")
        sw = check_sample_weight(sample_weight, x.shape[0])
    optimizer = adam(1e-3) if optimizer is None else optimizer
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    x_val = y_val = g_val = None
    if validation_data is not None:
        if not (isinstance(validation_data, (tuple, list)) and len(validation_data) in (2, 3)):
            raise ValueError(
                "validation_data must be a pair (x_val, y_val) or a triple "
                "(x_val, y_val, groups_val)"
            )
        x_val, y_val = check_xy(*validation_data[:2], what="_val")
        if len(validation_data) == 3:
            g_val = as_factors(validation_data[2], x_val.shape[0])
        elif factors is not None:
            raise ValueError(
                "training with groups= needs the validation rows' labels as well: pass "
                "validation_data=(x_val, y_val, groups_val)"
            )
    elif validation_fraction > 0 and factors is not None:
        train_idx, val_idx = group_holdout(factors[0], validation_fraction, rng)
        x_val, y_val = take_rows(x, val_idx), take_rows(y, val_idx)
        g_val = take_factors(factors, val_idx)
        x, y = take_rows(x, train_idx), take_rows(y, train_idx)
        factors = take_factors(factors, train_idx)
    elif validation_fraction > 0:
        n_val = math.ceil(validation_fraction * x.shape[0])
        if n_val >= x.shape[0]:
            raise ValueError(
                f"validation_fraction={validation_fraction} leaves no training rows of "
                f"{x.shape[0]}"
            )
        order = rng.permutation(x.shape[0])
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        x_val, y_val = take_rows(x, val_idx), take_rows(y, val_idx)
        x, y = take_rows(x, train_idx), take_rows(y, train_idx)
        if sw is not None:
            w_val, sw = sw[val_idx], sw[train_idx]
    has_val = x_val is not None

    n = x.shape[0]
    # x, y and the network were checked above, once: plain NumPy networks then
    # train on the lean step (train/_fast.py), which hands any unusual batch
    # back to value_and_grad.
    fast = (None if sw is not None    # weighted batches take value_and_grad
            else fast_step(net, params, state, x, y, loss, optimizer, l2, factors))
    opt_state = optimizer.init(params) if fast is None else fast.init_optimizer(params)
    if fast is not None:
        params = fast.tree
    history = {"epoch": [], "loss": [], "val_loss": []}
    best, best_epoch, best_params, best_state = math.inf, 0, params, state
    wait, stopped_early = 0, False
    previous = (params, state)   # before the last step, for a divergence found at the end
    bar = _Progress(epochs, progress)
    try:
        # Overflow is detected below (non-finite loss or parameters): numpy's
        # warnings about it would only repeat the error.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for epoch in range(1, epochs + 1):
                if factors is not None:
                    batches = group_batches(factors[0], batch_size, rng, shuffle, drop_last)
                else:
                    order = (rng.permutation(n) if (shuffle and batch_size and batch_size < n)
                             else None)
                    batches = row_chunks(n, batch_size, order, drop_last)
                total, rows = 0.0, 0
                for idx in batches:
                    xb, yb = take_rows(x, idx), take_rows(y, idx)
                    value = None
                    if fast is not None:
                        value, new_params, new_state, new_opt = fast.step(
                            xb, yb, params, state, opt_state)
                    if value is None:
                        try:
                            value, grads, new_state = value_and_grad(
                                net, params, state, xb, yb, loss, l2=l2,
                                groups=take_factors(factors, idx),
                                sample_weight=None if sw is None else take_rows(sw, idx))
                        except ValueError as exc:
                            if is_nonfinite_error(exc):
                                raise divergence_error(epoch, params, state, history,
                                                       exc) from exc
                            raise
                        if fast is not None:
                            fast.grads_from_tree(grads)
                            grads = fast.grad
                            params = fast.theta
                        new_params, new_opt = optimizer.update(grads, opt_state, params)
                        if fast is not None:
                            params = fast.tree
                            fast.theta, fast.tree = new_params, fast.unflatten(new_params)
                            new_params = fast.tree
                    finite = fast.finite() if fast is not None else _all_finite(new_params)
                    if not (math.isfinite(value) and finite):
                        raise divergence_error(epoch, params, state, history)
                    previous = (params, state)
                    opt_state = new_opt
                    params, state = new_params, new_state
                    m = xb.shape[0]
                    total, rows = total + value * m, rows + m
                epoch_loss = total / rows
                val_loss = None
                if has_val:
                    try:
                        # Held-out groups are the same every epoch: say so once.
                        with quiet_unseen_groups() if epoch > 1 else nullcontext():
                            if w_val is not None:
                                val_loss = value_and_grad(net, params, state, x_val, y_val,
                                                          loss, training=False,
                                                          sample_weight=w_val)[0]
                            elif validation_batch_size and g_val is None:
                                val_loss = _chunked_loss(net, params, state, x_val, y_val,
                                                         loss, validation_batch_size)
                            else:
                                val_loss = loss_value(net, params, state, x_val, y_val, loss,
                                                      groups=g_val)
                    except ValueError as exc:
                        if is_nonfinite_error(exc):
                            raise divergence_error(epoch, params, state, history, exc) from exc
                        raise
                history["epoch"].append(epoch)
                history["loss"].append(epoch_loss)
                if has_val:
                    history["val_loss"].append(val_loss)
                bar.update(epoch, epoch_loss, val_loss)

                metric = val_loss if has_val else epoch_loss
                # scikit-learn's rule: no improvement unless below best − tol.
                wait = wait + 1 if metric > best - tol else 0
                if metric < best:
                    best, best_epoch, best_params, best_state = metric, epoch, params, state
                logs = {"loss": epoch_loss, "val_loss": val_loss, "params": params,
                        "state": state}
                if callback is not None and callback(epoch, logs) is True:
                    stopped_early = True
                    break
                if early_stopping and wait >= patience:
                    stopped_early = True
                    if not has_val:
                        _warn_if_still_falling(history["loss"], patience, tol, epoch)
                    break
    finally:
        bar.close()

    if early_stopping:
        params, state = best_params, best_state
    if population_stats:
        state = final_statistics(net, params, state, x, batch_size, factors,
                                 len(history["epoch"]), history, previous, sample_weight=sw)
    return FitResult(params, state, history, best_epoch, stopped_early)


def _chunked_loss(net, params, state, x, y, loss, rows: int) -> float:
    n = x.shape[0]
    total = 0.0
    for start in range(0, n, rows):
        idx = np.arange(start, min(start + rows, n))
        total += loss_value(net, params, state, take_rows(x, idx), take_rows(y, idx),
                            loss) * idx.shape[0]
    return total / n


def final_statistics(net, params, state, x, batch_size, factors, epoch, history, previous,
                     sample_weight=None):
    """:func:`population_statistics` at the end of training, with divergence named as such.

    The data were checked to be finite before training, so a non-finite
    statistic here means that the last step produced parameters whose output
    overflows (a huge learning rate): that is divergence in the last epoch,
    not a problem of the data. ``previous`` holds the parameters and state
    before that step. With ``sample_weight`` (N,), the weighted statistics.
    """
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            if sample_weight is not None:
                from ._weighted import as_weights_like, weighted_population_statistics
                return weighted_population_statistics(net, params, state, x,
                                                      as_weights_like(sample_weight, x))
            return population_statistics(net, params, state, x, batch_size=batch_size,
                                         groups=factors)
    except ValueError as exc:
        if is_nonfinite_error(exc):
            raise divergence_error(max(epoch, 1), *previous, history,
                                   "the network's output overflows with the final "
                                   "parameters") from exc
        raise
