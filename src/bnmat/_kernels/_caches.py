"""Caches of the kernel paths.

They hold the input x instead of the standardized X̂ (the backward pass
recomputes X̂ from x, the mean and s while it streams through x anyway), which
saves one N×p array per batch-norm layer.

Each is a subclass of the reference cache it replaces, so code that asks
``isinstance(cache, BatchNormCache)`` (layers telling training from inference
mode) keeps working, and every field of the reference cache is there by name;
``x_hat`` is recomputed on access. The tuple slot of ``x_hat`` itself holds
None, so code that unpacks the cache by position fails loudly instead of
mistaking x for X̂. The kernel's own fields are plain attributes.

Because x is held by reference, it must not be written into between the forward
and the backward pass (the ops never do; a caller reusing x's buffer would).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..ops._types import BatchNormCache, BatchNormInferenceCache

Array = Any

__all__ = ["BatchNormInferenceKernelCache", "BatchNormKernelCache", "BatchNormReLUCache"]


class BatchNormKernelCache(BatchNormCache):
    """Cache of the kernel path of batch norm in training mode (optionally fused with ReLU).

    ``X̂ = ((X − 1 meanᵀ) − 1 mean_loᵀ) diag(s)``. Fields of
    :class:`bnmat.ops.BatchNormCache`: ``inv_std``, ``gamma``, ``mean``, ``var``
    (x's dtype), ``ddof``, and ``x_hat`` (recomputed). Kernel attributes::

        x          (N, p)  the input, C-contiguous; never written
        mean_lo    (p,)    remainder of the mean beyond ``mean`` (x's dtype)
        inv_std64  (p,)    s in float64
        beta       (p,)    x's dtype; for the ReLU mask
        scale      (p,)    γ ∘ s rounded to x's dtype, as the forward pass used it
        relu       bool    the forward pass was fused with ReLU
    """

    # No __slots__: instances carry the kernel attributes in their __dict__.

    def __new__(cls, *, x, inv_std, gamma, mean, var, ddof, mean_lo, inv_std64, beta,
                scale, relu):
        self = super().__new__(cls, None, inv_std, gamma, mean, var, ddof)
        self.__dict__.update(x=x, mean_lo=mean_lo, inv_std64=inv_std64, beta=beta,
                             scale=scale, relu=bool(relu))
        return self

    @classmethod
    def _lean(cls, x, inv_std, gamma, mean, var, ddof, mean_lo, inv_std64, beta, scale,
              relu=False):
        """The same object as ``cls(...)`` (``relu`` a bool), built in fewer steps."""
        self = tuple.__new__(cls, (None, inv_std, gamma, mean, var, ddof))
        self.__dict__.update(x=x, mean_lo=mean_lo, inv_std64=inv_std64, beta=beta,
                             scale=scale, relu=relu)
        return self

    @property
    def x_hat(self) -> Array:
        """X̂ of shape (N, p), recomputed (allocates an N×p array)."""
        return ((self.x - self.mean) - self.mean_lo) * self.inv_std

    def to_reference(self) -> BatchNormCache:
        """The equivalent :class:`bnmat.ops.BatchNormCache` (allocates X̂)."""
        return BatchNormCache(x_hat=self.x_hat, inv_std=self.inv_std, gamma=self.gamma,
                              mean=self.mean, var=self.var, ddof=self.ddof)

    def without_relu(self) -> BatchNormKernelCache:
        """The same cache, marked as from plain batch norm."""
        return BatchNormKernelCache(
            x=self.x, inv_std=self.inv_std, gamma=self.gamma, mean=self.mean, var=self.var,
            ddof=self.ddof, mean_lo=self.mean_lo, inv_std64=self.inv_std64, beta=self.beta,
            scale=self.scale, relu=False)

    def __repr__(self):
        n, p = self.x.shape
        return (f"BatchNormKernelCache(x: {n}×{p} {self.x.dtype}, ddof={self.ddof}, "
                f"relu={self.relu})")

    def __reduce__(self):
        return (_rebuild_kernel_cache, (dict(zip(self._fields[1:], tuple(self)[1:])),
                                        dict(self.__dict__)))


def _rebuild_kernel_cache(fields, attrs):
    return BatchNormKernelCache(**fields, **attrs)


class BatchNormInferenceKernelCache(BatchNormInferenceCache):
    """Cache of the kernel path of batch norm in inference mode.

    Field of :class:`bnmat.ops.BatchNormInferenceCache`: ``scale`` (γ ∘ s), and
    ``x_hat`` recomputed bitwise as the reference computes it. Kernel
    attributes: ``x`` (N, p), ``mean`` and ``inv_std`` (p,), all in x's dtype.
    """

    def __new__(cls, *, x, mean, inv_std, scale):
        self = super().__new__(cls, None, scale)
        self.__dict__.update(x=x, mean=mean, inv_std=inv_std)
        return self

    @property
    def x_hat(self) -> Array:
        """``(X − 1mᵀ) diag(s)`` of shape (N, p), bitwise the reference's (allocates)."""
        return (self.x - self.mean) * self.inv_std

    def to_reference(self) -> BatchNormInferenceCache:
        """The equivalent :class:`bnmat.ops.BatchNormInferenceCache` (allocates X̂)."""
        return BatchNormInferenceCache(x_hat=self.x_hat, scale=self.scale)

    def __repr__(self):
        n, p = self.x.shape
        return f"BatchNormInferenceKernelCache(x: {n}×{p} {self.x.dtype})"

    def __reduce__(self):
        return (_rebuild_inference_cache, (dict(self.__dict__, scale=self.scale),))


def _rebuild_inference_cache(kwargs):
    return BatchNormInferenceKernelCache(**kwargs)


class BatchNormReLUCache(NamedTuple):
    """Cache of :func:`bnmat._kernels.batchnorm_relu_forward`.

    ``bn`` is the batch-norm cache (read ``bn.mean`` and ``bn.var`` for running
    statistics). On the fused kernel path ``bn`` is a
    :class:`BatchNormKernelCache` with ``relu=True`` and ``relu`` is None; on the
    reference path ``bn`` is a :class:`bnmat.ops.BatchNormCache` and ``relu`` the
    ReLU's own cache.
    """

    bn: Any
    relu: Any | None
