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
from .._array_api import as_float, get_namespace
from ..ops.batchnorm import BatchNormCache
from ..ops.batchnorm_inference import BatchNormInferenceCache
from ._checks import check_generator, check_keys, normalize_bn_fields, positive_int
from ._registry import register_layer
from ._sync import SyncBatchNormCache, active_reducer

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
    center : bool, default True
        Learn the shift β. False fixes β = 0 and the layer has no ``"beta"``
        parameter (Keras ``center=False``; PyTorch ``affine=False`` is
        ``center=False, scale=False``).
    scale : bool, default True
        Learn the scale γ. False fixes γ = 1 and the layer has no ``"gamma"``.
    track_running_stats : bool, default True
        Keep running statistics in the state. False: the state is empty and
        inference mode normalizes with the statistics of the batch it is given
        (as PyTorch's ``track_running_stats=False``), so predictions then need
        at least ``max(2, ddof + 1)`` rows and depend on the other rows.

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
    center: bool = True
    scale: bool = True
    track_running_stats: bool = True

    def __post_init__(self):
        normalize_bn_fields(self)
        for name in ("center", "scale", "track_running_stats"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False; got {value!r}")
            object.__setattr__(self, name, bool(value))

    def _param_keys(self):
        return tuple(k for k, on in (("gamma", self.scale), ("beta", self.center)) if on)

    def _affine(self, params, x):
        """γ and β, with the fixed 1 and 0 of a switched-off parameter."""
        xp = get_namespace(x)
        p = x.shape[1] if getattr(x, "ndim", 0) == 2 else None
        gamma = params["gamma"] if self.scale else xp.ones(p, dtype=_float_dtype(x, xp))
        beta = params["beta"] if self.center else xp.zeros(p, dtype=_float_dtype(x, xp))
        return gamma, beta

    def _grads(self, dgamma, dbeta):
        out = {}
        if self.scale:
            out["gamma"] = dgamma
        if self.center:
            out["beta"] = dbeta
        return out

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
        params = {k: v for k, v in (("gamma", np.ones(p)), ("beta", np.zeros(p)))
                  if k in self._param_keys()}
        state = {"mean": np.zeros(p), "var": np.ones(p), "count": np.asarray(0, dtype=np.int64)}
        if not self.track_running_stats:
            state = {}
        return p, params, state

    def forward(self, params, state, x, *, training: bool, sample_weight=None):
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
        sample_weight : array, shape (N,), optional
            Row weights for the batch statistics in training mode (frequency
            convention, :func:`bnmat.ops.batchnorm_forward` with ``weights=``;
            the running statistics then average weighted batch statistics).
            Ignored in inference mode.

        Returns
        -------
        y : array, shape (N, p)
        new_state : dict
            Updated running statistics in training mode (a new dict; ``state``
            is not modified); ``state`` itself in inference mode.
        cache : BatchNormCache or BatchNormInferenceCache
        """
        check_keys(params, self._param_keys(), self)
        gamma, beta = self._affine(params, x)
        if not training and self.track_running_stats:
            check_keys(state, ("mean", "var"), self, "state", optional=("count",))
            if x.shape[0] == 0 and active_reducer() is not None:
                # An empty shard of a batch spread over processes: the public op
                # refuses 0 rows, but this rank still takes part in the step.
                xp = get_namespace(x)
                x = as_float(x, "x", xp)
                scale = xp.asarray(np.asarray(gamma) / np.sqrt(np.asarray(state["var"]) + self.eps),
                                   dtype=x.dtype)
                return x, state, BatchNormInferenceCache(x_hat=x, scale=scale)
            y, cache = ops.batchnorm_inference_forward(
                x, gamma, beta, state["mean"], state["var"], eps=self.eps
            )
            return y, state, cache
        reducer = active_reducer()
        if reducer is not None:   # rows on several processes: the whole batch's statistics
            if sample_weight is not None:
                raise ValueError("sample_weight cannot be combined with a distributed reducer")
            if not (self.center and self.scale and self.track_running_stats):
                raise ValueError("a distributed reducer needs BatchNorm(center=True, scale=True, "
                                 "track_running_stats=True)")
            from ._sync import sync_batchnorm_forward
            y, cache = sync_batchnorm_forward(x, params["gamma"], params["beta"], eps=self.eps,
                                              ddof=self.ddof, reducer=reducer)
            return y, self._updated_state(state, cache.mean, cache.var), cache
        weights = {} if sample_weight is None else {"weights": sample_weight}
        y, cache = ops.batchnorm_forward(
            x, gamma, beta, eps=self.eps, ddof=self.ddof, **weights
        )
        if not training:                # track_running_stats=False: batch statistics
            return y, state, cache
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
        if isinstance(cache, SyncBatchNormCache):
            from ._sync import sync_batchnorm_backward
            dx, dgamma, dbeta = sync_batchnorm_backward(dy, cache)
        elif isinstance(cache, BatchNormCache):
            dx, dgamma, dbeta = ops.batchnorm_backward(dy, cache)
        else:
            dx, dgamma, dbeta = ops.batchnorm_inference_backward(dy, cache)
        return dx, self._grads(dgamma, dbeta)

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
        check_keys(params, self._param_keys(), self)
        xs = list(xs)
        if not self.track_running_stats:
            return self._population_without_state(params, state, xs)
        reducer = active_reducer()
        if reducer is not None:   # rows on several processes
            from ._sync import sync_population_moments
            return sync_population_moments(self, params, state, xs, reducer)
        if len(xs) == 1:
            gamma, beta = self._affine(params, xs[0])
            y, cache = ops.batchnorm_forward(
                xs[0], gamma, beta, eps=self.eps, ddof=self.ddof
            )
            return [y], {**state, "mean": cache.mean, "var": cache.var}
        mean, var = self._merged_moments(xs)
        new_state = {**state, "mean": mean, "var": var}
        gamma, beta = self._affine(params, xs[0])
        ys = [
            ops.batchnorm_inference_forward(
                xi, gamma, beta, mean, var, eps=self.eps
            )[0] if xi.shape[0] else xi   # an empty chunk stays empty (the op refuses 0 rows)
            for xi in xs
        ]
        return ys, new_state

    def _population_without_state(self, params, state, xs):
        """track_running_stats=False: the training-mode output on all rows; no state."""
        xp = get_namespace(xs[0])
        full = xs[0] if len(xs) == 1 else xp.concat(xs, axis=0)
        gamma, beta = self._affine(params, full)
        y, _ = ops.batchnorm_forward(full, gamma, beta, eps=self.eps, ddof=self.ddof)
        bounds = np.cumsum([0] + [int(x.shape[0]) for x in xs])
        return [y[bounds[i]:bounds[i + 1]] for i in range(len(xs))], state

    # ------------------------------------------------------------------ helpers
    def _updated_state(self, state, batch_mean, batch_var):
        if not self.track_running_stats:
            return state
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


def _float_dtype(x, xp):
    dtype = x.dtype
    return dtype if dtype in (xp.float32, xp.float64) else xp.float64


def _count_like(count: int, like):
    """The step count as a 0-d int64 array of ``like``'s library and device."""
    if isinstance(like, np.ndarray):
        return np.asarray(count, dtype=np.int64)
    import array_api_compat

    xp = get_namespace(like)
    return xp.asarray(count, dtype=xp.int64, device=array_api_compat.device(like))
