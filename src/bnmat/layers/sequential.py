"""A chain of layers, ``f = f_L ∘ … ∘ f_1``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ._checks import check_generator
from ._network import Network, check_module, group_kwargs, population_forward
from ._registry import register_layer

__all__ = ["Sequential", "SequentialCache"]


class SequentialCache(NamedTuple):
    caches: list     # one cache per layer, in forward order


@register_layer
@dataclass(frozen=True)
class Sequential(Network):
    """A chain of layers ``f = f_L ∘ … ∘ f_1``.

    Parameters
    ----------
    layers : sequence of layers
        Anything with ``init``, ``forward`` and ``backward`` (stored as a tuple).

    Examples
    --------
    >>> import numpy as np, bnmat
    >>> x = np.random.default_rng(0).normal(size=(8, 3))
    >>> net = bnmat.Sequential([bnmat.Dense(4, bias=False), bnmat.BatchNorm(),
    ...                         bnmat.ReLU(), bnmat.Dense(1)])
    >>> params, state = net.init(x, seed=0)
    >>> [sorted(p) for p in params]
    [['w'], ['beta', 'gamma'], [], ['b', 'w']]
    >>> net.predict(params, state, x[:1]).shape
    (1, 1)
    """

    layers: tuple

    def __post_init__(self):
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        for i, layer in enumerate(layers):
            check_module(layer, f"layer {i}")
        object.__setattr__(self, "layers", layers)

    def __len__(self):
        return len(self.layers)

    def _modules(self):
        return self.layers

    def _init(self, rng, in_features):
        check_generator(rng)
        params, state = [], []
        width = in_features
        for layer in self.layers:
            width, p, s = layer.init(rng, width)
            params.append(p)
            state.append(s)
        return width, params, state

    def _check_lists(self, params, state):
        n = len(self.layers)
        for name, value in (("params", params), ("state", state)):
            if not isinstance(value, (list, tuple)) or len(value) != n:
                got = (f"length {len(value)}" if isinstance(value, (list, tuple))
                       else type(value).__name__)
                raise ValueError(
                    f"{name} must be a list with one entry per layer ({n}); got {got}"
                )

    def forward(self, params, state, x, *, training: bool, groups=None):
        """Run the layers in order.

        Parameters
        ----------
        params, state : list
            One entry per layer.
        x : array, shape (N, p)
        training : bool
            Training mode (batch statistics, state updated) or inference mode
            (stored statistics, state returned unchanged).
        groups : array_like, shape (N,), optional
            The group label of every row; passed (as ``groups=``) only to the
            layers that read it (``uses_groups``), such as
            :class:`~bnmat.layers.GroupBatchNorm`.

        Returns
        -------
        y : array, shape (N, k)
        new_state : list
            A new list; the input ``state`` is not modified.
        cache : SequentialCache
        """
        self._check_lists(params, state)
        new_state, caches = [], []
        for layer, p, s in zip(self.layers, params, state):
            x, s, c = layer.forward(p, s, x, training=training, **group_kwargs(layer, groups))
            new_state.append(s)
            caches.append(c)
        return x, new_state, SequentialCache(caches)

    def backward(self, dy, cache):
        """Run the layers' backward passes in reverse (the chain rule).

        Parameters
        ----------
        dy : array, shape (N, k)
            ∂R/∂y.
        cache : SequentialCache

        Returns
        -------
        dx : array, shape (N, p)
        grads : list
            One dict per layer, with the keys of its parameters.
        """
        caches = cache.caches if isinstance(cache, SequentialCache) else cache
        grads = [None] * len(self.layers)
        for i in range(len(self.layers) - 1, -1, -1):
            dy, grads[i] = self.layers[i].backward(dy, caches[i])
        return dy, grads

    def population_state(self, params, state, xs, groups=None):
        """Layer by layer, set stored statistics to exact full-data ones.

        See :func:`population_forward`; ``groups`` is a list of label arrays
        parallel to ``xs`` (or None). Returns ``(ys, new_state)``.
        """
        self._check_lists(params, state)
        new_state = []
        for layer, p, s in zip(self.layers, params, state):
            xs, s = population_forward(layer, p, s, xs, groups)
            new_state.append(s)
        return xs, new_state
