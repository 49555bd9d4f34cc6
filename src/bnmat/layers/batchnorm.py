"""Batch normalization as a layer: training and inference modes, running statistics.

Running-statistics convention
-----------------------------
The state ``{"mean", "var", "count"}`` holds column means ``m`` and variances ``v``
of the layer's input, the variances **with the layer's own ddof** (divided by
N − ddof, the same divisor as in training). Inference computes
``(X − 1mᵀ) diag(γ ∘ (v + ε)^(−1/2)) + 1βᵀ``, so on a batch whose statistics
equal the stored ones inference reproduces the training output exactly (PyTorch
stores the N − 1 variance but normalizes with the N one, so its two modes differ
on the same batch).

Each training-mode forward updates ``m`` and ``v`` by an exponential moving
average whose weight on the *old* value is ``decay`` ("momentum" means opposite
things in PyTorch and Keras, so bnmat does not use the word)::

    w     = min(decay, count / (count + 1))
    m_new = w m + (1 − w) μ_batch
    v_new = w v + (1 − w) σ²_batch
    count = count + 1

The ``count/(count + 1)`` cap makes the first updates an equally weighted
average of the batches seen so far (the first batch replaces the initial
``m = 0, v = 1`` entirely) until the weight reaches ``decay``; ``decay=1`` keeps
the average of all batches, ``decay=0`` the last batch.

Moving averages lag behind the parameters; :func:`bnmat.train.population_statistics`
replaces them by the exact statistics of the full training data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops
from .._array_api import get_namespace
from ..ops.batchnorm import BatchNormCache
from ._checks import check_generator, check_keys, normalize_bn_fields, positive_int
from ._registry import register_layer

__all__ = ["BatchNorm"]


@register_layer
@dataclass(frozen=True)
class BatchNorm:
    """Batch normalization ``B = Ẑ diag(γ) + 1βᵀ``, ``Ẑ = CZ diag((σ² + ε)^(−1/2))``.

    Parameters
    ----------
    eps : float, default 1e-5
        ε ≥ 0 added to the variances. ε = 0 is the exact textbook
        standardization (as in R's ``scale()``), for derivations and checks: a
        column with zero variance in a training batch then raises ``ValueError``
        naming the column. With ε > 0 a constant column gives β and finite
        gradients; the estimators require ε > 0.
    ddof : int, default 0
        Variances divide by N − ddof: 0 is batch norm's convention, 1 is R's
        ``scale()``. Training batches need at least ``max(2, ddof + 1)`` rows.
    decay : float in [0, 1], default 0.9
        Weight on the old running value in the moving average of the
        statistics (see the module docstring).

    Notes
    -----
    Parameters ``{"gamma": (p,), "beta": (p,)}`` start at ones and zeros. State
    ``{"mean": (p,), "var": (p,), "count": int64 0-d}`` starts at zeros, ones, 0.
    A state without ``"count"`` (built by hand, say from another library's
    running statistics) is updated with the weight ``decay`` from the start.

    Training mode (``training=True``) normalizes with batch statistics and
    returns updated running statistics; its backward is
    :func:`bnmat.ops.batchnorm_backward`::

        dβ = 1ᵀG,   dγ = 1ᵀ(G ∘ Ẑ),   dZ = [CG − Ẑ diag(dγ)/(N − ddof)] diag(γ ∘ s)

    Inference mode (``training=False``) uses the stored ``mean`` and ``var``,
    leaves the state alone and works on any number of rows; its backward is
    :func:`bnmat.ops.batchnorm_inference_backward`::

        dβ = 1ᵀG,   dγ = 1ᵀ(G ∘ Ẑ),   dZ = G diag(γ ∘ (v + ε)^(−1/2))
    """

    eps: float = 1e-5
    ddof: int = 0
    decay: float = 0.9

    def __post_init__(self):
        normalize_bn_fields(self)

    def init(self, rng, in_features):
        """Initial parameters and state.

        Parameters
        ----------
        rng : numpy.random.Generator
            Unused (the initial values are fixed); checked for type.
        in_features : int
            p, the number of columns normalized.

        Returns
        -------
        out_features : int
            p.
        params : dict
            ``{"gamma": ones(p), "beta": zeros(p)}``, float64.
        state : dict
            ``{"mean": zeros(p), "var": ones(p), "count": int64 0}``.
        """
        check_generator(rng)
        p = positive_int(in_features, "in_features")
        params = {"gamma": np.ones(p), "beta": np.zeros(p)}
        state = {"mean": np.zeros(p), "var": np.ones(p), "count": np.asarray(0, dtype=np.int64)}
        return p, params, state

    def forward(self, params, state, x, *, training: bool):
        """Normalize ``x`` with batch statistics (training) or stored ones (inference).

        Parameters
        ----------
        params : dict
            ``{"gamma": (p,), "beta": (p,)}``.
        state : dict
            ``{"mean": (p,), "var": (p,), "count": 0-d}``.
        x : array, shape (N, p)
            N ≥ max(2, ddof + 1) in training mode; any N ≥ 1 in inference.
        training : bool

        Returns
        -------
        y : array, shape (N, p)
        new_state : dict
            Updated running statistics in training mode (a new dict; ``state``
            is not modified); ``state`` itself in inference mode.
        cache : BatchNormCache or BatchNormInferenceCache
        """
        check_keys(params, ("gamma", "beta"), self)
        if not training:
            check_keys(state, ("mean", "var"), self, "state", optional=("count",))
            y, cache = ops.batchnorm_inference_forward(
                x, params["gamma"], params["beta"], state["mean"], state["var"], eps=self.eps
            )
            return y, state, cache
        y, cache = ops.batchnorm_forward(
            x, params["gamma"], params["beta"], eps=self.eps, ddof=self.ddof
        )
        return y, self._updated_state(state, cache.mean, cache.var), cache

    def backward(self, dy, cache):
        """Gradients of the mode the cache came from.

        Parameters
        ----------
        dy : array, shape (N, p)
        cache : BatchNormCache or BatchNormInferenceCache

        Returns
        -------
        dx : array, shape (N, p)
        grads : dict
            ``{"gamma": (p,), "beta": (p,)}``.
        """
        if getattr(cache, "relu", False) is True:
            # From a forward pass fused with the ReLU after it (Sequential);
            # this layer's own backward is plain batch norm's.
            cache = cache.without_relu()
        if isinstance(cache, BatchNormCache):
            dx, dgamma, dbeta = ops.batchnorm_backward(dy, cache)
        else:
            dx, dgamma, dbeta = ops.batchnorm_inference_backward(dy, cache)
        return dx, {"gamma": dgamma, "beta": dbeta}

    def population_state(self, params, state, xs):
        """Set the stored statistics to the exact statistics of all rows of ``xs``.

        Parameters
        ----------
        params : dict
        state : dict
        xs : list of arrays, each (N_i, p)
            The layer's input in chunks. Statistics are merged with weights N_i
            (Chan, Golub and LeVeque)::

                μ   = Σ N_i μ_i / N
                σ²  = [Σ N_i σ²_i,0 + Σ N_i (μ_i − μ)²] / (N − ddof)

            where σ²_i,0 is chunk i's variance with divisor N_i.

        Returns
        -------
        ys : list of arrays
            The layer's training-mode output on the full data, chunk by chunk.
            With one chunk it is the training-mode forward itself; with several,
            the inference forward with the merged statistics (equal up to
            rounding).
        new_state : dict
            ``state`` with ``mean`` and ``var`` replaced; ``count`` is kept.
        """
        check_keys(params, ("gamma", "beta"), self)
        xs = list(xs)
        if len(xs) == 1:
            y, cache = ops.batchnorm_forward(
                xs[0], params["gamma"], params["beta"], eps=self.eps, ddof=self.ddof
            )
            return [y], {**state, "mean": cache.mean, "var": cache.var}
        mean, var = self._merged_moments(xs)
        new_state = {**state, "mean": mean, "var": var}
        ys = [
            ops.batchnorm_inference_forward(
                xi, params["gamma"], params["beta"], mean, var, eps=self.eps
            )[0] if xi.shape[0] else xi   # an empty chunk stays empty (the op refuses 0 rows)
            for xi in xs
        ]
        return ys, new_state

    # ------------------------------------------------------------------ helpers
    def _updated_state(self, state, batch_mean, batch_var):
        check_keys(state, ("mean", "var"), self, "state", optional=("count",))
        if "count" in state:
            count = int(state["count"])
            w = min(self.decay, count / (count + 1.0))
            extra = {"count": _count_like(count + 1, batch_mean)}
        else:                   # a state built by hand without a count: plain EMA
            w, extra = self.decay, {}
        if w == 0.0:
            return {"mean": batch_mean, "var": batch_var, **extra}
        xp = get_namespace(batch_mean)
        return {
            "mean": w * xp.asarray(state["mean"]) + (1.0 - w) * batch_mean,
            "var": w * xp.asarray(state["var"]) + (1.0 - w) * batch_var,
            **extra,
        }

    def _merged_moments(self, xs):
        xs = [x for x in xs if x.shape[0] > 0]
        n_total = sum(int(x.shape[0]) for x in xs)
        if n_total < 2 or n_total - self.ddof < 1:
            raise ValueError(
                f"batch statistics need at least {max(2, self.ddof + 1)} rows "
                f"(ddof={self.ddof}); got N={n_total}"
            )
        parts = [(int(x.shape[0]), ops.column_moments(x, ddof=0)) for x in xs]
        xp = get_namespace(parts[0][1].mean)
        mean = sum(n * m.mean for n, m in parts) / n_total
        m2 = sum(n * m.var + n * (m.mean - mean) ** 2 for n, m in parts)
        var = m2 / (n_total - self.ddof)
        dtype = xs[0].dtype
        if not (bool(xp.all(xp.isfinite(mean))) and bool(xp.all(xp.isfinite(var)))):
            raise ValueError("Input x contains NaN or infinity.")
        return xp.astype(mean, dtype), xp.astype(var, dtype)


def _count_like(count: int, like):
    """The step count as a 0-d int64 array of ``like``'s library and device."""
    if isinstance(like, np.ndarray):
        return np.asarray(count, dtype=np.int64)
    import array_api_compat

    xp = get_namespace(like)
    return xp.asarray(count, dtype=xp.int64, device=array_api_compat.device(like))
