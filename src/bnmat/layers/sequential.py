"""A chain of layers, ``f = f_L ∘ … ∘ f_1``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ._checks import check_generator
from ._fused import FusedReLUCache, batchnorm_relu_backward, batchnorm_relu_forward, fusable
from .dense import Dense
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
        layers = self.layers
        new_state, caches = [], []
        i = 0
        while i < len(layers):
            if training and i + 1 < len(layers) and fusable(layers[i], layers[i + 1]):
                fused = batchnorm_relu_forward(layers[i], params[i], state[i], params[i + 1],
                                               x)
                if fused is not None:
                    x, s, bn_cache, relu_cache = fused
                    new_state += [s, state[i + 1]]
                    caches += [bn_cache, relu_cache]
                    i += 2
                    continue
            layer = layers[i]
            x, s, c = layer.forward(params[i], state[i], x, training=training,
                                    **group_kwargs(layer, groups))
            new_state.append(s)
            caches.append(c)
            i += 1
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
        return self._backward(dy, cache, need_dx=True)

    def _backward(self, dy, cache, *, need_dx: bool, consume: bool = False):
        """:meth:`backward`; without dX (None) when ``need_dx`` is False.

        Two savings over calling each layer's ``backward`` in turn, neither
        visible to the caller: a batch norm + ReLU pair whose forward pass was
        fused (see :mod:`bnmat.layers._fused`) is differentiated in one fused
        call, which writes dZ into dH when dH is an array this loop made (the
        fresh output of a :class:`Dense` layer's backward; never the caller's
        ``dy``); and with ``need_dx=False`` (what
        :func:`bnmat.train.value_and_grad` asks for) a first :class:`Dense`
        layer, or a first nested Sequential, skips dX = dY Wᵀ.

        ``consume=True`` (for a caller that made the cache and drops it
        afterwards, as :func:`bnmat.train.value_and_grad` does) releases each
        layer's cache as soon as its backward pass is done, so that the
        activations it holds are freed during the backward sweep instead of
        after it: the peak memory of a training step is then the forward
        activations plus about one gradient array.
        """
        caches = cache.caches if isinstance(cache, SequentialCache) else cache
        layers = self.layers
        grads = [None] * len(layers)
        owned = False       # dy was made by this loop and is read by no one else
        i = len(layers) - 1
        while i >= 0:
            c = caches[i]
            if (isinstance(c, FusedReLUCache) and i >= 1 and caches[i - 1] is c.bn
                    and fusable(layers[i - 1], layers[i])):
                dy, grads[i - 1] = batchnorm_relu_backward(dy, c.bn, overwrite=owned)
                grads[i] = {}
                if consume:
                    caches[i] = caches[i - 1] = c = None
                owned, i = True, i - 2
                continue
            layer = layers[i]
            if i == 0 and not need_dx and type(layer) is Sequential:
                dy, grads[i] = layer._backward(dy, c, need_dx=False, consume=consume)
            elif i == 0 and not need_dx and type(layer) is Dense:
                dy, grads[i] = layer._backward(dy, c, need_dx=False)
            else:
                dy, grads[i] = layer.backward(dy, c)
            if consume:
                caches[i] = c = None
            owned = type(layer) is Dense
            i -= 1
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
