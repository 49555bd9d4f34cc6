"""The multilayer perceptron that the estimators and the command line build.

Shared by :mod:`bnmat.estimators` (which needs scikit-learn) and
:mod:`bnmat.cli` (which must not), so it depends on NumPy and bnmat only.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from .layers import BatchNorm, Dense, Identity, LeakyReLU, ReLU, Sequential, Sigmoid, Softplus, Tanh
from .ops.batchnorm import column_moments

__all__ = ["ACTIVATIONS", "Scaling", "build_mlp", "fit_scaling", "auto_solver", "auto_batch_size"]

#: Activation name (scikit-learn's where it has one) -> layer class.
ACTIVATIONS = {
    "relu": ReLU,
    "tanh": Tanh,
    "logistic": Sigmoid,
    "identity": Identity,
    "leaky_relu": LeakyReLU,
    "softplus": Softplus,
}

# He initialisation suits the ReLU family, Glorot the saturating activations.
_INIT = {"relu": "he", "leaky_relu": "he", "softplus": "he",
         "tanh": "glorot", "logistic": "glorot", "identity": "glorot"}


def build_mlp(hidden: Sequence[int], activation: str, n_outputs: int, *,
              eps: float = 1e-5, ddof: int = 0, decay: float = 0.9) -> Sequential:
    """The network ``[Dense(h, bias=False) → BatchNorm → activation] × depth → Dense(k)``.

    In matrix form, with ``H₀ = X``::

        Hₗ = a( BN(Hₗ₋₁ Γₗ) ),   ŷ = H_L W + 1 bᵀ

    The hidden dense layers have no bias: batch norm's β already shifts each
    column, and a bias before it gets exactly zero gradient.

    Parameters
    ----------
    hidden : sequence of int
        Widths of the hidden layers; empty gives the linear model ``X W + 1 bᵀ``.
    activation : str
        A key of :data:`ACTIVATIONS`.
    n_outputs : int
        Columns of ŷ (1 for one target, k for k classes or targets).
    eps, ddof, decay : float, int, float
        Passed to every :class:`~bnmat.layers.BatchNorm`.

    Returns
    -------
    Sequential
    """
    act = ACTIVATIONS[activation]
    init = _INIT[activation]
    layers = []
    for width in hidden:
        layers += [Dense(int(width), bias=False, init=init),
                   BatchNorm(eps=eps, ddof=ddof, decay=decay), act()]
    layers.append(Dense(int(n_outputs), bias=True, init="glorot"))
    return Sequential(layers)


class Scaling(NamedTuple):
    """Column centring and scaling ``(x − mean) / scale``.

    Attributes
    ----------
    mean : ndarray, shape (p,), float64
    scale : ndarray, shape (p,), float64
        Population standard deviations (ddof 0); 1 for a constant column, so it
        maps to 0 instead of dividing by zero.
    """

    mean: np.ndarray
    scale: np.ndarray

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(x − mean) / scale`` in x's floating dtype; x, shape (N, p), is not modified."""
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        return ((x - self.mean) / self.scale).astype(dtype, copy=False)

    def invert(self, z: np.ndarray) -> np.ndarray:
        """``z · scale + mean`` in z's dtype: the inverse of :meth:`apply`."""
        return (z * self.scale + self.mean).astype(z.dtype, copy=False)


def fit_scaling(x: np.ndarray) -> Scaling:
    """Means and standard deviations of the columns of ``x``, shape (N, p).

    Computed by the corrected two-pass algorithm, accumulated in float64
    (:func:`bnmat.ops.batchnorm.column_moments`), so large means with small
    spreads are standardized correctly also for float32 data.
    """
    moments = column_moments(np.asarray(x), ddof=0)
    mean = np.asarray(moments.mean, dtype=np.float64)
    scale = np.sqrt(np.asarray(moments.var, dtype=np.float64))
    # A column whose spread is rounding noise relative to its level is constant.
    tiny = 10 * np.finfo(np.asarray(x).dtype if np.issubdtype(np.asarray(x).dtype, np.floating)
                         else np.float64).eps * np.maximum(1.0, np.abs(mean))
    scale = np.where(scale <= tiny, 1.0, scale)
    return Scaling(mean=mean, scale=scale)


#: Rows up to which solver="auto" picks full-batch L-BFGS.
AUTO_LBFGS_ROWS = 10_000


def auto_solver(n: int) -> str:
    """The solver of ``solver="auto"`` for n training rows.

    Full-batch L-BFGS (exact gradients, deterministic objective) up to
    :data:`AUTO_LBFGS_ROWS` rows, where a full pass is cheap; Adam on
    mini-batches above.
    """
    return "lbfgs" if n <= AUTO_LBFGS_ROWS else "adam"


def auto_batch_size(n: int) -> int:
    """Rows per mini-batch of ``batch_size="auto"``: ``min(200, max(16, ⌈n/10⌉))``, at most n.

    An epoch of n ≥ 160 rows has at least ten steps, so a small data set is
    never trained by one step per epoch (which stalls "early stopping on the
    training loss" long before convergence).
    """
    return int(min(n, 200, max(16, -(-n // 10))))
