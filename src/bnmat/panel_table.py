"""Deprecated alias of :mod:`bnmat.panel.table`, where this module's contents moved.

Import from ``bnmat.panel.table`` (or the names from ``bnmat.panel``); this
alias warns once per process and will be removed in a later release.
"""

import warnings

from .panel import table as _moved

warnings.warn("bnmat.panel_table is deprecated: import from bnmat.panel.table (or bnmat.panel)",
              DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_moved, name)


def __dir__():
    return dir(_moved)
