"""Compiling the kernels ahead, so that no run sits silently in numba's compiler.

numba compiles each kernel for each combination of argument types on its first
call (20–60 s for all of them, ``parallel=True`` is slow to compile) and caches
the machine code on disk (``cache=True``). Without care, the first ``bnmat fit``
after installing sits at 0/50 for that long, with nothing said.

What bnmat does instead (:func:`bnmat._kernels._config.ready`, once per
process, on the first input the kernels would take):

* the kernels are compiled for this machine already (a marker file next to
  numba's cache, written after a complete compilation, names the numba version,
  the CPU and the kernels' source): they are used;
* otherwise, by default (``BNMAT_KERNELS_COMPILE=background``), one line on
  stderr says so, a detached background process (``python -m
  bnmat._kernels._warm``) compiles every kernel for every argument type bnmat
  passes, and this process keeps to the NumPy reference formulas for its whole
  life (so its results do not depend on when the compiler finishes). A fresh
  install's first run therefore costs what a run without numba costs, and the
  next run has the kernels;
* with ``BNMAT_KERNELS_COMPILE=sync`` (the test suite's setting) the compilation
  runs in the foreground, announced on stderr with how long it took.

:func:`compile_all` is also the way to compile ahead explicitly (for example in
a container build): ``python -m bnmat._kernels._warm``.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

__all__ = ["compile_all", "marker_path", "main"]


def marker_path() -> str | None:
    """The marker file that says the kernels are compiled; None without a cache folder."""
    import numba

    from . import _numba_bn

    try:
        folder = _numba_bn.forward._cache._cache_path
    except AttributeError:      # a numba without this attribute: no marker
        return None
    try:
        from numba.core import config

        cpu = config.CPU_NAME or ""
        if not cpu:
            import llvmlite.binding as llvm

            cpu = llvm.get_host_cpu_name()
    except Exception:
        cpu = "cpu"
    try:
        from numba.core import config

        features = config.CPU_FEATURES
    except Exception:
        features = None
    if features:
        # NUMBA_CPU_FEATURES (e.g. AVX-512 switched off) changes the machine
        # code, and numba keys its cache on it: so does the marker.
        import hashlib

        cpu += "-f" + hashlib.sha1(features.encode()).hexdigest()[:10]
    st = os.stat(_numba_bn.__file__)
    name = (f"bnmat-kernels-ready-numba{numba.__version__}-{cpu}-"
            f"{st.st_mtime_ns}-{st.st_size}-py{sys.version_info[0]}{sys.version_info[1]}")
    return os.path.join(folder, name)


def _variants(dtype, readonly_x):
    rng = np.random.default_rng(0)
    n, p = 12, 3
    x = rng.standard_normal((n, p)).astype(dtype)
    if readonly_x:
        x.flags.writeable = False
    vec = lambda: np.ones(p, dtype)  # noqa: E731
    return x, vec, n, p


def compile_all() -> float:
    """Compile (or load) every kernel for every argument type bnmat passes; seconds taken."""
    from . import _numba_bn as k

    start = time.perf_counter()
    for dtype in (np.float32, np.float64):
        for readonly_x in (False, True):
            x, vec, n, p = _variants(dtype, readonly_x)
            out = np.empty((n, p), dtype)
            two_pass = dtype == np.float64
            for forward, backward in ((k.forward, k.backward),
                                      (k.forward_serial, k.backward_serial)):
                _, var, inv_std, mean_hi, mean_lo, scale, _, _ = forward(
                    x, vec(), vec(), 1e-5, 0, False, two_pass, True, 1, out)
                dy = np.ones((n, p), dtype)
                a = np.ones(p)
                backward(dy, x, mean_hi, mean_lo, scale, vec(), False, inv_std, a, float(n),
                         True, 1, out)
            k.sums_finite(np.ones(p), np.ones(p))
            k.inference_forward(x, vec(), vec(), vec(), vec(), 1, out)
            flat = x.reshape(-1)
            k.relu_forward(flat, out.reshape(-1))
            k.relu_backward(dy.reshape(-1), flat, out.reshape(-1))
    return time.perf_counter() - start


def write_marker() -> bool:
    path = marker_path()
    if path is None:
        return False
    try:
        with open(path, "w") as f:
            f.write("compiled\n")
    except OSError:
        return False
    return True


def main() -> int:
    """Compile everything, then write the marker (``python -m bnmat._kernels._warm``).

    Started by bnmat in the background (``BNMAT_WARM_BACKGROUND=1``), it runs at
    a low CPU priority (nice 10), so that the run that started it is hardly slowed.
    """
    if os.environ.get("BNMAT_WARM_BACKGROUND") == "1" and hasattr(os, "nice"):
        try:
            os.nice(10)
        except OSError:
            pass
    compile_all()
    return 0 if write_marker() else 1


if __name__ == "__main__":
    raise SystemExit(main())
