"""What the scikit-learn estimators share: parameters, their checks, training, prediction.

:class:`~bnmat.BNMLPRegressor` (:mod:`bnmat.estimators.regressor`),
:class:`~bnmat.BNMLPClassifier` (:mod:`bnmat.estimators.classifier`) and
:class:`~bnmat.panel.PanelBNMLPRegressor` build on :class:`_BNMLPBase`. They follow scikit-learn's
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
    from sklearn.base import BaseEstimator
except ModuleNotFoundError as exc:  # pragma: no cover - exercised in a subprocess test
    if (exc.name or "").split(".")[0] != "sklearn":
        raise
    raise ImportError(
        "bnmat's estimators (BNMLPRegressor, BNMLPClassifier, PanelBNMLPRegressor) follow "
        "scikit-learn's API and need it: pip install 'bnmat[sklearn]' (or scikit-learn). "
        "The rest of bnmat (ops, layers, fit, the command line) works without it.",
        name="scikit-learn") from exc
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import optim, train
from .._array_api import to_numpy
from ..layers._mlp import ACTIVATIONS, auto_solver, batch_rows, build_mlp, fit_scaling
from ._distributed import global_rows, global_scaling, seeds_of_rank_zero
from ._namespace import (apply_scaling, check_fit_namespace, device_of, dispatch_namespace,
                         fit_scaling_xp, float_dtypes, host_score, move_to, take_rows)

__all__ = ["_BNMLPBase"]

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

    def _validate_shard(self, X, y, sample_weight, **check):
        """One rank's ``validate_data`` for ``fit(..., reducer=)``: 0 rows allowed, no weights."""
        if sample_weight is not None:
            raise ValueError("sample_weight is not supported with a reducer of more than one "
                             "process; fit without weights (or in one process)")
        if check.get("multi_output") and np.shape(y)[:1] == (0,):
            # an empty shard: scikit-learn's multi-output y check wants a row
            x, y = validate_data(self, X, y, validate_separately=(
                dict(dtype=_FLOATS, order="C", ensure_min_samples=0),
                dict(dtype=np.float64, ensure_2d=False, ensure_min_samples=0)))
            if x.shape[0] != 0 or y.ndim not in (1, 2):
                raise ValueError(f"X has {x.shape[0]} rows but y has shape {y.shape}")
            return x, y
        return validate_data(self, X, y, dtype=_FLOATS, order="C", ensure_min_samples=0,
                             **check)

    @staticmethod
    def _check_rows(n: int, what: str = "the training data") -> None:
        if n < 2:
            raise ValueError(
                f"{what} has n_samples={n}, but batch normalization in training needs at "
                "least 2 samples to compute batch statistics (means and variances)"
            )

    # ---------------------------------------------------------------- training

    def _fit_network(self, x: np.ndarray, target: np.ndarray, stratify=None, sample_weight=None,
                     reducer=None):
        """Train on ``x`` (N, p) and the float target ``target`` (N, k); set fitted attributes.

        ``sample_weight`` (N,) float64 or None: frequency weights, in the
        scaling of X, the loss, the batch statistics and the penalty's N (1ᵀw).
        ``reducer``: None, or a reducer of more than one process (from
        :func:`~bnmat.estimators._distributed.estimator_reducer`); ``x`` and
        ``target`` are then this rank's rows and N counts the rows of all ranks.
        ``x`` and ``target`` may be arrays of another library (scikit-learn's
        ``array_api_dispatch``, :mod:`bnmat.estimators._namespace`): training
        runs there; the split, the seeds and the scores are computed on the host.
        """
        hidden = self._check_params()
        xp = dispatch_namespace(x)
        rows_of = (lambda a, r: a[r]) if xp is None else (lambda a, r: take_rows(a, r, xp))
        # scores on host copies, with dispatch off: NumPy's numbers in every library
        score = (self._validation_score if xp is None
                 else lambda out, t: host_score(self._validation_score, out, t))
        n = x.shape[0] if reducer is None else global_rows(reducer, x.shape[0])
        self._check_rows(n)
        solver = auto_solver(n) if self.solver == "auto" else self.solver
        self.solver_ = solver
        rng = check_random_state(self.random_state)
        seed_init, seed_fit, seed_split = (int(s) for s in rng.randint(0, 2**31 - 1, size=3))
        if reducer is not None:
            seed_init, seed_fit, seed_split = seeds_of_rank_zero(
                reducer, [seed_init, seed_fit, seed_split])

        # Standardizing X changes no fitted function (the first dense layer is
        # followed by batch norm, or is affine itself), only the conditioning
        # of the optimization: every column starts on the same scale.
        sw = sample_weight
        if xp is not None:
            self.x_scaling_ = fit_scaling_xp(
                x, xp, None if sw is None else move_to(sw, xp, device_of(x)))
        else:
            self.x_scaling_ = (fit_scaling(x, sample_weight=sw) if reducer is None
                               else global_scaling(reducer, x))
        xs = apply_scaling(self.x_scaling_, x)
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
            x_tr, x_val = rows_of(xs, rows_tr), rows_of(xs, rows_val)
            t_tr, t_val = rows_of(target, rows_tr), rows_of(target, rows_val)
            if sw is not None:
                sw = sw[rows_tr]   # the held-out loss is unweighted
            self._check_rows(x_tr.shape[0], "the training part after the validation split")

        params, state = self.net_.init(x_tr, seed=seed_init)
        # The penalty is α‖W‖²/(2N)·c on the dense weights, with c = 2 for the
        # squared loss (scikit-learn halves that loss) and 1 for cross-entropy;
        # N is the number of training rows (scikit-learn uses the batch size).
        n_rows = x_tr.shape[0] if sw is None else float(np.sum(sw))
        n_rows = n_rows if reducer is None else n   # (no split and no weights with a reducer)
        l2 = self._l2_factor * float(self.alpha) / n_rows
        if stochastic:
            n_tr = x_tr.shape[0] if reducer is None else n
            batch = batch_rows(self.batch_size, n_tr, stacklevel=4)
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
                    out = to_numpy(self.net_.predict(logs["params"], logs["state"], x_val))
                    scores.append(score(out, t_val))

            # early_stopping=True in train.fit also covers scikit-learn's rule
            # without a validation split: stop when the training loss stalls.
            result = train.fit(
                self.net_, params, state, x_tr, t_tr,
                loss=self._loss_name, optimizer=optimizer, epochs=int(self.max_iter),
                batch_size=batch, l2=l2,
                validation_data=None if x_val is None else (x_val, t_val),
                early_stopping=True, patience=int(self.n_iter_no_change), tol=float(self.tol),
                seed=seed_fit, shuffle=bool(self.shuffle), progress=bool(self.verbose),
                callback=record_score, sample_weight=sw, reducer=reducer,
            )
        elif x_val is not None:
            # L-BFGS watched on the held-out rows (5× the patience: an iteration's
            # held-out loss plateaus before it falls again); the best iterate is kept.
            from ..train._held_out import lbfgs_held_out

            x_split, t_split, split = xs, target, self._split_rows
            if xp is not None:
                # lbfgs_held_out takes xs[rows], which the array API defines for
                # 1-D arrays only; the rows put in order (training rows first)
                # make both parts slices, taken as xs[(rows, columns)].
                x_split, t_split = xp.concat([x_tr, x_val]), xp.concat([t_tr, t_val])
                m = x_tr.shape[0]
                split = ((slice(0, m), slice(None)), (slice(m, None), slice(None)))
            result = lbfgs_held_out(self.net_, params, state, x_split, t_split, self._loss_name,
                                    l2, None, split, int(self.max_iter),
                                    float(self.tol), 5 * int(self.n_iter_no_change))
            record = score(
                to_numpy(self.net_.predict(result.params, result.state, x_val)), t_val)
            scores = [record]   # lbfgs: the score of the kept iterate only
        else:
            result = train.fit_lbfgs(self.net_, params, state, x_tr, t_tr, loss=self._loss_name,
                                     l2=l2, max_iter=int(self.max_iter), tol=float(self.tol),
                                     sample_weight=sw, reducer=reducer)

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

    def _forward(self, X, method: str = "predict"):
        """Network output (N, k) in inference mode, in X's floating dtype; changes nothing.

        In X's library when the model was fitted there (``array_api_dispatch``).
        """
        check_is_fitted(self)
        check_fit_namespace(self, X, method)
        xp = dispatch_namespace(X)
        if xp is not None:
            X = validate_data(self, X, dtype=float_dtypes(xp), reset=False)
            xs = apply_scaling(self.x_scaling_, X)
            out = self.net_.predict(self.params_, self.state_,
                                    xp.astype(xs, self.params_[-1]["w"].dtype))
            return xp.astype(out, X.dtype)
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


def _sample_weight(sample_weight, n_rows):
    """None, or validated frequency weights as float64 (N,)."""
    if sample_weight is None:
        return None
    from ..train._weighted import check_sample_weight
    return check_sample_weight(sample_weight, n_rows)
