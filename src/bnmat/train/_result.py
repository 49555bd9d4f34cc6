"""What a fit returns, how it reports progress, and divergence as an error.

Shared by :func:`bnmat.fit` and the other training loops (L-BFGS, Newton, the
distributed loops), so that none of those imports another.
"""

from __future__ import annotations

import re
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

from .._array_api import get_namespace
from .._tree import tree_leaves

__all__ = ["FitResult", "DivergenceError", "StallWarning", "divergence_error",
           "is_nonfinite_error"]


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
    # The op's advice to rescale the data is wrong here: the data were finite
    # and usable, the parameters made the layer's input overflow.
    cause = re.sub(r";\s*rescale[^;]*$", "", str(cause).rstrip(".")) if cause else ""
    where = f" ({cause})" if cause else ""
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
