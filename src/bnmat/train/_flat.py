"""Parameters as one float64 vector, for SciPy's optimizers (L-BFGS, Newton-CG, trust regions)."""

from __future__ import annotations

import math

import numpy as np
import array_api_compat

from .._array_api import get_namespace, is_numpy, to_numpy
from .._tree import tree_leaves, tree_unflatten
from ._result import is_nonfinite_error

__all__ = ["FlatParams", "finite_objective"]


class FlatParams:
    """The leaves of a parameter tree laid end to end as one float64 vector θ, and back.

    Parameters
    ----------
    params : list of dict of arrays
        The template: its structure, shapes, dtypes and array library are
        those :meth:`unflatten` gives back.
    """

    def __init__(self, params):
        self.params = params
        leaves = tree_leaves(params)
        self.xp = get_namespace(*leaves) if leaves else get_namespace(np.empty(0))
        self.host = [to_numpy(a) for a in leaves]
        self.offsets = np.cumsum([0] + [a.size for a in self.host])
        self.size = int(self.offsets[-1])

    def unflatten(self, theta):
        """θ, shape (P,), as a tree like ``params`` (each leaf in its own dtype and library)."""
        o = self.offsets
        parts = [theta[o[i]:o[i + 1]].reshape(a.shape).astype(a.dtype)
                 for i, a in enumerate(self.host)]
        if not is_numpy(self.xp):
            # each leaf back on its own device (a GPU's, not the default one)
            parts = [self.xp.asarray(a, device=array_api_compat.device(leaf))
                     for a, leaf in zip(parts, tree_leaves(self.params))]
        return tree_unflatten(self.params, parts)

    def flatten(self, tree) -> np.ndarray:
        """A tree like ``params`` as θ, float64, shape (P,)."""
        parts = [np.asarray(to_numpy(a), dtype=np.float64).ravel()
                 for a in tree_leaves(tree, like=self.params)]
        return np.concatenate(parts) if parts else np.zeros(0)


def finite_objective(value_and_flat_grad):
    """``θ ↦ (value, gradient)`` that reads divergence as +∞ instead of raising.

    SciPy's line searches back off from an infinite value, so a trial step that
    overflows (a non-finite loss, or the ops' error for NaN/infinity) shrinks
    the step rather than ending the fit; other errors propagate.
    """
    def objective(theta):
        try:
            value, grad = value_and_flat_grad(theta)
        except ValueError as exc:
            if is_nonfinite_error(exc):
                return math.inf, np.zeros_like(theta)
            raise
        if not math.isfinite(value):
            return math.inf, np.zeros_like(theta)
        return value, grad

    return objective


class IterationLog:
    """SciPy's per-iteration callback for the full-batch fits: the history and the user's callback.

    ``history`` has the keys of :class:`~bnmat.train.FitResult`'s (``"epoch"``
    counts iterations; no validation loss). The user's ``callback(iteration,
    logs)`` gets ``{"loss", "val_loss": None, "params", "state"}``; returning
    True stops the optimizer (by StopIteration, which SciPy honours) and sets
    :attr:`stopped`. ``agree(stop) -> bool`` lets several processes decide
    together (the distributed fit stops when any rank's callback says so).
    """

    def __init__(self, flat: FlatParams, state, callback=None, agree=None):
        self.flat, self.state, self.callback, self.agree = flat, state, callback, agree
        self.history = {"epoch": [], "loss": [], "val_loss": []}
        self.stopped = False

    def __call__(self, intermediate_result):
        it = len(self.history["epoch"]) + 1
        self.history["epoch"].append(it)
        self.history["loss"].append(float(intermediate_result.fun))
        if self.callback is None:
            return
        logs = {"loss": float(intermediate_result.fun), "val_loss": None,
                "params": self.flat.unflatten(intermediate_result.x), "state": self.state}
        stop = self.callback(it, logs) is True
        if self.agree is not None:
            stop = self.agree(stop)
        if stop:
            self.stopped = True
            raise StopIteration
