"""Independent gradient oracles shared by the tests (imported by conftest.py)."""

from __future__ import annotations

import numpy as np

__all__ = ["central_difference_grad"]


def central_difference_grad(f, x, h=1e-3) -> np.ndarray:
    """Gradient of a scalar function by 4-point central differences in float64.

    Formula, per entry i, with step hᵢ::

        ∂f/∂xᵢ ≈ [−f(x + 2hᵢeᵢ) + 8 f(x + hᵢeᵢ) − 8 f(x − hᵢeᵢ) + f(x − 2hᵢeᵢ)] / (12 hᵢ)

    The truncation error is O(h⁴) and the rounding error O(ε_mach |f| / h), so a
    step near 1e-3 times the scale on which f varies gives about 1e-11 relative
    accuracy for smooth f. Each hᵢ is rounded to a power of two, so that
    ``xᵢ ± hᵢ`` and ``xᵢ ± 2hᵢ`` are exact whenever hᵢ is at least the spacing of
    the floats near xᵢ: the step taken is the step in the formula.

    Parameters
    ----------
    f : callable
        ``f(x) -> float``; receives a fresh float64 NumPy array of x's shape on
        every call (it may keep or modify it).
    x : array_like, any shape
        The point; not modified.
    h : float or array_like broadcastable to x's shape, default 1e-3
        Step per entry, before rounding to a power of two. Choose it relative to
        the scale of each entry (for example 1e-3 times the column's spread).

    Returns
    -------
    grad : ndarray of float64, shape of x
    """
    x = np.array(x, dtype=np.float64, copy=True)
    steps = np.broadcast_to(np.asarray(h, dtype=np.float64), x.shape)
    if not np.all(steps > 0):
        raise ValueError("finite-difference steps must be positive")
    steps = np.exp2(np.round(np.log2(steps)))
    grad = np.empty_like(x)
    weights = {2: -1.0, 1: 8.0, -1: -8.0, -2: 1.0}
    for i in np.ndindex(x.shape):
        hi = steps[i]
        total = 0.0
        for k, wk in weights.items():
            xk = x.copy()
            xk[i] = x[i] + k * hi
            total += wk * float(f(xk))
        grad[i] = total / (12.0 * hi)
    return grad
