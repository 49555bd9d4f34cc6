"""The cache of a ReLU fused into the batch norm before it, and that ReLU's backward.

A leaf of :mod:`bnmat.layers`: :class:`~bnmat.layers.ReLU` reads it to
differentiate a fused forward pass, and :mod:`bnmat.layers._fused` builds it,
so neither imports the other.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

__all__ = ["FusedReLUCache", "relu_backward_from_batchnorm"]


class FusedReLUCache(NamedTuple):
    """Cache of a ReLU layer whose forward pass ran fused into the batch norm before it.

    ``bn`` is that batch norm's :class:`bnmat._kernels.BatchNormKernelCache`
    (``relu=True``), from which ``B`` and the mask ``1[B > 0]`` are recomputed.
    """

    bn: Any


def relu_backward_from_batchnorm(dh, cache: FusedReLUCache):
    """``dB = dH ∘ 1[B > 0]`` with B recomputed from the batch norm's cache.

    For a ReLU layer differentiated on its own after a fused forward pass.
    ``B = ((Z − 1 meanᵀ) − 1 mean_loᵀ) diag(γ ∘ s) + 1βᵀ`` in Z's dtype, the
    operations of the forward kernel, so the mask is the one it applied.

    Parameters
    ----------
    dh : array, shape (N, p)
    cache : FusedReLUCache

    Returns
    -------
    db : array, shape (N, p)
    """
    bn = cache.bn
    if tuple(dh.shape) != tuple(bn.x.shape):
        raise ValueError(f"dy must have shape {tuple(bn.x.shape)}; got {tuple(dh.shape)}")
    b = ((bn.x - bn.mean) - bn.mean_lo) * bn.scale + bn.beta
    dh = np.asarray(dh, dtype=bn.x.dtype)
    return np.where(b > 0, dh, np.zeros_like(dh))
