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

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import array_api_compat

from ._array_api import get_namespace, to_numpy

__all__ = [
    "DegenerateCheckWarning",
    "numerical_grad",
    "check_grad",
    "GradCheckReport",
    "ParamCheck",
    "DirectionalCheck",
    "check_vjp",
    "assert_vjp",
    "VJPCheckReport",
]

_EPS = float(np.finfo(np.float64).eps)
#: Step of the fourth-order stencil relative to max(1, |x|): eps^(1/5) balances
#: truncation error O(h⁴) against rounding error O(eps/h).
_REL_STEP = {4: _EPS ** (1 / 5), 2: _EPS ** (1 / 3)}
# (offsets, weights, denominator): f′(x) ≈ Σ w f(x + o·h) / (d·h)
_STENCIL = {
    4: ((-2.0, -1.0, 1.0, 2.0), (1.0, -8.0, 8.0, -1.0), 12.0),
    2: ((-1.0, 1.0), (-1.0, 1.0), 2.0),
}
# A numerical derivative is "zero" when below this multiple of its rounding error.
_NOISE_FACTOR = 100.0


class DegenerateCheckWarning(UserWarning):
    """A gradient check that cannot tell a correct formula from a wrong one."""


# --------------------------------------------------------------------------- helpers


def _scalar(value, what: str) -> float:
    """``float(value)`` for a Python number or a one-element array of any namespace."""
    if isinstance(value, (int, float)):
        return float(value)
    arr = to_numpy(value)
    if arr.size != 1:
        raise ValueError(f"{what} must return a scalar; got an array of shape {arr.shape}")
    return float(arr.reshape(()))


def _float64_copy(x, name: str) -> np.ndarray:
    arr = np.array(to_numpy(x), dtype=np.float64, copy=True)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinity; gradients cannot be checked there")
    return arr


def _check_tolerances(rtol, atol):
    if not (rtol > 0 and math.isfinite(rtol)):
        raise ValueError(f"rtol must be a finite number > 0; got {rtol!r}")
    if not (atol >= 0 and math.isfinite(atol)):
        raise ValueError(f"atol must be a finite number >= 0; got {atol!r}")


def _rel_error(a, n, rtol, atol):
    """Elementwise |a − n| / (max(|a|, |n|) + atol/rtol); ≤ rtol where they agree."""
    a, n = np.asarray(a, dtype=np.float64), np.asarray(n, dtype=np.float64)
    err = np.abs(a - n) / (np.maximum(np.abs(a), np.abs(n)) + atol / rtol)
    return np.where(np.isfinite(err), err, np.inf)


def _stencil(phi, h, order):
    """Σ w φ(o·h) / (d·h): the derivative of φ at 0 (h a scalar)."""
    offsets, weights, denom = _STENCIL[order]
    return sum(w * phi(o * h) for o, w in zip(offsets, weights)) / (denom * h)


def _noise(value_scale: float, h: float, order: int) -> float:
    """Rounding error of a stencil derivative of a function of size value_scale."""
    _, weights, denom = _STENCIL[order]
    scale = max(value_scale, np.finfo(np.float64).tiny)
    return _EPS * scale * sum(map(abs, weights)) / (denom * h)


# --------------------------------------------------------------------------- numerical_grad


def numerical_grad(f, x, *, step=None, order: int = 4) -> np.ndarray:
    """Gradient of a scalar function by central differences, one entry at a time.

    Formula (fourth order, the default)::

        ∂f/∂x_i ≈ [f(x − 2h e_i) − 8 f(x − h e_i) + 8 f(x + h e_i) − f(x + 2h e_i)] / (12 h)

    with ``h = eps^(1/5) · max(1, |x_i|)`` (about ``7e-4 · max(1, |x_i|)``), whose
    error is near ``1e-12`` relative for smooth functions of moderate scale.
    ``order=2`` uses ``[f(x + h e_i) − f(x − h e_i)] / (2h)`` with
    ``h = eps^(1/3) · max(1, |x_i|)``. The step actually taken is rounded so that
    ``x_i + h`` is exact in binary floating point.

    Parameters
    ----------
    f : callable
        ``f(x) -> float`` (a Python number or a one-element array). It receives a
        NumPy float64 array of x's shape and must not modify it.
    x : array_like, any shape
        The point; any array-API array or nested list. It is never modified:
        the function works on a float64 copy.
    step : float or array_like of x's shape, optional
        Absolute step(s) h, instead of the default relative one.
    order : {4, 2}
        Order of the central difference.

    Returns
    -------
    grad : numpy.ndarray, float64, shape of x

    Raises
    ------
    ValueError
        ``f`` does not return a finite scalar, or ``x`` is not finite.
    RuntimeError
        ``f`` modified its argument in place.
    """
    if order not in _STENCIL:
        raise ValueError(f"order must be 2 or 4; got {order!r}")
    x0 = _float64_copy(x, "x")
    work = x0.copy()
    flat = work.reshape(-1)  # a view: writing flat[i] perturbs work
    if step is None:
        steps = _REL_STEP[order] * np.maximum(1.0, np.abs(x0))
    else:
        steps = np.broadcast_to(np.asarray(step, dtype=np.float64), x0.shape)
        if not np.all(steps > 0):
            raise ValueError("step must be positive")
    steps = steps.reshape(-1)
    grad = np.empty(x0.size, dtype=np.float64)
    offsets, weights, denom = _STENCIL[order]
    for i in range(x0.size):
        xi = float(flat[i])
        h = (xi + steps[i]) - xi  # exactly representable, so x ± h has no rounding
        total = 0.0
        for o, w in zip(offsets, weights):
            flat[i] = xi + o * h
            value = _scalar(f(work), "f")
            if not math.isfinite(value):
                flat[i] = xi
                raise ValueError(
                    f"f is not finite at x + {o:g}·h·e_{i} (value {value}); "
                    "the step may leave f's domain: pass a smaller step"
                )
            total += w * value
        flat[i] = xi
        grad[i] = total / (denom * h)
    if not np.array_equal(work, x0):
        raise RuntimeError("f modified its argument in place; gradients cannot be checked")
    return grad.reshape(x0.shape)


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


# --------------------------------------------------------------------------- check_vjp


class VJPTerm(NamedTuple):
    """One line of a VJP check: ``<u, J_i v_i>`` for one input, or all inputs jointly."""

    name: str
    analytic: float          # <grad_i, v_i>  (or the sum over inputs)
    numerical: float         # <u, (forward(args + t v) differenced)>
    rel_error: float
    ok: bool


@dataclass(frozen=True)
class VJPCheckReport:
    """Result of :func:`check_vjp`; ``str(report)`` is a readable table.

    Attributes
    ----------
    terms : tuple of VJPTerm
        The joint check (all differentiable inputs perturbed at once) first,
        then one line per input.
    rtol, atol : float
    warnings : tuple of str
    problems : tuple of str
        Contract violations found on the way (an input or the cotangent
        modified in place, a backward that gives different results when called
        twice with the same cache); each makes the check fail.
    """

    terms: tuple
    rtol: float
    atol: float
    warnings: tuple = ()
    problems: tuple = ()

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.terms)

    @property
    def error(self) -> float:
        """The largest relative error over the joint and per-input checks."""
        return max(t.rel_error for t in self.terms)

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        width = max(len(t.name) for t in self.terms)
        lines = [f"check_vjp: {'OK' if self.ok else 'FAIL'}   rtol = {self.rtol:g}, "
                 f"atol = {self.atol:g}   (u random cotangent, v random directions)",
                 f"{'input':<{width}}  {'<grad, v>':>20}  {'<u, J v> numerical':>20}  rel err"]
        for t in self.terms:
            lines.append(f"{t.name:<{width}}  {t.analytic:>20.12e}  {t.numerical:>20.12e}  "
                         f"{t.rel_error:.2e}  {'OK' if t.ok else 'FAIL'}")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        lines += [f"WARNING: {w}" for w in self.warnings]
        return "\n".join(lines)

    __repr__ = __str__


def _is_array(a) -> bool:
    return array_api_compat.is_array_api_obj(a) and not isinstance(a, (int, float, complex))


def _like(values: np.ndarray, ref, dtype=None):
    """``values`` as an array of ref's namespace and device (dtype ref's unless given)."""
    xp = get_namespace(ref)
    return xp.asarray(values, dtype=ref.dtype if dtype is None else dtype,
                      device=array_api_compat.device(ref))


def check_vjp(forward, backward, args, *, kwargs=None, wrt=None, seed: int = 0,
              rtol: float = 1e-6, atol: float = 1e-8, step=None) -> VJPCheckReport:
    """Random-projection test of an op pair ``forward``/``backward``.

    For a random cotangent ``u`` (shaped like the output) and random directions
    ``v_i`` (shaped like each differentiable input, entries
    ``N(0, 1)·max(1, |x|)``)::

        Σ_i <grad_i, v_i>   ≈   d/dt <u, forward(args + t v)> at t = 0

    where ``grad = backward(u, cache)`` and the right side is a fourth-order
    central difference computed in float64. The check runs once with all inputs
    perturbed together and once per input, so a failure names the wrong gradient.

    Parameters
    ----------
    forward : callable
        ``forward(*args, **kwargs) -> (out, cache)``, ``out`` an array (0-d for
        a loss).
    backward : callable
        ``backward(dout, cache) -> grads``: a tuple or NamedTuple with one entry
        per differentiable input, or a single array when there is one; an entry
        of ``None`` means the input is absent or not differentiable.
    args : sequence
        Positional arguments of ``forward``. Floating arrays (NumPy, torch,
        ``array_api_strict``, ...) are cast to float64 in their own namespace;
        other values (scalars, None, integer arrays) are passed unchanged.
    kwargs : dict, optional
        Keyword arguments of ``forward`` (for example ``{"eps": 0.0, "ddof": 1}``);
        a ``functools.partial`` works too.
    wrt : sequence of int, optional
        Positions in ``args`` of the inputs that ``grads`` belong to, in order.
        By default ``grads[i]`` belongs to ``args[i]``: the differentiable
        inputs come first, as in every :mod:`bnmat.ops` pair.
    seed : int
        Seed of ``u`` and ``v`` (NumPy ``default_rng``).
    rtol, atol : float
        Tolerances, as in :func:`check_grad`.
    step : float, optional
        Finite-difference step along ``v``; default ``eps^(1/5) ≈ 7e-4``.

    Returns
    -------
    VJPCheckReport
        ``.ok``, ``.error`` (largest relative error) and a printable table.

    Raises
    ------
    ValueError
        A gradient's shape differs from its input's, a gradient is given for a
        non-array argument, or ``grads`` has the wrong length.
    """
    _check_tolerances(rtol, atol)
    kwargs = dict(kwargs or {})
    args = [_as_float64(a) for a in args]
    originals = [np.array(to_numpy(a), copy=True) if _is_array(a) else None for a in args]
    out, cache = forward(*args, **kwargs)
    out_np = np.array(to_numpy(out), dtype=np.float64, copy=True)
    rng = np.random.default_rng(seed)
    u_np = rng.standard_normal(out_np.shape)
    u = _like(u_np, out)
    grads = _as_tuple(backward(u, cache))
    # re-entrant, as PyTorch's gradcheck demands: the same bits from a second call
    repeatable = _same_grads(grads, _as_tuple(backward(u, cache)))
    positions = list(range(len(grads))) if wrt is None else list(wrt)
    if len(positions) != len(grads):
        raise ValueError(f"backward returned {len(grads)} gradients but wrt has {len(positions)}")
    names = getattr(grads, "_fields", None) or [_grad_name(forward, p) for p in positions]

    active = []  # (name, position, gradient as float64 NumPy, direction)
    for name, pos, g in zip(names, positions, grads):
        if g is None:
            continue
        if pos >= len(args) or not _is_float64_array(args[pos]):
            raise ValueError(
                f"backward returned {name} for args[{pos}], which is not a floating array "
                "argument; pass wrt= to say which arguments the gradients belong to"
            )
        g_np = np.asarray(to_numpy(g), dtype=np.float64)
        x_np = originals[pos]
        if g_np.shape != x_np.shape:
            raise ValueError(
                f"{name} has shape {g_np.shape} but args[{pos}] has shape {x_np.shape}"
            )
        v = rng.standard_normal(x_np.shape) * np.maximum(1.0, np.abs(x_np))
        active.append((name, pos, g_np, v))
    if not active:
        raise ValueError("backward returned no gradient (all None); nothing to check")

    h = _REL_STEP[4] if step is None else float(step)

    def along(moving):
        def phi(t):
            moved = list(args)
            for _, pos, _, v in moving:
                moved[pos] = _like(originals[pos] + t * v, args[pos])
            o, _ = forward(*moved, **kwargs)
            return float(np.sum(u_np * np.asarray(to_numpy(o), dtype=np.float64)))

        numerical = _stencil(phi, h, 4)
        analytic = float(sum(np.sum(g * v) for _, _, g, v in moving))
        err = float(_rel_error(analytic, numerical, rtol, atol))
        return analytic, float(numerical), err

    terms, notes = [], []
    zero_level = max(atol, _NOISE_FACTOR * _noise(float(np.sum(np.abs(u_np * out_np))), h, 4))
    for label, moving in [("all inputs", active)] + [(a[0], [a]) for a in active]:
        analytic, numerical, err = along(moving)
        terms.append(VJPTerm(label, analytic, numerical, err, err <= rtol))
        if len(moving) == 1 and abs(numerical) <= zero_level:
            notes.append(
                f"<u, J v> for {label} is zero to rounding: the output does not move "
                f"with args[{moving[0][1]}] here, so its gradient is not really checked"
            )

    problems = []
    for pos, before in enumerate(originals):
        if before is not None and not np.array_equal(to_numpy(args[pos]), before, equal_nan=True):
            problems.append(f"args[{pos}] was modified in place")
    if not np.array_equal(to_numpy(u), u_np):
        problems.append("backward modified the cotangent dout in place")
    if not repeatable:
        problems.append("backward is not repeatable: a second call with the same dout "
                        "and cache gives different gradients")
    for note in notes:
        warnings.warn(note, DegenerateCheckWarning, stacklevel=2)
    return VJPCheckReport(terms=tuple(terms), rtol=rtol, atol=atol,
                          warnings=tuple(notes), problems=tuple(problems))


def _as_tuple(grads) -> tuple:
    return grads if isinstance(grads, tuple) else (grads,)


def _same_grads(first: tuple, second: tuple) -> bool:
    if len(first) != len(second):
        return False
    for a, b in zip(first, second):
        if (a is None) != (b is None):
            return False
        if a is not None and not np.array_equal(to_numpy(a), to_numpy(b), equal_nan=True):
            return False
    return True


def _is_float64_array(a) -> bool:
    return _is_array(a) and a.dtype == get_namespace(a).float64


def _grad_name(forward, pos: int) -> str:
    """``d<name>`` from forward's signature (``dy_pred`` for a loss), else ``grad[pos]``."""
    try:
        params = [p for p in inspect.signature(forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return f"d{params[pos].name}"
    except (TypeError, ValueError, IndexError):
        return f"grad[{pos}]"


def _as_float64(a):
    """Floating arrays become float64 in their own namespace; the rest is unchanged."""
    if not _is_array(a):
        return a
    xp = get_namespace(a)
    if xp.isdtype(a.dtype, "real floating") and a.dtype != xp.float64:
        return xp.astype(a, xp.float64)
    return a


def assert_vjp(forward, backward, args, **options) -> VJPCheckReport:
    """:func:`check_vjp`, raising ``AssertionError`` with the report's table on failure.

    Returns
    -------
    VJPCheckReport
    """
    report = check_vjp(forward, backward, args, **options)
    if not report.ok:
        raise AssertionError("\n" + str(report))
    return report
