"""What every network shares: the layer-protocol check, ``init`` from data,
``predict``, and the training-mode pass that sets exact population statistics.

:class:`~bnmat.layers.Sequential` and :class:`~bnmat.layers.Additive` follow the
layer protocol themselves, so they nest: a ``Sequential`` can be a layer of
another ``Sequential`` or a branch of an ``Additive``. Any object with
``init(rng, in_features)``, ``forward(params, state, x, *, training)`` and
``backward(dy, cache)`` composes with them (duck typing).
"""

from __future__ import annotations

import numpy as np
import array_api_compat

from .._array_api import as_float, check_2d, get_namespace, is_numpy
from ._checks import positive_int
from .._tree import cast_floating, tree_map

__all__ = ["Network", "population_forward", "check_module", "is_sparse", "uses_groups",
           "group_kwargs"]

_PROTOCOL = ("init", "forward", "backward")


def check_module(m, where: str):
    missing = [name for name in _PROTOCOL if not callable(getattr(m, name, None))]
    if missing:
        raise TypeError(
            f"{where} ({m!r}) is not a layer: it lacks {missing}; a layer needs "
            "init(rng, in_features), forward(params, state, x, *, training) and "
            "backward(dy, cache)"
        )


def uses_groups(module) -> bool:
    """True when ``module`` reads the batch's group labels.

    A layer that needs the group label of every row (such as
    :class:`~bnmat.layers.GroupBatchNorm`) says so with a true attribute
    ``uses_groups``; its ``forward`` (and ``population_state``) then take a
    keyword ``groups``. Containers (:class:`~bnmat.layers.Sequential`,
    :class:`~bnmat.layers.Additive`) report whether any layer inside them does
    and pass the labels down to those layers only, so layers written without a
    ``groups`` keyword keep working unchanged.
    """
    return bool(getattr(module, "uses_groups", False))


def group_kwargs(module, groups) -> dict:
    """``{"groups": groups}`` for a module that reads group labels, else ``{}``."""
    return {"groups": groups} if uses_groups(module) else {}


def is_sparse(x) -> bool:
    return hasattr(x, "toarray") and hasattr(x, "nnz")


def _input_dtype(x):
    """The NumPy dtype parameters get for input ``x`` (float32 stays float32)."""
    if is_sparse(x):
        return np.float32 if x.dtype == np.float32 else np.float64
    xp = get_namespace(x)
    if is_numpy(xp):
        return np.asarray(x).dtype
    # Other libraries' dtypes are not NumPy's (and array_api_strict allows no
    # x[:0] to convert): float32 stays float32, everything else is float64.
    return np.dtype(np.float32) if x.dtype == xp.float32 else np.dtype(np.float64)


def population_forward(module, params, state, xs, groups=None):
    """Run ``module`` in training mode on the data ``xs`` (a list of row chunks),
    setting every stored statistic inside it to the exact statistics of all rows.

    Modules with a ``population_state(params, state, xs)`` method (BatchNorm,
    Sequential, Additive) use it; any other module is applied to each chunk in
    training mode and keeps its state (so a custom layer whose output depends
    on the batch, as batch norm's does, must define ``population_state``).

    ``groups`` (a list of label arrays, one per chunk, or None) reaches only
    modules for which :func:`uses_groups` is true.

    Returns
    -------
    ys : list of arrays
        The module's output, chunk by chunk.
    new_state : tree
    """
    kw = group_kwargs(module, groups)
    if hasattr(module, "population_state"):
        return module.population_state(params, state, xs, **kw)
    if kw:
        chunks = groups if groups is not None else [None] * len(xs)
        ys = [module.forward(params, state, x, training=True, groups=g)[0]
              for x, g in zip(xs, chunks)]
    else:
        ys = [module.forward(params, state, x, training=True)[0] for x in xs]
    return ys, state


class Network:
    """``init`` with a data matrix, ``predict``: what a user calls on a whole network."""

    def init(self, x, seed=0):
        """Initial parameters and state, sizes inferred from the data.

        Two call forms:

        * ``net.init(x, seed=0) -> (params, state)``: ``x`` of shape (N, p) gives
          p and the dtype (float32 input gives float32 parameters; integers and
          float64 give float64). ``seed`` (an int, or a NumPy Generator) seeds
          the draws.
        * ``net.init(rng, in_features) -> (out_features, params, state)``: the
          layer protocol, used when this network is itself a layer of another.

        Parameters
        ----------
        x : array, shape (N, p), or numpy.random.Generator
        seed : int or numpy.random.Generator, default 0
            (``in_features`` in the layer-protocol form.)

        Returns
        -------
        params : list
            One dict (or nested list, for a nested network) per layer.
        state : list
            Likewise.
        """
        if isinstance(x, np.random.Generator):
            return self._init(x, positive_int(seed, "in_features"))
        if is_sparse(x):
            p = x.shape[1]
            if len(x.shape) != 2 or p == 0:
                raise ValueError(f"x must be 2-D with at least one column; got shape {x.shape}")
        else:
            x = check_2d(as_float(x, "x"), "x")
            p = x.shape[1]
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        _, params, state = self._init(rng, int(p))
        dtype = _input_dtype(x)
        params, state = cast_floating(params, dtype), cast_floating(state, dtype)
        if not is_sparse(x):
            xp = get_namespace(x)
            if not is_numpy(xp):
                device = array_api_compat.device(x)
                move = lambda a: xp.asarray(a, device=device)  # noqa: E731
                params, state = tree_map(move, params), tree_map(move, state)
        return params, state

    @property
    def uses_groups(self) -> bool:
        """True when a layer inside reads the batch's group labels (see :func:`uses_groups`)."""
        return any(uses_groups(m) for m in self._modules())

    def predict(self, params, state, x, groups=None):
        """Output in inference mode (stored statistics); ``state`` is not changed.

        Rows are independent of each other, so any number of rows works (one
        included; 0 rows is a ``ValueError``) and the result for a row does not
        depend on the others.

        Parameters
        ----------
        params, state : list
        x : array, shape (N, p)
        groups : array_like, shape (N,), optional
            The group label of every row, for layers that read it
            (:class:`~bnmat.layers.GroupBatchNorm`: stored per-group
            statistics; without labels, the pooled ones). Ignored by the others.

        Returns
        -------
        y : array, shape (N, k)
        """
        shape = tuple(getattr(x, "shape", ()))
        if len(shape) == 2 and shape[0] == 0:
            raise ValueError(
                f"x has 0 rows (shape {shape}); predict needs at least one row"
            )
        y, _, _ = self.forward(params, state, x, training=False, groups=groups)
        return y
