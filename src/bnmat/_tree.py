"""Nested lists and dicts of arrays ("trees"): the shape of parameters and state.

A network's parameters are a list with one dict per layer; a combinator such as
:class:`~bnmat.layers.Additive` nests lists inside that list. These helpers walk
such trees. A *leaf* is anything that is not a ``list``, ``tuple`` or ``dict``
(normally an array).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

__all__ = ["tree_map", "tree_leaves", "tree_paths", "tree_unflatten", "cast_floating"]


def _is_node(t) -> bool:
    return isinstance(t, (list, tuple, dict))


def tree_map(f: Callable, tree, *rest, path: tuple = ()):
    """Apply ``f`` leafwise to one or more trees of the same structure.

    Parameters
    ----------
    f : callable
        ``f(leaf, *other_leaves) -> new_leaf``.
    tree : nested list / tuple / dict
        Gives the structure and, for dicts, the key order of the result.
    *rest : trees
        Same structure as ``tree``; dicts are matched by key, so their key
        order may differ.

    Returns
    -------
    A new tree (lists stay lists, tuples tuples, dicts dicts); the inputs are
    not modified.

    Raises
    ------
    ValueError
        The structures differ; the message names the path where they do.
    """
    if isinstance(tree, dict):
        for other in rest:
            if not isinstance(other, dict) or set(other) != set(tree):
                raise ValueError(_mismatch(path, tree, other))
        return {k: tree_map(f, tree[k], *(o[k] for o in rest), path=path + (k,))
                for k in tree}
    if isinstance(tree, (list, tuple)):
        for other in rest:
            if not isinstance(other, (list, tuple)) or len(other) != len(tree):
                raise ValueError(_mismatch(path, tree, other))
        out = [tree_map(f, *items, path=path + (i,))
               for i, items in enumerate(zip(tree, *rest))]
        return out if isinstance(tree, list) else tuple(out)
    for other in rest:
        if _is_node(other):
            raise ValueError(_mismatch(path, tree, other))
    return f(tree, *rest)


def _describe(t) -> str:
    if isinstance(t, dict):
        return f"a dict with keys {sorted(map(str, t))}"
    if isinstance(t, (list, tuple)):
        return f"a {type(t).__name__} of length {len(t)}"
    return f"a leaf ({type(t).__name__})"


def _mismatch(path, a, b) -> str:
    where = "/".join(map(str, path)) or "the top level"
    return f"tree structures differ at {where}: {_describe(a)} versus {_describe(b)}"


def tree_paths(tree, path: tuple = ()) -> Iterator[tuple[tuple, Any]]:
    """Yield ``(path, leaf)`` pairs in a fixed order (list position, dict key order).

    A path is a tuple of list indices and dict keys, for example ``(2, "w")``.
    """
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from tree_paths(v, path + (k,))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from tree_paths(v, path + (i,))
    else:
        yield path, tree


def tree_leaves(tree, like=None) -> list:
    """The leaves of ``tree`` in :func:`tree_paths` order.

    Parameters
    ----------
    tree : tree
    like : tree, optional
        Take the order (dict key order) from this tree of the same structure,
        for example the parameters when ``tree`` holds their gradients.
    """
    if like is not None:
        tree = tree_map(lambda _, leaf: leaf, like, tree)
    return [leaf for _, leaf in tree_paths(tree)]


_END = object()


def tree_unflatten(like, leaves) -> Any:
    """Inverse of :func:`tree_leaves`: put ``leaves`` into the structure of ``like``."""
    it = iter(leaves)
    out = tree_map(lambda _: next(it), like)
    if next(it, _END) is not _END:
        raise ValueError("more leaves than the structure holds")
    return out


def cast_floating(tree, dtype):
    """Cast every real floating NumPy leaf to ``dtype``; other leaves are kept."""
    def cast(a):
        if isinstance(a, np.ndarray) and np.issubdtype(a.dtype, np.floating):
            return a.astype(dtype, copy=False)
        return a
    return tree_map(cast, tree)
