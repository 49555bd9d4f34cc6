"""The multilayer perceptron that the estimators and the command line build.

Shared by :mod:`bnmat.estimators` (which needs scikit-learn) and
:mod:`bnmat.cli` (which must not), so it depends on NumPy and bnmat only.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from . import BatchNorm, Dense, Identity, LeakyReLU, ReLU, Sequential, Sigmoid, Softplus, Tanh
from ..ops.batchnorm import column_moments

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

    Both directions are computed in float64 after dividing by a power of two
    per column, ``c = 2^⌊log₂ max(|mean|, scale)⌋``: that division is exact, so
    the result is the same number, but ``x − mean`` cannot overflow for data
    near the largest float (1e308). A result that still overflows (new rows
    far outside the training range) is a ``ValueError``, never ±inf or NaN.
    """

    mean: np.ndarray
    scale: np.ndarray

    def _pow2(self) -> np.ndarray:
        level = np.maximum(np.abs(self.mean), self.scale)
        return np.exp2(np.floor(np.log2(np.where(level > 0, level, 1.0))))

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(x − mean) / scale`` in x's floating dtype; x, shape (N, p), is not modified.

        Raises
        ------
        ValueError
            When a standardized value overflows x's dtype.
        """
        x = np.asarray(x)
        dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float64
        c = self._pow2()
        with np.errstate(over="ignore", invalid="ignore"):
            z = x / c                      # float64, a new array: updated in place
            z -= self.mean / c
            z /= self.scale / c
            z = z.astype(dtype, copy=False)
        _check_overflow(z, "standardizing the columns", "far outside the range of the "
                        "training data")
        return z

    def invert(self, z: np.ndarray, dtype=np.float64) -> np.ndarray:
        """``z · scale + mean``, the inverse of :meth:`apply`, in ``dtype``.

        Parameters
        ----------
        z : ndarray, shape (N, p)
        dtype : numpy dtype, default float64
            Of the result. float64 by default also for float32 ``z``: a target
            with a large mean and a small spread (``1e8 + N(0, 1)``) cannot be
            written in float32, whatever the precision of the network.

        Raises
        ------
        ValueError
            When a value overflows ``dtype``.
        """
        c = self._pow2()
        with np.errstate(over="ignore", invalid="ignore"):
            out = ((np.asarray(z, dtype=np.float64) * (self.scale / c) + self.mean / c) * c)
            out = out.astype(dtype, copy=False)
        _check_overflow(out, "transforming the predictions back to the scale of y",
                        "outside the range of the dtype")
        return out


def _check_overflow(a: np.ndarray, what: str, why: str) -> None:
    if a.size and not np.all(np.isfinite(a)):
        raise ValueError(f"{what} overflows {a.dtype}: a value is {why}")


def fit_scaling(x: np.ndarray, sample_weight=None) -> Scaling:
    """Means and standard deviations of the columns of ``x``, shape (N, p).

    Computed by the corrected two-pass algorithm in float64
    (:func:`bnmat.ops.batchnorm.column_moments`), so large means with small
    spreads are standardized correctly also for float32 data, on each column
    divided by a power of two near its largest absolute value (exact), so that
    squares neither overflow (values near 1e160 and beyond) nor underflow
    (spreads near 1e-160 and below).

    A column is constant, and gets scale 1, only when all its values are
    equal: there is no absolute floor, so a column with a tiny spread (sd 1e-7
    in float32, 1e-16 around 0 in float64) is scaled like any other.

    With ``sample_weight`` (N,), the weighted (frequency-weight) mean and
    standard deviation, so that integer weights equal repeated rows.

    Returns
    -------
    Scaling
        ``mean`` and ``scale`` of shape (p,), float64.
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array (N, p); got shape {x.shape}")
    x64 = x.astype(np.float64, copy=False)
    if x64.shape[0] == 0:
        raise ValueError("cannot standardize 0 rows")
    big = np.max(np.abs(x64), axis=0)
    if not np.all(np.isfinite(big)):
        raise ValueError("cannot standardize a column with NaN or infinity")
    c = np.exp2(np.floor(np.log2(np.where(big > 0, big, 1.0))))
    if sample_weight is not None:
        from ..ops.batchnorm_weighted import weighted_column_moments
        mean, var, _ = weighted_column_moments(x64 / c, np.asarray(sample_weight))
    else:
        mean, var = column_moments(x64 / c, ddof=0)[:2]
    mean = np.asarray(mean, dtype=np.float64) * c
    scale = np.sqrt(np.asarray(var, dtype=np.float64)) * c
    constant = np.max(x64, axis=0) == np.min(x64, axis=0)
    scale = np.where(constant | ~(scale > 0), 1.0, scale)
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


def batch_rows(batch_size, n: int, *, stacklevel: int = 2) -> int:
    """Rows per mini-batch for an estimator's ``batch_size`` ("auto" or an int) on n rows.

    An integer larger than n is clipped to n with a ``UserWarning`` (as
    scikit-learn's MLP does); ``stacklevel`` is counted from the caller.
    """
    import warnings

    batch = auto_batch_size(n) if batch_size == "auto" else int(batch_size)
    if batch > n:
        warnings.warn(f"batch_size={batch} is larger than the {n} training samples; it is "
                      "clipped to the sample size", UserWarning, stacklevel=stacklevel + 1)
        batch = n
    return batch
