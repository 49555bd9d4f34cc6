"""scikit-learn estimators: batch-normalized multilayer perceptrons.

=========================  ====================================================
``estimators._base``       what they share: parameters, checks, training
``estimators.regressor``   :class:`BNMLPRegressor` (with the linear fallback)
``estimators.classifier``  :class:`BNMLPClassifier`
=========================  ====================================================

The panel estimator, :class:`bnmat.panel.PanelBNMLPRegressor`, builds on the
same base and lives with the rest of the panel code. The network these
estimators train is built by :func:`bnmat.layers._mlp.build_mlp`, shared with
the command line. Needs scikit-learn (``pip install bnmat[sklearn]``); without
it, importing this package raises an ImportError that says so.
"""

from . import _base  # noqa: F401  (first: its import of scikit-learn explains a missing one)
from .classifier import BNMLPClassifier
from .regressor import BNMLPRegressor

__all__ = ["BNMLPRegressor", "BNMLPClassifier"]
