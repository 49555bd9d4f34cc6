"""The worked example: one batch-normalized hidden layer, by hand and by checks.

``bnmat demo`` (or ``python -m bnmat demo``) builds the network users ask about::

    X (10×7) → Z = XΓ1 (4 units) → B = batch norm of Z (ddof=1, ε=0, R's scale())
             → H = ReLU(B) → ŷ = HΓ2 → R = Σ(y − ŷ)²

and prints ∂R/∂β, ∂R/∂γ, ∂R/∂Γ1 and ∂R/∂Γ2 three ways: the closed matrix
formulas (``bnmat.ops``), central finite differences (``bnmat.gradcheck``) and
the explicit vec/Kronecker Jacobian chain (``bnmat.jacobians``). Then it shows
what the common wrong derivations give and by how much they miss.
"""

from __future__ import annotations

import sys
from typing import Callable, Dict, TextIO

import numpy as np

from . import ops
from .gradcheck import numerical_grad
from .jacobians import activation_jacobian, batchnorm_jacobians, dense_jacobians, unvec

__all__ = ["run_demo", "demo_problem", "formula_grads", "jacobian_grads",
           "run_second_order_demo", "second_order_problem"]

N, P1, P2 = 10, 7, 4
DDOF, EPS = 1, 0.0
SEED = 20260101
#: Agreement required between the formulas and each oracle (largest relative error).
TOLERANCE = 1e-7


def demo_problem(seed: int = SEED) -> Dict[str, np.ndarray]:
    """The demo's data and parameters.

    Returns
    -------
    dict
        ``x`` (10, 7), ``y`` (10,), ``gamma1`` Γ1 (7, 4), ``gamma`` (4,),
        ``beta`` (4,), ``gamma2`` Γ2 (4,). The seed is chosen so that no entry of
        B lies within 1e-3 of ReLU's kink (finite differences need that).
    """
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(N, P1)),
        "y": rng.normal(size=N),
        "gamma1": rng.normal(size=(P1, P2)) / np.sqrt(P1),
        "gamma": rng.uniform(0.5, 1.5, size=P2),
        "beta": rng.normal(scale=0.5, size=P2),
        "gamma2": rng.normal(size=P2),
    }


def loss(theta: Dict[str, np.ndarray]) -> float:
    """R = Σ(y − ŷ)² of the demo network, computed by the forward ops only."""
    z, _ = ops.dense_forward(theta["x"], theta["gamma1"])
    b, _ = ops.batchnorm_forward(z, theta["gamma"], theta["beta"], eps=EPS, ddof=DDOF)
    h, _ = ops.relu_forward(b)
    y_hat = h @ theta["gamma2"]
    return float(np.sum((theta["y"] - y_hat) ** 2))


def formula_grads(theta: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The closed matrix formulas, one line per layer (the chain rule backwards).

    ::

        ∂R/∂ŷ  = −2(y − ŷ)
        ∂R/∂Γ2 = Hᵀ ∂R/∂ŷ,       ∂R/∂B = (∂R/∂ŷ Γ2ᵀ) ∘ 1[B > 0]
        ∂R/∂β  = 1ᵀG,            ∂R/∂γ = 1ᵀ(G ∘ Ẑ)
        ∂R/∂Z  = [CG − Ẑ diag(∂R/∂γ)/(N − ddof)] diag(γ ∘ s)
        ∂R/∂Γ1 = Xᵀ ∂R/∂Z
    """
    z, dense_cache = ops.dense_forward(theta["x"], theta["gamma1"])
    b, bn_cache = ops.batchnorm_forward(z, theta["gamma"], theta["beta"], eps=EPS, ddof=DDOF)
    h, relu_cache = ops.relu_forward(b)
    y_hat = h @ theta["gamma2"]
    dy_hat = -2.0 * (theta["y"] - y_hat)
    dgamma2 = h.T @ dy_hat
    dh = np.outer(dy_hat, theta["gamma2"])
    g = ops.relu_backward(dh, relu_cache)
    dz, dgamma, dbeta = ops.batchnorm_backward(g, bn_cache)
    _, dgamma1, _ = ops.dense_backward(dz, dense_cache)
    return {"beta": dbeta, "gamma": dgamma, "gamma1": dgamma1, "gamma2": dgamma2}


def jacobian_grads(theta: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The same gradients as products of explicit Jacobians, vec(∂R/∂θ) = Jᵀ vec(∂R/∂out).

    ::

        vec ∂R/∂B  = diag(vec 1[B > 0]) (Γ2 ⊗ I_N) ∂R/∂ŷ
        vec ∂R/∂Z  = J_Zᵀ vec ∂R/∂B,   J_Z = blockdiag_j γ_j s_j (C − ẑ_j ẑ_jᵀ/(N − ddof))
        vec ∂R/∂Γ1 = (I ⊗ X)ᵀ vec ∂R/∂Z
    """
    x, gamma1, gamma2 = theta["x"], theta["gamma1"], theta["gamma2"]
    z = x @ gamma1
    j_bn = batchnorm_jacobians(z, theta["gamma"], theta["beta"], eps=EPS, ddof=DDOF)
    b, _ = ops.batchnorm_forward(z, theta["gamma"], theta["beta"], eps=EPS, ddof=DDOF)
    h, _ = ops.relu_forward(b)
    y_hat = h @ gamma2
    dy_hat = -2.0 * (theta["y"] - y_hat)
    # ŷ = H Γ2 with Γ2 a p×1 matrix: ∂vec(ŷ)/∂vec(H)ᵀ = Γ2ᵀ ⊗ I_N, ∂vec(ŷ)/∂vec(Γ2)ᵀ = I ⊗ H
    j_out = dense_jacobians(h, gamma2[:, None])
    j_act = activation_jacobian("relu", b)
    dvec_b = j_act.T @ (j_out.jx.T @ dy_hat)
    dvec_z = j_bn.jx.T @ dvec_b
    j_dense = dense_jacobians(x, gamma1)
    return {
        "beta": j_bn.jbeta.T @ dvec_b,
        "gamma": j_bn.jgamma.T @ dvec_b,
        "gamma1": unvec(j_dense.jw.T @ dvec_z, gamma1.shape),
        "gamma2": j_out.jw.T @ dy_hat,
    }


def numerical_grads(theta: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Central finite differences of :func:`loss`, one parameter at a time."""
    out = {}
    for name in ("beta", "gamma", "gamma1", "gamma2"):
        def f(value, name=name):
            return loss({**theta, name: value})
        out[name] = numerical_grad(f, theta[name])
    return out


def wrong_grads(theta: Dict[str, np.ndarray]) -> Dict[str, Callable[[], np.ndarray]]:
    """The common wrong derivations, each as (parameter, wrong value)."""
    z, _ = ops.dense_forward(theta["x"], theta["gamma1"])
    b, bn_cache = ops.batchnorm_forward(z, theta["gamma"], theta["beta"], eps=EPS, ddof=DDOF)
    h, _ = ops.relu_forward(b)
    dy_hat = -2.0 * (theta["y"] - h @ theta["gamma2"])
    dh = np.outer(dy_hat, theta["gamma2"])
    g = dh * (b > 0)
    s = bn_cache.inv_std
    # Pitfall 3: "set negatives to 0, then everything ≥ 0 to 1" gives a′ ≡ 1.
    a_prime = np.where(b < 0, 0.0, b)
    a_prime = np.where(a_prime >= 0, 1.0, a_prime)
    g_ones = dh * a_prime
    return {
        "1. μ, σ constant: ∂R/∂Γ1 = Xᵀ G diag(γ∘s)": (
            "gamma1", theta["x"].T @ (g * (theta["gamma"] * s))),
        "2a. factor γ: ∂R/∂γ = γ ∘ 1ᵀ(G∘Ẑ)": (
            "gamma", theta["gamma"] * np.sum(g * bn_cache.x_hat, axis=0)),
        "2b. ∂R/∂γ = row sums of ẐᵀG (full matrix)": (
            "gamma", np.sum(bn_cache.x_hat.T @ g, axis=1)),
        "3. ReLU a′ ≡ 1: ∂R/∂β = 1ᵀ(∂R/∂H)": (
            "beta", np.sum(g_ones, axis=0)),
    }


def _fmt(a: np.ndarray) -> str:
    return np.array2string(np.atleast_1d(a), precision=5, suppress_small=False,
                           max_line_width=96, floatmode="fixed")


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def run_demo(stream: TextIO | None = None) -> int:
    """Print the worked example; return 0 when the formulas agree with both oracles.

    Parameters
    ----------
    stream : text stream, optional
        Where to print (default ``sys.stdout``).

    Returns
    -------
    int
        0 when every closed-form gradient agrees with finite differences and with
        the explicit-Jacobian product to :data:`TOLERANCE` (relative), else 1.
    """
    out = stream or sys.stdout
    theta = demo_problem()

    def say(line: str = "") -> None:
        print(line, file=out)

    say("bnmat demo: X (10×7) → Z = XΓ1 (4 units) → batch norm (ddof=1, ε=0, as R's scale())")
    say("            → ReLU → ŷ = HΓ2 → R = Σ(y − ŷ)²      (seed %d)" % SEED)
    say(f"R = {loss(theta):.10f}")
    say()
    formula = formula_grads(theta)
    numeric = numerical_grads(theta)
    jac = jacobian_grads(theta)
    labels = {"beta": "∂R/∂β", "gamma": "∂R/∂γ", "gamma1": "∂R/∂Γ1", "gamma2": "∂R/∂Γ2"}
    ok = True
    rows = []
    for name, label in labels.items():
        say(f"{label} from the matrix formula:")
        say("  " + _fmt(formula[name]).replace("\n", "\n  "))
        e_fd, e_j = _rel(formula[name], numeric[name]), _rel(formula[name], jac[name])
        rows.append((label, e_fd, e_j))
        ok &= e_fd < TOLERANCE and e_j < TOLERANCE
    say()
    say("largest relative difference of the formula from each oracle:")
    say(f"  {'gradient':<8} {'finite differences':>20} {'Jacobian product':>18}")
    for label, e_fd, e_j in rows:
        say(f"  {label:<8} {e_fd:>20.2e} {e_j:>18.2e}")
    say()
    say("what common wrong derivations give (relative miss against finite differences):")
    for title, (name, wrong) in wrong_grads(theta).items():
        miss = _rel(wrong, numeric[name])
        say(f"  {title:<48} misses by {miss:8.1%}")
    say()
    if ok:
        say(f"OK: the closed-form gradients agree with both oracles to {TOLERANCE:g} relative.")
        return 0
    say(f"FAIL: a closed-form gradient differs from an oracle by more than {TOLERANCE:g}.")
    return 1


# --------------------------------------------------------------------------- second order
#: Agreement required of the closed-form H v with torch (float64) and with differences.
HVP_TOLERANCE_TORCH, HVP_TOLERANCE_FD = 1e-10, 1e-6


def second_order_problem(seed: int = SEED):
    """The demo network as a :class:`bnmat.Sequential`, its parameters and a direction v.

    Returns
    -------
    net, params, x, y, v
        ``Dense(4, bias=False) → BatchNorm(ddof=1, eps=0) → ReLU → Dense(1, bias=False)``
        with Γ1, γ, β, Γ2 of :func:`demo_problem`; v a seeded N(0, 1) direction
        shaped like ``params``.
    """
    from .layers import BatchNorm, Dense, ReLU, Sequential

    theta = demo_problem(seed)
    net = Sequential([Dense(P2, bias=False), BatchNorm(ddof=DDOF, eps=EPS), ReLU(),
                      Dense(1, bias=False)])
    params = [{"w": theta["gamma1"]}, {"gamma": theta["gamma"], "beta": theta["beta"]}, {},
              {"w": theta["gamma2"][:, None]}]
    rng = np.random.default_rng(seed + 1)
    v = [{k: rng.normal(size=a.shape) for k, a in p.items()} for p in params]
    return net, params, theta["x"], theta["y"], v


def _flat(tree):
    return np.concatenate([np.ravel(a) for p in tree for _, a in sorted(p.items())])


def hvp_by_gradient_differences(net, params, x, y, v, h: float = 1e-5) -> np.ndarray:
    """H v ≈ [g(θ − 2hv) − 8g(θ − hv) + 8g(θ + hv) − g(θ + 2hv)]/(12h), g = ∇R.

    g is the closed-form first-order gradient (:func:`bnmat.value_and_grad`).
    """
    from .train import value_and_grad

    _, state = net.init(x)

    def grad_at(t):
        p = [{k: a + t * v[i][k] for k, a in d.items()} for i, d in enumerate(params)]
        return _flat(value_and_grad(net, p, state, x, y, "sse")[1])

    return (grad_at(-2 * h) - 8 * grad_at(-h) + 8 * grad_at(h) - grad_at(2 * h)) / (12 * h)


def hvp_by_torch(net_params, x, y, v):
    """H v by torch's double backward of the same network (None without torch)."""
    try:
        import torch
    except ImportError:
        return None
    tp = [{k: torch.tensor(a, requires_grad=True) for k, a in sorted(p.items())}
          for p in net_params]
    flat = [t for p in tp for t in p.values()]
    z = torch.tensor(x) @ tp[0]["w"]
    mu = z.mean(0)
    var = ((z - mu) ** 2).sum(0) / (z.shape[0] - DDOF)
    b = (z - mu) / torch.sqrt(var + EPS) * tp[1]["gamma"] + tp[1]["beta"]
    y_hat = (torch.relu(b) @ tp[3]["w"])[:, 0]
    r = ((torch.tensor(y) - y_hat) ** 2).sum()
    g = torch.autograd.grad(r, flat, create_graph=True)
    vs = [torch.tensor(a) for p in v for _, a in sorted(p.items())]
    hv = torch.autograd.grad(sum((gi * vi).sum() for gi, vi in zip(g, vs)), flat)
    return np.concatenate([t.numpy().ravel() for t in hv])


def run_second_order_demo(stream: TextIO | None = None) -> int:
    """``bnmat demo --second-order``: the Hessian-vector product of the demo network.

    Prints H v (H the Hessian of R with respect to Γ1, γ, β, Γ2 in training mode)
    from the closed-form double backward (:func:`bnmat.hvp`) beside finite
    differences of the closed-form gradient and torch's double backward.

    Returns
    -------
    int
        0 when the closed form agrees with torch to :data:`HVP_TOLERANCE_TORCH`
        and with the differences to :data:`HVP_TOLERANCE_FD` (relative to the
        largest entry), else 1. Without torch, only the differences are compared.
    """
    from .train import hvp

    out = stream or sys.stdout

    def say(line: str = "") -> None:
        print(line, file=out)

    net, params, x, y, v = second_order_problem()
    closed = _flat(hvp(net, params, None, x, y, v))
    fd = hvp_by_gradient_differences(net, params, x, y, v)
    th = hvp_by_torch(params, x, y, v)
    say("bnmat demo --second-order: the same network, X (10×7) → 4 units → batch norm "
        "(ddof=1, ε=0)")
    say("            → ReLU → ŷ = HΓ2 → R = Σ(y − ŷ)²; H v for a random direction v "
        f"(seed {SEED + 1})")
    say()
    names = [f"{label}[{i}]" for label, size in
             (("Γ1", P1 * P2), ("β", P2), ("γ", P2), ("Γ2", P2)) for i in range(size)]
    # _flat sorts each layer's keys: w; beta, gamma; w — the order of ``names``
    say(f"  {'entry':<8} {'closed form':>20} {'differences':>20} {'torch':>20}")
    for i, name in enumerate(names):
        if i < 6 or i >= P1 * P2:
            t = f"{th[i]:>20.12e}" if th is not None else f"{'-':>20}"
            say(f"  {name:<8} {closed[i]:>20.12e} {fd[i]:>20.12e} {t}")
        elif i == 6:
            say(f"  {'…':<8} ({P1 * P2 - 6} more entries of Γ1)")
    scale = max(np.max(np.abs(closed)), 1e-300)
    e_fd = float(np.max(np.abs(closed - fd)) / scale)
    say()
    say("largest difference of the closed form, relative to max |H v|:")
    say(f"  finite differences of the gradient: {e_fd:.2e}")
    ok = e_fd < HVP_TOLERANCE_FD
    if th is not None:
        e_t = float(np.max(np.abs(closed - th)) / scale)
        say(f"  torch double backward:              {e_t:.2e}")
        ok &= e_t < HVP_TOLERANCE_TORCH
    else:
        say("  torch double backward:              (torch is not installed)")
    say()
    if ok:
        say("OK: the closed-form Hessian-vector product agrees with the oracles.")
        return 0
    say("FAIL: the closed-form Hessian-vector product differs from an oracle.")
    return 1


main = run_demo
