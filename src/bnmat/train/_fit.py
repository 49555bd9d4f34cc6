"""First-order training: mini-batches, validation, early stopping, progress."""

from __future__ import annotations

import math
import re
import sys
import warnings
from typing import Any, Callable, NamedTuple

import numpy as np

from .._array_api import get_namespace
from ..layers._tree import tree_leaves
from ..ops.group_batchnorm_inference import UnseenGroupWarning
from ..optim import Optimizer, adam
from ._data import check_batch_size, check_xy, row_chunks, take_rows
from ._grad import check_l2, resolve_loss, loss_value, value_and_grad
from ._groups import as_factors, for_loss, group_batches, group_holdout, take_factors
from ._statistics import population_statistics

__all__ = ["fit", "FitResult", "DivergenceError", "StallWarning"]

_DROP_LAST = ("merge", "drop", "keep")


class FitResult(NamedTuple):
    """What :func:`fit` and :func:`fit_lbfgs` return.

    Attributes
    ----------
    params, state : list
        The trained parameters and the state (with population statistics,
        unless ``population_stats=False``).
    history : dict of lists
        ``"epoch"`` (1, 2, …; L-BFGS iterations for :func:`fit_lbfgs`),
        ``"loss"`` (training objective, penalty included) and ``"val_loss"``
        (validation loss, one per epoch; empty without validation data).
    best_epoch : int
        Epoch with the lowest monitored loss (validation loss when there is
        validation data, else training loss); its parameters are the ones
        returned when early stopping was on.
    stopped_early : bool
        True when training ended before ``epochs`` because of early stopping
        or the callback.
    """

    params: Any
    state: Any
    history: dict
    best_epoch: int
    stopped_early: bool


class StallWarning(UserWarning):
    """Training stopped on a stalled training loss that was still falling in every epoch.

    Early stopping without validation data stops when the loss has not
    improved by ``tol`` for ``patience`` epochs. If the loss nevertheless
    fell in each of those epochs, the optimizer was moving slowly, not
    converged (typically too few steps per epoch or too small a learning
    rate): the result may be far from a minimum.
    """


class DivergenceError(ValueError):
    """Training produced a non-finite loss or non-finite parameters.

    Attributes
    ----------
    epoch : int
        The (1-based) epoch in which it happened.
    params, state : list
        The last finite parameters and state (before the failing step).
    history : dict
        The history up to the previous epoch.
    """

    def __init__(self, message, *, epoch, params, state, history):
        super().__init__(message)
        self.epoch = epoch
        self.params = params
        self.state = state
        self.history = history


# ----------------------------------------------------------------- progress
def _tqdm():
    """tqdm's class when installed, else None."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.6g}"


class _Progress:
    """A tqdm bar over epochs, else a plain line per epoch on stderr; or nothing."""

    def __init__(self, total: int, enabled: bool, desc: str = "fit"):
        self.total, self.enabled, self.bar = total, enabled, None
        if enabled:
            tqdm = _tqdm()
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit="epoch", file=sys.stderr,
                                leave=True, dynamic_ncols=True)

    def update(self, epoch: int, loss: float, val_loss):
        if not self.enabled:
            return
        if self.bar is not None:
            post = {"loss": _fmt(loss)}
            if val_loss is not None:
                post["val_loss"] = _fmt(val_loss)
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        else:
            line = f"epoch {epoch}/{self.total}  loss {_fmt(loss)}"
            if val_loss is not None:
                line += f"  val_loss {_fmt(val_loss)}"
            print(line, file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# ----------------------------------------------------------------- fit
def _warn_if_still_falling(losses, patience, tol, epoch) -> None:
    """A :class:`StallWarning` when each of the last ``patience`` epochs lowered the loss."""
    window = np.asarray(losses[-(patience + 1):], dtype=np.float64)
    if window.size == patience + 1 and np.all(np.diff(window) < 0):
        drop = float(window[0] - window[-1])
        warnings.warn(
            f"training stopped at epoch {epoch} because the training loss improved by less "
            f"than tol={tol:g} per epoch for {patience} epochs, but it fell in every one of "
            f"them (by {drop:.3g} in all): it was still descending slowly and may be far from "
            "a minimum. Use more steps per epoch (a smaller batch), a larger learning rate, a "
            "smaller tol, or full-batch L-BFGS", StallWarning, stacklevel=3)


def _all_finite(tree) -> bool:
    for leaf in tree_leaves(tree):
        xp = get_namespace(leaf)
        if not bool(xp.all(xp.isfinite(leaf))):
            return False
    return True


def is_nonfinite_error(exc: Exception) -> bool:
    # The ops' messages for NaN/infinity in an input or in the loss; the data were
    # checked to be finite before training, so during training these mean divergence.
    msg = str(exc).lower()
    return bool(re.search(r"\bnan\b|infinity|finite|overflow|unusable", msg))


def divergence_error(epoch, params, state, history, cause=None):
    where = f" ({str(cause).rstrip('.')})" if cause else ""
    return DivergenceError(
        f"training diverged at epoch {epoch}: the loss or the parameters became "
        f"non-finite{where}. Lower the learning rate or standardize the data; the last "
        "finite parameters and state are in this error's .params and .state.",
        epoch=epoch, params=params, state=state, history=history,
    )


def positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer; got {value!r}")
    return int(value)


def fit(net, params, state, x, y, *, loss="mse", optimizer: Optimizer | None = None,
        epochs: int = 100, batch_size: int | None = None, l2: float = 0.0,
        validation_data=None, validation_fraction: float = 0.0,
        early_stopping: bool = False, patience: int = 10, tol: float = 1e-4,
        seed=0, shuffle: bool = True, callback: Callable | None = None,
        progress: bool = True, drop_last: str = "merge",
        population_stats: bool = True, groups=None) -> FitResult:
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
    x, y = check_xy(x, y)
    epochs = positive_int(epochs, "epochs")
    patience = positive_int(patience, "patience")
    batch_size = check_batch_size(batch_size)
    l2 = check_l2(l2)
    if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0; got {tol!r}")
    if drop_last not in _DROP_LAST:
        raise ValueError(f"drop_last must be one of {_DROP_LAST}; got {drop_last!r}")
    if not (isinstance(validation_fraction, (int, float)) and 0 <= validation_fraction < 1):
        raise ValueError(f"validation_fraction must lie in [0, 1); got {validation_fraction!r}")
    factors = as_factors(groups, x.shape[0])
    resolve_loss(loss, for_loss(factors))
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
    has_val = x_val is not None

    n = x.shape[0]
    opt_state = optimizer.init(params)
    history = {"epoch": [], "loss": [], "val_loss": []}
    best, best_epoch, best_params, best_state = math.inf, 0, params, state
    wait, stopped_early = 0, False
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
                    try:
                        value, grads, new_state = value_and_grad(
                            net, params, state, xb, yb, loss, l2=l2,
                            groups=take_factors(factors, idx))
                    except ValueError as exc:
                        if is_nonfinite_error(exc):
                            raise divergence_error(epoch, params, state, history, exc) from exc
                        raise
                    new_params, opt_state = optimizer.update(grads, opt_state, params)
                    if not (math.isfinite(value) and _all_finite(new_params)):
                        raise divergence_error(epoch, params, state, history)
                    params, state = new_params, new_state
                    m = xb.shape[0]
                    total, rows = total + value * m, rows + m
                epoch_loss = total / rows
                val_loss = None
                if has_val:
                    try:
                        with warnings.catch_warnings():
                            # Held-out groups are the same every epoch: say so once.
                            if epoch > 1:
                                warnings.simplefilter("ignore", UnseenGroupWarning)
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
        state = population_statistics(net, params, state, x, batch_size=batch_size,
                                      groups=factors)
    return FitResult(params, state, history, best_epoch, stopped_early)
