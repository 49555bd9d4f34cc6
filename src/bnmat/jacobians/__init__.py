"""Explicit Jacobians in vec/Kronecker form, for small sizes.

The compact backward formulas in :mod:`bnmat.ops` are proved by writing each
op as a map between vectorized matrices and reading off its Jacobian (Magnus &
Neudecker's convention). Here those Jacobians are built as dense NumPy float64
matrices, straight from their Kronecker and block-diagonal expressions::

    dense:  ∂vec(XW)/∂vec(X)ᵀ = Wᵀ ⊗ I_N,     ∂vec(XW)/∂vec(W)ᵀ = I_q ⊗ X
    BN, β:  ∂vec(B)/∂βᵀ = I_p ⊗ 1_N
    BN, γ:  ∂vec(B)/∂γᵀ = diag(vec Ẑ)(I_p ⊗ 1_N)
    BN, Z:  ∂vec(B)/∂vec(Z)ᵀ = blockdiag_j( γ_j s_j (C − ẑ_j ẑ_jᵀ/(N − ddof)) )
    act.:   ∂vec(a(B))/∂vec(B)ᵀ = diag(vec a′(B))

``vec`` stacks columns, so entry (i, j) of an N×p matrix sits at position
``i + j·N`` of its vec. With a Jacobian J of an op and an upstream gradient G,
the chain rule gives ``vec(∂R/∂θ) = Jᵀ vec(G)`` (:func:`vjp_from_jacobian`),
which is what the tests compare the compact backward passes against.

Nothing here calls a backward pass of :mod:`bnmat.ops`; the matrices are
independent references. They are dense (the BN Jacobian is Np × Np), so every
function refuses sizes with more than :data:`MAX_DIM` rows or columns: these are
small-size references for checking derivations, not a way to train.
"""

from ._elementwise import activation_jacobian, loss_jacobian
from ._layers import (
    BatchNormBackwardJacobians,
    BatchNormJacobians,
    DenseJacobians,
    batchnorm_backward_jacobians,
    batchnorm_inference_jacobians,
    batchnorm_jacobians,
    dense_jacobians,
)
from ._vec import MAX_DIM, commutation_matrix, unvec, vec, vjp_from_jacobian

__all__ = [
    "MAX_DIM",
    "DenseJacobians",
    "BatchNormJacobians",
    "vec",
    "unvec",
    "commutation_matrix",
    "dense_jacobians",
    "batchnorm_jacobians",
    "batchnorm_inference_jacobians",
    "BatchNormBackwardJacobians",
    "batchnorm_backward_jacobians",
    "activation_jacobian",
    "loss_jacobian",
    "vjp_from_jacobian",
]
