"""Group-wise batch normalization as a layer: the group labels travel with the batch.

The layer normalizes every group of rows with that group's own statistics
(:func:`bnmat.ops.group_batchnorm_forward`), with γ and β shared by all groups.
Its ``forward`` takes the label of every row as the keyword ``groups``; the
containers (:class:`~bnmat.layers.Sequential`, :class:`~bnmat.layers.Additive`)
and the training functions (:func:`bnmat.value_and_grad`, :func:`bnmat.fit`,
:func:`bnmat.fit_lbfgs`, :func:`bnmat.population_statistics`) pass it down to the
layers whose ``uses_groups`` is true, and to no other.

State
-----
::

    labels        (G,)    int64    groups seen in training, sorted
    mean, var     (G, p)           their running statistics (var with the layer's ddof)
    count         (G,)    int64    running-average updates of each group
    pooled_mean   (p,)             running statistics of all rows of a batch
    pooled_var    (p,)             (the statistics ordinary batch norm would use)
    pooled_count  ()      int64    updates of the pooled statistics

Every training batch updates the statistics of the groups it contains, and the
pooled ones, by the rule of :class:`~bnmat.layers.BatchNorm` (weight
``min(decay, count/(count + 1))`` on the old value, so a group's first batch
replaces nothing but sets its statistics). A group seen for the first time is
added. With mini-batches made of whole groups (what :func:`bnmat.fit` builds
when it gets ``groups``) a group's statistics are always those of all its rows;
:func:`bnmat.population_statistics` sets them, and the pooled ones, to the exact
values for the final parameters.

Inference uses the stored statistics of each row's group; rows of groups
without stored statistics use the pooled ones, with a
:class:`bnmat.ops.UnseenGroupWarning`. Called without labels, inference uses
the pooled statistics for every row (no warning: that is a request, not a
surprise).

The layer computes with NumPy arrays (its ops use ``scipy.sparse`` segment
sums). Labels must be integers, because model files hold numbers only; encode
string labels first (``codes = np.unique(labels, return_inverse=True)[1]``, keeping
the table of labels to encode new data the same way).

Ghost batch norm
----------------
``GroupBatchNorm(ghost=k)`` normalizes each run of k consecutive rows of a
training batch with its own statistics (labels ``i // k``,
:func:`bnmat.panel.ghost_batch_labels`; a trailing run too small for its
statistics is merged into the one before). Such chunks are not the same units
from batch to batch, so only the pooled statistics are kept, and inference
uses them for every row, exactly as :class:`~bnmat.layers.BatchNorm`. A ghost
layer reads no labels (``uses_groups`` is False).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ops
from .._array_api import get_namespace
from ..ops.group_batchnorm import GroupBatchNormCache
from ..ops.group_batchnorm_inference import GroupBatchNormInferenceCache, GroupStatistics
from .._segments import GroupIndex, ghost_batch_labels, group_index
from ._checks import check_generator, check_keys, normalize_bn_fields, positive_int
from ._registry import register_layer
from ._checks import NO_GROUP_LABELS as _NO_LABELS, carried_counts
from ._sync import active_reducer
from ._sync_group import EmptyGroupCache

__all__ = ["GroupBatchNorm"]

_PARAMS = ("gamma", "beta")
_STATE = ("labels", "mean", "var", "count", "pooled_mean", "pooled_var", "pooled_count")


@register_layer
@dataclass(frozen=True)
class GroupBatchNorm:
    """Group-wise batch normalization ``B = Ẑ diag(γ) + 1βᵀ``, ``Ẑ = (M_D Z) ∘ (D S)``.

    D is the N×G indicator of the rows' groups, ``M_D = I − D(DᵀD)⁻¹Dᵀ`` removes
    each group's mean, and row k of S holds ``(σ²_k + ε)^(−1/2)`` for group k.
    With one group this is :class:`~bnmat.layers.BatchNorm`.

    Parameters
    ----------
    eps : float, default 1e-5
        ε ≥ 0 added to the variances (ε = 0 is allowed for derivations and
        checks; a column constant within a group then raises ``ValueError``).
    ddof : int, default 0
        Each group's variance divides by ``n_k − ddof``. Every group of a
        training batch needs at least ``max(2, ddof + 1)`` rows; a smaller one
        raises ``ValueError`` naming its label (merge or drop such groups).
    decay : float in [0, 1], default 0.9
        Weight on the old value in the running averages (see the module
        docstring).
    ghost : int, optional
        Ghost batch norm: chunks of ``ghost`` consecutive rows as the groups,
        no labels read, pooled statistics in inference.

    Notes
    -----
    Parameters ``{"gamma": (p,), "beta": (p,)}`` start at ones and zeros; the
    state is described in the module docstring. Training mode
    (``training=True``, labels in ``groups``) and its backward
    (:func:`bnmat.ops.group_batchnorm_backward`, G = ∂R/∂B, ν_k = n_k − ddof)::

        dβ = 1ᵀG,   dγ = 1ᵀ(G ∘ Ẑ)
        dZ = [M_D G − Ẑ ∘ D diag(ν)⁻¹ Dᵀ(G ∘ Ẑ)] ∘ (D S) diag(γ)

    Inference (``training=False``) is affine in every row, stored statistics
    held fixed: ``dZ = G ∘ (S_rows) diag(γ)`` with each row's stored (or
    pooled) ``(v + ε)^(−1/2)``.

    Examples
    --------
    >>> import numpy as np, bnmat
    >>> x = np.random.default_rng(0).normal(size=(12, 3))
    >>> units = np.repeat([10, 20, 30], 4)
    >>> net = bnmat.Sequential([bnmat.Dense(4, bias=False), bnmat.layers.GroupBatchNorm(),
    ...                         bnmat.ReLU(), bnmat.Dense(1)])
    >>> params, state = net.init(x, seed=0)
    >>> y, state, _ = net.forward(params, state, x, training=True, groups=units)
    >>> state[1]["labels"].tolist()
    [10, 20, 30]
    """

    eps: float = 1e-5
    ddof: int = 0
    decay: float = 0.9
    ghost: int | None = None

    def __post_init__(self):
        normalize_bn_fields(self)
        ghost = self.ghost
        if ghost is not None:
            ghost = positive_int(ghost, "ghost")
            if ghost < max(2, int(self.ddof) + 1):
                raise ValueError(
                    f"ghost batches of {ghost} row(s) are too small: each needs at least "
                    f"{max(2, int(self.ddof) + 1)} rows for its statistics (ddof={self.ddof})"
                )
        object.__setattr__(self, "ghost", ghost)

    @property
    def uses_groups(self) -> bool:
        """True unless ``ghost`` is set: the layer reads the batch's group labels."""
        return self.ghost is None

    # ------------------------------------------------------------------ protocol
    def init(self, rng, in_features):
        """Initial parameters and state (no group seen yet).

        Parameters
        ----------
        rng : numpy.random.Generator
            Unused (the initial values are fixed); checked for type.
        in_features : int
            p.

        Returns
        -------
        out_features : int
            p.
        params : dict
            ``{"gamma": ones(p), "beta": zeros(p)}``.
        state : dict
            No groups (``labels`` of shape (0,), ``mean`` and ``var`` (0, p),
            ``count`` (0,)); ``pooled_mean`` zeros, ``pooled_var`` ones,
            ``pooled_count`` 0.
        """
        check_generator(rng)
        p = positive_int(in_features, "in_features")
        params = {"gamma": np.ones(p), "beta": np.zeros(p)}
        state = {
            "labels": np.zeros(0, dtype=np.int64),
            "mean": np.zeros((0, p)),
            "var": np.ones((0, p)),
            "count": np.zeros(0, dtype=np.int64),
            "pooled_mean": np.zeros(p),
            "pooled_var": np.ones(p),
            "pooled_count": np.asarray(0, dtype=np.int64),
        }
        return p, params, state

    def forward(self, params, state, x, *, training: bool, groups=None):
        """Normalize ``x`` with per-group batch statistics (training) or stored ones.

        Parameters
        ----------
        params : dict
            ``{"gamma": (p,), "beta": (p,)}``.
        state : dict
            See the module docstring.
        x : ndarray, shape (N, p)
        training : bool
        groups : array_like of int, shape (N,), or bnmat.panel.GroupIndex
            The group of every row. Required in training mode (unless
            ``ghost`` is set, which takes none); optional in inference, where
            without it every row uses the pooled statistics.

        Returns
        -------
        y : ndarray, shape (N, p)
        new_state : dict
            Updated statistics in training mode (a new dict; ``state`` is not
            modified); ``state`` itself in inference mode.
        cache : GroupBatchNormCache, GroupBatchNormInferenceCache or BatchNormInferenceCache

        Raises
        ------
        ValueError
            Training without labels; a group with fewer than
            ``max(2, ddof + 1)`` rows; labels of the wrong length.
        TypeError
            Labels that are not integers.
        """
        check_keys(params, _PARAMS, self)
        check_keys(state, _STATE, self, "state")
        if self.ghost is not None and groups is not None:
            raise TypeError(
                "GroupBatchNorm(ghost=...) makes its own groups (runs of consecutive rows) "
                "and takes no groups=; use GroupBatchNorm() without ghost for labelled groups"
            )
        gamma, beta = params["gamma"], params["beta"]
        if training and active_reducer() is not None:   # rows on several processes
            from ._sync_group import sync_group_forward
            return sync_group_forward(self, params, state, x, groups, active_reducer())
        if training:
            index = self._training_index(x, groups)
            y, cache = ops.group_batchnorm_forward(x, index, gamma, beta,
                                                   eps=self.eps, ddof=self.ddof)
            return y, self._updated_state(state, cache), cache
        if groups is None:
            y, cache = ops.batchnorm_inference_forward(
                x, gamma, beta, state["pooled_mean"], state["pooled_var"], eps=self.eps
            )
            return y, state, cache
        stats = GroupStatistics(labels=state["labels"], mean=state["mean"], var=state["var"],
                                pooled_mean=state["pooled_mean"], pooled_var=state["pooled_var"])
        y, cache = ops.group_batchnorm_inference_forward(
            x, _integer_index(groups, x.shape[0]), gamma, beta, stats, eps=self.eps
        )
        return y, state, cache

    def backward(self, dy, cache):
        """Gradients of the mode the cache came from.

        Parameters
        ----------
        dy : ndarray, shape (N, p)
        cache : the cache returned by :meth:`forward`

        Returns
        -------
        dx : ndarray, shape (N, p)
        grads : dict
            ``{"gamma": (p,), "beta": (p,)}``.
        """
        if isinstance(cache, EmptyGroupCache):   # a rank without rows in this batch
            zero = np.zeros(cache.p, dtype=cache.dtype)
            return np.zeros((0, cache.p), dtype=cache.dtype), {"gamma": zero, "beta": zero}
        if isinstance(cache, GroupBatchNormCache):
            dx, dgamma, dbeta = ops.group_batchnorm_backward(dy, cache)
        elif isinstance(cache, GroupBatchNormInferenceCache):
            dx, dgamma, dbeta = ops.group_batchnorm_inference_backward(dy, cache)
        else:
            dx, dgamma, dbeta = ops.batchnorm_inference_backward(dy, cache)
        return dx, {"gamma": dgamma, "beta": dbeta}

    def population_state(self, params, state, xs, groups=None):
        """Set the stored statistics to the exact statistics of all rows of ``xs``.

        Parameters
        ----------
        params, state : dict
        xs : list of ndarrays, each (N_i, p)
            The layer's input in chunks (concatenated here: groups may span
            chunks).
        groups : list of label arrays, one per chunk
            Required unless ``ghost`` is set.

        Returns
        -------
        ys : list of ndarrays
            Per chunk, the output that inference with the new state gives: the
            training-mode output on all rows at once (groups' own statistics),
            or for a ghost layer the output with the pooled statistics.
        new_state : dict
            The groups of the data with their exact statistics (groups absent
            from the data are dropped; ``count`` is kept for groups seen
            before and 0 for new ones), the pooled statistics of all rows.
        """
        check_keys(params, _PARAMS, self)
        check_keys(state, _STATE, self, "state")
        xs = list(xs)
        if active_reducer() is not None:   # rows on several processes
            from ._sync_group import sync_group_population
            return sync_group_population(self, params, state, xs, groups, active_reducer())
        sizes = np.cumsum([int(x.shape[0]) for x in xs])[:-1]
        x = xs[0] if len(xs) == 1 else np.concatenate([np.asarray(x) for x in xs])
        gamma, beta = params["gamma"], params["beta"]
        if self.ghost is not None:
            # One group of all rows: the pooled statistics of the data.
            _, cache = ops.group_batchnorm_forward(x, np.zeros(x.shape[0], dtype=np.int64),
                                                   gamma, beta, eps=self.eps, ddof=self.ddof)
            mean, var = cache.pooled_mean, cache.pooled_var
            new_state = {**state, "pooled_mean": mean, "pooled_var": var}
            ys = [ops.batchnorm_inference_forward(xi, gamma, beta, mean, var, eps=self.eps)[0]
                  for xi in xs]
            return ys, new_state
        if groups is None:
            raise ValueError(_NO_LABELS)
        labels = groups[0] if len(xs) == 1 else np.concatenate([np.asarray(g) for g in groups])
        index = _integer_index(labels, x.shape[0])
        y, cache = ops.group_batchnorm_forward(x, index, gamma, beta,
                                               eps=self.eps, ddof=self.ddof)
        new_labels = index.labels.astype(np.int64)
        count = carried_counts(state, new_labels)
        new_state = {
            **state,
            "labels": new_labels, "mean": cache.mean, "var": cache.var, "count": count,
            "pooled_mean": cache.pooled_mean, "pooled_var": cache.pooled_var,
        }
        return np.split(y, sizes), new_state

    # ------------------------------------------------------------------ helpers
    def _training_index(self, x, groups) -> GroupIndex:
        n = x.shape[0]
        if self.ghost is not None:
            labels = ghost_batch_labels(int(n), self.ghost, min_size=max(2, self.ddof + 1))
            return group_index(labels, n)
        if groups is None:
            raise ValueError(_NO_LABELS)
        return _integer_index(groups, n)

    def _updated_state(self, state, cache: GroupBatchNormCache):
        pooled = _ema(state["pooled_mean"], state["pooled_var"], int(state["pooled_count"]),
                      cache.pooled_mean, cache.pooled_var, self.decay)
        new_state = {**state, "pooled_mean": pooled[0], "pooled_var": pooled[1],
                     "pooled_count": np.asarray(int(state["pooled_count"]) + 1, dtype=np.int64)}
        if self.ghost is not None:
            return new_state
        # Merge the batch's groups into the sorted table of stored groups.
        old_labels = np.asarray(state["labels"])
        batch_labels = cache.index.labels.astype(np.int64)
        labels = np.union1d(old_labels, batch_labels)
        p = cache.mean.shape[1]
        dtype = cache.mean.dtype
        mean = np.zeros((labels.shape[0], p), dtype=dtype)
        var = np.ones((labels.shape[0], p), dtype=dtype)
        count = np.zeros(labels.shape[0], dtype=np.int64)
        at_old = np.searchsorted(labels, old_labels)
        mean[at_old] = state["mean"]
        var[at_old] = state["var"]
        count[at_old] = state["count"]
        at_new = np.searchsorted(labels, batch_labels)
        c = count[at_new].astype(np.float64)
        w = np.minimum(self.decay, c / (c + 1.0))[:, None].astype(dtype)
        mean[at_new] = w * mean[at_new] + (1 - w) * cache.mean
        var[at_new] = w * var[at_new] + (1 - w) * cache.var
        count[at_new] += 1
        new_state.update(labels=labels, mean=mean, var=var, count=count)
        return new_state


def _integer_index(groups, n) -> GroupIndex:
    """Encode labels, requiring integers (model files store the labels as numbers)."""
    index = group_index(groups, n)
    if index.labels.dtype.kind not in "iu":
        raise TypeError(
            f"GroupBatchNorm needs integer group labels (they are stored in the layer's "
            f"state, and model files hold numbers only); got dtype {index.labels.dtype}. "
            "Encode them first: codes = np.unique(labels, return_inverse=True)[1]"
        )
    return index


def _ema(old_mean, old_var, count, batch_mean, batch_var, decay):
    """BatchNorm's running-average rule, weight min(decay, count/(count+1)) on the old value."""
    w = min(decay, count / (count + 1.0))
    if w == 0.0:
        return batch_mean, batch_var
    xp = get_namespace(batch_mean)
    return (w * xp.asarray(old_mean) + (1.0 - w) * batch_mean,
            w * xp.asarray(old_var) + (1.0 - w) * batch_var)
