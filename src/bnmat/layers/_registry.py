"""The table of layer classes that :mod:`bnmat.io` can save and load by name."""

from __future__ import annotations

import dataclasses

__all__ = ["register_layer", "registered_layers", "layer_class", "layer_name"]

_REGISTRY: dict[str, type] = {}


def register_layer(cls=None, *, name: str | None = None):
    """Register a dataclass layer so that :func:`bnmat.io.save` can write it.

    A model file describes each layer by its registered name and its dataclass
    fields (JSON: numbers, strings, booleans, None, tuples/lists of those,
    slices, and other registered layers). :func:`bnmat.io.load` rebuilds the
    layer as ``cls(**fields)``, so the class must be registered (importable and
    registered) before loading.

    Use as a decorator, with or without a name::

        @register_layer
        @dataclass(frozen=True)
        class MyLayer: ...

        @register_layer(name="mypkg.MyLayer")
        @dataclass(frozen=True)
        class MyLayer: ...

    Parameters
    ----------
    cls : type
        A dataclass with ``init``, ``forward`` and ``backward`` methods.
    name : str, optional
        Name written to files; the class's ``__name__`` by default.

    Returns
    -------
    cls, unchanged (so it works as a decorator).

    Raises
    ------
    TypeError
        ``cls`` is not a dataclass or lacks the layer methods.
    ValueError
        Another class is already registered under that name.
    """
    def register(c):
        if not (isinstance(c, type) and dataclasses.is_dataclass(c)):
            raise TypeError(f"register_layer needs a dataclass type; got {c!r}")
        missing = [m for m in ("init", "forward", "backward") if not callable(getattr(c, m, None))]
        if missing:
            raise TypeError(f"{c.__name__} lacks the layer method(s) {missing}")
        key = name or c.__name__
        old = _REGISTRY.get(key)
        if old is not None and old is not c and (old.__module__, old.__qualname__) != (
            c.__module__, c.__qualname__
        ):
            raise ValueError(
                f"a different class ({old.__module__}.{old.__qualname__}) is already "
                f"registered as {key!r}; pass name=... to register under another name"
            )
        _REGISTRY[key] = c
        return c

    return register if cls is None else register(cls)


def registered_layers() -> dict[str, type]:
    """A copy of the registry: name -> class."""
    return dict(_REGISTRY)


def layer_class(name: str) -> type | None:
    """The class registered under ``name``, or None."""
    return _REGISTRY.get(name)


def layer_name(cls: type) -> str | None:
    """The name under which exactly ``cls`` (not a parent class) is registered, or None."""
    for key, c in _REGISTRY.items():
        if c is cls:
            return key
    return None
