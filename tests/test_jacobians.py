"""Tests of bnmat.jacobians, and through it of every compact backward in bnmat.ops.

Two independent oracles meet here:

1. Each explicit Jacobian (built from its Kronecker / block-diagonal formula)
   equals a central-difference Jacobian of the op's forward pass, column by
   column. This proves the vec/Kronecker forms.
2. Each compact backward in bnmat.ops equals ``Jᵀ vec(G)`` for a random G. The
   Jacobians never call a backward, so this is not a formula checked against
   itself.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bnmat import ops
from bnmat.jacobians import (
    MAX_DIM,
    activation_jacobian,
    batchnorm_inference_jacobians,
    batchnorm_jacobians,
    commutation_matrix,
    dense_jacobians,
    loss_jacobian,
    unvec,
    vec,
    vjp_from_jacobian,
)

ACTIVATION_CASES = [
    ("relu", {}),
    ("leaky_relu", {}),
    ("leaky_relu", {"negative_slope": 0.2}),
    ("tanh", {}),
    ("sigmoid", {}),
    ("softplus", {}),
    ("identity", {}),
]
BN_HYPER = [(ddof, eps) for ddof in (0, 1) for eps in (0.0, 1e-5, 0.3)]


# --------------------------------------------------------------------------- oracles


def colmajor(a):
    """vec written out here, so the finite-difference oracle does not lean on bnmat.vec."""
    return np.ravel(np.asarray(a, dtype=np.float64), order="F")


def fd_jacobian(f, a, h=1e-6):
    """Central-difference Jacobian ∂vec f(a)/∂vec(a)ᵀ, one column per entry of a."""
    a = np.array(a, dtype=np.float64)
    rows = colmajor(f(a)).size
    jac = np.empty((rows, a.size))
    for k in range(a.size):
        idx = np.unravel_index(k, a.shape, order="F")
        step = h * max(1.0, abs(a[idx]))
        up, down = a.copy(), a.copy()
        up[idx] += step
        down[idx] -= step
        jac[:, k] = (colmajor(f(up)) - colmajor(f(down))) / (2 * step)
    return jac


def assert_fd_close(jac, jac_fd):
    assert jac.shape == jac_fd.shape
    scale = max(1.0, np.abs(jac_fd).max())
    np.testing.assert_allclose(jac, jac_fd, rtol=1e-6, atol=1e-7 * scale)


def assert_pullback(actual, jac, g, tol=1e-10, terms=0.0):
    """``actual`` equals Jᵀ vec(G), relative to the size of the terms in that product.

    ``terms`` is a floor for that size, for Jacobians whose entries are
    themselves differences that cancel (batch norm with N = 2 and ε = 0 has
    a zero Jacobian, while the compact formula rounds at the size of G γ s).
    """
    actual = np.asarray(actual, dtype=np.float64)
    expected = vjp_from_jacobian(jac, g, actual.shape)
    scale = max((np.abs(jac).T @ np.abs(colmajor(g))).max(), terms)
    err = np.abs(actual - expected).max() if actual.size else 0.0
    assert err <= tol * max(scale, np.finfo(float).tiny), (err, scale)


def bn_data(rng, n, p, scale=1.0, offset=0.0):
    x = offset + scale * rng.standard_normal((n, p))
    return x, rng.uniform(0.5, 2.0, p) * rng.choice([-1.0, 1.0], p), rng.standard_normal(p)


def away_from_zero(rng, shape):
    """Inputs with |x| ≥ 0.1, so ReLU's kink is never inside a difference step."""
    return rng.choice([-1.0, 1.0], shape) * rng.uniform(0.1, 2.0, shape)


@pytest.fixture
def rng():
    return np.random.default_rng(20240611)


# --------------------------------------------------------------------------- vec algebra


def test_vec_stacks_columns_and_unvec_inverts(rng):
    a = rng.standard_normal((3, 4))
    v = vec(a)
    assert v.shape == (12,)
    np.testing.assert_array_equal(v[:3], a[:, 0])
    np.testing.assert_array_equal(v[3:6], a[:, 1])
    np.testing.assert_array_equal(unvec(v, (3, 4)), a)
    np.testing.assert_array_equal(vec(unvec(v, a.shape)), v)
    np.testing.assert_array_equal(vec(a[:, 0]), a[:, 0])
    assert vec(np.float64(2.5)).shape == (1,)


def test_vec_and_unvec_return_new_arrays(rng):
    a = rng.standard_normal(5)
    v = vec(a)
    v[0] = 99.0
    assert a[0] != 99.0
    b = unvec(a, 5)
    b[1] = 99.0
    assert a[1] != 99.0


def test_vec_unvec_reject_bad_shapes():
    with pytest.raises(ValueError, match="matrices"):
        vec(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="needs 6"):
        unvec(np.zeros(5), (2, 3))
    with pytest.raises(ValueError, match="vector"):
        unvec(np.zeros((2, 3)), (3, 2))


@pytest.mark.parametrize("m, n", [(1, 1), (1, 4), (3, 1), (2, 3), (4, 5)])
def test_commutation_matrix_transposes_vec(rng, m, n):
    k = commutation_matrix(m, n)
    a = rng.standard_normal((m, n))
    np.testing.assert_array_equal(k @ vec(a), vec(a.T))
    np.testing.assert_array_equal(k.T, commutation_matrix(n, m))
    np.testing.assert_array_equal(k.T @ k, np.eye(m * n))
    assert set(np.unique(k)) <= {0.0, 1.0}


def test_commutation_matrix_swaps_kronecker_factors(rng):
    # Magnus & Neudecker: K_pm (A ⊗ B) K_nq = B ⊗ A for A m×n, B p×q.
    m, n, p, q = 2, 3, 4, 2
    a, b = rng.standard_normal((m, n)), rng.standard_normal((p, q))
    lhs = commutation_matrix(p, m) @ np.kron(a, b) @ commutation_matrix(n, q)
    np.testing.assert_allclose(lhs, np.kron(b, a), rtol=0, atol=1e-14)


def test_vec_of_triple_product(rng):
    a, x, b = rng.standard_normal((3, 4)), rng.standard_normal((4, 2)), rng.standard_normal((2, 5))
    np.testing.assert_allclose(vec(a @ x @ b), np.kron(b.T, a) @ vec(x), rtol=1e-12, atol=1e-12)


def test_commutation_matrix_rejects_bad_sizes():
    with pytest.raises(ValueError, match="positive integer"):
        commutation_matrix(0, 3)
    with pytest.raises(ValueError, match="small-size reference"):
        commutation_matrix(65, 64)


# ------------------------------------------------------------------ (1) finite differences


@pytest.mark.parametrize("bias", [False, True])
def test_dense_jacobians_match_finite_differences(rng, bias):
    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 2)), rng.standard_normal(2)
    b = b if bias else None
    jac = dense_jacobians(x, w, b)
    assert jac.jx.shape == (8, 12) and jac.jw.shape == (8, 6)
    assert_fd_close(jac.jx, fd_jacobian(lambda x_: ops.dense_forward(x_, w, b)[0], x))
    assert_fd_close(jac.jw, fd_jacobian(lambda w_: ops.dense_forward(x, w_, b)[0], w))
    if bias:
        assert_fd_close(jac.jb, fd_jacobian(lambda b_: ops.dense_forward(x, w, b_)[0], b))
    else:
        assert jac.jb is None


@pytest.mark.parametrize("ddof, eps", BN_HYPER)
def test_batchnorm_jacobians_match_finite_differences(rng, ddof, eps):
    x, gamma, beta = bn_data(rng, 5, 3)

    def forward(x_=x, gamma_=gamma, beta_=beta):
        return ops.batchnorm_forward(x_, gamma_, beta_, eps=eps, ddof=ddof)[0]

    jac = batchnorm_jacobians(x, gamma, beta, eps=eps, ddof=ddof)
    assert jac.jx.shape == (15, 15) and jac.jgamma.shape == (15, 3) and jac.jbeta.shape == (15, 3)
    assert_fd_close(jac.jx, fd_jacobian(lambda a: forward(x_=a), x))
    assert_fd_close(jac.jgamma, fd_jacobian(lambda a: forward(gamma_=a), gamma))
    assert_fd_close(jac.jbeta, fd_jacobian(lambda a: forward(beta_=a), beta))


def test_batchnorm_jacobians_constant_column_with_eps(rng):
    # Variance 0 and ε > 0: the output is β and the Jacobian γ ε^(−1/2) C, finite.
    x, gamma, beta = bn_data(rng, 4, 2)
    x[:, 1] = 3.0
    eps = 0.01
    jac = batchnorm_jacobians(x, gamma, beta, eps=eps)
    fd = fd_jacobian(lambda a: ops.batchnorm_forward(a, gamma, beta, eps=eps)[0], x)
    assert_fd_close(jac.jx, fd)
    c = np.eye(4) - 1 / 4
    np.testing.assert_allclose(jac.jx[4:, 4:], gamma[1] / np.sqrt(eps) * c, atol=1e-12)


def test_batchnorm_inference_jacobians_match_finite_differences(rng):
    x, gamma, beta = bn_data(rng, 3, 4)
    mean, var, eps = rng.standard_normal(4), rng.uniform(0.2, 3.0, 4), 1e-3

    def forward(x_=x, gamma_=gamma, beta_=beta):
        return ops.batchnorm_inference_forward(x_, gamma_, beta_, mean, var, eps=eps)[0]

    jac = batchnorm_inference_jacobians(x, gamma, beta, mean, var, eps=eps)
    assert_fd_close(jac.jx, fd_jacobian(lambda a: forward(x_=a), x))
    assert_fd_close(jac.jgamma, fd_jacobian(lambda a: forward(gamma_=a), gamma))
    assert_fd_close(jac.jbeta, fd_jacobian(lambda a: forward(beta_=a), beta))


@pytest.mark.parametrize("name, kw", ACTIVATION_CASES)
@pytest.mark.parametrize("shape", [(4, 3), (5,)])
def test_activation_jacobian_matches_finite_differences(rng, name, kw, shape):
    x = away_from_zero(rng, shape)
    forward = ops.ACTIVATIONS[name][0]
    jac = activation_jacobian(name, x, **kw)
    assert_fd_close(jac, fd_jacobian(lambda a: forward(a, **kw)[0], x))


def test_relu_jacobian_is_an_indicator_not_all_ones(rng):
    x = away_from_zero(rng, (4, 3))
    d = np.diag(activation_jacobian("relu", x))
    np.testing.assert_array_equal(d, vec(x > 0))
    assert 0 < d.sum() < d.size


def _loss_cases(rng):
    one_hot = np.eye(3)[rng.integers(0, 3, 5)]
    soft = rng.uniform(0.1, 1.0, (5, 3))   # rows do not sum to one
    return [
        ("sse", rng.standard_normal(6), rng.standard_normal(6)),
        ("sse", rng.standard_normal((4, 2)), rng.standard_normal((4, 2))),
        ("mse", rng.standard_normal(6), rng.standard_normal(6)),
        ("mse", rng.standard_normal((4, 3)), rng.standard_normal((4, 3))),
        ("softmax_cross_entropy", 2 * rng.standard_normal((5, 3)), one_hot),
        ("softmax_cross_entropy", 2 * rng.standard_normal((5, 3)), soft),
    ]


@pytest.mark.parametrize("case", range(6))
def test_loss_jacobian_matches_finite_differences(rng, case):
    name, y_pred, y = _loss_cases(rng)[case]
    forward = ops.LOSSES[name][0]
    jac = loss_jacobian(name, y_pred, y)
    assert jac.shape == (1, y_pred.size)
    assert_fd_close(jac, fd_jacobian(lambda a: forward(a, y)[0], y_pred))


# --------------------------------------------------------------------------- (2) compact backwards


@pytest.mark.parametrize("bias", [False, True])
def test_dense_backward_is_jacobian_transpose(rng, bias):
    x, w, b = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)
    b = b if bias else None
    _, cache = ops.dense_forward(x, w, b)
    g = rng.standard_normal((5, 4))
    grads = ops.dense_backward(g, cache)
    jac = dense_jacobians(x, w, b)
    assert_pullback(grads.dx, jac.jx, g)
    assert_pullback(grads.dw, jac.jw, g)
    if bias:
        assert_pullback(grads.db, jac.jb, g)
    else:
        assert grads.db is None


@pytest.mark.parametrize("ddof, eps", BN_HYPER)
def test_batchnorm_backward_is_jacobian_transpose(rng, ddof, eps):
    x, gamma, beta = bn_data(rng, 6, 4, scale=2.0, offset=1.5)
    _, cache = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
    g = rng.standard_normal(x.shape)
    grads = ops.batchnorm_backward(g, cache)
    jac = batchnorm_jacobians(x, gamma, beta, eps=eps, ddof=ddof)
    assert_pullback(grads.dx, jac.jx, g)
    assert_pullback(grads.dgamma, jac.jgamma, g)
    assert_pullback(grads.dbeta, jac.jbeta, g)


def test_batchnorm_inference_backward_is_jacobian_transpose(rng):
    x, gamma, beta = bn_data(rng, 4, 3)
    mean, var = rng.standard_normal(3), rng.uniform(0.2, 3.0, 3)
    _, cache = ops.batchnorm_inference_forward(x, gamma, beta, mean, var, eps=1e-5)
    g = rng.standard_normal(x.shape)
    grads = ops.batchnorm_inference_backward(g, cache)
    jac = batchnorm_inference_jacobians(x, gamma, beta, mean, var, eps=1e-5)
    assert_pullback(grads.dx, jac.jx, g)
    assert_pullback(grads.dgamma, jac.jgamma, g)
    assert_pullback(grads.dbeta, jac.jbeta, g)


@pytest.mark.parametrize("name, kw", ACTIVATION_CASES)
def test_activation_backward_is_jacobian_transpose(rng, name, kw):
    x = away_from_zero(rng, (5, 3))
    forward, backward = ops.ACTIVATIONS[name]
    _, cache = forward(x, **kw)
    g = rng.standard_normal(x.shape)
    assert_pullback(backward(g, cache), activation_jacobian(name, x, **kw), g)


@pytest.mark.parametrize("case", range(6))
def test_loss_backward_is_jacobian_transpose(rng, case):
    name, y_pred, y = _loss_cases(rng)[case]
    forward, backward = ops.LOSSES[name]
    _, cache = forward(y_pred, y)
    dloss = rng.uniform(0.5, 2.0)
    assert_pullback(backward(dloss, cache), loss_jacobian(name, y_pred, y), dloss)


def test_jacobian_rejects_batchnorm_backward_with_constant_statistics(rng):
    # Pitfall 1 of DESIGN.md: treating μ and σ as constants gives dX = G diag(γ∘s).
    # The Jacobian must tell that apart from the true gradient.
    x, gamma, beta = bn_data(rng, 6, 3)
    _, cache = ops.batchnorm_forward(x, gamma, beta, eps=1e-5)
    g = rng.standard_normal(x.shape)
    naive = g * (cache.gamma * cache.inv_std)
    true = vjp_from_jacobian(batchnorm_jacobians(x, gamma, beta, eps=1e-5).jx, g, x.shape)
    assert np.abs(naive - true).max() > 0.1 * np.abs(true).max()


def test_vjp_from_jacobian_shapes(rng):
    jac = rng.standard_normal((6, 4))
    g = rng.standard_normal((3, 2))
    np.testing.assert_allclose(vjp_from_jacobian(jac, g), jac.T @ g.ravel(order="F"))
    assert vjp_from_jacobian(jac, g, (2, 2)).shape == (2, 2)
    with pytest.raises(ValueError, match="rows"):
        vjp_from_jacobian(jac, rng.standard_normal(5))


# ------------------------------------------------------ (4) structure of the BN Jacobian


def _bn_blocks(jx, n, p):
    return [[jx[i * n:(i + 1) * n, j * n:(j + 1) * n] for j in range(p)] for i in range(p)]


@pytest.mark.parametrize("ddof, eps", BN_HYPER)
def test_batchnorm_jacobian_blocks_annihilate_ones_and_are_symmetric(rng, ddof, eps):
    n, p = 5, 3
    x, gamma, beta = bn_data(rng, n, p)
    jx = batchnorm_jacobians(x, gamma, beta, eps=eps, ddof=ddof).jx
    np.testing.assert_allclose(jx, jx.T, rtol=0, atol=1e-14)
    blocks = _bn_blocks(jx, n, p)
    ones = np.ones(n)
    for i in range(p):
        for j in range(p):
            if i != j:
                np.testing.assert_array_equal(blocks[i][j], 0.0)
        scale = np.abs(blocks[i][i]).max()
        # 1ᵀ ∂R/∂Z = 0: a bias placed before batch norm gets no gradient.
        np.testing.assert_allclose(ones @ blocks[i][i], 0.0, atol=1e-13 * scale)
        np.testing.assert_allclose(blocks[i][i] @ ones, 0.0, atol=1e-13 * scale)


@pytest.mark.parametrize("ddof", [0, 1])
def test_batchnorm_jacobian_without_eps_is_a_scaled_projection(rng, ddof):
    # With ε = 0, C − ẑẑᵀ/(N − ddof) projects onto the complement of span{1, ẑ_j}.
    n, p = 6, 2
    x, gamma, beta = bn_data(rng, n, p)
    jx = batchnorm_jacobians(x, gamma, beta, eps=0.0, ddof=ddof).jx
    _, cache = ops.batchnorm_forward(x, gamma, beta, eps=0.0, ddof=ddof)
    for j in range(p):
        block = jx[j * n:(j + 1) * n, j * n:(j + 1) * n]
        proj = block / (cache.gamma[j] * cache.inv_std[j])
        np.testing.assert_allclose(proj @ proj, proj, atol=1e-13)
        np.testing.assert_allclose(proj @ cache.x_hat[:, j], 0.0, atol=1e-13)
        assert np.linalg.matrix_rank(proj) == n - 2


# --------------------------------------------------------------------------- (5) random shapes


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 6),
    p=st.integers(1, 4),
    ddof=st.sampled_from([0, 1]),
    eps=st.sampled_from([0.0, 1e-4, 0.5]),
    scale=st.sampled_from([0.3, 1.0, 10.0]),
    offset=st.sampled_from([0.0, 5.0]),
    constant_column=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_batchnorm_random_shapes(n, p, ddof, eps, scale, offset, constant_column, seed):
    rng = np.random.default_rng(seed)
    x, gamma, beta = bn_data(rng, n, p, scale=scale, offset=offset)
    if constant_column and eps > 0:
        x[:, 0] = offset
    else:
        # Keep every column's spread well above the difference step.
        assume(np.std(x, axis=0).min() > 0.05 * scale)
    jac = batchnorm_jacobians(x, gamma, beta, eps=eps, ddof=ddof)
    fd = fd_jacobian(lambda a: ops.batchnorm_forward(a, gamma, beta, eps=eps, ddof=ddof)[0], x)
    assert_fd_close(jac.jx, fd)
    _, cache = ops.batchnorm_forward(x, gamma, beta, eps=eps, ddof=ddof)
    g = rng.standard_normal((n, p))
    grads = ops.batchnorm_backward(g, cache)
    terms = np.abs(g).max() * np.abs(gamma * cache.inv_std).max()
    assert_pullback(grads.dx, jac.jx, g, terms=terms)
    assert_pullback(grads.dgamma, jac.jgamma, g)
    assert_pullback(grads.dbeta, jac.jbeta, g)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 6),
    p=st.integers(1, 4),
    q=st.integers(1, 4),
    bias=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_dense_random_shapes(n, p, q, bias, seed):
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal((n, p)), rng.standard_normal((p, q))
    b = rng.standard_normal(q) if bias else None
    jac = dense_jacobians(x, w, b)
    assert_fd_close(jac.jx, fd_jacobian(lambda a: ops.dense_forward(a, w, b)[0], x))
    assert_fd_close(jac.jw, fd_jacobian(lambda a: ops.dense_forward(x, a, b)[0], w))
    g = rng.standard_normal((n, q))
    grads = ops.dense_backward(g, ops.dense_forward(x, w, b)[1])
    assert_pullback(grads.dx, jac.jx, g)
    assert_pullback(grads.dw, jac.jw, g)
    if bias:
        assert_pullback(grads.db, jac.jb, g)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 6), k=st.integers(2, 4), seed=st.integers(0, 2**32 - 1))
def test_softmax_cross_entropy_random_shapes(n, k, seed):
    rng = np.random.default_rng(seed)
    logits = 3 * rng.standard_normal((n, k))
    y = rng.dirichlet(np.ones(k), n)
    forward, backward = ops.LOSSES["softmax_cross_entropy"]
    jac = loss_jacobian("softmax_cross_entropy", logits, y)
    assert_fd_close(jac, fd_jacobian(lambda a: forward(a, y)[0], logits))
    dloss = rng.uniform(0.5, 2.0)
    assert_pullback(backward(dloss, forward(logits, y)[1]), jac, dloss)


# --------------------------------------------------------------------------- input handling


def test_inputs_from_another_namespace_are_converted():
    xps = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(1)
    x, gamma, beta = bn_data(rng, 4, 2)
    ref = batchnorm_jacobians(x, gamma, beta)
    got = batchnorm_jacobians(xps.asarray(x), xps.asarray(gamma), xps.asarray(beta))
    for a, b in zip(got, ref):
        assert isinstance(a, np.ndarray) and a.dtype == np.float64
        np.testing.assert_array_equal(a, b)


def test_integer_and_float32_inputs_become_float64():
    x = np.array([[1, 2], [3, 5], [4, 4]])
    w = np.array([[1.0, 0.5], [2.0, -1.0]], dtype=np.float32)
    jac = dense_jacobians(x, w)
    assert jac.jx.dtype == jac.jw.dtype == np.float64
    np.testing.assert_array_equal(jac.jw[:3, :2], x)


def test_size_guard_says_these_are_small_references():
    n = MAX_DIM // 2 + 1
    with pytest.raises(ValueError, match="small-size reference"):
        batchnorm_jacobians(np.zeros((n, 2)) + np.arange(n)[:, None], np.ones(2), np.zeros(2))
    with pytest.raises(ValueError, match="small-size reference"):
        activation_jacobian("relu", np.ones(MAX_DIM + 1))
    with pytest.raises(ValueError, match="small-size reference"):
        dense_jacobians(np.ones((MAX_DIM, 2)), np.ones((2, 2)))


def test_batchnorm_jacobians_reject_what_the_forward_rejects(rng):
    x, gamma, beta = bn_data(rng, 4, 2)
    with pytest.raises(ValueError, match="at least 2 rows"):
        batchnorm_jacobians(x[:1], gamma, beta)
    with pytest.raises(ValueError, match="zero variance"):
        batchnorm_jacobians(np.column_stack([x[:, 0], np.full(4, 2.0)]), gamma, beta, eps=0.0)
    with pytest.raises(ValueError, match="eps"):
        batchnorm_jacobians(x, gamma, beta, eps=-1.0)
    with pytest.raises(ValueError, match="ddof"):
        batchnorm_jacobians(x, gamma, beta, ddof=-1)
    with pytest.raises(ValueError, match=r"gamma must have shape \(2,\)"):
        batchnorm_jacobians(x, gamma[:1], beta)
    with pytest.raises(ValueError, match="NaN"):
        batchnorm_jacobians(np.where(x > 0, np.nan, x), gamma, beta)
    with pytest.raises(ValueError, match="var"):
        batchnorm_inference_jacobians(x, gamma, beta, np.zeros(2), np.array([1.0, -1.0]))


def test_unknown_names_and_keywords():
    with pytest.raises(ValueError, match="unknown activation"):
        activation_jacobian("gelu", np.ones(3))
    with pytest.raises(TypeError, match="keyword"):
        activation_jacobian("relu", np.ones(3), negative_slope=0.1)
    with pytest.raises(ValueError, match="unknown loss"):
        loss_jacobian("hinge", np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match=r"\(N, k\)"):
        loss_jacobian("softmax_cross_entropy", np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        loss_jacobian("sse", np.ones(3), np.ones(4))
