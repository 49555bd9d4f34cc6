"""scikit-learn estimator for panel data: fixed-effects and partially linear networks.

:class:`PanelBNMLPRegressor` fits ``y_it = α_i (+ τ_t) + x_linᵀ b + f(x_nn) + e_it``
by the within estimator (:mod:`bnmat.panel.model` has the mathematics). It
takes the parameters of :class:`bnmat.BNMLPRegressor` and adds the panel's
structure: ``fit(X, y, groups=units, time=periods)``.

This module needs scikit-learn (``pip install bnmat[sklearn]``).
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
from sklearn.base import RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from ..estimators._base import _BNMLPBase
from ..layers._mlp import auto_solver, batch_rows
from ..estimators._transaction import transactional_fit
from ._linear_report import _LinearInference
from .inference import COV_TYPES, INFERENCE
from .model import EFFECTS, fit_panel, within_r2_score

__all__ = ["PanelBNMLPRegressor"]

_FLOATS = (np.float64, np.float32)


class PanelBNMLPRegressor(_LinearInference, RegressorMixin, _BNMLPBase):
    """Batch-normalized network for panel data with fixed effects and a linear part.

    The model, for unit i in period t::

        y_it = α_i (+ τ_t) + x_lin,itᵀ b + f(x_nn,it) + e_it

    with f the network of :class:`~bnmat.BNMLPRegressor` on the columns
    ``x_nn``. The effects are profiled out: f and b minimize the within loss
    ``‖M(y − x_lin b − f)‖²/N + (α/N) Σ‖Γ‖²`` with M removing unit (and
    period) means, exactly as the linear fixed-effects ("within") regression
    does. When f is absent (``network_features=[]``) the estimate *is* that
    regression, solved directly by least squares (exact; the solver options
    do not apply). After training, the effects α̂_i are the unit means of the
    residuals.

    Parameters
    ----------
    hidden_layer_sizes : tuple of int, default (100,)
    activation : {"relu", "tanh", "logistic", "identity", "leaky_relu", "softplus"}, default "relu"
    effects : {"entity", "twoway", "none"}, default "entity"
        Unit effects (``fit`` needs ``groups``), unit and period effects
        (``groups`` and ``time``; unbalanced panels allowed, alternating
        projections to 1e-10 relative), or none (a plain, possibly partially
        linear, regressor).
    linear_features : list of int or str, optional
        Columns entering linearly, by index or by name (DataFrame columns).
        Their coefficients are reported in ``coef_linear_`` and are not
        penalized by ``alpha``. A column the effects absorb raises
        :class:`~bnmat.panel.model.AbsorbedFeaturesError` (a ``ValueError``),
        as in ``linearmodels``: under unit effects a column that does not vary
        within units (a time-invariant regressor), under two-way effects also
        a unit level plus a common period trend (years of experience).
        Collinear columns raise :class:`~bnmat.panel.model.CollinearFeaturesError`.
    network_features : list of int or str, optional
        Columns entering the network; default: all columns not in
        ``linear_features``; ``[]`` gives no network (the linear model).
    group_batchnorm : bool, default False
        Normalize the hidden layers with each unit's own statistics
        (:class:`bnmat.layers.GroupBatchNorm`), so that f sees every unit's
        deviations from its own typical values. Every unit needs at least
        ``max(2, bn_ddof + 1)`` rows.
    solver : {"auto", "adam", "sgd", "lbfgs"}, default "auto"
        adam and sgd train on mini-batches of **whole units** (so each unit's
        effect is profiled out within its batch); lbfgs trains full-batch with
        exact gradients. "auto": lbfgs up to 10,000 rows, adam above
        (:func:`bnmat.estimators.auto_solver`).
    alpha : float, default 1e-4
        L2 penalty on the network's dense weights (never on b).
    batch_size : int or "auto", default "auto"
        At least this many rows per mini-batch, in whole units; "auto" is
        ``min(200, max(16, ⌈N/10⌉))`` rows, so an epoch has about ten steps
        or more (:func:`bnmat.layers._mlp.auto_batch_size`).
    tol : float or None, default None
        adam and sgd: stop when the loss has not improved by ``tol`` for
        ``n_iter_no_change`` epochs (None: 1e-4, scikit-learn's value). lbfgs:
        SciPy's ``ftol`` and ``gtol`` (None: 1e-7, the default of
        :func:`bnmat.train.fit_lbfgs`).
    learning_rate_init, max_iter, shuffle, random_state, verbose, momentum, \
nesterovs_momentum, n_iter_no_change, bn_eps, bn_ddof, bn_decay, standardize_y
        As in :class:`bnmat.BNMLPRegressor`.
    early_stopping : bool, default True
        Hold out ``validation_fraction`` of the **units** and stop on their
        within loss (every solver; lbfgs per iteration), keeping the best
        epoch. False: stop when the training loss stalls.
    validation_fraction : float, default 0.1
    linear_fallback : bool, default True
        With ``early_stopping``: also fit the linear fixed-effects regression
        on the linear columns and every identified network column, on the
        same training units, and keep it (refitted on all rows, exactly) when
        the network does not predict the held-out units' within variation
        better. ``selected_`` says which was kept.
    inference : {"none", "crossfit"}, default "none"
        Standard errors for the linear coefficients when there is a network.
        "crossfit": the cross-fitted, Neyman-orthogonal partialling-out
        estimate (:mod:`bnmat.panel.inference`): ``cv`` folds of whole units;
        for each, networks fitted on the other folds predict y and each
        linear column from the network columns (the estimator's architecture,
        solver and ``max_iter``, weight decay ``crossfit_alpha``, no early
        stopping or fallback: :func:`bnmat.panel._linear_report.nuisance_fitter`);
        b is the regression of the held-out, within-demeaned residuals of y
        on those of the linear columns, with the standard errors of
        ``cov_type``. It costs ``cv × (1 + k)`` extra network fits, hence
        not the default. Without a network the within regression is exact and
        its standard errors are always computed.
    cv : int, default 5
        Folds of units for ``inference="crossfit"``.
    n_rep : int, default 3
        Draws of the folds for ``inference="crossfit"``, aggregated by
        medians with the spread over draws added to the covariance
        (:func:`bnmat.panel.inference.crossfit_inference`); costs ``n_rep``
        times as much as one draw. Three by default: on 50 simulated units
        one draw's intervals covered θ in 90 % of the replications, three
        draws' in 94.5 % (docs/panel.md §6b).
    crossfit_alpha : float, default 0.1
        Weight decay of the nuisance networks of ``inference="crossfit"``
        (the model's own is ``alpha``). The default was chosen in the
        simulation of docs/panel.md §6b, where it gave intervals with their
        nominal coverage.
    cov_type : {"clustered", "robust", "unadjusted"}, default "clustered"
        Covariance of the linear coefficients: clustered by unit, White's
        heteroskedasticity-robust, or homoskedastic; equal to
        ``linearmodels.PanelOLS(...).fit(cov_type=..., cluster_entity=True)``
        (its default adjustments) when there is no network.

    Attributes
    ----------
    coef_linear_ : dict
        Feature name → b, on the original scales of X and y: the estimate the
        standard errors belong to (the cross-fitted one with
        ``inference="crossfit"``, else the fitted model's; after a linear
        fallback every linear column of the fitted linear model, whose
        standard errors do not account for the selection).
    coef_linear_model_ : dict
        The linear coefficients of the fitted model, which ``predict`` uses
        (after a linear fallback, also those of the network columns).
    stderr_linear_ : dict or None
        Feature name → standard error; None for a network without
        ``inference="crossfit"`` (a jointly trained, penalized fit has no
        valid standard errors).
    inference_ : bnmat.panel.inference.LinearInference or None
    selected_ : {"network", "linear"}
        What ``linear_fallback`` kept.
    effects_ : dict
        Unit label → α̂ (empty for ``effects="none"``), normalized to a
        row-weighted mean of zero over the training rows.
    time_effects_ : dict
        Period label → τ̂ (two-way only; row-weighted mean zero).
    intercept_ : float
        The constant in ``ŷ = intercept_ + x_linᵀ b + f(x_nn) + α̂_i (+ τ̂_t)``
        (b on the original scales; f the network branch's output on y's scale).
    model_ : bnmat.panel.model.PanelModel
        Everything fitted, including ``net``, ``params`` and ``state``.
    net_, params_, state_, x_scaling_, y_scaling_
        Shortcuts into ``model_``.
    linear_features_, network_features_ : list of str
    n_features_in_ : int
    feature_names_in_ : ndarray of str
        When X has string column names.
    loss_curve_ : list of float
    best_loss_ : float
    n_iter_ : int
    validation_loss_ : list of float or None
        Within loss of the held-out units per epoch (``early_stopping``).

    Notes
    -----
    **Predictions.** ``predict(X, groups=units, time=periods)`` adds α̂_i for
    units seen in ``fit`` (and τ̂_t for periods seen). For new units, and for
    every row when ``groups`` is None, there is no estimated effect: the
    prediction is ``intercept_ + x_linᵀ b + f(x_nn)``, that of a unit with
    the average effect. With ``group_batchnorm`` the network itself uses
    per-unit statistics for known units and the pooled statistics for new
    ones (with a warning) or when ``groups`` is None.

    **Identification.** Under unit effects neither a level nor anything
    constant within units is identified from within variation: the network's
    output layer has no bias, and time-invariant inputs influence f only
    through their interactions with time-varying ones.

    Examples
    --------
    >>> import numpy as np
    >>> from bnmat import PanelBNMLPRegressor
    >>> rng = np.random.default_rng(0)
    >>> units = np.repeat(np.arange(30), 5)
    >>> X = rng.normal(size=(150, 3))
    >>> y = 2.0 * X[:, 0] + np.sin(X[:, 1]) + rng.normal(size=30)[units]
    >>> model = PanelBNMLPRegressor((16,), linear_features=[0], solver="lbfgs",
    ...                             max_iter=300, random_state=0).fit(X, y, groups=units)
    >>> round(model.coef_linear_["x0"], 1)
    2.0
    """

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        effects="entity",
        linear_features=None,
        network_features=None,
        group_batchnorm=False,
        solver="auto",
        alpha=1e-4,
        batch_size="auto",
        learning_rate_init=1e-3,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=None,
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
        inference="none",
        cv=5,
        cov_type="clustered",
        n_rep=3,
        crossfit_alpha=0.1,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.effects = effects
        self.linear_features = linear_features
        self.network_features = network_features
        self.group_batchnorm = group_batchnorm
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
        self.standardize_y = standardize_y
        self.linear_fallback = linear_fallback
        self.inference = inference
        self.cv = cv
        self.cov_type = cov_type
        self.n_rep = n_rep
        self.crossfit_alpha = crossfit_alpha

    @transactional_fit
    def fit(self, X, y, groups=None, time=None):
        """Fit the panel network.

        Parameters
        ----------
        X : array-like, shape (N, p)
        y : array-like, shape (N,)
        groups : array-like, shape (N,), optional
            Unit of every row (integers or strings). Required unless
            ``effects="none"`` and ``group_batchnorm=False`` (then ignored).
        time : array-like, shape (N,), optional
            Period of every row; required for ``effects="twoway"``, otherwise
            ignored.

        Returns
        -------
        self

        Raises
        ------
        ValueError
            Missing labels, unidentified linear coefficients
            (:class:`~bnmat.panel.model.NotIdentifiedError`), a unit with too
            few rows for ``group_batchnorm``
            (:class:`~bnmat.panel.model.SmallGroupsError`), NaN or infinity,
            fewer than 2 samples, invalid hyperparameters, divergence.
        """
        hidden = self._check_params()
        if self.effects not in EFFECTS:
            raise ValueError(f"effects must be one of {EFFECTS}; got {self.effects!r}")
        for name in ("group_batchnorm", "standardize_y", "linear_fallback"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise ValueError(f"{name} must be True or False; got {getattr(self, name)!r}")
        if self.inference not in INFERENCE:
            raise ValueError(f"inference must be one of {INFERENCE}; got {self.inference!r}")
        if self.cov_type not in COV_TYPES:
            raise ValueError(f"cov_type must be one of {COV_TYPES}; got {self.cov_type!r}")
        if isinstance(self.cv, bool) or not isinstance(self.cv, (int, np.integer)) or self.cv < 2:
            raise ValueError(f"cv must be an integer >= 2; got {self.cv!r}")
        if isinstance(self.n_rep, bool) or not isinstance(self.n_rep, (int, np.integer)) \
                or self.n_rep < 1:
            raise ValueError(f"n_rep must be an integer >= 1; got {self.n_rep!r}")
        alpha = self.crossfit_alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.integer,
                                                             np.floating)) \
                or not (np.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"crossfit_alpha must be a finite number >= 0; got {alpha!r}")
        _numpy_only(X, "fit")
        X, y = validate_data(self, X, y, dtype=_FLOATS, order="C", y_numeric=True)
        n = X.shape[0]
        self._check_rows(n)
        names = getattr(self, "feature_names_in_", None)
        names = None if names is None else [str(s) for s in names]
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(0, 2**31 - 1))
        solver = auto_solver(n) if self.solver == "auto" else self.solver
        options = self._options(hidden, solver, n)
        model = fit_panel(X, y, groups, time, effects=self.effects,
                          linear_features=self.linear_features,
                          network_features=self.network_features, feature_names=names,
                          seed=seed, **options)
        inference = self._linear_inference(model, X, y, groups, time, seed, hidden, solver)
        self.model_ = model
        self.solver_ = solver
        self.net_, self.params_, self.state_ = model.net, model.params, model.state
        self.x_scaling_, self.y_scaling_ = model.x_scaling, model.y_scaling
        lin_names = [model.feature_names[j] for j in
                     self._requested_linear(model, X.shape[1])]
        self.coef_linear_model_ = dict(model.coef_linear)
        self.inference_ = inference
        if inference is not None:
            self.coef_linear_ = dict(zip(inference.names, inference.coef.tolist()))
            self.stderr_linear_ = dict(zip(inference.names, inference.stderr.tolist()))
        else:
            self.coef_linear_ = dict(self.coef_linear_model_)
            self.stderr_linear_ = None
        self.selected_ = model.history.get("selected", "network")
        self.effects_ = model.effects_dict
        self.time_effects_ = model.time_effects_dict
        self.intercept_ = float(model.intercept)
        self.linear_features_ = lin_names
        self.network_features_ = [model.feature_names[j] for j in model.network_columns]
        self.loss_curve_ = [float(v) for v in model.history["loss"]]
        self.n_iter_ = len(self.loss_curve_)
        self.best_loss_ = min(self.loss_curve_) if self.loss_curve_ else float("nan")
        val = model.history.get("val_loss") or None
        self.validation_loss_ = None if val is None else [float(v) for v in val]
        iterated = solver != "lbfgs" and bool(model.network_columns)   # else solved directly
        if iterated and not model.stopped_early and self.n_iter_ >= self.max_iter:
            tol = 1e-4 if self.tol is None else self.tol
            warnings.warn(
                f"the optimizer reached max_iter={self.max_iter} epochs before the loss "
                f"stopped improving (tol={tol}, n_iter_no_change={self.n_iter_no_change})",
                ConvergenceWarning, stacklevel=3)
        return self

    def _options(self, hidden, solver, n) -> dict:
        """Keyword arguments of :func:`fit_panel` from the hyperparameters."""
        batch = None
        if solver != "lbfgs":
            batch = batch_rows(self.batch_size, n, stacklevel=4)
        return dict(
            hidden=hidden, activation=self.activation, solver=solver, alpha=float(self.alpha),
            batch_size=batch, learning_rate=float(self.learning_rate_init),
            max_iter=int(self.max_iter), tol=None if self.tol is None else float(self.tol),
            shuffle=bool(self.shuffle), momentum=float(self.momentum),
            nesterov=bool(self.nesterovs_momentum), early_stopping=bool(self.early_stopping),
            validation_fraction=float(self.validation_fraction),
            patience=int(self.n_iter_no_change), bn_eps=float(self.bn_eps),
            bn_ddof=int(self.bn_ddof), bn_decay=float(self.bn_decay),
            standardize_y=bool(self.standardize_y), group_batchnorm=bool(self.group_batchnorm),
            progress=bool(self.verbose), start_linear=True,
            linear_fallback=bool(self.linear_fallback),
        )

    def _check_params(self) -> tuple:
        # tol=None picks the solver's default in fit_panel; the shared checks want a number.
        if self.tol is None or self.solver == "auto":
            probe = copy.copy(self)
            probe.tol = 0.0 if self.tol is None else self.tol
            probe.solver = "adam" if self.solver == "auto" else self.solver
            return super(PanelBNMLPRegressor, probe)._check_params()
        return super()._check_params()

    def predict(self, X, groups=None, time=None):
        """Predict with the stored statistics and the estimated effects.

        Parameters
        ----------
        X : array-like, shape (M, p)
        groups : array-like, shape (M,), optional
            Units: rows of units seen in ``fit`` get their α̂_i; other rows, or
            all rows without ``groups``, get none (the average unit).
        time : array-like, shape (M,), optional
            Periods (two-way models): τ̂_t for periods seen in ``fit``.

        Returns
        -------
        ndarray, shape (M,)
            float32 for float32 X, else float64.
        """
        check_is_fitted(self)
        _numpy_only(X, "predict")
        X = validate_data(self, X, dtype=_FLOATS, order="C", reset=False)
        return self.model_.predict(X, groups, time).astype(X.dtype, copy=False)

    def score(self, X, y, groups=None, time=None, sample_weight=None):
        """R² of ``predict(X, groups, time)``.

        Parameters
        ----------
        X : array-like, shape (M, p)
        y : array-like, shape (M,)
        groups, time : array-like, shape (M,), optional
        sample_weight : array-like, shape (M,), optional

        Returns
        -------
        float
        """
        return float(r2_score(y, self.predict(X, groups, time), sample_weight=sample_weight))

    def within_score(self, X, y, groups, time=None):
        """Within R² of the predictions: ``1 − ‖M(y − ŷ)‖²/‖My‖²``.

        M removes the means of ``groups`` (and of ``time`` for a two-way
        model) within the rows given, so the effects do not matter: it scores
        how well ``x_linᵀ b + f(x_nn)`` tracks the units' changes. See
        :func:`bnmat.panel.model.within_r2_score`.

        Parameters
        ----------
        X : array-like, shape (M, p)
        y : array-like, shape (M,)
        groups : array-like, shape (M,)
        time : array-like, shape (M,), optional

        Returns
        -------
        float
        """
        factors = groups if time is None or self.effects != "twoway" else [groups, time]
        return within_r2_score(y, self.predict(X, groups, time), factors)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = False
        return tags


def _numpy_only(X, method: str) -> None:
    """Refuse another library's arrays under ``array_api_dispatch`` (NumPy only here)."""
    from ..estimators._namespace import dispatch_namespace

    if dispatch_namespace(X) is not None:
        raise TypeError(
            f"PanelBNMLPRegressor.{method} computes in NumPy only, and scikit-learn's "
            f"array_api_dispatch is on with X a {type(X).__module__}.{type(X).__name__}: "
            "pass NumPy arrays (e.g. X.cpu().numpy()) or fit outside "
            "config_context(array_api_dispatch=True), which converts X to NumPy. "
            "BNMLPRegressor and BNMLPClassifier do train in other libraries.")
