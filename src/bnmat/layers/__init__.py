"""Layers and networks: frozen configuration objects; parameters and state are data.

A layer holds hyperparameters only and implements three methods:

``init(rng, in_features) -> (out_features, params, state)``
    ``rng`` a NumPy Generator; ``params`` and ``state`` dicts of arrays (float64).
``forward(params, state, x, *, training) -> (y, new_state, cache)``
    Never modifies its inputs; ``training`` chooses batch statistics (and
    updated running statistics) or stored statistics.
``backward(dy, cache) -> (dx, grads)``
    ``grads`` has the keys of ``params``.

A layer that needs the group label of every row (:class:`GroupBatchNorm`)
declares ``uses_groups = True`` and takes ``forward(..., groups=labels)``; the
containers and the training functions pass ``groups`` to such layers only.

:class:`Sequential` chains layers and :class:`Additive` sums branches on column
subsets; both are layers themselves, so they nest. Any object with the three
methods composes (duck typing); :func:`register_layer` lets a dataclass layer be
saved with :func:`bnmat.io.save`.
"""

from ._registry import layer_class, layer_name, register_layer, registered_layers
from .._tree import tree_leaves, tree_map, tree_paths, tree_unflatten
from .activations import Identity, LeakyReLU, ReLU, Sigmoid, Softplus, Tanh
from .batchnorm import BatchNorm
from .batch_renorm import BatchRenorm
from .layernorm import LayerNorm
from .group_batchnorm import GroupBatchNorm
from .linear import Linear
from ._network import population_forward, uses_groups
from .additive import Additive, AdditiveCache
from .sequential import Sequential, SequentialCache
from .dense import Dense
from .partially_linear import partially_linear

__all__ = [
    "Dense", "BatchNorm", "BatchRenorm", "LayerNorm", "GroupBatchNorm", "Linear",
    "partially_linear",
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "Softplus", "Identity",
    "Sequential", "Additive", "SequentialCache", "AdditiveCache",
    "population_forward", "uses_groups",
    "register_layer", "registered_layers", "layer_class", "layer_name",
    "tree_map", "tree_leaves", "tree_paths", "tree_unflatten",
]
