"""The regressor: :class:`BNMLPRegressor`."""

from __future__ import annotations

import numpy as np
from sklearn import config_context
from sklearn.base import RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils.validation import validate_data

from .._array_api import to_numpy
from ..layers._mlp import Scaling, build_mlp, fit_scaling
from ._base import _FLOATS, _BNMLPBase, _sample_weight
from ._distributed import estimator_reducer, global_scaling, validate_on_every_rank
from ._namespace import (apply_scaling, device_of, dispatch_namespace, fit_scaling_xp,
                         float_dtypes, invert_scaling, move_to, numpy_dtype, on_host,
                         reject_reducer, take_rows)
from ._transaction import transactional_fit

__all__ = ["BNMLPRegressor"]


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
    Other array libraries: under scikit-learn's ``array_api_dispatch=True``
    the estimator trains in X's library and device (torch, CuPy, JAX,
    array_api_strict) and equals the NumPy fit to rounding; the ridge of
    ``linear_fallback``, the held-out split and the validation scores are
    computed on host copies. See docs/estimators.md.

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
    def fit(self, X, y, sample_weight=None, *, reducer=None):
        """Fit the network to X and y.

        Parameters
        ----------
        X : array-like, shape (N, p)
            NumPy array, pandas DataFrame or anything array-like; float32 is
            kept (training and predictions in float32), other numbers become
            float64. With scikit-learn's ``array_api_dispatch=True``, an array
            of another library (a torch tensor on any device, CuPy, JAX,
            array_api_strict) is trained on there and the fitted arrays stay
            there (docs/estimators.md); without it, it is converted to NumPy.
        y : array-like, shape (N,) or (N, k)
            Moved to X's library and device under ``array_api_dispatch``.
        sample_weight : array-like, shape (N,), optional
            Frequency weights ≥ 0: a row of weight k counts as k copies of the
            row in the loss, in every batch norm's batch statistics, in the
            standardization of X and y and in the penalty's N. With
            ``solver="lbfgs"`` integer weights give the fit on repeated rows
            (up to rounding); the stochastic solvers draw mini-batches of rows,
            so there the equivalence holds in expectation only.
        reducer : reducer, optional
            Data-parallel fit: under ``mpiexec -n K`` (or ``torchrun``) every
            rank calls ``fit`` with its own rows ``X``, ``y`` (an empty shard is
            allowed) and the same reducer
            (:class:`bnmat.distributed.MPIReducer`,
            :class:`~bnmat.distributed.TorchDistributedReducer`). Every rank
            ends with the same fitted model, the one a single process fits on
            the rows of all ranks in rank order (equal up to rounding): global
            standardization of X and y, synchronized batch statistics, rank 0's
            seeds, and N, for ``solver="auto"``, ``batch_size="auto"`` and the
            penalty, counting all rows. Needs ``early_stopping=False``, no
            ``sample_weight`` and NumPy data; None or a reducer of one process
            is the ordinary fit. See docs/scaling.md.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            NaN or infinity, fewer than 2 samples (batch statistics), X and y
            of different lengths, invalid hyperparameters, or a diverging
            optimizer (the message names the epoch). With a reducer: any
            rank's bad input (on every rank, as ``"rank r: ..."``),
            ``early_stopping=True``, ``sample_weight`` or arrays of another
            library under ``array_api_dispatch``.
        TypeError
            Sparse X; a ``reducer`` without the reducer interface.
        """
        if not isinstance(self.standardize_y, (bool, np.bool_)):
            raise ValueError(f"standardize_y must be True or False; got {self.standardize_y!r}")
        red = estimator_reducer(self, reducer)
        xp = dispatch_namespace(X)
        if xp is not None:
            reject_reducer(self, red, xp)
            X, y = validate_data(self, X, y, dtype=float_dtypes(xp), multi_output=True,
                                 y_numeric=True)
            return self._fit_in(xp, X, move_to(y, xp, device_of(X)), sample_weight)
        y = on_host(y)   # y follows X (NumPy here)
        if red is None:
            X, y = validate_data(self, X, y, dtype=_FLOATS, order="C", multi_output=True,
                                 y_numeric=True)
        else:
            X, y, counts = validate_on_every_rank(red, lambda: self._validate_shard(
                X, y, sample_weight, multi_output=True, y_numeric=True))
            self._check_rows(sum(counts))
        sw = _sample_weight(sample_weight, X.shape[0])
        self._y_ndim = y.ndim
        # y is standardized in its own precision (float64 unless it is float32),
        # not in X's: float32 cannot hold 1e8 + N(0, 1). Only the standardized
        # target, of order 1, is cast to X's dtype for training.
        self._y_dtype = np.result_type(y.dtype, np.float32)
        target = np.asarray(y, dtype=np.float64)
        target = target.reshape(X.shape[0], 1) if target.ndim == 1 else target  # (N, k), N = 0 too
        if self.standardize_y:
            self.y_scaling_ = (fit_scaling(target, sample_weight=sw) if red is None
                               else global_scaling(red, target))
        else:
            k = target.shape[1]
            self.y_scaling_ = Scaling(mean=np.zeros(k), scale=np.ones(k))
        if not isinstance(self.linear_fallback, (bool, np.bool_)):
            raise ValueError(f"linear_fallback must be True or False; got {self.linear_fallback!r}")
        ys = np.ascontiguousarray(self.y_scaling_.apply(target).astype(X.dtype))
        self._fit_network(X, ys, sample_weight=sw, reducer=red)
        self.selected_ = "network"
        # The held-out comparison is unweighted, so with sample weights the network stays.
        if (self.linear_fallback and sw is None and self._split_rows is not None
                and self._hidden_sizes()):
            self._select_linear(self.x_scaling_.apply(X), ys)
        return self

    def _fit_in(self, xp, X, y, sample_weight):
        """:meth:`fit` on arrays of ``xp`` (``array_api_dispatch``), X (N, p) and y (N,) or (N, k).

        The same steps as NumPy's path (a reducer is not taken); every fitted
        array lives in ``xp`` on X's device.
        """
        sw = _sample_weight(sample_weight, X.shape[0])
        self._y_ndim = y.ndim
        self._y_dtype = np.dtype(np.float32 if y.dtype == xp.float32 else np.float64)
        target = xp.astype(y, xp.float64)
        target = xp.reshape(target, (X.shape[0], 1)) if target.ndim == 1 else target
        dev = device_of(X)
        if self.standardize_y:
            self.y_scaling_ = fit_scaling_xp(
                target, xp, None if sw is None else move_to(sw, xp, dev))
        else:
            k = target.shape[1]
            self.y_scaling_ = Scaling(mean=xp.zeros(k, dtype=xp.float64, device=dev),
                                      scale=xp.ones(k, dtype=xp.float64, device=dev))
        if not isinstance(self.linear_fallback, (bool, np.bool_)):
            raise ValueError(f"linear_fallback must be True or False; got {self.linear_fallback!r}")
        ys = xp.astype(apply_scaling(self.y_scaling_, target), X.dtype)
        self._fit_network(X, ys, sample_weight=sw)
        self.selected_ = "network"
        if (self.linear_fallback and sw is None and self._split_rows is not None
                and self._hidden_sizes()):
            xs = apply_scaling(self.x_scaling_, X)
            # RidgeCV is NumPy's: the ridge is fitted on host copies (N × p, once),
            # the network's held-out output is computed in xp.
            net_val = to_numpy(self.net_.predict(self.params_, self.state_,
                                                 take_rows(xs, self._split_rows[1], xp)))
            with config_context(array_api_dispatch=False):
                self._select_linear(to_numpy(xs), to_numpy(ys), net_val)
            if self.selected_ == "linear":
                self.params_ = [{k: move_to(v, xp, dev) for k, v in self.params_[0].items()}]
        return self

    def _select_linear(self, xs, ys, net_val=None) -> None:
        """Keep a ridge fit instead of the network unless the network predicts clearly better.

        Both are fitted on the training rows and scored on the held-out rows
        of ``early_stopping``. The linear model is ridge regression on the
        standardized columns with its penalty chosen by efficient
        leave-one-out cross-validation on the training rows (scikit-learn's
        ``RidgeCV``, penalties 10⁻³…10³); least squares is its limit. One-
        standard-error rule: the network is kept only when its total gain in
        held-out squared error exceeds the standard error of that sum
        (held-out rows as independent draws). The linear model is then
        refitted on all rows (penalty chosen again). ``xs`` (N, p) and ``ys``
        (N, k) are NumPy arrays; ``net_val`` (M, k), the network's output on the
        held-out rows, is computed here when None.
        """
        from sklearn.linear_model import RidgeCV

        rows_tr, rows_val = self._split_rows
        grid = np.logspace(-3, 3, 13)

        def ridge(rows):
            return RidgeCV(alphas=grid).fit(xs[rows].astype(np.float64),
                                            ys[rows].astype(np.float64))

        lin_val = ridge(rows_tr).predict(xs[rows_val].astype(np.float64))
        lin_val = lin_val.reshape(ys[rows_val].shape)
        if net_val is None:
            net_val = np.asarray(self.net_.predict(self.params_, self.state_, xs[rows_val]))
        gain = (np.sum((ys[rows_val] - lin_val) ** 2, axis=1)
                - np.sum((ys[rows_val] - net_val) ** 2, axis=1))
        se = float(np.std(gain, ddof=1) * np.sqrt(gain.size)) if gain.size > 1 else np.inf
        self.validation_gain_t_ = float(gain.sum() / se) if se > 0 else float("inf")
        if gain.sum() > se:
            return
        final = ridge(np.arange(xs.shape[0]))
        dtype = xs.dtype   # the network's (X's) precision
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
        array, shape (M,) or (M, k)
            The shape of y in ``fit``; float32 when X here and X and y in
            ``fit`` were float32, else float64 (a float64 target keeps its
            precision also when the network runs in float32). A NumPy array,
            or, for a model fitted under ``array_api_dispatch``, an array of
            X's library on X's device.

        Raises
        ------
        ValueError
            X of another library or device than the data of ``fit`` (or,
            for a model fitted in another library, a call without
            ``array_api_dispatch``); the wrong number of columns; NaN.
        """
        z = self._forward(X)  # checks that the model is fitted
        # In y's precision (float64 unless X and y were float32 in fit).
        z_dtype = z.dtype if isinstance(z, np.ndarray) else numpy_dtype(z)
        out = invert_scaling(self.y_scaling_, z, dtype=np.result_type(z_dtype, self._y_dtype))
        return out[:, 0] if self._y_ndim == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        # scikit-learn's array_api_dispatch: X's library decides (estimators._namespace)
        tags.array_api_support = True
        return tags
