"""When the fused kernels run: numba present, not disabled, NumPy input, big enough.

Nothing here imports numba until a NumPy array first asks for a kernel, so
``import bnmat`` stays cheap.
"""

from __future__ import annotations

import os
import threading

import numpy as np

__all__ = ["DISABLE_ENV", "MIN_ELEMENTS", "MIN_ELEMENTS_ENV", "available", "enabled", "wants"]

#: environment variable that forces the reference formulas when set to 1/true/yes
DISABLE_ENV = "BNMAT_DISABLE_KERNELS"

#: environment variable that overrides :data:`MIN_ELEMENTS` at import (0 sends
#: every NumPy input to the kernels; used to run the whole test suite on them)
MIN_ELEMENTS_ENV = "BNMAT_KERNELS_MIN_ELEMENTS"

#: arrays with fewer elements than this use the reference formulas. Below it the
#: two paths cost about the same (tens of microseconds, mostly Python and call
#: overhead; see docs/performance.md), so small inputs, such as most unit tests'
#: and a trailing mini-batch, keep the reference's exact arithmetic.
MIN_ELEMENTS = int(os.environ.get(MIN_ELEMENTS_ENV, "4096"))

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_TRUE = ("1", "true", "yes", "on")


def _env_get(name):
    """``os.environ.get(name)``, without its cost for a missing name.

    ``os.environ.get`` finds a missing name by catching a KeyError (~1 µs;
    :func:`enabled` runs on every op call). CPython's environ keeps its
    encoded items in the dict ``_data``; read that when it is there, else
    ``os.environ.get``.
    """
    environ = os.environ
    data = getattr(environ, "_data", None)
    if type(data) is dict:
        try:
            raw = data.get(environ.encodekey(name))
        except Exception:  # noqa: BLE001 - an unusual environ: the public way
            return environ.get(name)
        return None if raw is None else environ.decodevalue(raw)
    return environ.get(name)

_state = {"available": None, "forked": False, "kernels": None, "ready": None}

#: environment variable: "background" (default) compiles missing kernels in a
#: detached process while this one uses the reference formulas; "sync" compiles
#: them in the foreground (announced on stderr, with the time it took)
COMPILE_ENV = "BNMAT_KERNELS_COMPILE"
_import_lock = threading.Lock()
_ready_lock = threading.Lock()


def _after_fork_in_child():
    # GNU OpenMP (numba's "omp" threading layer, the one picked here) is not
    # fork-safe: a child that enters a parallel region after its parent did can
    # hang. A forked child therefore uses the reference formulas.
    _state["forked"] = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def available() -> bool:
    """True when numba can be imported (the optional extra ``bnmat[fast]``)."""
    if _state["available"] is None:
        with _import_lock:
            if _state["available"] is None:
                try:
                    import numba  # noqa: F401
                except Exception:  # ImportError, or a numba broken by its numpy
                    _state["available"] = False
                else:
                    _state["available"] = True
    return _state["available"]


def enabled() -> bool:
    """True when the kernels may run: numba present, not disabled, not a forked child.

    Set the environment variable ``BNMAT_DISABLE_KERNELS=1`` to force the
    reference formulas (it is read at every call, so tests can toggle it).
    """
    v = _env_get(DISABLE_ENV)
    if v is not None and v.strip().lower() in _TRUE:
        return False
    if _state["forked"]:
        return False
    if _state["available"] is True and _state["ready"] is True:   # decided before
        return True
    return available() and ready()


def _say(message: str) -> None:
    import sys

    print(f"bnmat: {message}", file=sys.stderr, flush=True)


def ready() -> bool:
    """Whether the compiled kernels are there; decided once per process.

    See :mod:`bnmat._kernels._warm`: compiled for this machine → True;
    otherwise either compile now (``BNMAT_KERNELS_COMPILE=sync``) or start a
    background compilation for later processes and use the reference formulas
    in this one (the default). Either way one line on stderr says what happens.
    """
    if _state["ready"] is None:
        with _ready_lock:
            if _state["ready"] is None:
                _state["ready"] = _decide()
    return _state["ready"]


def _decide() -> bool:
    from . import _warm

    marker = _warm.marker_path()
    if marker is not None and os.path.exists(marker):
        return True
    mode = os.environ.get(COMPILE_ENV, "background").strip().lower()
    if mode == "sync" or marker is None:
        _say("compiling the fused CPU kernels for this machine (once per installation; "
             "20-60 s) ...")
        seconds = _warm.compile_all()
        _warm.write_marker()
        _say(f"kernels compiled in {seconds:.1f} s; later runs load them from numba's cache.")
        return True
    if not os.access(os.path.dirname(marker), os.W_OK):
        _say("the fused CPU kernels are not compiled and numba's cache folder "
             f"({os.path.dirname(marker)}) is not writable; using the NumPy formulas "
             "(set NUMBA_CACHE_DIR to a writable folder to enable the kernels).")
        return False
    _spawn_background_compile()
    _say("compiling the fused CPU kernels for this machine in the background (once per "
         "installation; 20-60 s). This run uses the NumPy formulas (the same results "
         "to rounding); later runs use the kernels.")
    return False


def _spawn_background_compile() -> None:
    import subprocess
    import sys

    package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, BNMAT_WARM_BACKGROUND="1")
    env["PYTHONPATH"] = os.pathsep.join(
        [package_root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    try:
        subprocess.Popen(
            [sys.executable, "-m", "bnmat._kernels._warm"], env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
    except OSError:
        pass


def _plain(a) -> bool:
    # memmaps are arrays with a file behind them; other subclasses (masked
    # arrays, matrix) change what arithmetic means and take the reference path,
    # and so do arrays in a non-native byte order (the reference converts them).
    return (type(a) is np.ndarray or type(a) is np.memmap) and a.dtype.isnative


class _Local(threading.local):
    depth = 0       # a class default: reading it never raises AttributeError (slow)


_local = _Local()


class reference_only:
    """Within this context (in this thread) :func:`wants` is False: the ops run
    their reference formulas. The kernel wrappers use it to hand an input they
    cannot treat exactly as the reference would (an error, or float32
    statistics outside the range where the kernel's float32 partial sums are
    exact enough) to the reference, which then decides the result or the error.
    """

    def __enter__(self):
        _local.depth = getattr(_local, "depth", 0) + 1
        return self

    def __exit__(self, *exc):
        _local.depth -= 1


def wants(x, *vectors, ndim: int | None = 2) -> bool:
    """Whether an op should take the kernel path for these arguments.

    Only plain NumPy arrays and memmaps qualify (not other subclasses such as
    masked arrays, not
    torch/CuPy/JAX/array_api_strict arrays, which always use the reference
    formulas); the parameter vectors, where given, must be NumPy arrays too.
    Integer and float16 input qualifies: the ops convert it first, as the
    reference does. ``ndim=None`` accepts any number of dimensions (for
    elementwise ops); arrays below :data:`MIN_ELEMENTS` elements are left to the
    reference formulas.
    """
    if not _plain(x) or (ndim is not None and x.ndim != ndim):
        return False
    if x.size < MIN_ELEMENTS:
        return False
    for v in vectors:
        if not _plain(v):
            return False
    if x.dtype.kind not in "fiub" or x.dtype.itemsize > 8:
        return False
    if _local.depth:
        return False
    return enabled()


def lean_enabled() -> bool:
    """:func:`enabled`, and not inside :class:`reference_only` (what :func:`wants`
    checks after its argument checks; for callers that checked the arguments)."""
    if _local.depth:
        return False
    return enabled()


def load_kernels():
    """Import the numba kernels (compiling or loading them from the cache on first use)."""
    mod = _state.get("kernels")
    if mod is None:
        with _import_lock:
            mod = _state.get("kernels")
            if mod is None:
                from . import _numba_bn as mod

                _state["kernels"] = mod
    return mod


#: environment variable that overrides :data:`PARALLEL_MIN_ELEMENTS` at import
PARALLEL_MIN_ELEMENTS_ENV = "BNMAT_KERNELS_PARALLEL_MIN_ELEMENTS"

#: arrays with fewer elements than this (4 MiB of float32) run the kernels on
#: one thread. Such a call does at most ~0.3 ms of work, and a second thread can
#: cost more than it saves: right after a NumPy matmul, OpenBLAS's threads spin
#: for ~0.1 s, and GNU OpenMP's (numba's default layer) spin after each region;
#: the two pools then take turns on the cores, and a two-thread region waits
#: for a thread the OS has not scheduled. The benchmark's training step at
#: N = 1024 took 22–26 ms with two-thread kernels and 3.7 ms with these
#: (docs/performance.md). Larger arrays use all of numba's threads
#: (``numba.set_num_threads``).
PARALLEL_MIN_ELEMENTS = int(os.environ.get(PARALLEL_MIN_ELEMENTS_ENV, str(1 << 20)))


class _KernelCall:
    """Context for one kernel call: the lock, and one thread for small inputs."""

    __slots__ = ("saved", "serial")

    def __init__(self, size):
        self.serial = size < PARALLEL_MIN_ELEMENTS

    def __enter__(self):
        _run_lock.acquire()
        if self.serial:
            import numba

            self.saved = numba.get_num_threads()
            if self.saved > 1:
                numba.set_num_threads(1)
            else:
                self.serial = False
        return self

    def __exit__(self, *exc):
        try:
            if self.serial:
                import numba

                numba.set_num_threads(self.saved)
        finally:
            _run_lock.release()


def kernel_call(size: int) -> _KernelCall:
    """Context manager around every kernel call.

    It holds a lock (numba's "workqueue" threading layer, used where no OpenMP
    or TBB library is found, cannot run two parallel regions at once: two Python
    threads calling the kernels would abort the process; uncontended, the lock
    costs well under a microsecond) and runs inputs below
    :data:`PARALLEL_MIN_ELEMENTS` elements on one thread.
    """
    return _KernelCall(size)


_run_lock = threading.Lock()
