"""Batch norm followed by ReLU as one step of a :class:`~bnmat.layers.Sequential`.

In training mode the pair ``H = max(B, 0)``, ``B = C Z diag(s ∘ γ) + 1βᵀ`` runs
on the fused kernels (:func:`bnmat._kernels.batchnorm_relu_forward`): H is
written in the pass that would have written B, so B is never stored, and the
backward pass recomputes the mask ``1[B > 0]`` from Z while it streams through
Z anyway. That is two N × p arrays fewer per pair in the forward pass and two
passes fewer in each direction, with the same results as the two layers run one
after the other (the mask is recomputed bitwise; the sums round alike).

The pair is fused only where the kernels take NumPy input anyway
(:func:`bnmat._kernels.wants`); otherwise (other array libraries, small
batches, ``BNMAT_DISABLE_KERNELS=1``) the two layers run exactly as before.

What the :class:`~bnmat.layers.SequentialCache` then holds: the batch norm's
cache is a :class:`bnmat._kernels.BatchNormKernelCache` marked ``relu=True`` (a
:class:`bnmat.ops.BatchNormCache`, with the batch statistics ``mean`` and
``var``), and the ReLU's cache a :class:`FusedReLUCache` that points to it.
Either layer's own ``backward`` still accepts its cache, so the pair can also
be differentiated layer by layer.
"""

from __future__ import annotations

import numpy as np

from .activations import ReLU
from .batchnorm import BatchNorm
from ._checks import check_keys
from ._fused_relu import FusedReLUCache, relu_backward_from_batchnorm

__all__ = ["FusedReLUCache", "fusable", "batchnorm_relu_forward", "batchnorm_relu_backward",
           "relu_backward_from_batchnorm"]


def fusable(layer, following) -> bool:
    """A plain :class:`BatchNorm` directly followed by a plain :class:`ReLU`.

    Exact types only: a subclass may change ``forward``.
    """
    return (type(layer) is BatchNorm and type(following) is ReLU
            and layer.center and layer.scale)    # the kernels take γ and β


def batchnorm_relu_forward(bn_layer, params, state, relu_params, x):
    """Training-mode forward of ``ReLU ∘ BatchNorm`` on the fused kernels.

    Parameters
    ----------
    bn_layer : BatchNorm
    params, state : dict
        The batch norm's parameters ``{"gamma", "beta"}`` and state.
    relu_params : dict
        The ReLU's parameters (empty).
    x : array, shape (N, p)

    Returns
    -------
    None
        When the kernels do not take this input (the caller then runs the two
        layers one after the other).
    (h, new_state, bn_cache, relu_cache)
        ``h = max(B, 0)`` of shape (N, p); the batch norm's new state (the
        same running-statistics update as :meth:`BatchNorm.forward`); the
        two layers' caches.
    """
    from .. import _kernels
    from ._sync import active_reducer

    reducer = active_reducer()
    if reducer is not None:   # rows on several ranks: the synchronized pair (or None)
        from ._sync import sync_batchnorm_relu_forward
        return sync_batchnorm_relu_forward(bn_layer, params, state, x, reducer)
    check_keys(params, ("gamma", "beta"), bn_layer)
    gamma, beta = params["gamma"], params["beta"]
    if not _kernels.wants(x, gamma, beta):
        return None
    check_keys(state, ("mean", "var"), bn_layer, "state", optional=("count",))
    check_keys(relu_params, (), ReLU())
    h, cache = _kernels.batchnorm_relu_forward(x, gamma, beta, eps=bn_layer.eps,
                                               ddof=bn_layer.ddof)
    bn_cache = cache.bn
    new_state = bn_layer._updated_state(state, bn_cache.mean, bn_cache.var)
    # cache.relu is None on the kernel path; otherwise the reference ran both ops.
    relu_cache = FusedReLUCache(bn_cache) if cache.relu is None else cache.relu
    return h, new_state, bn_cache, relu_cache


def _writable_like(a, like) -> bool:
    return (type(a) is np.ndarray and a.dtype == like.dtype and a.shape == like.shape
            and a.flags.c_contiguous and a.flags.writeable)


def batchnorm_relu_backward(dh, bn_cache, *, overwrite: bool):
    """Backward pass of the fused pair, one call of the fused kernels.

    Formula (G = dH ∘ 1[B > 0], then batch norm's backward)::

        dβ = 1ᵀG,   dγ = 1ᵀ(G ∘ Ẑ),   dZ = [CG − Ẑ diag(dγ)/(N − ddof)] diag(γ ∘ s)

    Parameters
    ----------
    dh : array, shape (N, p)
        ∂R/∂H.
    bn_cache : BatchNormKernelCache
        With ``relu=True``.
    overwrite : bool
        dZ may be written into dh (the caller made dh and needs it no more).

    Returns
    -------
    dz : array, shape (N, p)
    grads : dict
        ``{"gamma": (p,), "beta": (p,)}``.
    """
    from .. import _kernels
    from ._sync import SyncBatchNormCache, sync_batchnorm_relu_backward

    if isinstance(bn_cache, SyncBatchNormCache):   # rows on several ranks
        return sync_batchnorm_relu_backward(dh, bn_cache, overwrite=overwrite)
    out = dh if overwrite and _writable_like(dh, bn_cache.x) else None
    dz, dgamma, dbeta = _kernels.batchnorm_relu_backward(
        dh, _kernels.BatchNormReLUCache(bn=bn_cache, relu=None), out=out)
    return dz, {"gamma": dgamma, "beta": dbeta}
