"""Fused, multi-threaded CPU kernels behind the ops, for NumPy arrays.

The ops in :mod:`bnmat.ops` are the readable reference: matrix formulas on the
array API. For plain NumPy float32/float64 input (integers and float16 are
converted first, as the reference does) they hand over to the kernels here,
written with numba (``parallel=True``), which compute the same quantities in
fewer passes over the N×p data and with fewer temporaries:

=================================  ============================  =========================
op                                 reference (N×p passes/temps)  kernel
=================================  ============================  =========================
batch norm, training, forward      ~8 passes, 4 temporaries      2 passes (stats, y)
batch norm, training, backward     ~7 passes, 4 temporaries      2 passes (sums, dx)
batch norm + ReLU (fused)          the two ops composed          as batch norm alone
batch norm, inference, forward     4 passes, 2 arrays            1 pass, 1 array
ReLU forward / backward            3 passes, 3 arrays            1 pass, 1 array
=================================  ============================  =========================

Statistics and the backward sums accumulate in float64 for float32 data, and the
results agree with the reference formulas to rounding (``tests/test_kernels.py``;
inference batch norm and ReLU bitwise). The design and measurements are in
``docs/performance.md``.

When the kernels run
--------------------
* numba is installed (``pip install bnmat[fast]``); see :func:`available`;
* the environment variable ``BNMAT_DISABLE_KERNELS`` is not ``1`` (read at every
  call); see :func:`enabled`;
* the kernels are compiled for this machine: otherwise they are compiled in a
  background process, announced once on stderr, and this process keeps to the
  reference formulas (``BNMAT_KERNELS_COMPILE=sync`` compiles in the
  foreground instead); see :mod:`bnmat._kernels._warm`;
* every array argument is a plain ``numpy.ndarray`` in the machine's byte order
  (torch, CuPy, JAX and array_api_strict arrays always take the reference path);
* the input has at least :data:`MIN_ELEMENTS` elements;
* the process is not a child forked after the kernels ran (OpenMP is not
  fork-safe; such a child uses the reference formulas).

Beyond the ops: output buffers (``out=``) for training loops, and batch norm
fused with ReLU (:func:`batchnorm_relu_forward`, :func:`batchnorm_relu_backward`),
which never stores the batch-norm output and recomputes the ReLU mask from x.

The kernels raise no errors of their own: NaN/inf, a variance or s that does
not fit the dtype, zero variance with eps = 0, and statistics outside the range
where their arithmetic matches the reference's go to the reference formulas,
which decide the result or the error (``tests/test_kernel_parity.py``).

The kernel caches hold x itself (X̂ is recomputed), so x must not be written
into between a forward and its backward pass.
"""

from . import _config
from ._batchnorm import batchnorm_backward, batchnorm_backward_applies, batchnorm_forward
from ._lean import batchnorm_relu_backward, batchnorm_relu_forward
from ._lean import lean_backward as lean_batchnorm_backward
from ._lean import lean_forward as lean_batchnorm_forward
from ._caches import (
    BatchNormInferenceKernelCache,
    BatchNormKernelCache,
    BatchNormReLUCache,
)
from ._config import DISABLE_ENV, available, enabled, wants
from ._elementwise import (
    batchnorm_inference_backward,
    batchnorm_inference_forward,
    relu_backward,
    relu_backward_applies,
    relu_forward,
    relu_forward_applies,
)

__all__ = [
    "DISABLE_ENV",
    "MIN_ELEMENTS",
    "BatchNormInferenceKernelCache",
    "BatchNormKernelCache",
    "BatchNormReLUCache",
    "available",
    "batchnorm_backward",
    "batchnorm_backward_applies",
    "batchnorm_forward",
    "batchnorm_inference_backward",
    "batchnorm_inference_forward",
    "batchnorm_relu_backward",
    "batchnorm_relu_forward",
    "enabled",
    "lean_batchnorm_backward",
    "lean_batchnorm_forward",
    "relu_backward",
    "relu_backward_applies",
    "relu_forward",
    "relu_forward_applies",
    "wants",
]


def __getattr__(name):
    # MIN_ELEMENTS lives in _config (tests lower it there); read it live.
    if name == "MIN_ELEMENTS":
        return _config.MIN_ELEMENTS
    raise AttributeError(f"module 'bnmat._kernels' has no attribute {name!r}")
