"""The reference formulas the kernels hand a call back to, registered by :mod:`bnmat.ops`.

The kernels never import an op module (the ops dispatch to the kernels, so
that would be a cycle). When a kernel cannot give the reference's answer
bit for bit or within its stated rounding (NaN, statistics outside its exact
range, an unusual layout) it calls the reference formula itself, which gives
the result or the error. :mod:`bnmat.ops` registers those formulas once, when
it is imported (which ``import bnmat._kernels`` always does first, through
``bnmat``'s own ``__init__``).
"""

from __future__ import annotations

__all__ = ["register_references", "reference"]

_REFERENCES: dict = {}


def register_references(**formulas) -> None:
    """Register the reference formulas by name (``batchnorm_forward=...``, ...)."""
    _REFERENCES.update(formulas)


def reference(name: str):
    """The registered reference formula ``name``."""
    try:
        return _REFERENCES[name]
    except KeyError:
        raise RuntimeError(f"bnmat.ops has not registered the reference formula {name!r}; "
                           "import bnmat (or bnmat.ops) before calling the kernels") from None
