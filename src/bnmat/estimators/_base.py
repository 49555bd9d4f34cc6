"""scikit-learn estimators: batch-normalized multilayer perceptrons.

:class:`BNMLPRegressor` and :class:`BNMLPClassifier` follow scikit-learn's
conventions (``__init__`` only stores, ``fit`` validates, fitted attributes end
in ``_``) and the parameter names of its ``MLPRegressor``/``MLPClassifier``
where the meaning is the same. The network is::

    X → standardize → [Dense(h, no bias) → BatchNorm → activation] per width → Dense(k)

This module needs scikit-learn (``pip install bnmat[sklearn]``).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    if (exc.name or "").split(".")[0] != "sklearn":
        raise
    raise ImportError(
        "bnmat's estimators (BNMLPRegressor, BNMLPClassifier, PanelBNMLPRegressor) follow "
        "scikit-learn's API and need it: pip install 'bnmat[sklearn]' (or scikit-learn). "
        "The rest of bnmat (ops, layers, fit, the command line) works without it.",
        name="scikit-learn") from exc
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import optim, train
from ..layers._mlp import (ACTIVATIONS, Scaling, auto_batch_size, auto_solver, build_mlp,
                           fit_scaling)
from ..ops.losses import log_softmax
from ._transaction import transactional_fit

__all__ = ["BNMLPRegressor", "BNMLPClassifier"]

_SOLVERS = ("adam", "sgd", "lbfgs")
_FLOATS = (np.float64, np.float32)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)


class _BNMLPBase(BaseEstimator):
    """What the regressor and the classifier share: parameters, training, prediction."""

    # set by the subclasses
    _loss_name = ""
    _l2_factor = 1.0

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=1e-4,
        batch_size="auto",
        learning_rate_init=1e-3,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        n_iter_no_change=10,
        bn_eps=1e-5,
        bn_ddof=0,
        bn_decay=0.9,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.bn_eps = bn_eps
        self.bn_ddof = bn_ddof
        self.bn_decay = bn_decay

    # ------------------------------------------------------------------ checks

    def _hidden_sizes(self) -> tuple:
        sizes = self.hidden_layer_sizes
        if _is_int(sizes):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            sizes = None
        if sizes is None or not all(_is_int(h) and h >= 1 for h in sizes):
            raise ValueError(
                "hidden_layer_sizes must be a tuple of positive integers (one width per "
                f"hidden layer, () for none); got {self.hidden_layer_sizes!r}"
            )
        return tuple(int(h) for h in sizes)

    def _check_params(self) -> tuple:
        """Validate the hyperparameters (in fit, as scikit-learn requires); return the widths."""
        hidden = self._hidden_sizes()
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(ACTIVATIONS)}; got {self.activation!r}")
        if self.solver not in _SOLVERS + ("auto",):
            raise ValueError(f"solver must be one of {_SOLVERS + ('auto',)}; got {self.solver!r}")
        checks = [
            ("alpha", _is_real(self.alpha) and self.alpha >= 0, "a finite number >= 0"),
            ("learning_rate_init",
             _is_real(self.learning_rate_init) and self.learning_rate_init > 0,
             "a finite number > 0"),
            ("max_iter", _is_int(self.max_iter) and self.max_iter >= 1, "an integer >= 1"),
            ("tol", _is_real(self.tol) and self.tol >= 0, "a finite number >= 0"),
            ("momentum", _is_real(self.momentum) and 0 <= self.momentum <= 1, "a number in [0, 1]"),
            ("validation_fraction",
             _is_real(self.validation_fraction) and 0 < self.validation_fraction < 1,
             "a number in (0, 1)"),
            ("n_iter_no_change", _is_int(self.n_iter_no_change) and self.n_iter_no_change >= 1,
             "an integer >= 1"),
            ("bn_eps", _is_real(self.bn_eps) and self.bn_eps > 0,
             "a finite number > 0 (eps = 0 is for derivations; training needs eps > 0)"),
            ("bn_ddof", _is_int(self.bn_ddof) and self.bn_ddof in (0, 1), "0 or 1"),
            ("bn_decay", _is_real(self.bn_decay) and 0 <= self.bn_decay < 1, "a number in [0, 1)"),
            ("batch_size",
             self.batch_size == "auto" or (_is_int(self.batch_size) and self.batch_size >= 1),
             "'auto' or an integer >= 1"),
        ]
        for bool_name in ("shuffle", "verbose", "nesterovs_momentum", "early_stopping"):
            checks.append((bool_name, isinstance(getattr(self, bool_name), (bool, np.bool_)),
                           "True or False"))
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"{name} must be {expected}; got {getattr(self, name)!r}")
        return hidden

    @staticmethod
    def _check_rows(n: int, what: str = "the training data") -> None:
        if n < 2:
            raise ValueError(
                f"{what} has n_samples={n}, but batch normalization in training needs at "
                "least 2 samples to compute batch statistics (means and variances)"
            )

    # ---------------------------------------------------------------- training

    def _fit_network(self, x: np.ndarray, target: np.ndarray, stratify=None, sample_weight=None):
        """Train on ``x`` (N, p) and the float target ``target`` (N, k); set fitted attributes.

        ``sample_weight`` (N,) float64 or None: frequency weights, in the
        scaling of X, the loss, the batch statistics and the penalty's N (1ᵀw).
        """
        hidden = self._check_params()
        n = x.shape[0]
        self._check_rows(n)
        solver = auto_solver(n) if self.solver == "auto" else self.solver
        self.solver_ = solver
        rng = check_random_state(self.random_state)
        seed_init, seed_fit, seed_split = (int(s) for s in rng.randint(0, 2**31 - 1, size=3))

        # Standardizing X changes no fitted function (the first dense layer is
        # followed by batch norm, or is affine itself), only the conditioning
        # of the optimization: every column starts on the same scale.
        sw = sample_weight
        self.x_scaling_ = fit_scaling(x, sample_weight=sw)
        xs = self.x_scaling_.apply(x)
        self.n_outputs_ = target.shape[1]
        self.net_ = build_mlp(hidden, self.activation, self.n_outputs_, eps=float(self.bn_eps),
                              ddof=int(self.bn_ddof), decay=float(self.bn_decay))

        stochastic = solver != "lbfgs"
        x_val = t_val = None
        x_tr, t_tr = xs, target
        self._split_rows = None
        # A held-out part needs two rows to score (R², batch statistics): below 20
        # rows early stopping watches the training loss instead.
        if self.early_stopping and n * float(self.validation_fraction) > 1 and n >= 20:
            rows_tr, rows_val = train_test_split(
                np.arange(n), test_size=self.validation_fraction, random_state=seed_split,
                stratify=stratify,
            )
            rows_tr, rows_val = np.sort(rows_tr), np.sort(rows_val)
            self._split_rows = (rows_tr, rows_val)
            x_tr, x_val, t_tr, t_val = xs[rows_tr], xs[rows_val], target[rows_tr], target[rows_val]
            if sw is not None:
                sw = sw[rows_tr]   # the held-out loss is unweighted
            self._check_rows(x_tr.shape[0], "the training part after the validation split")

        params, state = self.net_.init(x_tr, seed=seed_init)
        # The penalty is α‖W‖²/(2N)·c on the dense weights, with c = 2 for the
        # squared loss (scikit-learn halves that loss) and 1 for cross-entropy;
        # N is the number of training rows (scikit-learn uses the batch size).
        n_rows = x_tr.shape[0] if sw is None else float(np.sum(sw))
        l2 = self._l2_factor * float(self.alpha) / n_rows
        if stochastic:
            batch = (auto_batch_size(x_tr.shape[0]) if self.batch_size == "auto"
                     else int(self.batch_size))
            if batch > x_tr.shape[0]:
                warnings.warn(
                    f"batch_size={batch} is larger than the {x_tr.shape[0]} training samples; "
                    "it is clipped to the sample size", UserWarning, stacklevel=4)
                batch = x_tr.shape[0]
            if solver == "adam":
                optimizer = optim.adam(float(self.learning_rate_init))
            else:
                # Nesterov's variant is defined for momentum > 0 only; with
                # momentum 0 both are plain gradient descent.
                optimizer = optim.sgd(float(self.learning_rate_init), momentum=float(self.momentum),
                                      nesterov=bool(self.nesterovs_momentum) and self.momentum > 0)
            scores = []

            def record_score(epoch, logs):
                if x_val is not None:
                    out = np.asarray(self.net_.predict(logs["params"], logs["state"], x_val))
                    scores.append(self._validation_score(out, t_val))

            # early_stopping=True in train.fit also covers scikit-learn's rule
            # without a validation split: stop when the training loss stalls.
            result = train.fit(
                self.net_, params, state, x_tr, t_tr,
                loss=self._loss_name, optimizer=optimizer, epochs=int(self.max_iter),
                batch_size=batch, l2=l2,
                validation_data=None if x_val is None else (x_val, t_val),
                early_stopping=True, patience=int(self.n_iter_no_change), tol=float(self.tol),
                seed=seed_fit, shuffle=bool(self.shuffle), progress=bool(self.verbose),
                callback=record_score, sample_weight=sw,
            )
        elif x_val is not None:
            # L-BFGS watched on the held-out rows (5× the patience: an iteration's
            # held-out loss plateaus before it falls again); the best iterate is kept.
            from ..train._held_out import lbfgs_held_out

            result = lbfgs_held_out(self.net_, params, state, xs, target, self._loss_name, l2,
                                    None, self._split_rows, int(self.max_iter),
                                    float(self.tol), 5 * int(self.n_iter_no_change))
            record = self._validation_score(
                np.asarray(self.net_.predict(result.params, result.state, x_val)), t_val)
            scores = [record]   # lbfgs: the score of the kept iterate only
        else:
            result = train.fit_lbfgs(self.net_, params, state, x_tr, t_tr, loss=self._loss_name,
                                     l2=l2, max_iter=int(self.max_iter), tol=float(self.tol),
                                     sample_weight=sw)

        # Both training functions end by replacing the running averages with
        # exact statistics of all training rows (population_statistics), so
        # predict() on the training rows reproduces full-batch training output;
        # after early stopping the held-out rows join those statistics.
        self.params_ = result.params
        self.state_ = result.state
        if x_val is not None:
            self.state_ = train.population_statistics(self.net_, result.params, result.state, xs)
        history = result.history
        self.loss_curve_ = [float(v) for v in history["loss"]]
        self.n_iter_ = len(self.loss_curve_)
        self.best_loss_ = min(self.loss_curve_) if self.loss_curve_ else float("nan")
        if x_val is not None:
            self.validation_scores_ = scores
            self.best_validation_score_ = (scores[result.best_epoch - 1]
                                           if len(scores) >= result.best_epoch else scores[-1])
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
        if not result.stopped_early and stochastic and self.n_iter_ >= self.max_iter:
            warnings.warn(
                f"the optimizer reached max_iter={self.max_iter} epochs before the "
                f"{'validation' if x_val is not None else 'training'} loss stopped improving "
                f"(tol={self.tol}, n_iter_no_change={self.n_iter_no_change})",
                ConvergenceWarning, stacklevel=4)
        return self

    def _validation_score(self, out, t_val) -> float:
        """Score of the network output ``out`` (M, k) against the targets ``t_val`` (M, k)."""
        raise NotImplementedError

    # -------------------------------------------------------------- prediction

    def _forward(self, X) -> np.ndarray:
        """Network output (N, k) in inference mode, in X's floating dtype; changes nothing."""
        check_is_fitted(self)
        # C order for every input layout: BLAS takes different (equally
        # accurate) paths for C and Fortran arrays, and results must not
        # depend on the layout of X (a DataFrame's array is often Fortran).
        X = validate_data(self, X, dtype=_FLOATS, order="C", reset=False)
        xs = self.x_scaling_.apply(X)
        dtype = self.params_[-1]["w"].dtype
        out = self.net_.predict(self.params_, self.state_, xs.astype(dtype, copy=False))
        return np.asarray(out).astype(X.dtype, copy=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False       # X is standardized, which densifies it
        tags.input_tags.allow_nan = False
        return tags


class BNMLPRegressor(RegressorMixin, _BNMLPBase):
    """Multilayer perceptron regressor with batch normalization after every hidden layer.

    The network, for hidden sizes ``(h₁, …, h_L)`` and activation ``a``::

        H₀ = (X − 1mᵀ) diag(s)⁻¹                  standardized inputs
        Hₗ = a( BN(Hₗ₋₁ Γₗ) )                     Γₗ: (hₗ₋₁ × hₗ), no bias
        ŷ  = H_L W + 1 bᵀ,  rescaled by y's mean and standard deviation

    trained on the objective (standardized y when ``standardize_y``)::

        R(θ) = Σ (y − ŷ)² / (N k) + (α / N) Σₗ ‖Γₗ‖²_F

    which is twice scikit-learn's ``MLPRegressor`` objective (it halves the
    squared loss) with its penalty taken over the N training rows rather than
    the mini-batch.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default (100,)
        Width of each hidden layer; ``()`` gives linear regression.
    activation : {"relu", "tanh", "logistic", "identity", "leaky_relu", "softplus"}, default "relu"
    solver : {"adam", "sgd", "lbfgs", "auto"}, default "adam"
        ``"lbfgs"`` trains full-batch with exact gradients (batch statistics of
        all rows; the objective is then deterministic) via ``scipy.optimize``;
        with ``early_stopping`` it is watched on the held-out rows and the
        best iterate is kept. ``"auto"``: lbfgs up to 10,000 rows, else adam
        (:func:`auto_solver`); ``solver_`` records the choice.
    alpha : float, default 1e-4
        L2 penalty on the dense weights (not on γ, β or biases).
    batch_size : int or "auto", default "auto"
        Rows per mini-batch; ``"auto"`` is ``min(200, max(16, ⌈N/10⌉), N)``
        (:func:`auto_batch_size`: about ten steps per epoch or more, never
        one step per epoch on small data). A trailing batch of
        one row is handled by :func:`bnmat.train.fit` (merged into the previous
        one), since batch statistics need two rows.
    learning_rate_init : float, default 1e-3
    max_iter : int, default 200
        Epochs for adam and sgd; iterations for lbfgs.
    shuffle : bool, default True
        Reshuffle the rows every epoch.
    random_state : int, RandomState or None, default None
        Seeds the initialisation, the shuffling and the validation split.
    tol : float, default 1e-4
        adam and sgd: training stops when the loss (the validation loss with
        ``early_stopping``) has not improved by ``tol`` for ``n_iter_no_change``
        consecutive epochs. lbfgs: passed to ``scipy.optimize.minimize(tol=...)``,
        which stops on a relative decrease of the objective or a projected
        gradient below it (scikit-learn uses it for the gradient only).
    verbose : bool, default False
        Show a progress bar (epochs, loss, validation loss).
    momentum : float, default 0.9
        sgd only.
    nesterovs_momentum : bool, default True
        sgd only.
    early_stopping : bool, default True
        Hold out ``validation_fraction`` of the rows and stop on their loss
        (every solver; lbfgs after ``5 × n_iter_no_change`` iterations without
        improvement); with fewer than 20 rows, or fewer than two held out,
        it watches the training loss instead. In either case the parameters of the epoch with the
        lowest monitored loss (validation, else training) are kept.
        (scikit-learn's ``MLPRegressor`` defaults to False.)
    validation_fraction : float, default 0.1
    n_iter_no_change : int, default 10
    bn_eps : float, default 1e-5
        Batch norm's ε (> 0).
    bn_ddof : {0, 1}, default 0
        Batch variance divides by N − ddof (0: batch norm; 1: R's ``scale()``).
    bn_decay : float, default 0.9
        Weight on the old value in the running averages of the batch
        statistics. They are replaced after training by exact statistics of
        all training rows (:func:`bnmat.train.population_statistics`).
    standardize_y : bool, default True
        Fit the network to ``(y − mean)/sd`` and transform predictions back.
    linear_fallback : bool, default True
        With ``early_stopping`` and hidden layers: also fit a linear model on
        the same training rows (ridge on the standardized columns, penalty
        chosen by leave-one-out cross-validation among 10⁻³…10³ as
        scikit-learn's ``RidgeCV``), and keep it (refitted on all rows) unless
        the network's squared error on the held-out rows is lower by more
        than the standard error of the difference (the one-standard-error
        rule). On small tabular data this keeps the default from losing to a
        linear model. ``selected_`` says which was kept.

    Attributes
    ----------
    net_ : bnmat.Sequential
    params_, state_ : list of dict of ndarray
        Parameters and batch-norm statistics, one dict per layer.
    x_scaling_, y_scaling_ : Scaling
        Means and scales used to standardize X and y.
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        Only when X has string column names (a pandas DataFrame).
    n_outputs_ : int
    loss_curve_ : list of float
        Training objective per epoch (per iteration for lbfgs), on the
        standardized scale.
    best_loss_ : float
    n_iter_ : int
    validation_scores_ : list of float or None
        With ``early_stopping``: R² on the held-out rows per epoch (inference
        mode with the running statistics of that epoch).
    best_validation_score_ : float or None
        The score of the epoch whose parameters were kept, the one with the
        lowest validation loss (lbfgs: ``validation_scores_`` holds this one
        score only).
    selected_ : {"network", "linear"}
        What ``linear_fallback`` kept; after "linear", ``net_`` is the single
        Dense layer of the ridge fit (penalty in ``linear_alpha_``, on the
        standardized scale).
    validation_gain_t_ : float
        (With ``linear_fallback``.) The network's held-out gain over least
        squares divided by its standard error; the network is kept when > 1.
    solver_ : str
        The solver used (``"auto"`` resolved).

    Notes
    -----
    X is standardized inside ``fit``. Because the first dense layer is
    followed by batch norm (or is itself affine), this does not change the set
    of functions the network can represent, only the conditioning of the
    optimization, so scaling X in a pipeline beforehand is unnecessary.

    For the same reason ``alpha`` regularizes only through the output layer:
    batch norm makes the network's output invariant to the scale of each
    hidden Γₗ (``BN(HΓ diag(c)) = BN(HΓ)`` for c > 0, up to ε), so penalizing
    ‖Γₗ‖ shrinks Γₗ without changing the fitted function, which raises the
    effective step size of the later updates.

    Examples
    --------
    >>> from sklearn.datasets import load_diabetes
    >>> from bnmat import BNMLPRegressor
    >>> X, y = load_diabetes(return_X_y=True)
    >>> model = BNMLPRegressor(random_state=0).fit(X, y)
    >>> model.predict(X[:2]).shape
    (2,)
    """

    _loss_name = "mse"
    _l2_factor = 2.0  # α‖W‖²/N: scikit-learn's penalty doubled with its halved squared loss

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=1e-4,
        batch_size="auto",
        learning_rate_init=1e-3,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=10,
        bn_eps=1e-5,
        bn_ddof=0,
        bn_decay=0.9,
        standardize_y=True,
        linear_fallback=True,
    ):
        super().__init__(
            hidden_layer_sizes=hidden_layer_sizes, activation=activation, solver=solver,
            alpha=alpha, batch_size=batch_size, learning_rate_init=learning_rate_init,
            max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
            verbose=verbose, momentum=momentum, nesterovs_momentum=nesterovs_momentum,
            early_stopping=early_stopping, validation_fraction=validation_fraction,
            n_iter_no_change=n_iter_no_change, bn_eps=bn_eps, bn_ddof=bn_ddof,
            bn_decay=bn_decay,
        )
        self.standardize_y = standardize_y
        self.linear_fallback = linear_fallback

    @transactional_fit
    def fit(self, X, y, sample_weight=None):
        """Fit the network to X and y.

        Parameters
        ----------
        X : array-like, shape (N, p)
            NumPy array, pandas DataFrame or anything array-like; float32 is
            kept (training and predictions in float32), other numbers become
            float64.
        y : array-like, shape (N,) or (N, k)
        sample_weight : array-like, shape (N,), optional
            Frequency weights ≥ 0: a row of weight k counts as k copies of the
            row in the loss, in every batch norm's batch statistics, in the
            standardization of X and y and in the penalty's N. With
            ``solver="lbfgs"`` integer weights give the fit on repeated rows
            (up to rounding); the stochastic solvers draw mini-batches of rows,
            so there the equivalence holds in expectation only.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            NaN or infinity, fewer than 2 samples (batch statistics), X and y
            of different lengths, invalid hyperparameters, or a diverging
            optimizer (the message names the epoch).
        TypeError
            Sparse X.
        """
        if not isinstance(self.standardize_y, (bool, np.bool_)):
            raise ValueError(f"standardize_y must be True or False; got {self.standardize_y!r}")
        X, y = validate_data(self, X, y, dtype=_FLOATS, order="C", multi_output=True,
                             y_numeric=True)
        sw = _sample_weight(sample_weight, X.shape[0])
        self._y_ndim = y.ndim
        # y is standardized in its own precision (float64 unless it is float32),
        # not in X's: float32 cannot hold 1e8 + N(0, 1). Only the standardized
        # target, of order 1, is cast to X's dtype for training.
        self._y_dtype = np.result_type(y.dtype, np.float32)
        target = np.asarray(y, dtype=np.float64).reshape(X.shape[0], -1)
        if self.standardize_y:
            self.y_scaling_ = fit_scaling(target, sample_weight=sw)
        else:
            k = target.shape[1]
            self.y_scaling_ = Scaling(mean=np.zeros(k), scale=np.ones(k))
        if not isinstance(self.linear_fallback, (bool, np.bool_)):
            raise ValueError(f"linear_fallback must be True or False; got {self.linear_fallback!r}")
        ys = np.ascontiguousarray(self.y_scaling_.apply(target).astype(X.dtype))
        self._fit_network(X, ys, sample_weight=sw)
        self.selected_ = "network"
        # The held-out comparison is unweighted, so with sample weights the network stays.
        if (self.linear_fallback and sw is None and self._split_rows is not None
                and self._hidden_sizes()):
            self._select_linear(self.x_scaling_.apply(X), ys)
        return self

    def _select_linear(self, xs, ys) -> None:
        """Keep a ridge fit instead of the network unless the network predicts clearly better.

        Both are fitted on the training rows and scored on the held-out rows
        of ``early_stopping``. The linear model is ridge regression on the
        standardized columns with its penalty chosen by efficient
        leave-one-out cross-validation on the training rows (scikit-learn's
        ``RidgeCV``, penalties 10⁻³…10³); least squares is its limit. One-
        standard-error rule: the network is kept only when its total gain in
        held-out squared error exceeds the standard error of that sum
        (held-out rows as independent draws). The linear model is then
        refitted on all rows (penalty chosen again).
        """
        from sklearn.linear_model import RidgeCV

        rows_tr, rows_val = self._split_rows
        grid = np.logspace(-3, 3, 13)

        def ridge(rows):
            return RidgeCV(alphas=grid).fit(xs[rows].astype(np.float64),
                                            ys[rows].astype(np.float64))

        lin_val = ridge(rows_tr).predict(xs[rows_val].astype(np.float64))
        lin_val = lin_val.reshape(ys[rows_val].shape)
        net_val = np.asarray(self.net_.predict(self.params_, self.state_, xs[rows_val]))
        gain = (np.sum((ys[rows_val] - lin_val) ** 2, axis=1)
                - np.sum((ys[rows_val] - net_val) ** 2, axis=1))
        se = float(np.std(gain, ddof=1) * np.sqrt(gain.size)) if gain.size > 1 else np.inf
        self.validation_gain_t_ = float(gain.sum() / se) if se > 0 else float("inf")
        if gain.sum() > se:
            return
        final = ridge(np.arange(xs.shape[0]))
        dtype = self.params_[-1]["w"].dtype
        w = np.asarray(final.coef_, dtype=np.float64).reshape(self.n_outputs_, -1).T
        b = np.asarray(final.intercept_, dtype=np.float64).reshape(self.n_outputs_)
        self.net_ = build_mlp((), self.activation, self.n_outputs_)
        self.params_ = [{"w": w.astype(dtype), "b": b.astype(dtype)}]
        self.state_ = [{}]
        self.linear_alpha_ = float(final.alpha_)
        self.selected_ = "linear"

    def _validation_score(self, out, t_val) -> float:
        # R² of the standardized targets equals R² of the original ones.
        return float(r2_score(t_val, out))

    def predict(self, X):
        """Predict targets for X with the stored batch statistics (inference mode).

        Parameters
        ----------
        X : array-like, shape (M, p)

        Returns
        -------
        ndarray, shape (M,) or (M, k)
            The shape of y in ``fit``; float32 when X here and X and y in
            ``fit`` were float32, else float64 (a float64 target keeps its
            precision also when the network runs in float32).
        """
        z = self._forward(X)  # checks that the model is fitted
        # In y's precision (float64 unless X and y were float32 in fit).
        out = self.y_scaling_.invert(z, dtype=np.result_type(z.dtype, self._y_dtype))
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags


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
    classes_ : ndarray, shape (n_classes,)
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
    def fit(self, X, y, sample_weight=None):
        """Fit the network to X and the class labels y.

        Parameters
        ----------
        X : array-like, shape (N, p)
        y : array-like, shape (N,)
            Class labels (numbers or strings), at least two distinct.
        sample_weight : array-like, shape (N,), optional
            Frequency weights, as in :meth:`BNMLPRegressor.fit`.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            As :meth:`BNMLPRegressor.fit`; also a continuous or multilabel y,
            or a single class.
        """
        X, y = validate_data(self, X, y, dtype=_FLOATS, order="C")
        sw = _sample_weight(sample_weight, X.shape[0])
        check_classification_targets(y)
        self._check_rows(X.shape[0])
        classes, codes = np.unique(y, return_inverse=True)
        if classes.shape[0] < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes; the data "
                f"contain only 1 class ({classes.tolist()[0]!r})"
            )
        self.classes_ = classes
        onehot = np.zeros((X.shape[0], classes.shape[0]), dtype=X.dtype)
        onehot[np.arange(X.shape[0]), codes] = 1
        return self._fit_network(X, onehot, stratify=codes, sample_weight=sw)

    def _validation_score(self, out, t_val) -> float:
        return float(np.mean(np.argmax(out, axis=1) == np.argmax(t_val, axis=1)))

    def predict_log_proba(self, X):
        """Log class probabilities, ``log softmax`` of the network output.

        Parameters
        ----------
        X : array-like, shape (M, p)

        Returns
        -------
        ndarray, shape (M, n_classes)
            Columns in the order of ``classes_``.
        """
        return np.asarray(log_softmax(self._forward(X)))

    def predict_proba(self, X):
        """Class probabilities, ``softmax`` of the network output.

        Parameters
        ----------
        X : array-like, shape (M, p)

        Returns
        -------
        ndarray, shape (M, n_classes)
            Rows sum to one; columns in the order of ``classes_``.
        """
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """Most probable class for each row of X.

        Parameters
        ----------
        X : array-like, shape (M, p)

        Returns
        -------
        ndarray, shape (M,)
            Labels from ``classes_``.
        """
        z = self._forward(X)  # checks that the model is fitted
        return self.classes_[np.argmax(z, axis=1)]


def _sample_weight(sample_weight, n_rows):
    """None, or validated frequency weights as float64 (N,)."""
    if sample_weight is None:
        return None
    from ..train._weighted import check_sample_weight
    return check_sample_weight(sample_weight, n_rows)
