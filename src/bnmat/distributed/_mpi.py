"""Reducer over MPI (mpi4py)."""

from __future__ import annotations

import sys

import numpy as np

from ._base import Reducer

__all__ = ["MPIReducer", "mpi_available"]

_MISSING = (
    "MPIReducer needs mpi4py and an MPI library: pip install 'bnmat[mpi]' (mpi4py and the "
    "mpich wheel), or mpi4py built against your cluster's MPI"
)


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:      # mpi4py absent, or its MPI library absent
        raise ImportError(f"{_MISSING} ({exc})") from exc
    return MPI


def mpi_available() -> bool:
    """True when mpi4py and an MPI library can be imported."""
    try:
        _mpi()
    except ImportError:
        return False
    return True


class MPIReducer(Reducer):
    """Sums over the ranks of an MPI communicator.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        The communicator; None is ``MPI.COMM_WORLD``.

    Raises
    ------
    ImportError
        mpi4py (or its MPI library) is not installed; the message says how to
        install it.

    Notes
    -----
    ``allreduce`` is ``MPI_Allreduce`` with ``MPI_SUM`` on float64. MPICH and
    Open MPI return the same bits on every rank (each partial sum is formed
    once, or symmetrically, and float addition is commutative); the training
    loops verify it after every step, so an MPI that did otherwise would be
    reported, not trusted.
    """

    def __init__(self, comm=None):
        super().__init__()
        MPI = _mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())

    def _allreduce(self, a):
        out = np.empty_like(a)
        self.comm.Allreduce(a, out, op=self._MPI.SUM)
        return out

    def _allreduce_max(self, a):
        out = np.empty_like(a)
        self.comm.Allreduce(a, out, op=self._MPI.MAX)
        return out

    def _broadcast(self, a, root):
        self.comm.Bcast(a, root=root)
        return a

    def _allgather(self, obj):
        return self.comm.allgather(obj)

    def abort(self, message: str, code: int = 1):
        """Print ``message`` on stderr and call ``MPI_Abort``: every rank ends."""
        print(message, file=sys.stderr, flush=True)
        self.comm.Abort(code)
