"""Data-parallel training: reducers that sum small float64 buffers across processes.

Every process (rank) holds its own rows; batch norm's statistics and backward
sums, the loss and the parameter gradients are summed across ranks, so each
rank computes the loss and gradients of the whole, concatenated batch and all
ranks take the same step. A *reducer* is the one object that knows how to sum:

* :class:`SingleProcessReducer` — one process, nothing to exchange (the
  ordinary, fast single-process path runs);
* :class:`MPIReducer` — MPI through mpi4py (``pip install bnmat[mpi]``),
  launched with ``mpiexec -n K`` or ``srun``;
* :class:`TorchDistributedReducer` — ``torch.distributed`` (gloo on CPU,
  NCCL on GPU), launched with ``torchrun``.

Pass one as ``reducer=`` to :func:`bnmat.value_and_grad`, :func:`bnmat.fit`,
:func:`bnmat.fit_lbfgs` and :func:`bnmat.population_statistics`; see
``docs/scaling.md``.
"""

from ._base import Reducer, ReducerStats, SingleProcessReducer, check_reducer
from ._mpi import MPIReducer, mpi_available
from ._torch import TorchDistributedReducer

__all__ = ["Reducer", "ReducerStats", "SingleProcessReducer", "MPIReducer",
           "TorchDistributedReducer", "check_reducer", "mpi_available"]
