"""Central differences in float64, and the error measure every check shares."""

from __future__ import annotations

import math

import numpy as np

from .._array_api import to_numpy


_EPS = float(np.finfo(np.float64).eps)
#: Step of the fourth-order stencil relative to max(1, |x|): eps^(1/5) balances
#: truncation error O(h⁴) against rounding error O(eps/h).
_REL_STEP = {4: _EPS ** (1 / 5), 2: _EPS ** (1 / 3)}
# (offsets, weights, denominator): f′(x) ≈ Σ w f(x + o·h) / (d·h)
_STENCIL = {
    4: ((-2.0, -1.0, 1.0, 2.0), (1.0, -8.0, 8.0, -1.0), 12.0),
    2: ((-1.0, 1.0), (-1.0, 1.0), 2.0),
}
# A numerical derivative is "zero" when below this multiple of its rounding error.
_NOISE_FACTOR = 100.0


class DegenerateCheckWarning(UserWarning):
    """A gradient check that cannot tell a correct formula from a wrong one."""


# --------------------------------------------------------------------------- helpers


def _scalar(value, what: str) -> float:
    """``float(value)`` for a Python number or a one-element array of any namespace."""
    if isinstance(value, (int, float)):
        return float(value)
    arr = to_numpy(value)
    if arr.size != 1:
        raise ValueError(f"{what} must return a scalar; got an array of shape {arr.shape}")
    return float(arr.reshape(()))


def _float64_copy(x, name: str) -> np.ndarray:
    arr = np.array(to_numpy(x), dtype=np.float64, copy=True)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity; gradients cannot be checked there")
    return arr


def _check_tolerances(rtol, atol):
    if not (rtol > 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be a finite number > 0; got {rtol!r}")
    if not (atol >= 0 and math.isfinite(atol)):
        raise ValueError(f"atol must be a finite number >= 0; got {atol!r}")


def _rel_error(a, n, rtol, atol):
    """Elementwise |a − n| / (max(|a|, |n|) + atol/rtol); ≤ rtol where they agree."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    err = np.abs(a - n) / (np.maximum(np.abs(a), np.abs(n)) + atol / rtol)
    return np.where(np.isfinite(err), err, np.inf)


def _stencil(phi, h, order):
    """Σ w φ(o·h) / (d·h): the derivative of φ at 0 (h a scalar)."""
    offsets, weights, denom = _STENCIL[order]
    return sum(w * phi(o * h) for o, w in zip(offsets, weights)) / (denom * h)


def _noise(value_scale: float, h: float, order: int) -> float:
    """Rounding error of a stencil derivative of a function of size value_scale."""
    _, weights, denom = _STENCIL[order]
    scale = max(value_scale, np.finfo(np.float64).tiny)
    return _EPS * scale * sum(map(abs, weights)) / (denom * h)


# --------------------------------------------------------------------------- numerical_grad


def numerical_grad(f, x, *, step=None, order: int = 4) -> np.ndarray:
    """Gradient of a scalar function by central differences, one entry at a time.

    Formula (fourth order, the default)::

        ∂f/∂x_i ≈ [f(x − 2h e_i) − 8 f(x − h e_i) + 8 f(x + h e_i) − f(x + 2h e_i)] / (12 h)

    with ``h = eps^(1/5) · max(1, |x_i|)`` (about ``7e-4 · max(1, |x_i|)``), whose
    error is near ``1e-12`` relative for smooth functions of moderate scale.
    ``order=2`` uses ``[f(x + h e_i) − f(x − h e_i)] / (2h)`` with
    ``h = eps^(1/3) · max(1, |x_i|)``. The step actually taken is rounded so that
    ``x_i + h`` is exact in binary floating point.

    Parameters
    ----------
    f : callable
        ``f(x) -> float`` (a Python number or a one-element array). It receives a
        NumPy float64 array of x's shape and must not modify it.
    x : array_like, any shape
        The point; any array-API array or nested list. It is never modified:
        the function works on a float64 copy.
    step : float or array_like of x's shape, optional
        Absolute step(s) h, instead of the default relative one.
    order : {4, 2}
        Order of the central difference.

    Returns
    -------
    grad : numpy.ndarray, float64, shape of x

    Raises
    ------
    ValueError
        ``f`` does not return a finite scalar, or ``x`` is not finite.
    RuntimeError
        ``f`` modified its argument in place.
    """
    if order not in _STENCIL:
        raise ValueError(f"order must be 2 or 4; got {order!r}")
    x0 = _float64_copy(x, "x")
    work = x0.copy()
    flat = work.reshape(-1)  # a view: writing flat[i] perturbs work
    if step is None:
        steps = _REL_STEP[order] * np.maximum(1.0, np.abs(x0))
    else:
        steps = np.broadcast_to(np.asarray(step, dtype=np.float64), x0.shape)
        if not np.all(steps > 0):
            raise ValueError("step must be positive")
    steps = steps.reshape(-1)
    grad = np.empty(x0.size, dtype=np.float64)
    offsets, weights, denom = _STENCIL[order]
    for i in range(x0.size):
        xi = float(flat[i])
        h = (xi + steps[i]) - xi  # exactly representable, so x ± h has no rounding
        total = 0.0
        for o, w in zip(offsets, weights):
            flat[i] = xi + o * h
            value = _scalar(f(work), "f")
            if not math.isfinite(value):
                flat[i] = xi
                raise ValueError(
                    f"f is not finite at x + {o:g}·h·e_{i} (value {value}); "
                    "the step may leave f's domain: pass a smaller step"
                )
            total += w * value
        flat[i] = xi
        grad[i] = total / (denom * h)
    if not np.array_equal(work, x0):
        raise RuntimeError("f modified its argument in place; gradients cannot be checked")
    return grad.reshape(x0.shape)
