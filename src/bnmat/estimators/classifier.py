"""The classifier: :class:`BNMLPClassifier`."""

from __future__ import annotations

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from .._array_api import get_namespace, to_numpy
from ..ops.losses import log_softmax
from ._base import _FLOATS, _BNMLPBase, _sample_weight
from ._distributed import estimator_reducer, global_classes, validate_on_every_rank
from ._namespace import (device_of, dispatch_namespace, float_dtypes, move_to, on_host,
                         reject_reducer)
from ._transaction import transactional_fit

__all__ = ["BNMLPClassifier"]


class BNMLPClassifier(ClassifierMixin, _BNMLPBase):
    """Multilayer perceptron classifier with batch normalization after every hidden layer.

    The network is :class:`BNMLPRegressor`'s with one output per class (also
    for two classes), trained on the softmax cross-entropy::

        R(θ) = −(1/N) Σᵢ log softmax(ŷᵢ)_{cᵢ} + (α / 2N) Σₗ ‖Γₗ‖²_F

    (scikit-learn's ``MLPClassifier`` objective, with the penalty over the N
    training rows rather than the mini-batch). Labels may be numbers or
    strings; multilabel targets are not supported.

    Parameters
    ----------
    hidden_layer_sizes, activation, solver, alpha, batch_size, learning_rate_init, \
max_iter, shuffle, random_state, tol, verbose, momentum, nesterovs_momentum, \
early_stopping, validation_fraction, n_iter_no_change, bn_eps, bn_ddof, bn_decay
        As in :class:`BNMLPRegressor`. With ``early_stopping`` the validation
        split is stratified by class.

    Attributes
    ----------
    classes_ : array, shape (n_classes,)
        Sorted labels; under ``array_api_dispatch`` numeric labels are an
        array of X's library on X's device, strings a NumPy array.
    net_, params_, state_, x_scaling_, n_features_in_, feature_names_in_, \
n_outputs_, loss_curve_, best_loss_, n_iter_
        As in :class:`BNMLPRegressor`.
    validation_scores_ : list of float or None
        With ``early_stopping``: accuracy on the held-out rows per epoch.
        Stopping and the choice of the kept epoch use the validation
        cross-entropy, which changes smoothly, not the accuracy.
    best_validation_score_ : float or None
        The accuracy of the kept epoch (lowest validation cross-entropy).

    Examples
    --------
    >>> from sklearn.datasets import load_iris
    >>> from bnmat import BNMLPClassifier
    >>> X, y = load_iris(return_X_y=True)
    >>> clf = BNMLPClassifier(random_state=0).fit(X, y)
    >>> clf.predict_proba(X[:1]).shape
    (1, 3)
    """

    _loss_name = "softmax_cross_entropy"
    _l2_factor = 1.0  # α‖W‖²/(2N), scikit-learn's

    @transactional_fit
    def fit(self, X, y, sample_weight=None, *, reducer=None):
        """Fit the network to X and the class labels y.

        Parameters
        ----------
        X : array-like, shape (N, p)
            As in :meth:`BNMLPRegressor.fit` (another array library under
            scikit-learn's ``array_api_dispatch=True``).
        y : array-like, shape (N,)
            Class labels (numbers or strings, of any library), at least two
            distinct.
        sample_weight : array-like, shape (N,), optional
            Frequency weights, as in :meth:`BNMLPRegressor.fit`.
        reducer : reducer, optional
            Data-parallel fit, as in :meth:`BNMLPRegressor.fit`: every rank
            passes its own rows and ends with the model one process fits on all
            of them; ``classes_`` are the labels of all ranks. Needs
            ``early_stopping=False`` and no ``sample_weight``.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            As :meth:`BNMLPRegressor.fit`; also a continuous or multilabel y,
            or a single class (of all ranks' labels, with a reducer).
        """
        red = estimator_reducer(self, reducer)
        xp = dispatch_namespace(X)
        if xp is not None:
            reject_reducer(self, red, xp)
            X, y = validate_data(self, X, y, dtype=float_dtypes(xp))
            return self._fit_in(xp, X, y, sample_weight)
        y = on_host(y)   # y follows X (NumPy here)
        if red is None:
            X, y = validate_data(self, X, y, dtype=_FLOATS, order="C")
        else:
            def validate():
                x_r, y_r = self._validate_shard(X, y, sample_weight)
                check_classification_targets(y_r)
                return x_r, y_r

            X, y, counts = validate_on_every_rank(red, validate)
        sw = _sample_weight(sample_weight, X.shape[0])
        check_classification_targets(y)
        self._check_rows(X.shape[0] if red is None else sum(counts))
        if red is None:
            classes, codes = np.unique(y, return_inverse=True)
        else:
            classes = global_classes(red, y)
            codes = np.searchsorted(classes, y).reshape(-1)
        if classes.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes; the data "
                f"contain only 1 class ({classes.tolist()[0]!r})"
            )
        self.classes_ = classes
        onehot = np.zeros((X.shape[0], classes.shape[0]), dtype=X.dtype)
        onehot[np.arange(X.shape[0]), codes] = 1
        return self._fit_network(X, onehot, stratify=codes, sample_weight=sw, reducer=red)

    def _fit_in(self, xp, X, y, sample_weight):
        """:meth:`fit` on X (N, p) of ``xp`` (``array_api_dispatch``) and labels y (N,).

        The labels are sorted and coded on the host (numbers or strings, of any
        library); ``classes_`` moves to X's library and device when the labels
        are numbers (strings stay NumPy), the one-hot target (N, n_classes) too.
        """
        y = to_numpy(y)
        sw = _sample_weight(sample_weight, X.shape[0])
        check_classification_targets(y)
        self._check_rows(X.shape[0])
        classes, codes = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes; the data "
                f"contain only 1 class ({classes.tolist()[0]!r})"
            )
        dev = device_of(X)
        numeric = np.issubdtype(classes.dtype, np.number) or classes.dtype == np.bool_
        self.classes_ = move_to(classes, xp, dev) if numeric else classes
        onehot = np.zeros((X.shape[0], classes.shape[0]))
        onehot[np.arange(X.shape[0]), codes.reshape(-1)] = 1
        onehot = move_to(onehot, xp, dev, X.dtype)
        return self._fit_network(X, onehot, stratify=codes.reshape(-1), sample_weight=sw)

    def _validation_score(self, out, t_val) -> float:
        return float(np.mean(np.argmax(out, axis=1) == np.argmax(t_val, axis=1)))

    def predict_log_proba(self, X):
        """Log class probabilities, ``log softmax`` of the network output.

        Parameters
        ----------
        X : array-like, shape (M, p)

        Returns
        -------
        array, shape (M, n_classes)
            Columns in the order of ``classes_``; in X's library for a model
            fitted under ``array_api_dispatch``.
        """
        return self._log_proba(X, "predict_log_proba")

    def _log_proba(self, X, method):
        z = self._forward(X, method)  # checks that the model is fitted
        return np.asarray(log_softmax(z)) if isinstance(z, np.ndarray) else log_softmax(z)

    def predict_proba(self, X):
        """Class probabilities, ``softmax`` of the network output.

        Parameters
        ----------
        X : array-like, shape (M, p)

        Returns
        -------
        array, shape (M, n_classes)
            Rows sum to one; columns in the order of ``classes_``; in X's
            library for a model fitted under ``array_api_dispatch``.
        """
        out = self._log_proba(X, "predict_proba")
        return np.exp(out) if isinstance(out, np.ndarray) else get_namespace(out).exp(out)

    def score(self, X, y, sample_weight=None):
        """Accuracy of :meth:`predict` on X against the labels y (scikit-learn's ``score``).

        Parameters
        ----------
        X : array-like, shape (M, p)
        y : array-like, shape (M,)
        sample_weight : array-like, shape (M,), optional

        Returns
        -------
        float
            With ``array_api_dispatch`` and X of another library the labels are
            compared on the host in float64 (scikit-learn's count in torch is
            float32), so the score equals NumPy's.
        """
        if dispatch_namespace(X) is None:
            return super().score(X, y, sample_weight=sample_weight)
        from sklearn import config_context
        from sklearn.metrics import accuracy_score

        pred = to_numpy(self.predict(X))
        weights = None if sample_weight is None else to_numpy(sample_weight)
        with config_context(array_api_dispatch=False):
            return float(accuracy_score(to_numpy(y), pred, sample_weight=weights))

    def predict(self, X):
        """Most probable class for each row of X.

        Parameters
        ----------
        X : array-like, shape (M, p)

        Returns
        -------
        array, shape (M,)
            Labels from ``classes_`` (in X's library when ``classes_`` is).
        """
        z = self._forward(X)  # checks that the model is fitted
        if isinstance(z, np.ndarray):
            return self.classes_[np.argmax(z, axis=1)]
        xp = get_namespace(z)
        best = xp.argmax(z, axis=1)
        if isinstance(self.classes_, np.ndarray):   # string labels stay NumPy
            return self.classes_[to_numpy(best)]
        return xp.take(self.classes_, best)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # scikit-learn's array_api_dispatch: X's library decides (estimators._namespace)
        tags.array_api_support = True
        return tags
