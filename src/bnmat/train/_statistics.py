"""Exact full-data statistics for every batch norm of a network."""

from __future__ import annotations

from ..layers._network import population_forward
from ..layers._network import uses_groups
from ._data import check_batch_size, check_x, row_chunks, take_rows
from ._groups import as_factors

__all__ = ["population_statistics"]


def population_statistics(net, params, state, x, *, batch_size=None, groups=None,
                          reducer=None):
    """Replace every batch norm's stored statistics by exact full-data statistics.

    Runs the network in training mode on all rows of ``x``, layer by layer, and
    stores in each :class:`~bnmat.BatchNorm` the mean and the variance (with the
    layer's ddof) of its input on the full data. After full-batch training,
    ``net.predict(params, new_state, x)`` then reproduces the training-mode
    output on ``x`` (up to rounding), unlike moving averages, which lag behind
    the parameters.

    Parameters
    ----------
    net : Sequential, Additive or any layer
    params, state : list
    x : array, shape (N, p)
        N ≥ 2 (batch norm statistics need two rows; ddof=1 as well).
    batch_size : int, optional
        Process the rows in chunks of this size and merge each layer's chunk
        statistics with count weights (exact up to rounding; for data too
        large for one pass). None: one pass over all rows.
    groups : array_like, optional
        Group labels of the rows, as in :func:`bnmat.value_and_grad`; each
        :class:`~bnmat.layers.GroupBatchNorm` gets the first factor and stores
        the exact statistics of every group in ``x`` (and the pooled ones).
    reducer : bnmat.distributed reducer, optional
        ``x`` is this rank's rows (possibly none); the statistics are those of
        all ranks' rows, identical on every rank (see :mod:`bnmat.distributed`).

    Returns
    -------
    new_state : list
        ``state`` with ``mean`` and ``var`` replaced in every batch norm (its
        ``count`` kept); ``state`` itself is not modified.
    """
    if reducer is not None:
        from ._distributed import distributed_population_statistics, is_distributed
        if is_distributed(reducer):
            return distributed_population_statistics(
                net, params, state, x, batch_size=check_batch_size(batch_size), groups=groups,
                reducer=reducer)
    x = check_x(x)
    batch_size = check_batch_size(batch_size)
    chunks = row_chunks(x.shape[0], batch_size)
    xs = [take_rows(x, idx) for idx in chunks]
    factors = as_factors(groups, x.shape[0])
    labels = None
    if factors is not None and uses_groups(net):
        labels = [factors[0] if idx is None else factors[0][idx] for idx in chunks]
    _, new_state = population_forward(net, params, state, xs, labels)
    return new_state
