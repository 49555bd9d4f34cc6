"""What every ``bnmat`` command shares: the usage error and the default model path."""

from __future__ import annotations

__all__ = ["UsageError", "DEFAULT_MODEL"]

#: Default file that ``bnmat fit`` writes the model to (in the working directory).
DEFAULT_MODEL = "bnmat-model.npz"


class UsageError(ValueError):
    """Bad input from the user: reported in one line with exit status 2."""
