"""Pure forward/backward pairs in closed matrix form.

Every ``*_forward(...)`` returns ``(out, cache)`` and every
``*_backward(dout, cache)`` returns the gradients of the differentiable inputs
(a NamedTuple, or the single array for ops with one such input). Inputs are
never mutated. The functions run on any array-API namespace (NumPy, PyTorch,
CuPy, JAX, ``array_api_strict``).
"""

from .activations import *  # noqa: F401,F403
from .activations import __all__ as _act_all
from .batchnorm import *  # noqa: F401,F403
from .batchnorm import __all__ as _bn_all
from .batchnorm_double import *  # noqa: F401,F403
from .batchnorm_double import __all__ as _bnd_all
from .batchnorm_inference_stats import *  # noqa: F401,F403
from .batchnorm_inference_stats import __all__ as _bnis_all
from .group_batchnorm_double import *  # noqa: F401,F403
from .group_batchnorm_double import __all__ as _gbnd_all
from .layernorm import *  # noqa: F401,F403
from .layernorm import __all__ as _ln_all
from .batch_renorm import *  # noqa: F401,F403
from .batch_renorm import __all__ as _brn_all
from .batchnorm_weighted import *  # noqa: F401,F403
from .batchnorm_weighted import __all__ as _bnw_all
from .double_backward import *  # noqa: F401,F403
from .double_backward import __all__ as _dbl_all
from .batchnorm_inference import *  # noqa: F401,F403
from .batchnorm_inference import __all__ as _bni_all
from .dense import *  # noqa: F401,F403
from .dense import __all__ as _dense_all
from .group_batchnorm import *  # noqa: F401,F403
from .group_batchnorm import __all__ as _gbn_all
from .group_batchnorm_inference import *  # noqa: F401,F403
from .group_batchnorm_inference import __all__ as _gbni_all
from .losses import *  # noqa: F401,F403
from .losses import __all__ as _loss_all
from .within import *  # noqa: F401,F403
from .within import __all__ as _within_all

__all__ = [
    *_dense_all, *_bn_all, *_bni_all, *_act_all, *_loss_all,
    *_gbn_all, *_gbni_all, *_within_all, *_bnd_all, *_dbl_all, *_bnw_all,
    *_bnis_all, *_ln_all, *_brn_all, *_gbnd_all,
]

# The fused kernels behind these ops hand calls they cannot match bit for bit
# back to the reference formulas; they find them in the leaf ops._types rather
# than import an op module (the ops dispatch to the kernels: that would be a cycle).
from ._types import register_references as _register  # noqa: E402

_register(
    batchnorm_forward=batchnorm_forward,                        # noqa: F405
    batchnorm_backward=batchnorm_backward,                      # noqa: F405
    batchnorm_inference_forward=batchnorm_inference_forward,    # noqa: F405
    batchnorm_inference_backward=batchnorm_inference_backward,  # noqa: F405
    relu_forward=relu_forward,                                  # noqa: F405
    relu_backward=relu_backward,                                # noqa: F405
)
