"""The estimators' ``fit(..., reducer=)``: each rank passes its own rows, all ranks get one model.

Under ``mpiexec -n K`` every rank calls ``fit`` with its shard of the rows and
the same reducer (:class:`bnmat.distributed.MPIReducer`, ...). What one process
computes from all rows is computed here from sums over ranks:

* the input checks run on every rank and any rank's error is raised on every
  rank (``"rank r: ..."``), so no rank is left waiting in a collective;
* the standardization of X (and of y) is :func:`bnmat.layers._mlp.fit_scaling`
  of all rows: the same power-of-two column divisor (from the global largest
  absolute value), the exact two-pass moments of
  :func:`bnmat.layers._sync.sync_moments`, and the same rule for a constant
  column (equal values on every rank);
* the classifier's ``classes_`` are the sorted labels of all ranks;
* the seeds drawn from ``random_state`` are rank 0's;
* N in ``solver="auto"``, ``batch_size="auto"`` and the penalty α/N is the
  number of rows on all ranks; training is :func:`bnmat.fit` and
  :func:`bnmat.fit_lbfgs` with the reducer.
"""

from __future__ import annotations

import numpy as np

from ..layers._sync_scaling import sync_scaling as global_scaling
from ..train._distributed import is_distributed

__all__ = ["estimator_reducer", "validate_on_every_rank", "global_rows", "global_scaling",
           "global_classes", "seeds_of_rank_zero"]


def estimator_reducer(estimator, reducer):
    """The reducer to train with: None for ``None`` or a reducer of one process.

    Raises
    ------
    TypeError
        ``reducer`` lacks the reducer interface.
    ValueError
        ``early_stopping=True`` with more than one process (the held-out rows
        are not split across ranks).
    """
    if not is_distributed(reducer):
        return None
    if estimator.early_stopping is not False and estimator.early_stopping is not np.False_:
        raise ValueError(
            f"{type(estimator).__name__}.fit(..., reducer=) with {reducer.size} processes "
            "does not hold out rows for early stopping (nor fit the linear fallback, which "
            "needs those rows); pass early_stopping=False (training stops on the training "
            "loss, after n_iter_no_change epochs without improvement by tol)")
    return reducer


def validate_on_every_rank(reducer, validate):
    """Run ``validate() -> (X, y)`` on this rank; any rank's error is raised on every rank.

    Parameters
    ----------
    reducer : reducer
    validate : callable
        Returns this rank's checked ``X`` (n_r, p) and ``y`` (n_r, ...), or raises
        ``ValueError``/``TypeError``.

    Returns
    -------
    X, y
        This rank's checked arrays.
    counts : list of int
        Rows per rank.

    Raises
    ------
    ValueError or TypeError
        The same on every rank: the first failing rank's error, prefixed
        ``"rank r: "``, or ranks whose X or y have different widths.
    """
    try:
        x, y = validate()
        info = (int(x.shape[0]), tuple(x.shape[1:]), tuple(np.shape(y)[1:]), None, None)
    except (ValueError, TypeError) as exc:
        x = y = None
        info = (0, None, None, type(exc).__name__, str(exc))
    infos = reducer.allgather(info)
    for rank, (_, _, _, kind, message) in enumerate(infos):
        if kind is not None:
            raise (TypeError if kind == "TypeError" else ValueError)(f"rank {rank}: {message}")
    shapes = {(item[1], item[2]) for item in infos}
    if len(shapes) > 1:
        raise ValueError(
            "the ranks' data have different widths (X columns, y shape after the rows): "
            + ", ".join(f"rank {r}: X {it[1]}, y {it[2]}" for r, it in enumerate(infos)))
    return x, y, [item[0] for item in infos]


def global_rows(reducer, n_local: int) -> int:
    """N, the rows on all ranks."""
    return int(round(float(reducer.allreduce(np.asarray([float(n_local)]))[0])))


def global_classes(reducer, y) -> np.ndarray:
    """The sorted distinct labels of all ranks (``np.unique`` of all rows' ``y``)."""
    local = np.unique(y)
    parts = [np.asarray(u) for u in reducer.allgather(local) if np.asarray(u).size]
    return np.unique(np.concatenate(parts)) if parts else local


def seeds_of_rank_zero(reducer, seeds):
    """Rank 0's integer seeds on every rank (``random_state=None`` differs between ranks)."""
    return [int(s) for s in reducer.broadcast(np.asarray(seeds, dtype=np.float64), root=0)]
