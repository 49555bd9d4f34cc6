"""Deprecated alias of :mod:`bnmat.panel.model`, where this module's contents moved.

Import from ``bnmat.panel.model`` (or the names from ``bnmat.panel``); this
alias warns once per process and will be removed in a later release.
"""

import warnings

from .panel import model as _moved

warnings.warn("bnmat.panel_model is deprecated: import from bnmat.panel.model (or bnmat.panel)",
              DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_moved, name)


def __dir__():
    return dir(_moved)
