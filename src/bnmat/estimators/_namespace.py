"""The estimators on other array libraries: scikit-learn's ``array_api_dispatch``.

scikit-learn's convention, followed here: with
``sklearn.set_config(array_api_dispatch=True)`` (or inside
``sklearn.config_context(array_api_dispatch=True)``) the namespace and device
of ``X`` decide where an estimator computes; ``y`` and ``sample_weight`` are
moved to them; the fitted arrays stay there; predictions come back there.
Without dispatch every input is converted to NumPy, as before.

This module holds the pieces of that path which NumPy's path does not need:
finding the namespace, moving arrays, taking rows, and the standardization of
:class:`bnmat.layers._mlp.Scaling` written against the array API (the same
operations in the same order, so the same numbers as NumPy's up to the
summation order of the column moments).
"""

from __future__ import annotations

import numpy as np
import array_api_compat
from sklearn import get_config

from .._array_api import get_namespace, to_numpy
from ..layers._mlp import Scaling
from ..ops.batchnorm import column_moments

__all__ = ["dispatch_namespace", "float_dtypes", "device_of", "move_to", "take_rows",
           "fit_scaling_xp", "apply_scaling", "invert_scaling", "check_fit_namespace",
           "host_score", "numpy_dtype", "reject_reducer", "on_host"]


def dispatch_namespace(X):
    """The namespace to compute in for input ``X``: None for NumPy's path.

    None unless scikit-learn's ``array_api_dispatch`` is on and ``X`` is an
    array of another library (torch, CuPy, JAX, array_api_strict); NumPy
    arrays, lists and DataFrames take NumPy's path.
    """
    if not get_config()["array_api_dispatch"]:
        return None
    if isinstance(X, np.ndarray) or not array_api_compat.is_array_api_obj(X):
        return None
    xp = get_namespace(X)
    return None if array_api_compat.is_numpy_namespace(xp) else xp


def float_dtypes(xp) -> tuple:
    """The dtypes the estimators train in, float64 first (scikit-learn's ``dtype=`` order)."""
    return (xp.float64, xp.float32)


def device_of(x):
    """The device of array ``x``."""
    return array_api_compat.device(x)


def move_to(a, xp, device, dtype=None):
    """``a`` (any library, or NumPy) as an array of ``xp`` on ``device``.

    Within one library the array is not copied to the host; across libraries it
    goes through NumPy (what DLPack cannot do across devices).
    """
    if array_api_compat.is_array_api_obj(a) and not isinstance(a, np.ndarray):
        if get_namespace(a) is xp:
            out = xp.asarray(a, device=device) if device_of(a) != device else a
            return out if dtype is None else xp.astype(out, dtype)
        a = to_numpy(a)
    out = xp.asarray(np.asarray(a), device=device)
    return out if dtype is None else xp.astype(out, dtype)


def take_rows(a, rows: np.ndarray, xp):
    """Rows ``rows`` (NumPy integers) of ``a`` (N, ...), an array of ``xp``.

    ``xp.take``: the array API defines ``a[index array]`` for 1-D arrays only.
    """
    index = xp.asarray(np.asarray(rows, dtype=np.int64), device=device_of(a))
    return xp.take(a, index, axis=0)


def fit_scaling_xp(x, xp, sample_weight=None) -> Scaling:
    """:func:`bnmat.layers._mlp.fit_scaling` of ``x`` (N, p) with arrays of ``xp``.

    The same computation (power-of-two column divisor, corrected two-pass
    moments in float64, scale 1 for a constant column); ``mean`` and ``scale``
    are float64 arrays of ``xp`` on x's device.
    """
    x64 = xp.astype(x, xp.float64)
    if x64.shape[0] == 0:
        raise ValueError("cannot standardize 0 rows")
    big = xp.max(xp.abs(x64), axis=0)
    if not bool(xp.all(xp.isfinite(big))):
        raise ValueError("cannot standardize a column with NaN or infinity")
    one = xp.ones_like(big)
    c = xp.pow(2 * one, xp.floor(xp.log2(xp.where(big > 0, big, one))))
    if sample_weight is not None:
        from ..ops.batchnorm_weighted import weighted_column_moments
        mean, var, _ = weighted_column_moments(x64 / c, sample_weight, xp=xp)
    else:
        mean, var = column_moments(x64 / c, ddof=0, xp=xp)[:2]
    mean = mean * c
    scale = xp.sqrt(var) * c
    constant = xp.max(x64, axis=0) == xp.min(x64, axis=0)
    scale = xp.where(constant | ~(scale > 0), one, scale)
    return Scaling(mean=mean, scale=scale)


def _pow2_xp(scaling, xp):
    # Scaling._pow2 in xp
    level = xp.maximum(xp.abs(scaling.mean), scaling.scale)
    one = xp.ones_like(level)
    return xp.pow(2 * one, xp.floor(xp.log2(xp.where(level > 0, level, one))))


def apply_scaling(scaling: Scaling, x):
    """``scaling.apply(x)``, ``(x − mean)/scale`` (N, p), in the namespace of ``scaling``.

    NumPy scalings take :meth:`Scaling.apply`; others its operations in order
    (float64, divided by the power of two first), cast to x's floating dtype.

    Raises
    ------
    ValueError
        A standardized value overflows x's dtype (as :meth:`Scaling.apply`).
    """
    if isinstance(scaling.mean, np.ndarray):
        return scaling.apply(x)
    xp = get_namespace(scaling.mean)
    c = _pow2_xp(scaling, xp)
    z = xp.astype(x, xp.float64) / c
    z = z - scaling.mean / c
    z = z / (scaling.scale / c)
    z = xp.astype(z, x.dtype)
    _check_overflow_xp(z, xp, "standardizing the columns",
                       "far outside the range of the training data")
    return z


def invert_scaling(scaling: Scaling, z, dtype):
    """``scaling.invert(z, dtype)``, ``z·scale + mean`` (N, p), in the namespace of ``scaling``.

    ``dtype`` is a NumPy dtype; the result has the same dtype of ``xp``.
    """
    if isinstance(scaling.mean, np.ndarray):
        return scaling.invert(z, dtype=dtype)
    xp = get_namespace(scaling.mean)
    c = _pow2_xp(scaling, xp)
    out = (xp.astype(z, xp.float64) * (scaling.scale / c) + scaling.mean / c) * c
    out = xp.astype(out, xp.float32 if np.dtype(dtype) == np.float32 else xp.float64)
    _check_overflow_xp(out, xp, "transforming the predictions back to the scale of y",
                       "outside the range of the dtype")
    return out


def _check_overflow_xp(a, xp, what: str, why: str) -> None:
    if a.shape[0] and not bool(xp.all(xp.isfinite(a))):
        raise ValueError(f"{what} overflows {a.dtype}: a value is {why}")


def _where(a) -> tuple:
    if isinstance(a, np.ndarray) or not array_api_compat.is_array_api_obj(a):
        return ("numpy", None)
    xp = get_namespace(a)
    name = "numpy" if array_api_compat.is_numpy_namespace(xp) else xp.__name__
    return (name, None if name == "numpy" else device_of(a))


def check_fit_namespace(estimator, X, method: str) -> None:
    """Raise unless ``X`` is of the library (and on the device) the model was fitted in.

    In scikit-learn's words (``check_same_namespace``): with dispatch on, a
    model fitted on torch tensors predicts torch tensors, not NumPy arrays;
    a model fitted in another library cannot predict without dispatch.
    """
    fitted = _where(estimator.x_scaling_.mean)
    name = f"{type(estimator).__name__}.{method}()"
    if not get_config()["array_api_dispatch"]:
        if fitted[0] != "numpy":
            raise ValueError(
                f"{name}: this model was fitted on {fitted[0]} arrays with scikit-learn's "
                "array_api_dispatch=True; call it under sklearn.config_context("
                f"array_api_dispatch=True) with {fitted[0]} input (its parameters live there)")
        return
    given = _where(X)
    if given != fitted:
        raise ValueError(
            f"Inputs passed to {name} must use the same namespace and the same device as "
            f"those passed to fit(): fitted on {fitted[0]} (device {fitted[1]}), got "
            f"{given[0]} (device {given[1]})")


def host_score(score, out, target) -> float:
    """``score(out, target)`` on host NumPy copies, with dispatch off (NumPy's numbers)."""
    from sklearn import config_context

    with config_context(array_api_dispatch=False):
        return score(to_numpy(out), to_numpy(target))


def numpy_dtype(a) -> np.dtype:
    """NumPy's name for the floating dtype of ``a`` (float32 or float64), without a copy."""
    xp = get_namespace(a)
    return np.dtype(np.float32 if a.dtype == xp.float32 else np.float64)


def reject_reducer(estimator, reducer, xp) -> None:
    """Raise when ``fit(..., reducer=)`` meets arrays of another library.

    The data-parallel fit gathers and broadcasts NumPy arrays between ranks;
    it is not written for other libraries.
    """
    if reducer is not None:
        raise ValueError(
            f"{type(estimator).__name__}.fit(..., reducer=) trains on NumPy arrays; got "
            f"{xp.__name__} arrays with scikit-learn's array_api_dispatch=True. Pass NumPy "
            "arrays (or fit without array_api_dispatch, which converts them)")


def on_host(a):
    """``a`` as NumPy when it is an array of another library (any device), else unchanged.

    NumPy's path takes y of another library, as scikit-learn's convention has
    y follow X; ``np.asarray`` alone cannot read a GPU array.
    """
    if isinstance(a, np.ndarray) or not array_api_compat.is_array_api_obj(a):
        return a
    return to_numpy(a)
