"""Whole-network gradients, exact population statistics, and training loops.

* :func:`value_and_grad` — the loss of a network and its gradient with respect
  to every parameter, in training or inference mode.
* :func:`population_statistics` — replace every batch norm's running
  statistics by the exact statistics of the full data.
* :func:`fit` — first-order training (Adam, SGD, …) in full or mini-batches,
  with a validation split, early stopping, a callback, a history and a
  progress bar.
* :func:`fit_lbfgs` — full-batch L-BFGS-B through :func:`scipy.optimize.minimize`
  with exact gradients (with batch norm on the full batch the objective is a
  deterministic function of the parameters).

All four take ``groups=``: the group labels of the rows (one array, or several
factors such as ``(unit, period)``). Layers that read labels
(:class:`~bnmat.layers.GroupBatchNorm`) get the first factor, the within losses
``"within_sse"`` and ``"within_mse"`` project out all factors, and
mini-batches are made of whole groups of the first factor.
"""

from ._fit import DivergenceError, FitResult, StallWarning, fit
from ._grad import WITHIN_LOSSES, l2_penalty, loss_value, train_step, value_and_grad
from ._hvp import hvp, value_grad_hvp
from ._lbfgs import fit_lbfgs
from ._newton import NEWTON_METHODS, fit_newton
from ._statistics import population_statistics

__all__ = [
    "value_and_grad",
    "loss_value",
    "l2_penalty",
    "train_step",
    "population_statistics",
    "fit",
    "fit_lbfgs",
    "hvp",
    "fit_newton",
    "NEWTON_METHODS",
    "value_grad_hvp",
    "FitResult",
    "DivergenceError",
    "StallWarning",
    "WITHIN_LOSSES",
]
