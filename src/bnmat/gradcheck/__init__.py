"""Check hand-derived gradients against finite differences in float64.

Three tools, from the smallest to the most automatic:

* :func:`numerical_grad` — the gradient of a scalar function, one entry at a
  time, by a fourth-order central difference.
* :func:`check_grad` — compares a hand-written ``grad(params)`` with the
  numerical gradient of ``f(params)``, one parameter at a time and then along a
  random direction in which all parameters move at once, and returns a
  :class:`GradCheckReport` that prints as a table.
* :func:`check_vjp` — a random-projection test of a ``forward``/``backward`` op
  pair in the :mod:`bnmat.ops` convention, on any array-API namespace.

How errors are measured
-----------------------
An analytic value ``a`` and a numerical value ``n`` agree when::

    |a − n| ≤ atol + rtol · max(|a|, |n|)

elementwise (as ``numpy.isclose``, but symmetric). The relative error reported
is the same test turned into a number::

    rel = |a − n| / (max(|a|, |n|) + atol/rtol)

so that ``rel ≤ rtol`` exactly when the entry agrees. For entries much larger
than ``atol/rtol`` it is the ordinary relative error; entries near zero are
judged by their absolute error, so an exact zero next to numerical noise does
not count as a 100 % error. A parameter's error is the maximum over its entries.

A check that cannot fail is worse than none: when a numerical gradient is
(near) zero everywhere — for example ``R = Σ BN(Z)``, whose gradient with
respect to ``Z`` and ``γ`` vanishes identically, the all-ones upstream gradient
of a famous batch-norm test — every formula that also returns zero passes.
Such cases emit a :class:`DegenerateCheckWarning` and are listed in the report.
"""

from ._check_hvp import HVPCheckReport, HVPDirection, check_hvp
from ._check_grad import DirectionalCheck, GradCheckReport, ParamCheck, check_grad
from ._numerical import DegenerateCheckWarning, numerical_grad
from ._vjp import VJPCheckReport, assert_vjp, check_vjp

__all__ = [
    "DegenerateCheckWarning",
    "numerical_grad",
    "check_grad",
    "check_hvp",
    "HVPCheckReport",
    "HVPDirection",
    "GradCheckReport",
    "ParamCheck",
    "DirectionalCheck",
    "check_vjp",
    "assert_vjp",
    "VJPCheckReport",
]
