"""The reducer interface and the one-process reducer."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Reducer", "ReducerStats", "SingleProcessReducer", "check_reducer"]


@dataclass
class ReducerStats:
    """What a reducer has exchanged so far (for the benchmarks and the docs).

    Attributes
    ----------
    calls : int
        Collective calls (all-reduce, broadcast, all-gather).
    bytes : int
        Payload bytes this rank contributed to them (its send buffers; the
        all-gathers count their pickled size).
    seconds : float
        Wall time spent inside them (waiting for the other ranks included).
    """

    calls: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def add(self, nbytes: int, seconds: float = 0.0) -> None:
        self.calls += 1
        self.bytes += int(nbytes)
        self.seconds += seconds


class Reducer:
    """Interface: rank, size, sums of float64 buffers, broadcast, all-gather, abort.

    Every collective must be called by all ranks in the same order with
    buffers of the same shape; the result is the same on every rank, bit for
    bit (the training loops check the parameters after every step).

    Subclasses implement ``_allreduce``, ``_allreduce_max``, ``_broadcast``,
    ``_allgather`` and ``abort``; the public methods add the bookkeeping.
    """

    rank: int = 0
    size: int = 1

    def __init__(self):
        self.stats = ReducerStats()

    # --------------------------------------------------------------- public
    def allreduce(self, buf) -> np.ndarray:
        """The element-wise sum of ``buf`` over all ranks.

        Parameters
        ----------
        buf : array_like of float64, any shape
            Not modified.

        Returns
        -------
        ndarray, float64, same shape
            Identical on every rank.
        """
        a = np.ascontiguousarray(buf, dtype=np.float64)
        t0 = time.perf_counter()
        out = self._allreduce(a.copy())
        self.stats.add(a.nbytes, time.perf_counter() - t0)
        return out

    def allreduce_max(self, buf) -> np.ndarray:
        """The element-wise maximum of ``buf`` (float64) over all ranks."""
        a = np.ascontiguousarray(buf, dtype=np.float64)
        t0 = time.perf_counter()
        out = self._allreduce_max(a.copy())
        self.stats.add(a.nbytes, time.perf_counter() - t0)
        return out

    def broadcast(self, buf, root: int = 0) -> np.ndarray:
        """``buf`` of rank ``root`` on every rank (float64, same shape everywhere)."""
        a = np.ascontiguousarray(buf, dtype=np.float64).copy()
        self.stats.add(a.nbytes)
        return self._broadcast(a, root)

    def allgather(self, obj) -> list:
        """A list with every rank's ``obj`` (small picklable objects), in rank order."""
        import pickle

        self.stats.add(len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)))
        return self._allgather(obj)

    def abort(self, message: str, code: int = 1):
        """Print ``message`` on stderr and end every rank (never returns)."""
        raise NotImplementedError

    # --------------------------------------------------------------- hooks
    def _allreduce(self, a):
        raise NotImplementedError

    def _allreduce_max(self, a):
        raise NotImplementedError

    def _broadcast(self, a, root):
        raise NotImplementedError

    def _allgather(self, obj):
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}(rank={self.rank}, size={self.size})"


class SingleProcessReducer(Reducer):
    """One process: every collective returns its input.

    With this reducer (or any reducer of size 1) the training functions take
    the ordinary single-process path, unchanged.
    """

    rank = 0
    size = 1

    def _allreduce(self, a):
        return a

    def _allreduce_max(self, a):
        return a

    def _broadcast(self, a, root):
        if root != 0:
            raise ValueError(f"root must be 0 with one process; got {root}")
        return a

    def _allgather(self, obj):
        return [obj]

    def abort(self, message: str, code: int = 1):
        print(message, file=sys.stderr, flush=True)
        raise SystemExit(code)


def check_reducer(reducer):
    """Return ``reducer`` after checking that it has the interface (duck typing)."""
    needed = ("rank", "size", "allreduce", "allreduce_max", "broadcast", "allgather", "abort")
    missing = [n for n in needed if not hasattr(reducer, n)]
    if missing:
        raise TypeError(
            f"reducer must be a bnmat.distributed reducer (MPIReducer, "
            f"TorchDistributedReducer, SingleProcessReducer); {type(reducer).__name__} "
            f"lacks {missing}"
        )
    return reducer
