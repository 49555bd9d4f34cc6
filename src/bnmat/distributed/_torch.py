"""Reducer over torch.distributed (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
import sys

import numpy as np

from ._base import Reducer

__all__ = ["TorchDistributedReducer"]


class TorchDistributedReducer(Reducer):
    """Sums over the ranks of a ``torch.distributed`` process group.

    The process group must be initialised first (``torchrun`` sets the
    environment; then ``torch.distributed.init_process_group("gloo")`` on CPU
    or ``"nccl"`` on GPUs). Buffers travel as float64 tensors on the CPU for
    gloo and on the current CUDA device for NCCL.

    Parameters
    ----------
    group : torch.distributed.ProcessGroup, optional
        None is the default (world) group.

    Raises
    ------
    ImportError
        torch is not installed.
    RuntimeError
        The default process group is not initialised.
    """

    def __init__(self, group=None):
        super().__init__()
        try:
            import torch
            import torch.distributed as dist
        except ImportError as exc:
            raise ImportError(
                "TorchDistributedReducer needs torch: pip install 'bnmat[torch]'"
            ) from exc
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                "torch.distributed is not initialised: call "
                "torch.distributed.init_process_group('gloo') (CPU) or ('nccl') (GPU) "
                "first, for example in a script launched with torchrun"
            )
        self._torch, self._dist, self.group = torch, dist, group
        self.rank = int(dist.get_rank(group))
        self.size = int(dist.get_world_size(group))
        backend = str(dist.get_backend(group)).lower()
        self._device = (torch.device("cuda", torch.cuda.current_device())
                        if backend == "nccl" else torch.device("cpu"))

    def _tensor(self, a):
        return self._torch.from_numpy(a).to(self._device)

    def _numpy(self, t):
        return t.cpu().numpy() if t.device.type != "cpu" else t.numpy()

    def _allreduce(self, a):
        t = self._tensor(a)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.SUM, group=self.group)
        return np.array(self._numpy(t), dtype=np.float64)

    def _allreduce_max(self, a):
        t = self._tensor(a)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX, group=self.group)
        return np.array(self._numpy(t), dtype=np.float64)

    def _broadcast(self, a, root):
        t = self._tensor(a)
        self._dist.broadcast(t, src=self._dist.get_global_rank(self.group, root)
                             if self.group is not None else root, group=self.group)
        return np.array(self._numpy(t), dtype=np.float64)

    def _allgather(self, obj):
        out = [None] * self.size
        self._dist.all_gather_object(out, obj, group=self.group)
        return out

    def abort(self, message: str, code: int = 1):
        """Print ``message`` on stderr and end this process at once.

        torch.distributed has no abort of the whole group; ``torchrun`` ends
        the other ranks when one exits with a non-zero code.
        """
        print(message, file=sys.stderr, flush=True)
        os._exit(code)
