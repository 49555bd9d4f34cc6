"""What the batch-norm ops and the kernels behind them share: caches, gradients, checks.

A leaf: it imports only :mod:`bnmat._array_api`. The ops import it, and so do
the fused kernels (:mod:`bnmat._kernels`), which never import an op module;
the ops register their reference formulas here instead
(:func:`register_references`), and a kernel that must hand a call back (input
it cannot match the reference on, bit for bit or within its stated rounding)
calls :func:`reference`. So the fast path and the reference validate with the
same functions, speak the same cache types and raise the same errors.
"""

from __future__ import annotations

import math
import numbers
from typing import NamedTuple

from .._array_api import Array, as_float, check_vector, to_numpy

__all__ = ["register_references", "reference", "ActivationCache", "BatchNormCache", "BatchNormGrads", "BatchNormInferenceCache",
           "ColumnMoments", "check_eps", "check_ddof"]


class BatchNormCache(NamedTuple):
    x_hat: Array     # (N, p)  Ẑ, the standardized input
    inv_std: Array   # (p,)    s = (σ² + ε)^(−1/2)
    gamma: Array     # (p,)
    mean: Array      # (p,)    μ, read by layers for running statistics
    var: Array       # (p,)    σ² with the op's ddof
    ddof: int


class BatchNormGrads(NamedTuple):
    dx: Array        # (N, p)
    dgamma: Array    # (p,)
    dbeta: Array     # (p,)


class ColumnMoments(NamedTuple):
    mean: Array      # (p,)   float64 when the input is float32
    var: Array       # (p,)   Σ(x − mean)² / (N − ddof)
    centered: Array  # (N, p) x − mean, in the input's dtype


def _accumulator(xp, dtype):
    """float64 for float32 (and float16) data: statistics are never summed in low precision."""
    return dtype if dtype == xp.float64 else xp.float64


def check_eps(eps) -> float:
    """Return ε as a float; raise ``ValueError`` unless it is a finite number ≥ 0."""
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not (
        math.isfinite(eps) and eps >= 0
    ):
        raise ValueError(f"eps must be a finite number >= 0; got {eps!r}")
    return float(eps)


def check_ddof(ddof) -> int:
    """Return ddof as an int; raise ``ValueError`` unless it is an integer ≥ 0."""
    if isinstance(ddof, bool) or not isinstance(ddof, numbers.Integral) or ddof < 0:
        raise ValueError(f"ddof must be a non-negative integer; got {ddof!r}")
    return int(ddof)


def _check_param(v, name, p, xp, dtype):
    v = as_float(v, name, xp)
    return xp.astype(check_vector(v, name, p), dtype, copy=False)


def _first(mask) -> int:
    return int(to_numpy(mask).nonzero()[0][0])


class BatchNormInferenceCache(NamedTuple):
    x_hat: Array     # (N, p)  (X − 1mᵀ) diag(s)
    scale: Array     # (p,)    γ ∘ s, with s = (v + ε)^(−1/2)


class ActivationCache(NamedTuple):
    saved: Array   # (N, p) the input or the output, as each backward states
    slope: float = 0.0


# ------------------------------------------------------- reference formulas
_REFERENCES: dict = {}


def register_references(**formulas) -> None:
    """Register the reference formulas by name (``batchnorm_forward=...``, ...)."""
    _REFERENCES.update(formulas)


def reference(name: str):
    """The registered reference formula ``name`` (``bnmat.ops`` registers them on import)."""
    try:
        return _REFERENCES[name]
    except KeyError:
        raise RuntimeError(f"bnmat.ops has not registered the reference formula {name!r}; "
                           "import bnmat (or bnmat.ops) before calling the kernels") from None
