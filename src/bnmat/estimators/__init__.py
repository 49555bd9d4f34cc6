"""scikit-learn estimators: batch-normalized multilayer perceptrons.

=========================  ====================================================
``estimators._base``       the shared base (parameters, validation, training)
                           and :class:`BNMLPRegressor`, :class:`BNMLPClassifier`
=========================  ====================================================

The panel estimator, :class:`bnmat.panel.PanelBNMLPRegressor`, builds on the
same base and lives with the rest of the panel code. The network these
estimators train is built by :func:`bnmat.layers._mlp.build_mlp`, shared with
the command line. Needs scikit-learn (``pip install bnmat[sklearn]``).
"""

from ._base import BNMLPClassifier, BNMLPRegressor

__all__ = ["BNMLPRegressor", "BNMLPClassifier"]
