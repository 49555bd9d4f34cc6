"""The serial and parallel builds of the batch-norm kernels, and the public ops' lean path.

* ``forward_serial`` / ``backward_serial`` (``parallel=False``) run inputs below
  ``PARALLEL_MIN_ELEMENTS`` without starting a parallel region or switching
  numba's thread count. They are the same source with the same row chunks, so
  their results must be **bitwise** those of the parallel builds (whatever the
  thread count): checked here directly on the kernels and through the public
  ops below and above the threshold.
* ``lean_forward`` / ``lean_backward`` take the public ops' common case (plain
  C-contiguous float arrays, float eps, int ddof) with fewer checks. They must
  give bitwise what the general kernel path gives, take only that case (None
  otherwise, so the general path keeps its checks and messages), and hand what
  the kernel cannot treat to the reference formulas (the same error). The
  property test in ``tests/test_kernel_parity.py`` also runs through them.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

numba = pytest.importorskip("numba")

from bnmat import _kernels, ops  # noqa: E402
from bnmat._kernels import _batchnorm, _config, _lean  # noqa: E402


@pytest.fixture
def kernels_on(monkeypatch):
    monkeypatch.delenv(_config.DISABLE_ENV, raising=False)
    monkeypatch.setattr(_config, "MIN_ELEMENTS", 0)
    assert _kernels.enabled()


def _data(rng, n, p, dtype, loc=300.0):
    # a mean that float32 cannot hold exactly next to the spread: mean_lo != 0
    x = (loc + 3.0 * rng.standard_normal((n, p))).astype(dtype)
    gamma = (1.0 + 0.3 * rng.standard_normal(p)).astype(dtype)
    beta = (0.5 * rng.standard_normal(p)).astype(dtype)
    dy = rng.standard_normal((n, p)).astype(dtype)
    return x, gamma, beta, dy


def _both_builds(x, gamma, beta, dy, relu, rows4):
    """Forward, backward out of place and backward in place (out = dy), per build."""
    k = _config.load_kernels()
    n = x.shape[0]
    runs = []
    for forward, backward in ((k.forward, k.backward), (k.forward_serial, k.backward_serial)):
        out = np.empty_like(x)
        stats = forward(x, gamma, beta, 1e-5, 0, relu, x.dtype == np.float64, rows4,
                        _batchnorm._nchunks(n), out)
        _, var, inv_std, mean_hi, mean_lo, scale, status, _ = stats
        assert status == 0
        a = gamma.astype(np.float64) * inv_std
        dx = np.empty_like(x)
        sums = backward(dy, x, mean_hi, mean_lo, scale, beta, relu, inv_std, a, float(n),
                        rows4, _batchnorm._nchunks(n), dx)
        dy_inplace = dy.copy()
        sums_inplace = backward(dy_inplace, x, mean_hi, mean_lo, scale, beta, relu, inv_std, a,
                                float(n), rows4, _batchnorm._nchunks(n), dy_inplace)
        runs.append([*stats[:6], out, *sums, dx, *sums_inplace, dy_inplace])
    return runs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("rows4", [True, False])
@pytest.mark.parametrize("shape", [(2, 1), (7, 3), (130, 17), (2051, 37)])
def test_serial_build_is_bitwise_the_parallel_build(rng, dtype, relu, rows4, shape):
    """Every returned statistic, y, dγ, dβ and dx (out of place and in place)."""
    x, gamma, beta, dy = _data(rng, *shape, dtype)
    threads = numba.get_num_threads()
    try:
        for t in sorted({1, threads}):
            numba.set_num_threads(t)
            parallel, serial = _both_builds(x, gamma, beta, dy, relu, rows4)
            for i, (a, b) in enumerate(zip(parallel, serial)):
                assert np.array_equal(a, b), i
            # in place (out = dy) is bitwise out of place
            assert np.array_equal(parallel[-1], parallel[9])
    finally:
        numba.set_num_threads(threads)


def test_the_bitwise_check_can_fail(rng):
    """The comparison above sees a one-chunk difference (different summation order)."""
    k = _config.load_kernels()
    x, gamma, beta, _ = _data(rng, 2051, 37, np.float32)
    out1, out2 = np.empty_like(x), np.empty_like(x)
    a = k.forward(x, gamma, beta, 1e-5, 0, False, False, True, 32, out1)
    b = k.forward_serial(x, gamma, beta, 1e-5, 0, False, False, True, 31, out2)
    assert not all(np.array_equal(u, v) for u, v in zip(a[:6] + (out1,), b[:6] + (out2,)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [False, True])
def test_public_ops_below_and_above_the_parallel_threshold(kernels_on, monkeypatch, rng,
                                                          dtype, relu):
    """The same call with the threshold above the size (serial build) and at 0
    (parallel build, every thread): bitwise the same, and numba's thread count
    is never touched by the serial path."""
    x, gamma, beta, dy = _data(rng, 1031, 45, dtype)
    fwd = _kernels.batchnorm_relu_forward if relu else ops.batchnorm_forward
    bwd = _kernels.batchnorm_relu_backward if relu else ops.batchnorm_backward
    k = _config.load_kernels()
    calls = []
    for name in ("forward", "backward", "forward_serial", "backward_serial"):
        original = getattr(k, name)
        monkeypatch.setattr(k, name, (lambda f, nm: lambda *a: calls.append(nm) or f(*a))(
            original, name))
    runs = []
    for threshold in (10**12, 0):
        monkeypatch.setattr(_config, "PARALLEL_MIN_ELEMENTS", threshold)
        threads = numba.get_num_threads()
        y, cache = fwd(x, gamma, beta)
        runs.append((y, *bwd(dy, cache)))
        assert numba.get_num_threads() == threads
    assert calls == ["forward_serial", "backward_serial", "forward", "backward"]
    for a, b in zip(*runs):
        assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ddof", [0, 1])
def test_lean_path_is_bitwise_the_general_kernel_path(kernels_on, rng, dtype, ddof):
    x, gamma, beta, dy = _data(rng, 300, 21, dtype)
    lean = _lean.lean_forward(x, gamma, beta, 1e-5, ddof)
    assert lean is not None
    y, cache = _kernels.batchnorm_forward(x, gamma, beta, eps=1e-5, ddof=ddof)
    assert np.array_equal(lean[0], y)
    for a, b in zip(lean[1], cache):
        assert (a is None and b is None) or np.array_equal(a, b)
    assert lean[1].__dict__.keys() == cache.__dict__.keys()
    for key in cache.__dict__:
        assert np.array_equal(lean[1].__dict__[key], cache.__dict__[key]), key
    g_lean = _lean.lean_backward(dy, lean[1])
    g = _kernels.batchnorm_backward(dy, cache)
    assert type(g_lean) is type(g)
    for a, b in zip(g_lean, g):
        assert a.dtype == b.dtype == dtype and np.array_equal(a, b)
    # and what the public ops return is the lean result
    y2, c2 = ops.batchnorm_forward(x, gamma, beta, eps=1e-5, ddof=ddof)
    assert np.array_equal(y2, y)
    for a, b in zip(ops.batchnorm_backward(dy, c2), g):
        assert np.array_equal(a, b)


def _uncommon_cases(rng):
    x, gamma, beta, _ = _data(rng, 64, 8, np.float64)
    big = x.astype(">f8")
    yield "memmap-free subclass", (x.view(np.matrix).A.view(type("Sub", (np.ndarray,), {})),
                                   gamma, beta, 1e-5, 0)
    yield "Fortran order", (np.asfortranarray(x), gamma, beta, 1e-5, 0)
    yield "strided", (x[::2], gamma, beta, 1e-5, 0)
    yield "big-endian", (big, gamma, beta, 1e-5, 0)
    yield "float16", (x.astype(np.float16), gamma, beta, 1e-5, 0)
    yield "int", (x.astype(np.int64), gamma, beta, 1e-5, 0)
    yield "gamma of another dtype", (x, gamma.astype(np.float32), beta, 1e-5, 0)
    yield "gamma strided", (x, np.repeat(gamma, 2)[::2], beta, 1e-5, 0)
    yield "gamma 2-D", (x, gamma[None], beta, 1e-5, 0)
    yield "gamma too short", (x, gamma[:-1], beta, 1e-5, 0)
    yield "int eps", (x, gamma, beta, 0, 0)
    yield "numpy eps", (x, gamma, beta, np.float64(1e-5), 0)
    yield "negative eps", (x, gamma, beta, -1e-5, 0)
    yield "nan eps", (x, gamma, beta, float("nan"), 0)
    yield "inf eps", (x, gamma, beta, float("inf"), 0)
    yield "bool ddof", (x, gamma, beta, 1e-5, True)
    yield "negative ddof", (x, gamma, beta, 1e-5, -1)
    yield "ddof = N", (x, gamma, beta, 1e-5, 64)
    yield "one row", (x[:1], gamma, beta, 1e-5, 0)
    yield "no columns", (x[:, :0], gamma[:0], beta[:0], 1e-5, 0)
    yield "3-D", (x[None], gamma, beta, 1e-5, 0)


def test_lean_path_takes_only_the_common_case(kernels_on, rng):
    """Outside the common case the lean path declines (None): the general path
    then gives its own result or its own error, as before."""
    for name, args in _uncommon_cases(rng):
        assert _lean.lean_forward(*args) is None, name
    x, gamma, beta, dy = _data(rng, 64, 8, np.float64)
    assert _lean.lean_forward(x, gamma, beta, 1e-5, 63) is not None  # ddof = N - 1
    with _config.reference_only():
        assert _lean.lean_forward(x, gamma, beta, 1e-5, 0) is None
    os.environ[_config.DISABLE_ENV] = "1"
    try:
        assert _lean.lean_forward(x, gamma, beta, 1e-5, 0) is None
    finally:
        del os.environ[_config.DISABLE_ENV]
    _, cache = _lean.lean_forward(x, gamma, beta, 1e-5, 0)
    for bad_dy in (dy.astype(np.float32), np.asfortranarray(dy), dy[:-1], dy.tolist(),
                   dy.astype(">f8")):
        assert _lean.lean_backward(bad_dy, cache) is None
    _, relu_cache = _kernels.batchnorm_relu_forward(x, gamma, beta)
    assert _lean.lean_backward(dy, relu_cache.bn) is None
    with pytest.raises(ValueError, match="batchnorm_relu_backward"):
        ops.batchnorm_backward(dy, relu_cache.bn)


def test_lean_path_hands_bad_statistics_to_the_reference(kernels_on, monkeypatch, rng):
    """NaN, zero variance with eps = 0, overflowing float32 variance: the lean
    path raises the reference's error, word for word."""
    x, gamma, beta, dy = _data(rng, 200, 30, np.float32)
    cases = []
    bad = x.copy()
    bad[17, 4] = np.nan
    cases.append((bad, 1e-5))
    const = x.copy()
    const[:, 7] = 2.5
    cases.append((const, 0.0))
    huge = x.copy()
    huge[:, 3] = np.where(np.arange(200) % 2, 3e38, -3e38).astype(np.float32)
    cases.append((huge, 1e-5))
    for xb, eps in cases:
        with pytest.raises(ValueError) as lean_err:
            _lean.lean_forward(xb, gamma, beta, eps, 0)
        with monkeypatch.context() as m:
            m.setenv(_config.DISABLE_ENV, "1")
            with pytest.raises(ValueError) as ref_err:
                ops.batchnorm_forward(xb, gamma, beta, eps=eps)
        assert str(lean_err.value) == str(ref_err.value)
    # non-finite upstream gradient: the reference's result (NaN where it puts NaN)
    _, cache = _lean.lean_forward(x, gamma, beta, 1e-5, 0)
    dy_bad = dy.copy()
    dy_bad[3, 2] = np.inf
    with np.errstate(all="ignore"):
        got = _lean.lean_backward(dy_bad, cache)
        ref = ops.batchnorm_backward(dy_bad, cache.to_reference())
    for a, b in zip(got, ref):
        assert np.array_equal(a, b, equal_nan=True)


def test_warm_marker_depends_on_numba_cpu_features(monkeypatch):
    """Builds for another instruction set (NUMBA_CPU_FEATURES, e.g. AVX-512 off,
    as ``benchmarks/run.py --isa avx2`` sets it) get their own marker: a marker
    from the native build does not claim them compiled."""
    from numba.core import config

    from bnmat._kernels import _warm

    monkeypatch.setattr(config, "CPU_FEATURES", None)
    native = _warm.marker_path()
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,-avx512f")
    avx2 = _warm.marker_path()
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+avx512f")
    other = _warm.marker_path()
    assert len({native, avx2, other}) == 3
    assert os.path.dirname(native) == os.path.dirname(avx2)


def test_env_read_is_os_environ_get(monkeypatch):
    """enabled() reads BNMAT_DISABLE_KERNELS through environ's dict (no KeyError
    per call); it must see exactly what os.environ.get sees."""
    for value in ("1", " TRUE ", "0", "", "on", "ja", "é"):
        monkeypatch.setenv("BNMAT_TEST_ENV_READ", value)
        assert _config._env_get("BNMAT_TEST_ENV_READ") == os.environ.get("BNMAT_TEST_ENV_READ")
    monkeypatch.delenv("BNMAT_TEST_ENV_READ")
    assert _config._env_get("BNMAT_TEST_ENV_READ") is None
    for value, on in (("1", False), (" Yes ", False), ("0", True), ("", True)):
        monkeypatch.setenv(_config.DISABLE_ENV, value)
        assert _config.enabled() is on
        assert _config.lean_enabled() is on
    with _config.reference_only():
        assert not _config.lean_enabled()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lean_relu_path_is_bitwise_the_general_kernel_path(kernels_on, rng, dtype):
    """The fused BN+ReLU pair (what Sequential's fused layers call) through the
    lean path: H, the cache, and the backward out of place and in place (out=dh)
    bitwise as the general kernel path gives them."""
    x, gamma, beta, dy = _data(rng, 300, 21, dtype)
    h, cache = _kernels.batchnorm_relu_forward(x, gamma, beta)
    assert cache.relu is None and cache.bn.relu is True
    h_gen, bn_gen = _batchnorm._forward(x, gamma, beta, 1e-5, 0, True, None)
    assert np.array_equal(h, h_gen)
    for key in bn_gen.__dict__:
        assert np.array_equal(cache.bn.__dict__[key], bn_gen.__dict__[key]), key
    for a, b in zip(cache.bn, bn_gen):
        assert (a is None and b is None) or np.array_equal(a, b)
    grads = _kernels.batchnorm_relu_backward(dy, cache)
    a64 = bn_gen.gamma.astype(np.float64) * bn_gen.inv_std64
    general = _batchnorm._backward(dy, bn_gen.x, bn_gen.mean, bn_gen.mean_lo, bn_gen.scale,
                                   bn_gen.beta, True, bn_gen.inv_std64, a64, 0, None)
    dh = dy.copy()
    inplace = _kernels.batchnorm_relu_backward(dh, cache, out=dh)
    assert inplace.dx is dh
    for g in (grads, inplace):
        for a, b in zip(g, general):
            assert a.dtype == b.dtype == dtype and np.array_equal(a, b)
    # a read-only dh as out: the general path's error
    ro = dy.copy()
    ro.flags.writeable = False
    assert _lean.lean_backward(ro, cache.bn, True, ro) is None
    with pytest.raises(ValueError, match="writeable"):
        _kernels.batchnorm_relu_backward(ro, cache, out=ro)
    # a plain-BN cache is not taken as a ReLU one, nor the other way round
    assert _lean.lean_backward(dy, cache.bn, False) is None
    _, plain = _lean.lean_forward(x, gamma, beta, 1e-5, 0)
    assert _lean.lean_backward(dy, plain, True) is None


def test_non_finite_sums_are_decided_per_element():
    """The backward kernel leaves out unwritten exactly when an element of dγ or
    dβ is not finite; finite sums whose total overflows are not that case."""
    f = _batchnorm._sums_not_finite
    big = np.array([1.5e308, 1.5e308])
    assert not f(big, -big)                      # the totals overflow, the elements do not
    assert not f(np.ones(3), np.ones(3))
    assert f(np.array([1.0, np.inf]), np.array([1.0, 0.0]))   # 0·inf
    assert f(np.array([1.0, 2.0]), np.array([np.nan, 1.0]))
    assert f(np.array([-np.inf]), np.array([3.0]))
