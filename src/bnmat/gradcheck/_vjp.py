"""``check_vjp``: random-projection test of a forward/backward op pair."""

from __future__ import annotations

import inspect
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import array_api_compat

from .._array_api import get_namespace, to_numpy
from ._numerical import (
    _NOISE_FACTOR, _REL_STEP, DegenerateCheckWarning, _check_tolerances, _noise, _rel_error,
    _stencil,
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
