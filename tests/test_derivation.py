"""Every formula in ``docs/derivation.md``, checked against independent oracles.

The oracles never use a backward pass from bnmat:

* float64 finite differences (fourth-order central stencil, error O(h⁴)) of losses
  whose forward pass is written below in plain NumPy;
* explicit Jacobians built column by column from the same finite differences;
* ``torch.autograd`` through PyTorch's own batch-norm kernel
  (``torch.ops.aten.native_batch_norm``), where torch is installed.

The closed forms are transcribed from the document into ``doc_*`` functions that
form ``C``, ``diag(·)`` and ``⊗`` explicitly, as the document writes them. The
tests at the end then assert that ``bnmat.ops`` computes the same numbers.

Upstream gradients are random, never ones; ReLU inputs are kept at least
``RELU_MARGIN`` away from 0, so no finite-difference step crosses a kink.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest

from bnmat import ops

SHAPES = {  # (N, p1, p2, k); k=None means Γ2 is a p2-vector and ŷ an N-vector
    "N10-p7-p4": (10, 7, 4, None),
    "N25-p3-p6-k2": (25, 3, 6, 2),
}
CASES = [(ddof, eps) for ddof in (0, 1) for eps in (0.0, 1e-3)]
CASE_IDS = [f"ddof{d}-eps{e:g}" for d, e in CASES]

FD_STEP = 5e-5
RELU_MARGIN = 0.05
GRAD_RTOL = 1e-7    # formula vs finite differences, relative to the gradient's size
EXACT_RTOL = 1e-11  # two evaluations of the same exact quantity
WRONG = 0.05        # a wrong formula misses by at least 5 % (see wrongness)
CANCEL_RTOL = 1e-9  # exact identities evaluated through a cancellation (1 − ‖ẑ_j‖²/(N−ddof))


# ---------------------------------------------------------------------------
# helpers: vec, finite differences, comparisons
# ---------------------------------------------------------------------------

def vec(a):
    """Column-major vec, as in Magnus & Neudecker."""
    return np.reshape(a, (-1,), order="F")


def unvec(v, shape):
    return np.reshape(v, shape, order="F")


def _fd_entry(f, x, flat_index, step):
    idx = np.unravel_index(flat_index, x.shape, order="F")
    # Steps relative to the entry's column, so that a column of small weights
    # gets a small step too (and an entry near 0 not a vanishing one).
    col = x[:, idx[1]] if x.ndim == 2 else x
    typical = float(np.sqrt(np.mean(col ** 2))) or 1.0
    h = step * max(abs(x[idx]), typical)
    vals = []
    for k in (-2, -1, 1, 2):
        xk = x.copy()
        xk[idx] += k * h
        vals.append(f(xk))
    return (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * h)


def fd_grad(f, x, step=FD_STEP):
    """∂f/∂x for scalar f, entry by entry, by five-point central differences."""
    x = np.array(x, dtype=np.float64)
    g = np.empty(x.size)
    for i in range(x.size):
        g[i] = _fd_entry(f, x, i, step)
    return unvec(g, x.shape)


def fd_jacobian(F, x, step=FD_STEP):
    """∂vec F/∂(vec x)ᵀ by five-point central differences, column by column."""
    x = np.array(x, dtype=np.float64)
    cols = [_fd_entry(lambda xk: vec(F(xk)), x, i, step) for i in range(x.size)]
    return np.stack(cols, axis=1)


def rel_err(a, b):
    """max |a − b| relative to max |b| (b is the oracle)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def assert_close(a, b, rtol=GRAD_RTOL):
    err = rel_err(a, b)
    assert err < rtol, f"relative error {err:.3e} >= {rtol:.0e}"


def wrongness(a, b):
    """How far a wrong formula ``a`` is from the oracle ``b``.

    For a matrix, the worst column, relative to that column's size: a column of
    small weights has a large gradient (§6.3), which would otherwise hide an
    error in every other column.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if a.ndim == 2:
        return float(np.max(np.max(np.abs(a - b), axis=0) / np.max(np.abs(b), axis=0)))
    return rel_err(a, b)


def assert_wrong(a, b):
    err = wrongness(a, b)
    assert err > WRONG, f"the wrong formula is only {err:.3e} away from the oracle"


# ---------------------------------------------------------------------------
# the model in plain NumPy: the function the oracles differentiate
# ---------------------------------------------------------------------------

ACTIVATIONS = {
    "relu": (lambda b: np.maximum(b, 0.0), lambda b: np.where(b > 0, 1.0, 0.0)),
    "tanh": (np.tanh, lambda b: 1.0 - np.tanh(b) ** 2),
}
LOSSES = {  # value R(ŷ, y) and the document's ∂R/∂ŷ
    "sse": (lambda yh, y: np.sum((y - yh) ** 2), lambda yh, y: -2.0 * (y - yh)),
    "mse": (lambda yh, y: np.sum((y - yh) ** 2) / yh.size,
            lambda yh, y: -2.0 * (y - yh) / yh.size),
}


class Problem(NamedTuple):
    X: np.ndarray       # (N, p1), uncentred columns
    y: np.ndarray       # (N,) or (N, k)
    W1: np.ndarray      # Γ1, (p1, p2)
    gamma: np.ndarray   # (p2,)
    beta: np.ndarray    # (p2,)
    W2: np.ndarray      # Γ2, (p2,) or (p2, k)
    ddof: int
    eps: float
    act: str
    loss: str


def bn_plain(Z, gamma, beta, eps, ddof):
    """B, with μ and σ² computed from Z (training mode), by elementary operations."""
    n = Z.shape[0]
    centred = Z - Z.mean(axis=0)
    var = (centred ** 2).sum(axis=0) / (n - ddof)
    return centred / np.sqrt(var + eps) * gamma + beta


def head_loss(P, B, W2=None):
    """R as a function of B: H = a(B), ŷ = HΓ2."""
    a, _ = ACTIVATIONS[P.act]
    value, _ = LOSSES[P.loss]
    return value(a(B) @ (P.W2 if W2 is None else W2), P.y)


def loss_of_Z(P, Z, gamma=None, beta=None, W2=None):
    gamma = P.gamma if gamma is None else gamma
    beta = P.beta if beta is None else beta
    return head_loss(P, bn_plain(Z, gamma, beta, P.eps, P.ddof), W2)


def loss_of(P, **replace):
    """R(Γ1, γ, β, Γ2) for the problem, with any parameter replaced."""
    W1 = replace.pop("W1", P.W1)
    return loss_of_Z(P, P.X @ W1, **replace)


def make_problem(shape, ddof, eps, act="tanh", loss="sse", seed=0) -> Problem:
    N, p1, p2, k = shape
    for attempt in range(10_000):
        rng = np.random.default_rng([seed, attempt])
        X = rng.normal(size=(N, p1)) + rng.uniform(1.0, 3.0, size=p1)
        W1 = rng.normal(size=(p1, p2))
        # One column of Z with variance ≈ 3e-3, comparable to ε = 1e-3, so that
        # a formula that drops ε (σ in place of s) would fail visibly.
        W1[:, -1] *= 0.02
        gamma = rng.choice([-1.0, 1.0], size=p2) * rng.uniform(1.2, 2.5, size=p2)
        beta = rng.normal(scale=0.5, size=p2)
        W2 = rng.normal(size=(p2,) if k is None else (p2, k))
        y = rng.normal(size=(N,) if k is None else (N, k))
        B = bn_plain(X @ W1, gamma, beta, eps, ddof)
        if act != "relu" or (np.min(np.abs(B)) > RELU_MARGIN and np.all((B > 0).any(axis=0))):
            return Problem(X, y, W1, gamma, beta, W2, ddof, eps, act, loss)
    raise RuntimeError("no ReLU problem with inputs away from the kink")  # pragma: no cover


# ---------------------------------------------------------------------------
# the document's formulas, transcribed with explicit matrices
# ---------------------------------------------------------------------------

def centering(n):
    return np.eye(n) - np.ones((n, n)) / n


class DocForward(NamedTuple):
    C: np.ndarray
    Z: np.ndarray
    mu: np.ndarray
    var: np.ndarray      # σ²
    s: np.ndarray        # (σ² + ε)^(−1/2)
    Zh: np.ndarray       # Ẑ
    B: np.ndarray


def doc_forward(Z, gamma, beta, eps, ddof):
    """§2: μᵀ = 1ᵀZ/N, σ² = diag(ZᵀCZ)/(N − ddof), s = (σ²+ε)^(−1/2), Ẑ = CZ diag(s)."""
    n = Z.shape[0]
    one = np.ones(n)
    C = centering(n)
    mu = one @ Z / n
    var = np.diag(Z.T @ C @ Z) / (n - ddof)
    s = (var + eps) ** -0.5
    Zh = C @ Z @ np.diag(s)
    B = Zh @ np.diag(gamma) + np.outer(one, beta)
    return DocForward(C, Z, mu, var, s, Zh, B)


class DocBNGrads(NamedTuple):
    dbeta: np.ndarray
    dgamma: np.ndarray
    dZ: np.ndarray


def doc_bn_grads(G, fw: DocForward, gamma, ddof):
    """§3.2: ∂R/∂β = 1ᵀG, ∂R/∂γ = 1ᵀ(G∘Ẑ), ∂R/∂Z = [CG − Ẑ diag(∂R/∂γ)/(N−ddof)] diag(γ∘s)."""
    n = G.shape[0]
    one = np.ones(n)
    dbeta = one @ G
    dgamma = one @ (G * fw.Zh)
    dZ = (fw.C @ G - fw.Zh @ np.diag(dgamma) / (n - ddof)) @ np.diag(gamma * fw.s)
    return DocBNGrads(dbeta, dgamma, dZ)


class DocGrads(NamedTuple):
    fw: DocForward
    H: np.ndarray
    yhat: np.ndarray
    dyhat: np.ndarray    # ∂R/∂ŷ
    dW2: np.ndarray      # ∂R/∂Γ2
    dH: np.ndarray       # ∂R/∂H
    G: np.ndarray        # ∂R/∂B
    dbeta: np.ndarray
    dgamma: np.ndarray
    dZ: np.ndarray
    dW1: np.ndarray      # Xᵀ ∂R/∂Z
    dW1_expanded: np.ndarray


def as_matrix(a, rows):
    return np.reshape(a, (rows, -1))


def doc_grads(P: Problem) -> DocGrads:
    """§3.1–3.3 for the whole network."""
    X, n = P.X, P.X.shape[0]
    a, da = ACTIVATIONS[P.act]
    _, dloss = LOSSES[P.loss]
    fw = doc_forward(X @ P.W1, P.gamma, P.beta, P.eps, P.ddof)
    H = a(fw.B)
    yhat = H @ P.W2
    dyhat = dloss(yhat, P.y)
    W2m, r = as_matrix(P.W2, P.W2.shape[0]), as_matrix(dyhat, n)
    dW2 = np.reshape(H.T @ r, P.W2.shape)
    dH = r @ W2m.T
    G = dH * da(fw.B)
    bn = doc_bn_grads(G, fw, P.gamma, P.ddof)
    dW1 = X.T @ bn.dZ
    dW1_expanded = ((fw.C @ X).T @ G @ np.diag(P.gamma * fw.s)
                    - X.T @ fw.Zh @ np.diag(bn.dgamma * P.gamma * fw.s) / (n - P.ddof))
    return DocGrads(fw, H, yhat, dyhat, dW2, dH, G, bn.dbeta, bn.dgamma, bn.dZ,
                    dW1, dW1_expanded)


def random_bn_setup(shape, seed=1):
    """Z, γ, β and a random upstream gradient G for the batch-norm layer alone."""
    N, _, p, _ = shape
    rng = np.random.default_rng(seed)
    Z = (rng.normal(size=(N, p)) + rng.uniform(-3, 3, size=p)) * rng.uniform(0.5, 2, size=p)
    Z[:, -1] *= 0.03  # a column with σ² comparable to ε
    gamma = rng.choice([-1.0, 1.0], size=p) * rng.uniform(1.2, 2.5, size=p)
    beta = rng.normal(size=p)
    G = rng.normal(size=(N, p))
    return Z, gamma, beta, G


problem_params = pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
case_params = pytest.mark.parametrize("ddof,eps", CASES, ids=CASE_IDS)
act_params = pytest.mark.parametrize("act", ["relu", "tanh"])
loss_params = pytest.mark.parametrize("loss", ["sse", "mse"])


# ---------------------------------------------------------------------------
# §2  forward identities
# ---------------------------------------------------------------------------

@problem_params
@case_params
def test_forward_identities(shape, ddof, eps):
    Z, gamma, beta, _ = random_bn_setup(shape)
    n, p = Z.shape
    one = np.ones(n)
    fw = doc_forward(Z, gamma, beta, eps, ddof)
    # CZ = Z − 1μᵀ and the model in elementary operations
    assert_close(fw.C @ Z, Z - np.outer(one, fw.mu), EXACT_RTOL)
    assert_close(fw.B, bn_plain(Z, gamma, beta, eps, ddof), EXACT_RTOL)
    # B = (γᵀ⊗1_N)∘Ẑ + βᵀ⊗1_N
    one_col = one[:, None]
    assert_close(np.kron(gamma[None, :], one_col) * fw.Zh + np.kron(beta[None, :], one_col),
                 fw.B, EXACT_RTOL)
    # (T4) 1ᵀẐ = 0, CẐ = Ẑ, C = Cᵀ = C²
    assert np.max(np.abs(one @ fw.Zh)) < 1e-12 * n
    assert_close(fw.C @ fw.Zh, fw.Zh, EXACT_RTOL)
    assert_close(fw.C @ fw.C, fw.C, EXACT_RTOL)
    # (T5) ‖ẑ_j‖² = (N − ddof) σ_j²/(σ_j² + ε), = N − ddof when ε = 0
    norms = np.sum(fw.Zh ** 2, axis=0)
    assert_close(norms, (n - ddof) * fw.var / (fw.var + eps), EXACT_RTOL)
    if eps == 0:
        assert_close(norms, np.full(p, n - ddof, dtype=float), EXACT_RTOL)


def test_trace_rules():
    rng = np.random.default_rng(3)
    A, M, D = (rng.normal(size=(5, 3)) for _ in range(3))
    S = rng.normal(size=(3, 3))
    v = rng.normal(size=3)
    # (T1) tr(AᵀD) = vec(A)ᵀ vec(D); (T2) tr(Aᵀ(M∘D)) = tr((A∘M)ᵀD)
    assert np.isclose(np.trace(A.T @ D), vec(A) @ vec(D))
    assert np.isclose(np.trace(A.T @ (M * D)), np.trace((A * M).T @ D))
    # (T3) tr(S diag(v)) = diag(S)ᵀv, diag(Sᵀ) = diag(S)
    assert np.isclose(np.trace(S @ np.diag(v)), np.diag(S) @ v)
    assert np.array_equal(np.diag(S.T), np.diag(S))
    assert np.allclose(np.diag(S @ np.diag(v)), np.diag(S) * v)
    # (K1) vec(AXB) = (Bᵀ⊗A) vec X; (K2) vec(A∘M) = diag(vec M) vec A; (K3) vec(1βᵀ) = (I⊗1)β
    Xm, Bm = rng.normal(size=(3, 4)), rng.normal(size=(4, 2))
    assert np.allclose(vec(A @ Xm @ Bm), np.kron(Bm.T, A) @ vec(Xm))
    assert np.allclose(vec(A * M), np.diag(vec(M)) @ vec(A))
    beta = rng.normal(size=3)
    assert np.allclose(vec(np.outer(np.ones(5), beta)), np.kron(np.eye(3), np.ones((5, 1))) @ beta)


# ---------------------------------------------------------------------------
# §3  closed forms by matrix differentials, against finite differences
# ---------------------------------------------------------------------------

@problem_params
@loss_params
def test_dR_dyhat(shape, loss):
    P = make_problem(shape, 0, 1e-3, loss=loss)
    d = doc_grads(P)
    value, _ = LOSSES[loss]
    assert_close(d.dyhat, fd_grad(lambda yh: value(yh, P.y), d.yhat))


@problem_params
@case_params
@act_params
@loss_params
def test_dR_dGamma2(shape, ddof, eps, act, loss):
    P = make_problem(shape, ddof, eps, act, loss)
    d = doc_grads(P)
    assert_close(d.dW2, fd_grad(lambda w: loss_of(P, W2=w), P.W2))


@problem_params
@case_params
@act_params
@loss_params
def test_dR_dB(shape, ddof, eps, act, loss):
    """G = ∂R/∂B = (∂R/∂ŷ Γ2ᵀ) ∘ a′(B); also ∂R/∂H = ∂R/∂ŷ Γ2ᵀ."""
    P = make_problem(shape, ddof, eps, act, loss)
    d = doc_grads(P)
    assert_close(d.G, fd_grad(lambda b: head_loss(P, b), d.fw.B))
    value, _ = LOSSES[loss]
    assert_close(d.dH, fd_grad(lambda h: value(h @ P.W2, P.y), d.H))


@problem_params
@case_params
@act_params
def test_dR_dbeta_dgamma(shape, ddof, eps, act):
    P = make_problem(shape, ddof, eps, act)
    d = doc_grads(P)
    assert_close(d.dbeta, fd_grad(lambda b: loss_of(P, beta=b), P.beta))
    assert_close(d.dgamma, fd_grad(lambda g: loss_of(P, gamma=g), P.gamma))
    # the two spellings: 1ᵀ(G∘Ẑ) = diag(ẐᵀG)
    assert_close(np.diag(d.fw.Zh.T @ d.G), d.dgamma, EXACT_RTOL)


@problem_params
@case_params
@act_params
def test_dR_dZ(shape, ddof, eps, act):
    P = make_problem(shape, ddof, eps, act)
    d = doc_grads(P)
    assert_close(d.dZ, fd_grad(lambda z: loss_of_Z(P, z), d.fw.Z))


@problem_params
@case_params
@act_params
@loss_params
def test_dR_dGamma1_both_forms(shape, ddof, eps, act, loss):
    """Xᵀ∂R/∂Z = (CX)ᵀG diag(γ∘s) − XᵀẐ diag(∂R/∂γ∘γ∘s)/(N−ddof) = FD gradient."""
    P = make_problem(shape, ddof, eps, act, loss)
    d = doc_grads(P)
    fd = fd_grad(lambda w: loss_of(P, W1=w), P.W1)
    assert_close(d.dW1, fd)
    assert_close(d.dW1_expanded, fd)
    assert_close((d.fw.C @ P.X).T @ d.dZ, fd)       # only the centred data matter
    # the gradient passed to an earlier layer: ∂R/∂X = ∂R/∂Z Γ1ᵀ
    assert_close(d.dZ @ P.W1.T, fd_grad(lambda x: loss_of(P._replace(X=x)), P.X))


@problem_params
@case_params
def test_bn_closed_forms_random_upstream(shape, ddof, eps):
    """The batch-norm layer alone, R = tr(GᵀB) with a random G (so ∂R/∂B = G exactly)."""
    Z, gamma, beta, G = random_bn_setup(shape)
    fw = doc_forward(Z, gamma, beta, eps, ddof)
    g = doc_bn_grads(G, fw, gamma, ddof)

    def R(z=Z, ga=gamma, be=beta):
        return np.sum(G * bn_plain(z, ga, be, eps, ddof))

    assert_close(g.dZ, fd_grad(lambda z: R(z=z), Z))
    assert_close(g.dgamma, fd_grad(lambda v: R(ga=v), gamma))
    assert_close(g.dbeta, fd_grad(lambda v: R(be=v), beta))
    # the code's form, without C: CG = G − 1(∂R/∂β)ᵀ/N
    n = Z.shape[0]
    assert_close(fw.C @ G, G - np.outer(np.ones(n), g.dbeta) / n, EXACT_RTOL)
    dx = (G - np.outer(np.ones(n), g.dbeta) / n - fw.Zh @ np.diag(g.dgamma) / (n - ddof)) \
        @ np.diag(gamma * fw.s)
    assert_close(dx, g.dZ, 1e-10)


def directional_fd(f, t_step=1e-4):
    """d/dt f(t) at t = 0 (any array-valued f), five-point stencil."""
    h = t_step
    return (f(-2 * h) - 8 * f(-h) + 8 * f(h) - f(2 * h)) / (12 * h)


@problem_params
@case_params
def test_differentials_step_by_step(shape, ddof, eps):
    """§3.2 Steps 1, 3, 4, 5 (and §5's dB): each differential along a random direction."""
    Z, gamma, beta, G = random_bn_setup(shape)
    n, p = Z.shape
    rng = np.random.default_rng(8)
    dZ, dgam, dbet = rng.normal(size=Z.shape) * np.std(Z, axis=0), rng.normal(size=p), \
        rng.normal(size=p)
    fw = doc_forward(Z, gamma, beta, eps, ddof)
    C, s, Zh = fw.C, fw.s, fw.Zh

    def along(t):
        return doc_forward(Z + t * dZ, gamma + t * dgam, beta + t * dbet, eps, ddof)

    dvar = 2 * np.diag(Z.T @ C @ dZ) / (n - ddof)                          # Step 4
    ds = -0.5 * s ** 3 * dvar
    assert_close(dvar, directional_fd(lambda t: along(t).var))
    assert_close(ds, directional_fd(lambda t: along(t).s))
    assert_close(ds, -s ** 3 * np.diag(Z.T @ C @ dZ) / (n - ddof), EXACT_RTOL)
    dZh = C @ dZ @ np.diag(s) + C @ Z @ np.diag(ds)                        # Step 3
    assert_close(dZh, directional_fd(lambda t: along(t).Zh))
    dB = dZh @ np.diag(gamma) + Zh @ np.diag(dgam) + np.outer(np.ones(n), dbet)  # Step 1
    assert_close(dB, directional_fd(lambda t: along(t).B))
    # Step 5: the two contributions, and dR = tr((∂R/∂Z)ᵀdZ) + (∂R/∂γ)ᵀdγ + (∂R/∂β)ᵀdβ
    g = doc_bn_grads(G, fw, gamma, ddof)
    Gbar = G @ np.diag(gamma)
    u = np.diag(Gbar.T @ C @ Z)
    assert_close(u, gamma * np.diag(G.T @ C @ Z), EXACT_RTOL)
    assert_close(np.trace(Gbar.T @ C @ dZ @ np.diag(s)),
                 np.trace((C @ G @ np.diag(gamma * s)).T @ dZ), EXACT_RTOL)
    assert_close(u @ ds, -np.trace((C @ Z @ np.diag(u * s ** 3)).T @ dZ) / (n - ddof),
                 EXACT_RTOL)
    assert_close(C @ Z @ np.diag(u * s ** 3), Zh @ np.diag(gamma * s * g.dgamma), 1e-10)
    dR = np.trace(g.dZ.T @ dZ) + g.dgamma @ dgam + g.dbeta @ dbet
    assert_close(dR, directional_fd(lambda t: np.sum(G * along(t).B)))
    # §5: the differential of the inference form
    m, v = rng.normal(size=p), rng.uniform(0.5, 2.0, size=p)
    dm, dv = rng.normal(size=p), rng.normal(size=p) * 0.1
    t_ = (v + eps) ** -0.5
    dt = -0.5 * t_ ** 3 * dv
    Zc = (Z - np.outer(np.ones(n), m)) @ np.diag(t_)
    dBi = (dZ @ np.diag(gamma * t_) + Zc @ np.diag(dgam) + np.outer(np.ones(n), dbet)
           - np.outer(np.ones(n), dm) @ np.diag(gamma * t_)
           + (Z - np.outer(np.ones(n), m)) @ np.diag(gamma * dt))
    assert_close(dBi, directional_fd(lambda t: bn_inference_plain(
        Z + t * dZ, gamma + t * dgam, beta + t * dbet, m + t * dm, v + t * dv, eps)))


# ---------------------------------------------------------------------------
# §4  vec/Kronecker Jacobians, against finite-difference Jacobians
# ---------------------------------------------------------------------------

def doc_bn_jacobians(fw: DocForward, gamma, ddof):
    """§4.2–4.3: J_β = I⊗1, J_γ = diag(vec Ẑ)(I⊗1),
    J_Z = blockdiag_j(γ_j s_j (C − ẑ_jẑ_jᵀ/(N−ddof))).
    """
    n, p = fw.Zh.shape
    ones_col = np.ones((n, 1))
    jbeta = np.kron(np.eye(p), ones_col)
    jgamma = np.diag(vec(fw.Zh)) @ np.kron(np.eye(p), ones_col)
    jz = np.zeros((n * p, n * p))
    for j in range(p):
        zj = fw.Zh[:, j:j + 1]
        block = gamma[j] * fw.s[j] * (fw.C - zj @ zj.T / (n - ddof))
        jz[j * n:(j + 1) * n, j * n:(j + 1) * n] = block
    return jz, jgamma, jbeta


@problem_params
@case_params
def test_bn_jacobians(shape, ddof, eps):
    Z, gamma, beta, G = random_bn_setup(shape)
    fw = doc_forward(Z, gamma, beta, eps, ddof)
    jz, jgamma, jbeta = doc_bn_jacobians(fw, gamma, ddof)
    assert_close(jz, fd_jacobian(lambda z: bn_plain(z, gamma, beta, eps, ddof), Z))
    # §4.3 on the way: ∂s_j/∂z_jᵀ = −s_j³ (C z_j)ᵀ/(N − ddof), and the block before
    # s_j Cz_j is renamed ẑ_j
    n, p = Z.shape
    js = fd_jacobian(lambda z: doc_forward(z, gamma, beta, eps, ddof).s, Z)
    for j in range(p):
        czj = fw.C @ Z[:, j]
        expected = np.zeros(n * p)
        expected[j * n:(j + 1) * n] = -fw.s[j] ** 3 * czj / (n - ddof)
        assert_close(js[j], expected)
        block = gamma[j] * (fw.s[j] * fw.C - fw.s[j] ** 3 * np.outer(czj, czj) / (n - ddof))
        assert_close(block, jz[j * n:(j + 1) * n, j * n:(j + 1) * n], 1e-10)
    assert_close(jgamma, fd_jacobian(lambda g: bn_plain(Z, g, beta, eps, ddof), gamma))
    assert_close(jbeta, fd_jacobian(lambda b: bn_plain(Z, gamma, b, eps, ddof), beta))
    # vec(∂R/∂θ) = Jᵀ vec(G) recovers the compact forms of §3
    g = doc_bn_grads(G, fw, gamma, ddof)
    assert_close(unvec(jz.T @ vec(G), Z.shape), g.dZ, EXACT_RTOL)
    assert_close(jgamma.T @ vec(G), g.dgamma, EXACT_RTOL)
    assert_close(jbeta.T @ vec(G), g.dbeta, EXACT_RTOL)


@problem_params
def test_dense_jacobians(shape):
    N, p1, p2, _ = shape
    rng = np.random.default_rng(4)
    X, W = rng.normal(size=(N, p1)), rng.normal(size=(p1, p2))
    jw = np.kron(np.eye(p2), X)            # ∂vec(XW)/∂vec(W)ᵀ = I ⊗ X
    jx = np.kron(W.T, np.eye(N))           # ∂vec(XW)/∂vec(X)ᵀ = Wᵀ ⊗ I_N
    assert_close(jw, fd_jacobian(lambda w: X @ w, W))
    assert_close(jx, fd_jacobian(lambda x: x @ W, X))
    dY = rng.normal(size=(N, p2))
    assert_close(unvec(jw.T @ vec(dY), W.shape), X.T @ dY, EXACT_RTOL)
    assert_close(unvec(jx.T @ vec(dY), X.shape), dY @ W.T, EXACT_RTOL)


@problem_params
@case_params
@act_params
def test_activation_and_output_jacobians(shape, ddof, eps, act):
    P = make_problem(shape, ddof, eps, act)
    d = doc_grads(P)
    a, da = ACTIVATIONS[act]
    n, p2 = d.fw.B.shape
    jact = np.diag(vec(da(d.fw.B)))                       # diag(vec a′(B))
    assert_close(jact, fd_jacobian(a, d.fw.B))
    W2m = as_matrix(P.W2, p2)
    k = W2m.shape[1]
    jw2 = np.kron(np.eye(k), d.H)                         # ∂vec ŷ/∂(vec Γ2)ᵀ = I_k ⊗ H
    jh = np.kron(W2m.T, np.eye(n))                        # ∂vec ŷ/∂(vec H)ᵀ = Γ2ᵀ ⊗ I_N
    assert_close(jw2, fd_jacobian(lambda w: d.H @ w, W2m))
    assert_close(jh, fd_jacobian(lambda h: h @ W2m, d.H))
    r = vec(as_matrix(d.dyhat, n))
    assert_close(unvec(jw2.T @ r, W2m.shape), as_matrix(d.dW2, p2), EXACT_RTOL)
    assert_close(unvec(jact.T @ (jh.T @ r), d.G.shape), d.G, EXACT_RTOL)


@problem_params
@case_params
@act_params
def test_whole_chain_jacobian_product(shape, ddof, eps, act):
    """∂R/∂vec(Γ1)ᵀ = vec(∂R/∂ŷ)ᵀ (Γ2ᵀ⊗I_N) diag(vec a′(B)) J_Z (I_p2⊗X)."""
    P = make_problem(shape, ddof, eps, act)
    d = doc_grads(P)
    _, da = ACTIVATIONS[act]
    n, p2 = d.fw.B.shape
    jz, _, _ = doc_bn_jacobians(d.fw, P.gamma, ddof)
    row = (vec(as_matrix(d.dyhat, n)) @ np.kron(as_matrix(P.W2, p2).T, np.eye(n))
           @ np.diag(vec(da(d.fw.B))) @ jz @ np.kron(np.eye(p2), P.X))
    assert_close(unvec(row, P.W1.shape), fd_grad(lambda w: loss_of(P, W1=w), P.W1))


@problem_params
@case_params
def test_first_layer_chain_jacobian(shape, ddof, eps):
    """∂vec B/∂(vec Γ1)ᵀ = J_Z (I_p2 ⊗ X), and its transpose maps vec G to vec(Xᵀ∂R/∂Z)."""
    N, _, p2, _ = shape
    P = make_problem(shape, ddof, eps)
    fw = doc_forward(P.X @ P.W1, P.gamma, P.beta, eps, ddof)
    jz, _, _ = doc_bn_jacobians(fw, P.gamma, ddof)
    jw1 = jz @ np.kron(np.eye(p2), P.X)
    fd = fd_jacobian(lambda w: bn_plain(P.X @ w, P.gamma, P.beta, eps, ddof), P.W1)
    assert_close(jw1, fd)
    G = np.random.default_rng(5).normal(size=(N, p2))
    g = doc_bn_grads(G, fw, P.gamma, ddof)
    assert_close(unvec(jw1.T @ vec(G), P.W1.shape), P.X.T @ g.dZ, EXACT_RTOL)


# ---------------------------------------------------------------------------
# §5  inference form
# ---------------------------------------------------------------------------

def inference_setup(shape, eps, seed=6):
    N, p1, p2, _ = shape
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, p1)) + 2.0
    W1 = rng.normal(size=(p1, p2))
    gamma = rng.uniform(1.2, 2.5, size=p2) * rng.choice([-1.0, 1.0], size=p2)
    beta = rng.normal(size=p2)
    m = rng.normal(size=p2)
    v = rng.uniform(0.5, 3.0, size=p2)
    G = rng.normal(size=(N, p2))
    return X, W1, gamma, beta, m, v, G


def bn_inference_plain(Z, gamma, beta, m, v, eps):
    return (Z - m) / np.sqrt(v + eps) * gamma + beta


@problem_params
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_inference_form(shape, eps):
    X, W1, gamma, beta, m, v, G = inference_setup(shape, eps)
    N = G.shape[0]
    one = np.ones(N)
    Z = X @ W1
    t = (v + eps) ** -0.5
    Zc = (Z - np.outer(one, m)) @ np.diag(t)        # Ž
    B = (Z - np.outer(one, m)) @ np.diag(gamma * t) + np.outer(one, beta)
    assert_close(B, bn_inference_plain(Z, gamma, beta, m, v, eps), EXACT_RTOL)

    def R(z=Z, ga=gamma, be=beta, mm=m, vv=v):
        return np.sum(G * bn_inference_plain(z, ga, be, mm, vv, eps))

    assert_close(one @ G, fd_grad(lambda x: R(be=x), beta))
    assert_close(one @ (G * Zc), fd_grad(lambda x: R(ga=x), gamma))
    assert_close(G @ np.diag(gamma * t), fd_grad(lambda x: R(z=x), Z))
    assert_close(X.T @ G @ np.diag(gamma * t), fd_grad(lambda w: R(z=X @ w), W1))
    # the statistics as inputs: ∂R/∂m = −γ∘t∘(1ᵀG), ∂R/∂v = −½ γ∘t²∘∂R/∂γ
    assert_close(-gamma * t * (one @ G), fd_grad(lambda x: R(mm=x), m))
    assert_close(-0.5 * gamma * t ** 2 * (one @ (G * Zc)), fd_grad(lambda x: R(vv=x), v))
    # ∂vec B/∂(vec Z)ᵀ = diag(γ∘t) ⊗ I_N
    jz = np.kron(np.diag(gamma * t), np.eye(N))
    assert_close(jz, fd_jacobian(lambda z: bn_inference_plain(z, gamma, beta, m, v, eps), Z))


@problem_params
@case_params
def test_inference_at_batch_statistics_is_not_training_gradient(shape, ddof, eps):
    """Same forward value at (m, v) = (μ, σ²), different ∂R/∂Z (pitfall 1's root)."""
    Z, gamma, beta, G = random_bn_setup(shape)
    fw = doc_forward(Z, gamma, beta, eps, ddof)
    assert_close(bn_inference_plain(Z, gamma, beta, fw.mu, fw.var, eps), fw.B, EXACT_RTOL)
    fd_train = fd_grad(lambda z: np.sum(G * bn_plain(z, gamma, beta, eps, ddof)), Z)
    assert_wrong(G @ np.diag(gamma * fw.s), fd_train)


# ---------------------------------------------------------------------------
# §6  consequences
# ---------------------------------------------------------------------------

@problem_params
@case_params
@act_params
def test_column_sums_vanish_and_bias_gets_no_gradient(shape, ddof, eps, act):
    P = make_problem(shape, ddof, eps, act)
    d = doc_grads(P)
    n, p = d.dZ.shape
    scale = np.max(np.abs(d.dZ))
    assert np.max(np.abs(np.ones(n) @ d.dZ)) < 1e-12 * n * scale
    # A bias before batch norm, Z = XΓ1 + 1bᵀ: its FD gradient is 0 (B does not move).
    fd_bias = fd_grad(lambda b: loss_of_Z(P, P.X @ P.W1 + b), np.zeros(p))
    assert np.max(np.abs(fd_bias)) < 1e-8 * scale


@problem_params
@case_params
def test_orthogonality_to_zhat(shape, ddof, eps):
    """1ᵀ(∂R/∂Z∘Ẑ) = γ∘s∘∂R/∂γ∘(1 − ‖ẑ_j‖²/(N−ddof)) = ε γ∘s³∘∂R/∂γ: 0 iff ε = 0."""
    Z, gamma, beta, G = random_bn_setup(shape)
    n = Z.shape[0]
    fw = doc_forward(Z, gamma, beta, eps, ddof)
    fd = fd_grad(lambda z: np.sum(G * bn_plain(z, gamma, beta, eps, ddof)), Z)
    dgamma = np.ones(n) @ (G * fw.Zh)
    lhs = np.ones(n) @ (fd * fw.Zh)          # from the oracle's gradient
    norms = np.sum(fw.Zh ** 2, axis=0)
    value = gamma * fw.s * dgamma * (1 - norms / (n - ddof))
    ref = np.max(np.abs(fd * fw.Zh).sum(axis=0)) + np.max(np.abs(gamma * fw.s * dgamma))
    if eps == 0:
        assert np.max(np.abs(lhs)) < 1e-8 * ref
        assert np.max(np.abs(value)) < 1e-12 * ref
    # z_jᵀ∂R/∂z_j = ẑ_jᵀ∂R/∂z_j / s_j = d/dt R(Z diag(1 + t e_j)) at t = 0
    for j, e_j in enumerate(np.eye(Z.shape[1])):
        deriv = directional_fd(lambda t: np.sum(G * bn_plain(
            Z @ np.diag(1 + t * e_j), gamma, beta, eps, ddof)))
        assert np.isclose(Z[:, j] @ fd[:, j], lhs[j] / fw.s[j], rtol=1e-6, atol=1e-8 * ref)
        assert np.isclose(deriv, lhs[j] / fw.s[j], rtol=1e-6, atol=1e-8 * ref)
    if eps > 0:
        assert_close(value, eps * gamma * fw.s ** 3 * dgamma, CANCEL_RTOL)
        # The small-variance column makes the value far from 0, and the oracle agrees.
        assert np.max(np.abs(value)) > 1e-2 * ref
        assert_close(lhs, value, 1e-6)


@problem_params
@pytest.mark.parametrize("ddof", [0, 1])
def test_rescaling_a_column_eps0(shape, ddof):
    """ε = 0: R(Z diag(c)) = R(Z) for c > 0, and ∂R/∂Z at Z diag(c) is ∂R/∂Z diag(c)⁻¹."""
    P = make_problem(shape, ddof, 0.0, "tanh")
    p = P.W1.shape[1]
    c = np.random.default_rng(7).uniform(0.2, 5.0, size=p)
    Z = P.X @ P.W1
    assert np.isclose(loss_of_Z(P, Z @ np.diag(c)), loss_of_Z(P, Z), rtol=1e-12)
    fd_at_z = fd_grad(lambda z: loss_of_Z(P, z), Z)
    fd_at_cz = fd_grad(lambda z: loss_of_Z(P, z), Z @ np.diag(c))
    assert_close(fd_at_cz, fd_at_z @ np.diag(1 / c))
    # the closed form at Z diag(c) is the closed form at Z, scaled by 1/c
    scaled = make_problem(shape, ddof, 0.0, "tanh")._replace(W1=P.W1 @ np.diag(c))
    assert_close(doc_grads(scaled).dZ, doc_grads(P).dZ @ np.diag(1 / c), 1e-10)
    assert_close(doc_grads(scaled).dW1, doc_grads(P).dW1 @ np.diag(1 / c), 1e-10)
    # a negative factor flips ẑ_j: not an invariance
    flip = np.ones(p)
    flip[0] = -1.0
    assert not np.isclose(loss_of_Z(P, Z @ np.diag(flip)), loss_of_Z(P, Z), rtol=1e-6)


@problem_params
@pytest.mark.parametrize("ddof", [0, 1])
def test_rescaling_breaks_with_eps(shape, ddof):
    P = make_problem(shape, ddof, 1e-3, "tanh")
    p = P.W1.shape[1]
    c = np.ones(p)
    c[-1] = 10.0  # rescale the small-variance column, where ε matters
    Z = P.X @ P.W1
    assert not np.isclose(loss_of_Z(P, Z @ np.diag(c)), loss_of_Z(P, Z), rtol=1e-6)
    fd_at_z = fd_grad(lambda z: loss_of_Z(P, z), Z)
    fd_at_cz = fd_grad(lambda z: loss_of_Z(P, z), Z @ np.diag(c))
    assert_wrong(fd_at_z @ np.diag(1 / c), fd_at_cz)


@problem_params
@case_params
def test_bn_jacobian_block_structure(shape, ddof, eps):
    """Blocks symmetric, 1 in the null space; ẑ_j an eigenvector with eigenvalue γ_j ε s_j³."""
    Z, gamma, beta, _ = random_bn_setup(shape)
    n, p = Z.shape
    fw = doc_forward(Z, gamma, beta, eps, ddof)
    jz_fd = fd_jacobian(lambda z: bn_plain(z, gamma, beta, eps, ddof), Z)
    jz, _, _ = doc_bn_jacobians(fw, gamma, ddof)
    scale = np.max(np.abs(jz_fd))
    # block diagonal, as the oracle's Jacobian shows
    mask = np.kron(np.eye(p), np.ones((n, n))) == 0
    assert np.max(np.abs(jz_fd[mask])) < 1e-8 * scale
    assert_close(jz_fd, jz_fd.T, 1e-7)
    assert_close(jz, jz.T, EXACT_RTOL)
    assert np.max(np.abs(jz @ np.kron(np.eye(p), np.ones((n, 1))))) < 1e-12 * n * scale
    for j in range(p):
        block = jz[j * n:(j + 1) * n, j * n:(j + 1) * n]
        zj = fw.Zh[:, j]
        if eps > 0:
            assert_close(block @ zj, gamma[j] * eps * fw.s[j] ** 3 * zj, CANCEL_RTOL)
        else:
            assert np.max(np.abs(block @ zj)) < 1e-12 * n * scale
            # γ_j s_j P_j with P_j the orthogonal projector off span{1, ẑ_j}: rank N − 2
            proj = block / (gamma[j] * fw.s[j])
            assert_close(proj @ proj, proj, 1e-10)
            assert np.linalg.matrix_rank(proj) == n - 2


# ---------------------------------------------------------------------------
# §7  pitfalls: each wrong formula misses the oracle clearly
# ---------------------------------------------------------------------------

@problem_params
@case_params
@act_params
def test_pitfall_1_statistics_held_constant(shape, ddof, eps, act):
    P = make_problem(shape, ddof, eps, act)
    d = doc_grads(P)
    n = P.X.shape[0]
    fd = fd_grad(lambda w: loss_of(P, W1=w), P.W1)
    wrong = P.X.T @ d.G @ np.diag(P.gamma * d.fw.s)
    assert_wrong(wrong, fd)
    # each missing piece on its own is a clear error
    missing_projection = (d.fw.C @ P.X).T @ d.G @ np.diag(P.gamma * d.fw.s)
    projection = P.X.T @ d.fw.Zh @ np.diag(d.dgamma * P.gamma * d.fw.s) / (n - P.ddof)
    missing_centering = wrong - projection
    assert_wrong(missing_projection, fd)
    assert_wrong(missing_centering, fd)
    # and the wrong ∂R/∂Z breaks 1ᵀ∂R/∂Z = 0
    column_sums = np.ones(n) @ (d.G @ np.diag(P.gamma * d.fw.s))
    assert np.max(np.abs(column_sums)) > WRONG * np.max(np.abs(d.dZ))


@problem_params
@case_params
def test_pitfall_2_gamma_gradient(shape, ddof, eps):
    P = make_problem(shape, ddof, eps)
    d = doc_grads(P)
    fd = fd_grad(lambda g: loss_of(P, gamma=g), P.gamma)
    assert_wrong(P.gamma * d.dgamma, fd)          # a stray factor γ
    full = d.fw.Zh.T @ d.G                        # ẐᵀG: p×p, not p
    assert full.shape != P.gamma.shape
    assert_close(np.diag(full), fd)               # its diagonal is the gradient
    off = full - np.diag(np.diag(full))
    assert np.max(np.abs(off)) > WRONG * np.max(np.abs(fd))
    assert_wrong(np.ones(full.shape[0]) @ full, fd)  # summing it instead is wrong too


def relu_derivative_wrong(b):
    """'Set negatives to 0, then set everything ≥ 0 to 1' — the pitfall, verbatim."""
    d = b.copy()
    d[d < 0] = 0
    d[d >= 0] = 1
    return d


@problem_params
@case_params
def test_pitfall_3_relu_all_ones(shape, ddof, eps):
    P = make_problem(shape, ddof, eps, "relu")
    d = doc_grads(P)
    B = d.fw.B
    assert (B < 0).any() and (B > 0).any()
    wrong = relu_derivative_wrong(B)
    assert np.array_equal(wrong, np.ones_like(B))
    assert np.array_equal(np.where(B > 0, 1.0, 0.0), (B > 0).astype(float))
    fd_B = fd_grad(lambda b: head_loss(P, b), B)
    assert_close(d.G, fd_B)
    assert_wrong(d.dH * wrong, fd_B)
    # and downstream, in ∂R/∂Γ1
    wrong_bn = doc_bn_grads(d.dH * wrong, d.fw, P.gamma, ddof)
    assert_wrong(P.X.T @ wrong_bn.dZ, fd_grad(lambda w: loss_of(P, W1=w), P.W1))


@problem_params
@case_params
def test_pitfall_4_loop_agrees_with_wrong_formula(shape, ddof, eps):
    P = make_problem(shape, ddof, eps)
    d = doc_grads(P)
    X, G, gamma, s = P.X, d.G, P.gamma, d.fw.s
    wrong_matrix = X.T @ G @ np.diag(gamma * s)
    n, p1 = X.shape
    p2 = G.shape[1]
    wrong_loop = np.zeros((p1, p2))
    for i in range(p1):
        for j in range(p2):
            wrong_loop[i, j] = sum(X[r, i] * G[r, j] * gamma[j] * s[j] for r in range(n))
    assert_close(wrong_loop, wrong_matrix, EXACT_RTOL)                 # they "confirm" each other
    assert_wrong(wrong_matrix, fd_grad(lambda w: loss_of(P, W1=w), P.W1))  # the oracle does not


# -- the snippet of §7.5, with bnmat.gradcheck ------------------------------

def _snippet_setup():
    """The document's §7.5 example, line for line (plus the "full" ẐᵀG variant)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10, 7)) + 2.0
    y = rng.normal(size=10)
    params = {"w1": rng.normal(size=(7, 4)), "gamma": rng.normal(size=4),
              "beta": rng.normal(size=4), "w2": rng.normal(size=4)}
    eps, ddof = 1e-3, 1

    def loss(p):
        z, _ = ops.dense_forward(X, p["w1"])
        b, _ = ops.batchnorm_forward(z, p["gamma"], p["beta"], eps=eps, ddof=ddof)
        return float(np.sum((y - np.tanh(b) @ p["w2"]) ** 2))

    def grad(p, pitfall=None):
        z = X @ p["w1"]
        b, bn = ops.batchnorm_forward(z, p["gamma"], p["beta"], eps=eps, ddof=ddof)
        h = np.tanh(b)
        r = -2.0 * (y - h @ p["w2"])                        # ∂R/∂ŷ
        G = np.outer(r, p["w2"]) * (1.0 - h ** 2)           # ∂R/∂B
        dz, dgamma, dbeta = ops.batchnorm_backward(G, bn)
        if pitfall == 1:                                    # μ, σ held constant
            dz = G * (p["gamma"] * bn.inv_std)
        if pitfall == 2:                                    # a stray factor γ
            dgamma = p["gamma"] * dgamma
        if pitfall == "full":                               # ẐᵀG, not its diagonal
            dgamma = bn.x_hat.T @ G
        return {"w1": X.T @ dz, "gamma": dgamma, "beta": dbeta, "w2": h.T @ r}

    return loss, grad, params


def test_gradcheck_catches_the_pitfalls():
    gradcheck = pytest.importorskip("bnmat.gradcheck")
    loss, grad, params = _snippet_setup()
    report = gradcheck.check_grad(loss, grad, params)
    assert report.ok, str(report)
    for pitfall in (1, 2):
        bad = gradcheck.check_grad(loss, lambda p, k=pitfall: grad(p, k), params)
        assert not bad.ok, f"pitfall {pitfall} passed the checker"
    assert gradcheck.check_grad(loss, lambda p: grad(p, 1), params).errors["w1"] > 1e-2
    assert gradcheck.check_grad(loss, lambda p: grad(p, 2), params).errors["gamma"] > 1e-2
    with pytest.raises(ValueError, match="diagonal"):
        gradcheck.check_grad(loss, lambda p: grad(p, "full"), params)


def test_snippet_gradient_against_finite_differences():
    """The snippet's correct gradient agrees with this file's own oracle (no gradcheck)."""
    loss, grad, params = _snippet_setup()
    g = grad(params)
    for name, value in params.items():
        fd = fd_grad(lambda v, name=name: loss({**params, name: v}), value)
        assert_close(g[name], fd)
    assert_wrong(grad(params, 1)["w1"], fd_grad(lambda v: loss({**params, "w1": v}), params["w1"]))
    assert_wrong(grad(params, 2)["gamma"],
                 fd_grad(lambda v: loss({**params, "gamma": v}), params["gamma"]))


# ---------------------------------------------------------------------------
# torch.autograd through PyTorch's native batch-norm kernel
# ---------------------------------------------------------------------------

def torch_grads(P: Problem):
    torch = pytest.importorskip("torch")
    n = P.X.shape[0]

    def leaf(a):
        return torch.tensor(a, dtype=torch.float64, requires_grad=True)

    X = torch.tensor(P.X, dtype=torch.float64)
    y = torch.tensor(P.y, dtype=torch.float64)
    W1, gamma, beta, W2 = leaf(P.W1), leaf(P.gamma), leaf(P.beta), leaf(P.W2)
    Z = X @ W1
    Z.retain_grad()
    # native_batch_norm divides by N; with ddof the standardization is
    # (S/(N−ddof) + ε)^(−1/2) = √((N−ddof)/N) (S/N + ε(N−ddof)/N)^(−1/2), S = ‖Cz‖²,
    # so γ√((N−ddof)/N) and ε(N−ddof)/N give our layer exactly.
    c = (n - P.ddof) / n
    B = torch.ops.aten.native_batch_norm(Z, gamma * c ** 0.5, beta, None, None, True,
                                         0.0, P.eps * c)[0]
    B.retain_grad()
    H = torch.relu(B) if P.act == "relu" else torch.tanh(B)
    yhat = H @ W2
    R = ((y - yhat) ** 2).sum()
    if P.loss == "mse":
        R = R / yhat.numel()
    R.backward()
    out = {"W1": W1.grad, "gamma": gamma.grad, "beta": beta.grad, "W2": W2.grad,
           "Z": Z.grad, "B": B.grad}
    return {k: v.numpy() for k, v in out.items()}, R.item()


@problem_params
@case_params
@act_params
@loss_params
def test_against_torch_autograd(shape, ddof, eps, act, loss):
    P = make_problem(shape, ddof, eps, act, loss)
    t, R = torch_grads(P)
    d = doc_grads(P)
    assert np.isclose(R, loss_of(P), rtol=1e-12)
    tol = 1e-10
    assert_close(d.dW1, t["W1"], tol)
    assert_close(d.dW1_expanded, t["W1"], tol)
    assert_close(d.dZ, t["Z"], tol)
    assert_close(d.G, t["B"], tol)
    assert_close(d.dgamma, t["gamma"], tol)
    assert_close(d.dbeta, t["beta"], tol)
    assert_close(d.dW2, t["W2"], tol)


# ---------------------------------------------------------------------------
# bnmat.ops computes the document's formulas
# ---------------------------------------------------------------------------

@problem_params
@case_params
@act_params
@loss_params
def test_ops_agree_with_doc(shape, ddof, eps, act, loss):
    P = make_problem(shape, ddof, eps, act, loss)
    d = doc_grads(P)
    z, dense1 = ops.dense_forward(P.X, P.W1)
    b, bn = ops.batchnorm_forward(z, P.gamma, P.beta, eps=eps, ddof=ddof)
    assert_close(b, d.fw.B, EXACT_RTOL)
    assert_close(bn.x_hat, d.fw.Zh, EXACT_RTOL)
    assert_close(bn.inv_std, d.fw.s, EXACT_RTOL)
    assert_close(bn.mean, d.fw.mu, EXACT_RTOL)
    assert_close(bn.var, d.fw.var, EXACT_RTOL)
    act_forward = getattr(ops, f"{act}_forward")
    act_backward = getattr(ops, f"{act}_backward")
    h, act_cache = act_forward(b)
    yhat, dense2 = ops.dense_forward(h, as_matrix(P.W2, P.W2.shape[0]))
    yhat = np.reshape(yhat, P.y.shape)
    R, loss_cache = getattr(ops, f"{loss}_forward")(yhat, P.y)
    assert np.isclose(float(R), loss_of(P), rtol=1e-12)
    dyhat = getattr(ops, f"{loss}_backward")(1.0, loss_cache)
    assert_close(dyhat, d.dyhat, EXACT_RTOL)
    dh, dw2, _ = ops.dense_backward(as_matrix(dyhat, P.X.shape[0]), dense2)
    assert_close(dh, d.dH, EXACT_RTOL)
    assert_close(np.reshape(dw2, P.W2.shape), d.dW2, EXACT_RTOL)
    G = act_backward(dh, act_cache)
    assert_close(G, d.G, EXACT_RTOL)
    dz, dgamma, dbeta = ops.batchnorm_backward(G, bn)
    assert_close(dz, d.dZ, 1e-10)
    assert_close(dgamma, d.dgamma, EXACT_RTOL)
    assert_close(dbeta, d.dbeta, EXACT_RTOL)
    _, dw1, db1 = ops.dense_backward(dz, dense1)
    assert db1 is None
    assert_close(dw1, d.dW1_expanded, 1e-10)


@problem_params
@case_params
def test_ops_batchnorm_backward_random_upstream(shape, ddof, eps):
    Z, gamma, beta, G = random_bn_setup(shape)
    fw = doc_forward(Z, gamma, beta, eps, ddof)
    g = doc_bn_grads(G, fw, gamma, ddof)
    _, cache = ops.batchnorm_forward(Z, gamma, beta, eps=eps, ddof=ddof)
    dz, dgamma, dbeta = ops.batchnorm_backward(G, cache)
    assert_close(dz, g.dZ, 1e-10)
    assert_close(dgamma, g.dgamma, EXACT_RTOL)
    assert_close(dbeta, g.dbeta, EXACT_RTOL)


@problem_params
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_ops_inference_agree_with_doc(shape, eps):
    X, W1, gamma, beta, m, v, G = inference_setup(shape, eps)
    Z = X @ W1
    t = (v + eps) ** -0.5
    y, cache = ops.batchnorm_inference_forward(Z, gamma, beta, m, v, eps=eps)
    assert_close(y, bn_inference_plain(Z, gamma, beta, m, v, eps), EXACT_RTOL)
    dz, dgamma, dbeta = ops.batchnorm_inference_backward(G, cache)
    one = np.ones(Z.shape[0])
    assert_close(dz, G @ np.diag(gamma * t), EXACT_RTOL)
    assert_close(dgamma, one @ (G * ((Z - m) * t)), EXACT_RTOL)
    assert_close(dbeta, one @ G, EXACT_RTOL)


@problem_params
@case_params
def test_jacobians_module_agrees_with_doc(shape, ddof, eps):
    jacobians = pytest.importorskip("bnmat.jacobians")
    Z, gamma, beta, _ = random_bn_setup(shape)
    fw = doc_forward(Z, gamma, beta, eps, ddof)
    jz, jgamma, jbeta = doc_bn_jacobians(fw, gamma, ddof)
    got = jacobians.batchnorm_jacobians(Z, gamma, beta, eps=eps, ddof=ddof)
    assert_close(np.asarray(got[0]), jz, 1e-10)
    assert_close(np.asarray(got[1]), jgamma, 1e-10)
    assert_close(np.asarray(got[2]), jbeta, EXACT_RTOL)
    assert np.array_equal(jacobians.vec(Z), vec(Z))
    assert np.array_equal(jacobians.unvec(vec(Z), Z.shape), Z)


@problem_params
def test_jacobians_module_dense_activation_inference(shape):
    jacobians = pytest.importorskip("bnmat.jacobians")
    N, _, p2, _ = shape
    X, W1, gamma, beta, m, v, _ = inference_setup(shape, 1e-3)
    jx, jw, _ = jacobians.dense_jacobians(X, W1)
    assert_close(np.asarray(jx), np.kron(W1.T, np.eye(N)), EXACT_RTOL)
    assert_close(np.asarray(jw), np.kron(np.eye(p2), X), EXACT_RTOL)
    Z = X @ W1
    for name, (_, da) in ACTIVATIONS.items():
        assert_close(np.asarray(jacobians.activation_jacobian(name, Z)), np.diag(vec(da(Z))),
                     EXACT_RTOL)
    t = (v + 1e-3) ** -0.5
    ji = jacobians.batchnorm_inference_jacobians(Z, gamma, beta, m, v, eps=1e-3)
    assert_close(np.asarray(ji[0]), np.kron(np.diag(gamma * t), np.eye(N)), EXACT_RTOL)
    assert_close(np.asarray(ji[1]),
                 np.diag(vec((Z - m) * t)) @ np.kron(np.eye(p2), np.ones((N, 1))), EXACT_RTOL)
