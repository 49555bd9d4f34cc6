"""``check_grad``: hand-written gradients of a scalar function of named parameters."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .._array_api import to_numpy
from ._numerical import (
    _EPS, _NOISE_FACTOR, _REL_STEP, DegenerateCheckWarning, _check_tolerances, _float64_copy,
    _noise, _rel_error, _scalar, _stencil, numerical_grad,
)


# --------------------------------------------------------------------------- check_grad


class ParamCheck(NamedTuple):
    """Comparison for one parameter (all arrays float64, of the parameter's shape)."""

    name: str
    shape: tuple
    analytic: np.ndarray
    numerical: np.ndarray
    analytic_norm: float     # Frobenius norm of the analytic gradient
    numerical_norm: float
    max_abs_error: float     # max |a − n|
    rel_error: float         # max |a − n| / (max(|a|, |n|) + atol/rtol)
    worst_index: tuple       # where rel_error is attained
    ok: bool


class DirectionalCheck(NamedTuple):
    """All parameters moved at once along a random direction v: d f(θ + t v)/dt at 0."""

    analytic: float          # Σ_k <grad_k, v_k>
    numerical: float         # fourth-order central difference along v
    abs_error: float
    rel_error: float
    ok: bool


@dataclass(frozen=True)
class GradCheckReport:
    """Result of :func:`check_grad`; ``str(report)`` is a readable table.

    Attributes
    ----------
    params : dict of str -> ParamCheck
        One entry per parameter, in the order of the ``params`` dict.
    directional : DirectionalCheck
        The joint check along a random direction.
    value : float
        ``f(params)``.
    rtol, atol : float
    warnings : tuple of str
        Degenerate checks (also emitted as :class:`DegenerateCheckWarning`).
    problems : tuple of str
        Contract violations (``grad`` not repeatable); each makes the check fail.
    """

    params: dict
    directional: DirectionalCheck
    value: float
    rtol: float
    atol: float
    warnings: tuple = ()
    problems: tuple = ()

    @property
    def ok(self) -> bool:
        """True when every parameter and the directional check agree."""
        return (not self.problems and all(p.ok for p in self.params.values())
                and self.directional.ok)

    @property
    def errors(self) -> dict:
        """name -> max relative error of that parameter's gradient."""
        return {name: p.rel_error for name, p in self.params.items()}

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        head = ("name", "shape", "|analytic|", "|numerical|", "max abs err", "rel err",
                "worst at", "")
        rows = [
            (p.name, str(p.shape), f"{p.analytic_norm:.4e}", f"{p.numerical_norm:.4e}",
             f"{p.max_abs_error:.2e}", f"{p.rel_error:.2e}", str(p.worst_index),
             "OK" if p.ok else "FAIL")
            for p in self.params.values()
        ]
        widths = [max(len(r[j]) for r in (head, *rows)) for j in range(len(head))]
        fmt = "  ".join(f"{{:<{w}}}" for w in widths)
        d = self.directional
        lines = [
            f"check_grad: {'OK' if self.ok else 'FAIL'}   f = {self.value:.6g}   "
            f"rtol = {self.rtol:g}, atol = {self.atol:g}",
            fmt.format(*head).rstrip(),
            *(fmt.format(*r).rstrip() for r in rows),
            f"all parameters along a random direction: analytic {d.analytic:.10e}, "
            f"numerical {d.numerical:.10e}, rel err {d.rel_error:.2e}  "
            f"{'OK' if d.ok else 'FAIL'}",
            "rel err = max |a - n| / (max(|a|, |n|) + atol/rtol) over entries; "
            "norms are Frobenius",
        ]
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)

    __repr__ = __str__


def _validated_grads(g, params: dict) -> dict:
    if not isinstance(g, Mapping):
        raise ValueError(f"grad(params) must return a dict like params; got {type(g).__name__}")
    missing = [k for k in params if k not in g]
    extra = [k for k in g if k not in params]
    if missing or extra:
        raise ValueError(
            "grad(params) must return the same keys as params; "
            f"missing {missing}, unexpected {extra}"
        )
    out = {}
    for name, x in params.items():
        if g[name] is None:
            raise ValueError(f"grad(params)[{name!r}] is None; expected shape {x.shape}")
        gi = np.array(to_numpy(g[name]), dtype=np.float64, copy=True)
        if gi.shape != x.shape:
            hint = ""
            if x.ndim == 1 and gi.shape == (x.shape[0], x.shape[0]):
                hint = (
                    ": a square matrix where a vector is expected — was the full matrix "
                    "(for example ẐᵀG) returned instead of its diagonal diag(ẐᵀG) = 1ᵀ(G∘Ẑ)?"
                )
            raise ValueError(
                f"grad(params)[{name!r}] has shape {gi.shape} but params[{name!r}] has "
                f"shape {x.shape}; a gradient has its parameter's shape{hint}"
            )
        out[name] = gi
    return out


def check_grad(f, grad, params, *, rtol: float = 1e-6, atol: float = 1e-8, seed: int = 0,
               step=None) -> GradCheckReport:
    """Compare a hand-derived gradient with finite differences.

    Each parameter is checked with the others fixed (:func:`numerical_grad`),
    then all parameters move together along a random direction ``v`` (entries
    ``N(0, 1)·max(1, |θ|)``), comparing ``Σ_k <grad_k, v_k>`` with the
    numerical derivative of ``t ↦ f(θ + t v)``. See the module docstring for the
    error measure.

    Parameters
    ----------
    f : callable
        ``f(params) -> float``; receives a dict of NumPy float64 arrays and must
        not modify them.
    grad : callable
        ``grad(params) -> dict`` with the keys of ``params`` and arrays of the
        same shapes (any array-API namespace).
    params : dict of str -> array_like
        The point. Converted to float64 NumPy copies; the caller's arrays are
        never modified.
    rtol, atol : float
        An entry agrees when ``|a − n| ≤ atol + rtol·max(|a|, |n|)``.
    seed : int
        Seed of the random direction (NumPy ``default_rng``).
    step : float, optional
        Absolute finite-difference step; default relative, see :func:`numerical_grad`.

    Returns
    -------
    GradCheckReport
        ``.ok``, ``.errors`` (name -> max relative error), per-parameter
        details in ``.params``, the joint check in ``.directional``;
        ``print(report)`` shows a table.

    Raises
    ------
    ValueError
        ``grad`` returns other keys or shapes than ``params`` (the message
        names them), or ``f`` does not return a finite scalar.

    Warns
    -----
    DegenerateCheckWarning
        A parameter's numerical gradient is (near) zero everywhere, or ``f``
        does not depend on it at all: the check cannot discriminate there.
    """
    _check_tolerances(rtol, atol)
    if not isinstance(params, Mapping) or not params:
        raise ValueError("params must be a non-empty dict name -> array")
    base = {name: _float64_copy(x, f"params[{name!r}]") for name, x in params.items()}

    def fresh():
        return {k: v.copy() for k, v in base.items()}

    value = _scalar(f(fresh()), "f")
    if not math.isfinite(value):
        raise ValueError(f"f(params) is not finite ({value})")
    analytic = _validated_grads(grad(fresh()), base)
    # As PyTorch's gradcheck demands a re-entrant backward: a second call must
    # give the same bits (no hidden state, no randomness, no reuse of buffers).
    again = _validated_grads(grad(fresh()), base)
    problems = tuple(
        f"grad(params) is not repeatable: two calls give different {name!r}"
        for name in base if not np.array_equal(analytic[name], again[name])
    )
    rng = np.random.default_rng(seed)
    v = {k: rng.standard_normal(x.shape) * np.maximum(1.0, np.abs(x)) for k, x in base.items()}
    order = 4
    h = _REL_STEP[order] if step is None else float(step)
    zero_level = max(atol, _NOISE_FACTOR * _noise(abs(value), h, order))

    checks, notes = {}, []
    for name, x in base.items():

        def f_one(xk, name=name):
            return f({**fresh(), name: xk})

        num = numerical_grad(f_one, x, step=step, order=order)
        a = analytic[name]
        err = _rel_error(a, num, rtol, atol)
        worst = np.unravel_index(int(np.argmax(err)), x.shape) if x.size else ()
        checks[name] = ParamCheck(
            name=name, shape=x.shape, analytic=a, numerical=num,
            analytic_norm=float(np.linalg.norm(a)), numerical_norm=float(np.linalg.norm(num)),
            max_abs_error=float(np.max(np.abs(a - num), initial=0.0)),
            rel_error=float(np.max(err, initial=0.0)),
            worst_index=tuple(int(i) for i in worst),
            ok=bool(np.all(err <= rtol)),
        )
        if x.size and np.max(np.abs(num)) <= zero_level:
            notes.append(_degeneracy_note(f_one, x, value, name, rng))

    num_dir = _stencil(
        lambda t: _scalar(f({k: x + t * v[k] for k, x in base.items()}), "f"), h, order
    )
    a_dir = float(sum(np.sum(analytic[k] * v[k]) for k in base))
    err_dir = float(_rel_error(a_dir, num_dir, rtol, atol))
    directional = DirectionalCheck(
        analytic=a_dir, numerical=float(num_dir), abs_error=abs(a_dir - num_dir),
        rel_error=err_dir, ok=err_dir <= rtol,
    )
    for note in notes:
        warnings.warn(note, DegenerateCheckWarning, stacklevel=2)
    return GradCheckReport(params=checks, directional=directional, value=value,
                           rtol=rtol, atol=atol, warnings=tuple(notes), problems=problems)


def _degeneracy_note(f_one, x, value, name, rng) -> str:
    """Say whether f ignores the parameter altogether or is only flat here."""
    far = x + 0.5 * rng.standard_normal(x.shape) * np.maximum(1.0, np.abs(x))
    try:
        moved = _scalar(f_one(far), "f")
    except (ValueError, FloatingPointError, ZeroDivisionError):
        moved = math.nan
    if math.isfinite(moved) and abs(moved - value) <= _NOISE_FACTOR * _EPS * max(1.0, abs(value)):
        return (
            f"f does not depend on {name!r}: it stays at {value:.6g} when {name!r} moves "
            "far; any gradient formula that returns zeros passes. Make the loss depend on "
            f"{name!r} (for example R = Σ W∘out with a random W, not an all-ones upstream "
            "gradient)."
        )
    return (
        f"the numerical gradient of {name!r} is zero everywhere (to rounding): the check "
        f"cannot tell a correct formula for it from any wrong one that also gives zero. "
        "Use a random upstream gradient (R = Σ W∘out with random W) or another point."
    )
