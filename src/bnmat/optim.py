"""Optimizers as pure ``(init, update)`` pairs.

An optimizer is an :class:`Optimizer` named tuple of two functions::

    opt_state = opt.init(params)
    new_params, new_opt_state = opt.update(grads, opt_state, params)

``params`` and ``grads`` are trees (nested lists and dicts of arrays, as
:meth:`bnmat.Sequential.init` returns them); the state is a NamedTuple of
trees. ``update`` never modifies its inputs, never prints and never decides when
to stop: that is :func:`bnmat.train.fit`'s job.

Learning rates are numbers or schedules ``η(t)``: a callable of the step count
t = 0, 1, 2, … (the number of updates done before this one).

Weight decay: :func:`sgd` adds ``λθ`` to the gradient (the L2 penalty ½λ‖θ‖²,
on every parameter); :func:`adam` decouples it from the adaptive scaling
(AdamW). To penalize only the Dense weights ``w``, use ``l2=`` in
:func:`bnmat.train.fit` instead.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Union

import numpy as np

from ._tree import tree_leaves, tree_map, tree_paths, tree_unflatten

__all__ = [
    "Optimizer",
    "SGDState",
    "AdamState",
    "sgd",
    "adam",
    "constant_schedule",
    "exponential_decay",
    "cosine_decay",
    "tree_map",
    "tree_leaves",
    "tree_paths",
    "tree_unflatten",
]

Schedule = Callable[[int], float]
LearningRate = Union[float, Schedule]


class Optimizer(NamedTuple):
    """A pure optimizer.

    Attributes
    ----------
    init : callable
        ``init(params) -> opt_state``.
    update : callable
        ``update(grads, opt_state, params) -> (new_params, new_opt_state)``.
    """

    init: Callable[[Any], Any]
    update: Callable[[Any, Any, Any], tuple]


class SGDState(NamedTuple):
    step: int          # number of updates done
    velocity: Any      # tree like params (zeros at first); None without momentum


class AdamState(NamedTuple):
    step: int          # t, number of updates done
    m: Any             # first-moment estimate, tree like params
    v: Any             # second-moment estimate, tree like params


# ----------------------------------------------------------------- schedules
def constant_schedule(value: float) -> Schedule:
    """``η(t) = value``."""
    value = _positive(value, "learning_rate")
    return lambda step: value


def exponential_decay(init_value: float, decay_rate: float, decay_steps: int,
                      *, staircase: bool = False) -> Schedule:
    """``η(t) = η₀ · r^(t / T)`` (with ``⌊t / T⌋`` when ``staircase``).

    Parameters
    ----------
    init_value : float
        η₀ > 0.
    decay_rate : float
        r in (0, 1] (values above 1 grow the rate and are rejected).
    decay_steps : int
        T > 0, the number of updates over which the rate is multiplied by r.
    staircase : bool, default False
    """
    init_value = _positive(init_value, "init_value")
    if not 0.0 < decay_rate <= 1.0:
        raise ValueError(f"decay_rate must lie in (0, 1]; got {decay_rate!r}")
    if decay_steps <= 0:
        raise ValueError(f"decay_steps must be positive; got {decay_steps!r}")

    def schedule(step: int) -> float:
        p = step / decay_steps
        return init_value * decay_rate ** (math.floor(p) if staircase else p)

    return schedule


def cosine_decay(init_value: float, decay_steps: int, *, alpha: float = 0.0) -> Schedule:
    """``η(t) = η₀ [(1 − α) · ½(1 + cos(π min(t, T)/T)) + α]``.

    Parameters
    ----------
    init_value : float
        η₀ > 0.
    decay_steps : int
        T > 0; after T updates the rate stays at α η₀.
    alpha : float in [0, 1], default 0
    """
    init_value = _positive(init_value, "init_value")
    if decay_steps <= 0:
        raise ValueError(f"decay_steps must be positive; got {decay_steps!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1]; got {alpha!r}")

    def schedule(step: int) -> float:
        frac = min(step, decay_steps) / decay_steps
        return init_value * ((1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * frac)) + alpha)

    return schedule


def _positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    return float(value)


def _nonnegative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        math.isfinite(value) and value >= 0
    ):
        raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
    return float(value)


def _as_schedule(learning_rate: LearningRate) -> Schedule:
    if callable(learning_rate):
        return learning_rate
    return constant_schedule(learning_rate)


def _rate(schedule: Schedule, step: int) -> float:
    lr = float(schedule(step))
    if not (math.isfinite(lr) and lr >= 0):
        raise ValueError(f"the learning-rate schedule gave {lr!r} at step {step}")
    return lr


def _same_numpy(a, b) -> bool:
    return (type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == b.dtype
            and a.shape == b.shape)


def _minus_scaled(p, c: float, d):
    """``p − c d``, a new array; for NumPy, the product's array receives the result
    (one allocation instead of two, the same rounding)."""
    if _same_numpy(p, d):
        t = np.multiply(d, c)
        if type(t) is np.ndarray and t.dtype == p.dtype:
            return np.subtract(p, t, out=t)
    return p - c * d


def _plus_scaled(a, c: float, b):
    """``a + c b`` (c b first), a new array, with one allocation for NumPy."""
    if _same_numpy(a, b):
        t = np.multiply(b, c)
        if type(t) is np.ndarray and t.dtype == a.dtype:
            return np.add(a, t, out=t)
    return a + c * b


# ----------------------------------------------------------------- optimizers
def sgd(learning_rate: LearningRate, momentum: float = 0.0, nesterov: bool = False,
        weight_decay: float = 0.0) -> Optimizer:
    """Stochastic gradient descent with optional (Nesterov) momentum.

    Update, for gradient g, parameters θ, step t (from 0), rate η_t::

        g ← g + λ θ                          (weight decay λ; skipped when 0)
        without momentum:   θ ← θ − η_t g
        with momentum μ:    v ← μ v + g       (v starts at 0)
                            d = g + μ v  (Nesterov)   or   d = v
                            θ ← θ − η_t d

    (PyTorch's convention: the rate multiplies the velocity, not the gradient
    inside it.)

    Parameters
    ----------
    learning_rate : float or callable
        η > 0, or a schedule ``step -> η``.
    momentum : float in [0, 1), default 0
    nesterov : bool, default False
        Needs ``momentum > 0``.
    weight_decay : float ≥ 0, default 0
        λ, applied to every parameter.

    Returns
    -------
    Optimizer
        State :class:`SGDState` ``(step, velocity)``.
    """
    schedule = _as_schedule(learning_rate)
    momentum = _nonnegative(momentum, "momentum")
    if momentum >= 1.0:
        raise ValueError(f"momentum must lie in [0, 1); got {momentum!r}")
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov=True needs momentum > 0")
    weight_decay = _nonnegative(weight_decay, "weight_decay")

    def init(params):
        velocity = tree_map(lambda p: p * 0.0, params) if momentum else None
        return SGDState(step=0, velocity=velocity)

    def update(grads, opt_state, params):
        lr = _rate(schedule, opt_state.step)
        if weight_decay:
            grads = tree_map(lambda g, p: g + weight_decay * p, grads, params)
        if not momentum:
            new_params = tree_map(lambda p, g: _minus_scaled(p, lr, g), params, grads)
            return new_params, SGDState(opt_state.step + 1, None)
        velocity = tree_map(lambda v, g: _plus_scaled(g, momentum, v), opt_state.velocity,
                            grads)
        if nesterov:
            direction = tree_map(lambda g, v: _plus_scaled(g, momentum, v), grads, velocity)
        else:
            direction = velocity
        new_params = tree_map(lambda p, d: _minus_scaled(p, lr, d), params, direction)
        return new_params, SGDState(opt_state.step + 1, velocity)

    return Optimizer(init, update)


def adam(learning_rate: LearningRate = 1e-3, b1: float = 0.9, b2: float = 0.999,
         eps: float = 1e-8, weight_decay: float = 0.0) -> Optimizer:
    """Adam (Kingma and Ba, 2015), with decoupled weight decay (AdamW) when λ > 0.

    Update, for gradient g, parameters θ, step t = 1, 2, … (counting this one)::

        m ← β₁ m + (1 − β₁) g                 (m, v start at 0)
        v ← β₂ v + (1 − β₂) g ∘ g
        m̂ = m / (1 − β₁ᵗ),   v̂ = v / (1 − β₂ᵗ)
        θ ← θ − η_t [ m̂ / (√v̂ + ε) + λ θ ]

    Parameters
    ----------
    learning_rate : float or callable, default 1e-3
        η > 0, or a schedule ``step -> η`` (step t − 1 = 0 at the first update).
    b1, b2 : float in [0, 1), defaults 0.9 and 0.999
    eps : float > 0, default 1e-8
    weight_decay : float ≥ 0, default 0
        λ (Loshchilov and Hutter's decoupled decay), on every parameter.

    Returns
    -------
    Optimizer
        State :class:`AdamState` ``(step, m, v)``.
    """
    schedule = _as_schedule(learning_rate)
    for value, name in ((b1, "b1"), (b2, "b2")):
        if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
            raise ValueError(f"{name} must lie in [0, 1); got {value!r}")
    eps = _positive(eps, "eps")
    weight_decay = _nonnegative(weight_decay, "weight_decay")

    def init(params):
        zeros = tree_map(lambda p: p * 0.0, params)
        return AdamState(step=0, m=zeros, v=zeros)

    def update(grads, opt_state, params):
        lr = _rate(schedule, opt_state.step)
        t = opt_state.step + 1
        m = tree_map(lambda m_, g: b1 * m_ + (1.0 - b1) * g, opt_state.m, grads)
        v = tree_map(lambda v_, g: b2 * v_ + (1.0 - b2) * (g * g), opt_state.v, grads)
        c1 = 1.0 - b1 ** t
        c2 = 1.0 - b2 ** t

        def step(p, m_, v_):
            direction = (m_ / c1) / ((v_ / c2) ** 0.5 + eps)
            if weight_decay:
                direction = direction + weight_decay * p
            return p - lr * direction

        new_params = tree_map(step, params, m, v)
        return new_params, AdamState(t, m, v)

    return Optimizer(init, update)
