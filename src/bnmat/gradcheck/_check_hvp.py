"""``check_hvp``: a hand-written Hessian-vector product against differences of the gradient."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from ._check_grad import _validated_grads
from ._numerical import _REL_STEP, _check_tolerances, _float64_copy, _rel_error, _stencil

__all__ = ["check_hvp", "HVPCheckReport", "HVPDirection"]


class HVPDirection(NamedTuple):
    """One random direction v: H v by the formula and by differences of the gradient."""

    errors: dict             # name -> max relative error of (H v)[name]
    analytic_norm: float     # ‖H v‖ over all parameters (Frobenius)
    numerical_norm: float
    ok: bool


@dataclass(frozen=True)
class HVPCheckReport:
    """Result of :func:`check_hvp`; ``str(report)`` is a readable summary.

    Attributes
    ----------
    directions : tuple of HVPDirection
    symmetry_error : float
        ``|⟨u, H v⟩ − ⟨v, H u⟩| / (|⟨u, H v⟩| + |⟨v, H u⟩| + atol/rtol)`` for
        the first two directions (a Hessian is symmetric).
    rtol, atol : float
    """

    directions: tuple
    symmetry_error: float
    rtol: float
    atol: float

    @property
    def ok(self) -> bool:
        """True when every direction agrees and H v is symmetric to ``rtol``."""
        return all(d.ok for d in self.directions) and self.symmetry_error <= self.rtol

    @property
    def errors(self) -> dict:
        """name -> max relative error over all directions."""
        out: dict = {}
        for d in self.directions:
            for k, e in d.errors.items():
                out[k] = max(out.get(k, 0.0), e)
        return out

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        lines = [f"check_hvp: {'OK' if self.ok else 'FAIL'}   rtol = {self.rtol:g}, "
                 f"atol = {self.atol:g}"]
        for i, d in enumerate(self.directions):
            worst = max(d.errors.items(), key=lambda kv: kv[1])
            lines.append(
                f"direction {i}: |Hv| analytic {d.analytic_norm:.6e}, numerical "
                f"{d.numerical_norm:.6e}, worst {worst[0]!r} rel err {worst[1]:.2e}  "
                f"{'OK' if d.ok else 'FAIL'}")
        lines.append(f"symmetry <u,Hv> vs <v,Hu>: rel err {self.symmetry_error:.2e}  "
                     f"{'OK' if self.symmetry_error <= self.rtol else 'FAIL'}")
        return "\n".join(lines)

    __repr__ = __str__


def check_hvp(grad, hvp, params, *, rtol: float = 1e-6, atol: float = 1e-8, seed: int = 0,
              n_directions: int = 2, step=None) -> HVPCheckReport:
    """Compare a hand-derived Hessian-vector product with differences of the gradient.

    For random directions v (entries ``N(0, 1)·max(1, |θ|)``) the numerical
    H v is the fourth-order central difference of ``t ↦ grad(θ + t v)`` at 0::

        H v ≈ [g(θ − 2hv) − 8 g(θ − hv) + 8 g(θ + hv) − g(θ + 2hv)] / (12 h)

    compared entry by entry as in :func:`check_grad`. The first two directions
    also check symmetry, ``⟨u, H v⟩ = ⟨v, H u⟩``. The gradient itself should
    pass :func:`check_grad` first: this check trusts it.

    Parameters
    ----------
    grad : callable
        ``grad(params) -> dict`` (the keys and shapes of ``params``).
    hvp : callable
        ``hvp(params, v) -> dict``: H v for a direction ``v`` shaped like ``params``.
    params : dict of str -> array_like
        The point (float64 copies are passed; the caller's arrays are not touched).
    rtol, atol : float
    seed : int
    n_directions : int, default 2
    step : float, optional
        The step h along v; default ``eps^(1/5) ≈ 7e-4``.

    Returns
    -------
    HVPCheckReport
        ``.ok``, ``.errors`` (name → max relative error), ``print(report)``.
    """
    _check_tolerances(rtol, atol)
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty dict name -> array")
    if int(n_directions) < 1:
        raise ValueError(f"n_directions must be >= 1; got {n_directions!r}")
    base = {k: _float64_copy(x, f"params[{k!r}]") for k, x in params.items()}
    rng = np.random.default_rng(seed)
    h = _REL_STEP[4] if step is None else float(step)
    directions, hvs = [], []
    for _ in range(int(n_directions)):
        v = {k: rng.standard_normal(x.shape) * np.maximum(1.0, np.abs(x)) for k, x in base.items()}
        analytic = _validated_grads(hvp({k: x.copy() for k, x in base.items()},
                                        {k: a.copy() for k, a in v.items()}), base)
        numerical = {}
        for k in base:
            numerical[k] = _stencil(
                lambda t, k=k: _validated_grads(
                    grad({j: x + t * v[j] for j, x in base.items()}), base)[k], h, 4)
        errors = {k: float(np.max(_rel_error(analytic[k], numerical[k], rtol, atol),
                                  initial=0.0)) for k in base}
        directions.append(HVPDirection(
            errors=errors,
            analytic_norm=float(np.sqrt(sum(np.sum(a * a) for a in analytic.values()))),
            numerical_norm=float(np.sqrt(sum(np.sum(a * a) for a in numerical.values()))),
            ok=all(e <= rtol for e in errors.values())))
        hvs.append((v, analytic))
    sym = 0.0
    if len(hvs) >= 2:
        (u, hu), (v, hv) = hvs[0], hvs[1]
        uhv = float(sum(np.sum(u[k] * hv[k]) for k in base))
        vhu = float(sum(np.sum(v[k] * hu[k]) for k in base))
        sym = abs(uhv - vhu) / (abs(uhv) + abs(vhu) + atol / rtol)
    return HVPCheckReport(directions=tuple(directions), symmetry_error=sym, rtol=rtol,
                          atol=atol)
