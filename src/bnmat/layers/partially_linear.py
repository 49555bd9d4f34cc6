"""Builder for partially linear models ``ŷ = X_lin b + f(X_nn)``."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .activations import Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from .additive import Additive
from .batchnorm import BatchNorm
from .dense import Dense
from .group_batchnorm import GroupBatchNorm
from .linear import Linear
from .sequential import Sequential

__all__ = ["partially_linear"]

# scikit-learn's activation names -> (layer class, weight initialisation)
_ACTIVATIONS = {
    "relu": (ReLU, "he"), "leaky_relu": (LeakyReLU, "he"), "softplus": (Softplus, "he"),
    "tanh": (Tanh, "glorot"), "logistic": (Sigmoid, "glorot"), "identity": (Identity, "glorot"),
}


def _columns(columns, what):
    if columns is None:
        return ()
    if isinstance(columns, slice):
        return columns
    arr = np.asarray(columns)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what} must be a list of integer column indices or a slice; "
                         f"got {columns!r}")
    return tuple(int(c) for c in arr)


def partially_linear(linear_columns, network_columns, hidden: Sequence[int] = (32,),
                     activation: str = "relu", *, outputs: int = 1, intercept: bool = False,
                     output_bias: bool = True, eps: float = 1e-5, ddof: int = 0,
                     decay: float = 0.9, group_batchnorm: bool = False,
                     ghost: int | None = None) -> Additive:
    """The partially linear network ``ŷ = X_lin b + f(X_nn)`` as an :class:`Additive`.

    ::

        X_lin b            Linear(outputs, intercept)             on linear_columns
        f(X_nn)            [Dense(h, no bias) → BN → a] per width → Dense(outputs)
                                                                   on network_columns

    The linear coefficients b are ``params[0]["coef"]`` (shape
    (len(linear_columns), outputs)); they start at zero and are not penalized
    by ``l2`` (see :class:`Linear`). The network's batch norms are
    :class:`BatchNorm`, or :class:`GroupBatchNorm` with ``group_batchnorm=True``
    (statistics per group of rows; train with ``groups=``) or ``ghost=k``.

    Parameters
    ----------
    linear_columns : list of int, slice or None
        Columns of X entering linearly; empty or None: no linear part.
    network_columns : list of int, slice or None
        Columns entering f; empty or None: no network (f ≡ 0, the linear
        model). A column may appear in both lists.
    hidden : sequence of int, default (32,)
        Widths of f's hidden layers; ``()`` makes f linear.
    activation : {"relu", "tanh", "logistic", "identity", "leaky_relu", "softplus"}
    outputs : int, default 1
    intercept : bool, default False
        An intercept in the linear part (useful only without a network; under
        fixed effects no intercept is identified).
    output_bias : bool, default True
        A bias in f's output layer.
    eps, ddof, decay
        Batch-norm hyperparameters.
    group_batchnorm : bool, default False
    ghost : int, optional
        Ghost batch norm with chunks of ``ghost`` rows (excludes ``group_batchnorm``).

    Returns
    -------
    Additive
        Branches in the order (linear, network), each present only when its
        column list is non-empty.

    Examples
    --------
    >>> import bnmat
    >>> net = bnmat.layers.partially_linear([0, 1], [2, 3, 4], hidden=(16,))
    >>> [type(m).__name__ for _, m in net.branches]
    ['Linear', 'Sequential']
    """
    lin = _columns(linear_columns, "linear_columns")
    nn = _columns(network_columns, "network_columns")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}; got {activation!r}")
    if group_batchnorm and ghost is not None:
        raise ValueError("use either group_batchnorm=True or ghost=k, not both")
    try:
        widths = tuple(int(h) for h in hidden)
    except TypeError:
        raise ValueError(f"hidden must be a sequence of positive integers; got {hidden!r}") \
            from None
    if any(h < 1 for h in widths):
        raise ValueError(f"hidden must be a sequence of positive integers; got {hidden!r}")
    branches = []
    if lin != ():
        branches.append((lin, Linear(outputs, intercept=intercept)))
    if nn != ():
        act, init = _ACTIVATIONS[activation]
        layers = []
        for h in widths:
            if group_batchnorm or ghost is not None:
                norm = GroupBatchNorm(eps=eps, ddof=ddof, decay=decay, ghost=ghost)
            else:
                norm = BatchNorm(eps=eps, ddof=ddof, decay=decay)
            layers += [Dense(h, bias=False, init=init), norm, act()]
        layers.append(Dense(outputs, bias=output_bias, init="glorot"))
        branches.append((nn, Sequential(layers)))
    if not branches:
        raise ValueError("partially_linear needs linear_columns or network_columns (or both)")
    return Additive(branches)
