"""Shared test fixtures for bnmat.

Nothing here is autouse: a test gets a fixture only by naming it.

Fixtures
--------
backend
    Parametrized over every available array namespace (see :data:`BACKENDS`):
    a test that takes ``backend`` runs once per namespace, with ids ``numpy``,
    ``array_api_strict``, ``torch``, ``jax``, ``cupy``. A :class:`Backend` turns
    NumPy arrays into that namespace's arrays (``backend.asarray``), back
    (``backend.to_numpy``) and tells whether an array belongs to it
    (``backend.owns``).
backends
    The list of available :class:`Backend` objects, for tests that loop.
fd_grad
    :func:`central_difference_grad`, a float64 finite-difference gradient.
rel_error
    :func:`max_relative_error`, the normwise relative error used with ``fd_grad``.
rng
    A fresh ``numpy.random.Generator`` with a fixed seed.

Usage::

    def test_something(backend, fd_grad, rel_error, rng):
        x = rng.normal(size=(5, 3))
        y, cache = bnmat.ops.relu_forward(backend.asarray(x))
        assert backend.owns(y)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest

from _oracles import central_difference_grad

# The fused kernels are compiled (or loaded from numba's cache) in the
# foreground, once, before the first test: the kernel tests need them in this
# process (bnmat's default compiles missing kernels in the background and
# keeps to the reference formulas meanwhile), and no test's captured stderr
# gets the one-time announcement.
os.environ.setdefault("BNMAT_KERNELS_COMPILE", "sync")


def pytest_sessionstart(session):
    from bnmat._kernels import _config

    _config.enabled()

__all__ = ["Backend", "BACKENDS", "central_difference_grad", "max_relative_error"]


@dataclass(frozen=True)
class Backend:
    """One array namespace the ops are tested on.

    Attributes
    ----------
    name : str
        Test id: ``"numpy"``, ``"array_api_strict"``, ``"torch"``, ``"jax"`` or ``"cupy"``.
    xp : module
        The array-API namespace (``array_api_compat.numpy`` for NumPy, the
        compat wrapper for torch, the module itself for array_api_strict).
    module : module
        The library itself (``numpy``, ``torch``, ...), for its own dtypes.
    """

    name: str
    xp: Any
    module: Any
    _asarray: Callable
    _to_numpy: Callable
    _owns: Callable
    has_float16: bool = True

    def asarray(self, a, dtype=None):
        """Convert a NumPy array (or scalar) to this namespace, as a copy.

        Parameters
        ----------
        a : array_like
            NumPy data; ``None`` passes through (an absent optional argument).
        dtype : str or numpy dtype, optional
            ``"float32"``, ``"float64"``, ``"float16"``, ``"int64"``...; by
            default the dtype of ``a`` is kept.
        """
        if a is None:
            return None
        a = np.array(a, dtype=dtype, copy=True)
        return self._asarray(a)

    def to_numpy(self, a) -> np.ndarray:
        """Return a NumPy copy of ``a`` (host memory); ``None`` passes through."""
        if a is None:
            return None
        return np.array(self._to_numpy(a), copy=True)

    def owns(self, a) -> bool:
        """True when ``a`` is an array of this namespace.

        NumPy reductions return NumPy scalars (``np.float64``) rather than 0-d
        arrays, a documented deviation of NumPy from the standard that
        ``array_api_compat`` keeps; these count as NumPy arrays.
        """
        return bool(self._owns(a))

    def dtype_name(self, a) -> str:
        """The dtype of ``a`` as a short name such as ``"float32"``."""
        return str(a.dtype).rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"Backend({self.name})"


def _numpy_backend():
    import array_api_compat.numpy as xnp

    return Backend(
        name="numpy",
        xp=xnp,
        module=np,
        _asarray=lambda a: a,
        _to_numpy=np.asarray,
        _owns=lambda a: isinstance(a, (np.ndarray, np.generic)),
    )


def _strict_backend():
    import array_api_strict as xs

    array_type = type(xs.asarray(0.0))  # not exported under a stable public name
    # Some array_api_strict versions refuse __array__; DLPack always works.
    return Backend(
        name="array_api_strict",
        xp=xs,
        module=xs,
        _asarray=xs.asarray,
        _to_numpy=np.from_dlpack,
        _owns=lambda a: isinstance(a, array_type),
        has_float16=False,
    )


def _torch_backend():
    import torch
    import array_api_compat.torch as xt

    return Backend(
        name="torch",
        xp=xt,
        module=torch,
        _asarray=lambda a: torch.from_numpy(np.ascontiguousarray(a)),
        _to_numpy=lambda t: t.detach().cpu().numpy(),
        _owns=lambda a: isinstance(a, torch.Tensor),
    )


def _jax_backend():
    import jax

    jax.config.update("jax_enable_x64", True)  # float64 gradient checks need it
    import jax.numpy as jnp

    return Backend(
        name="jax",
        xp=jnp,
        module=jnp,
        _asarray=jnp.asarray,
        _to_numpy=np.asarray,
        _owns=lambda a: isinstance(a, jax.Array),
    )


def _cupy_backend():
    import cupy
    import array_api_compat.cupy as xc

    cupy.zeros(1)  # fails here when no GPU is usable
    return Backend(
        name="cupy",
        xp=xc,
        module=cupy,
        _asarray=cupy.asarray,
        _to_numpy=cupy.asnumpy,
        _owns=lambda a: isinstance(a, cupy.ndarray),
    )


def _available_backends() -> list[Backend]:
    found = [_numpy_backend(), _strict_backend()]
    for make in (_torch_backend, _jax_backend, _cupy_backend):
        try:
            found.append(make())
        except Exception:  # not installed, or (cupy) no usable GPU
            continue
    return found


#: Every namespace usable in this environment: NumPy and array_api_strict
#: always, torch (CPU), JAX and CuPy when they import.
BACKENDS: list[Backend] = _available_backends()


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request) -> Backend:
    """One available array namespace per test run (see :class:`Backend`)."""
    return request.param


@pytest.fixture
def backends() -> list[Backend]:
    """All available array namespaces, NumPy first."""
    return list(BACKENDS)


def max_relative_error(actual, expected, floor: float = 0.0) -> float:
    """Normwise relative error ``max|actual − expected| / max(max|expected|, floor)``.

    Scaling by the largest reference entry (not entry by entry) keeps entries
    that are zero in exact arithmetic from dominating. ``floor`` is the size the
    gradient would have in a typical problem: pass it when the exact gradient
    may vanish (then only rounding noise is left to compare). Returns ``0.0``
    when both are all zero and the denominator is 0, ``inf`` when only
    ``expected`` is.

    Parameters
    ----------
    actual, expected : array_like, same shape
    floor : float, default 0.0
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {actual.shape} and {expected.shape}")
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    scale = max(float(np.max(np.abs(expected), initial=0.0)), float(floor))
    if scale == 0.0:
        return 0.0 if err == 0.0 else float("inf")
    return err / scale


@pytest.fixture
def fd_grad():
    """:func:`central_difference_grad`: float64 4-point central differences."""
    return central_difference_grad


@pytest.fixture
def rel_error():
    """:func:`max_relative_error`: normwise relative error of two arrays."""
    return max_relative_error


@pytest.fixture
def rng() -> np.random.Generator:
    """A NumPy generator seeded with 20240607, fresh for each test."""
    return np.random.default_rng(20240607)
