"""Fixed-effects and partially linear networks for panel data, without scikit-learn.

The model, for unit i observed in period t::

    y_it = α_i (+ τ_t) + x_lin,itᵀ b + f(x_nn,it) + e_it

* ``effects="entity"``: one-way unit effects α_i; ``"twoway"``: unit and
  period effects; ``"none"``: a common intercept only.
* the linear part ``x_linᵀ b`` (columns chosen by the user, coefficients
  reported by name) and the network f (batch-normalized MLP on the other
  columns) are summed (:func:`bnmat.layers.partially_linear`).

Estimation profiles the effects out (the *within* estimator): the network is
trained on ``R = ‖M(y − ŷ)‖²/N`` with M the projection that removes unit (and
period) means (:func:`bnmat.ops.within_sse_forward`; two-way by alternating
projections to 1e-10 relative), whose gradient ``−2M(y − ŷ)/N`` enters the
network's backward pass. Mini-batches hold whole units. After training the
effects are recovered from the residuals ``y − ŷ`` (:func:`bnmat.panel.recover_effects`).

Normalization of the level: the effects are shifted to a row-weighted mean of
zero over the training rows (two-way: the period effects, as in
:func:`~bnmat.panel.recover_effects`, and then the unit effects), and the
constant moves into the intercept. Hence a prediction without an effect (a
unit, or period, not seen in training) is that of a unit with the average
effect: ``ŷ = intercept + x_linᵀ b + f(x_nn)``, with b on the original scale
of X and f the network branch's output on y's scale.

With no network (``network_features=[]``) the model is the linear within
(fixed-effects) regression, ``linearmodels.PanelOLS(..., entity_effects=True)``
for ``effects="entity"``; its least-squares problem is solved directly
(:func:`numpy.linalg.lstsq` on the demeaned columns) rather than iterated, so
the coefficients are exact whatever the solver options.

:class:`bnmat.PanelBNMLPRegressor` wraps :func:`fit_panel` in the scikit-learn
API; :mod:`bnmat.panel.table` reads the same models from CSV tables for the
command line.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .. import optim, train
from .._segments import demean, recover_effects
from ..layers import partially_linear
from ..layers._mlp import Scaling, fit_scaling
from ..ops.group_batchnorm_inference import quiet_unseen_groups
from ..train._held_out import lbfgs_held_out
from ._fitted import PanelModel
from ._inputs import (
    AbsorbedFeaturesError, CollinearFeaturesError, NotIdentifiedError, SmallGroupsError,
    check_finite_rows, check_group_sizes, check_identified, encode_labels, resolve_columns,
)

__all__ = ["PanelModel", "fit_panel", "within_r2_score", "EFFECTS", "NotIdentifiedError",
           "AbsorbedFeaturesError", "CollinearFeaturesError", "SmallGroupsError"]

#: The effects a panel model can profile out.
EFFECTS = ("entity", "twoway", "none")
_SOLVERS = ("adam", "sgd", "lbfgs")


# ----------------------------------------------------------------- fitting
def fit_panel(x, y, entity=None, time=None, *, effects: str = "entity",
              linear_features=None, network_features=None, feature_names=None,
              hidden: Sequence[int] = (100,), activation: str = "relu",
              solver: str = "adam", alpha: float = 1e-4, batch_size: int | None = 200,
              learning_rate: float = 1e-3, max_iter: int = 200, tol: float | None = None,
              shuffle: bool = True, seed: int = 0, momentum: float = 0.9,
              nesterov: bool = True, early_stopping: bool = False,
              validation_fraction: float = 0.1, patience: int = 10, bn_eps: float = 1e-5,
              bn_ddof: int = 0, bn_decay: float = 0.9, standardize_y: bool = True,
              group_batchnorm: bool = False, progress: bool = False,
              start_linear: bool = False, linear_fallback: bool = False) -> PanelModel:
    """Fit ``y = α_i (+ τ_t) + x_linᵀ b + f(x_nn) + e`` by the within estimator.

    Parameters
    ----------
    x : ndarray, shape (N, p), finite floats
    y : ndarray, shape (N,), finite floats
    entity : array_like, shape (N,), optional
        Unit labels (integers or strings). Required for ``effects="entity"``
        and ``"twoway"`` and for ``group_batchnorm``.
    time : array_like, shape (N,), optional
        Period labels; required for ``effects="twoway"``, otherwise unused.
    effects : {"entity", "twoway", "none"}, default "entity"
    linear_features : list of int or str, optional
        Columns entering linearly (indices, or names from ``feature_names``).
        Their coefficients must be identified: a column that the effects
        absorb (see Raises) or a set of collinear columns is an error.
    network_features : list of int or str, optional
        Columns entering the network f; default: every column not in
        ``linear_features``. ``[]``: no network (f ≡ 0), the linear model,
        solved directly by least squares (``solver``, ``alpha``,
        ``batch_size``, ``learning_rate``, ``max_iter``, ``tol`` and early
        stopping do not apply; ``history`` has one entry).
    feature_names : sequence of str, optional
        Names of the p columns; default ``x0, x1, …``.
    hidden, activation
        f's hidden widths and activation (see :func:`bnmat.layers.partially_linear`).
    solver : {"adam", "sgd", "lbfgs"}, default "adam"
        "lbfgs": full batch, exact gradients (:func:`bnmat.train.fit_lbfgs`).
    alpha : float, default 1e-4
        L2 penalty ``α‖W‖²/N`` on f's dense weights (never on b).
    batch_size : int or None, default 200
        Rows per mini-batch, made of whole units (see :func:`bnmat.fit`).
    tol : float, optional
        adam and sgd: training stops when the loss has not improved by ``tol``
        for ``patience`` epochs (default 1e-4). lbfgs: SciPy's ``ftol`` and
        ``gtol`` (default 1e-7, as :func:`bnmat.train.fit_lbfgs`).
    learning_rate, max_iter, shuffle, momentum, nesterov, patience
        As in :class:`bnmat.BNMLPRegressor` (``patience`` is its
        ``n_iter_no_change``).
    seed : int, default 0
    early_stopping : bool, default False
        Hold out ``validation_fraction`` of the units (whole units) and stop on
        their within loss; otherwise stop when the training loss stalls.
    validation_fraction : float, default 0.1
    bn_eps, bn_ddof, bn_decay
        Batch-norm hyperparameters.
    standardize_y : bool, default True
    group_batchnorm : bool, default False
        Normalize f's hidden layers with per-unit statistics
        (:class:`bnmat.layers.GroupBatchNorm`). Every unit then needs at least
        ``max(2, bn_ddof + 1)`` rows.
    progress : bool, default False
    start_linear : bool, default False
        Start training at the exact linear within solution: b at the least
        squares estimate of the linear columns and the network's output layer
        at zero (so f ≡ 0 at the start). The network then only moves away
        from the linear fixed-effects model where that lowers the loss.
    linear_fallback : bool, default False
        With ``early_stopping`` (held-out units) and a network: fit the
        linear within regression on the linear columns and every identified
        network column on the same training units, and keep it instead of the
        network unless the network's within loss on the held-out units is
        clearly lower, by the one-standard-error rule: the network's total
        gain in held-out within squared error must exceed the standard error
        of that gain, computed from the per-unit gains (held-out units as
        independent draws; ``history["val_gain_t"]`` is their ratio). The
        returned model then has no network; its ``linear_columns`` include
        those network columns. With ``solver="lbfgs"`` and
        ``early_stopping`` the iterations stop when the held-out units' within
        loss has not improved by ``tol`` for ``5 × patience`` iterations, and
        the best iterate is kept.

    Returns
    -------
    PanelModel
        ``history["selected"]`` is "network" or "linear" (the fallback), and
        with a held-out comparison ``history["val_network"]`` and
        ``history["val_linear"]`` hold both held-out within MSEs (original
        scale of y).

    Raises
    ------
    AbsorbedFeaturesError
        Linear features the effects absorb: under unit effects, columns
        constant within units; under two-way effects also columns that are a
        unit level plus a period trend common to all units (such as years of
        experience); without effects, constant columns. ``.columns`` names them.
    CollinearFeaturesError
        Linear features collinear after removing the effects (``.columns``).
    SmallGroupsError
        With ``group_batchnorm``, units with fewer than ``max(2, bn_ddof + 1)``
        rows (``.units``).
    ValueError
        (The base class of the three above.) Missing labels for the chosen
        effects, bad shapes or options.
    """
    x = np.asarray(x)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[1] == 0:
        raise ValueError(f"x must be (N, p) with p >= 1 and y (N,); got {x.shape} and {y.shape}")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    n, p = x.shape
    if effects not in EFFECTS:
        raise ValueError(f"effects must be one of {EFFECTS}; got {effects!r}")
    if solver not in _SOLVERS:
        raise ValueError(f"solver must be one of {_SOLVERS}; got {solver!r}")
    names = tuple(f"x{j}" for j in range(p)) if feature_names is None else \
        tuple(str(s) for s in feature_names)
    if len(names) != p:
        raise ValueError(f"feature_names has {len(names)} names for {p} columns")
    if n < 2:
        raise ValueError(f"n_samples={n}: batch statistics need at least 2 samples")
    check_finite_rows(x, "x", names)
    check_finite_rows(y, "y")

    # Labels ---------------------------------------------------------------
    need_entity = effects != "none" or group_batchnorm
    if need_entity and entity is None:
        why = "group_batchnorm=True" if effects == "none" else f"effects={effects!r}"
        raise ValueError(f"{why} needs the unit of every row: pass the entity (groups) labels")
    if effects == "twoway" and time is None:
        raise ValueError("effects='twoway' needs the period of every row: pass the time labels")
    ent_labels = ent_codes = t_labels = t_codes = None
    if entity is not None and need_entity:
        ent_labels, ent_codes = encode_labels(entity, n, "entity")
    if effects == "twoway":
        t_labels, t_codes = encode_labels(time, n, "time")
    factors = None
    if effects == "entity":
        factors = [ent_codes]
    elif effects == "twoway":
        factors = [ent_codes, t_codes]
    groups = factors if factors is not None else ([ent_codes] if group_batchnorm else None)
    if group_batchnorm:
        check_group_sizes(ent_labels, ent_codes, bn_ddof)

    # Columns --------------------------------------------------------------
    lin = resolve_columns(linear_features, p, names, "linear_features")
    if network_features is None:
        nn = tuple(j for j in range(p) if j not in lin)
    else:
        nn = resolve_columns(network_features, p, names, "network_features")
    if not lin and not nn:
        raise ValueError("no column enters the model: give linear_features or network_features")

    x_scaling = fit_scaling(x)
    xs = np.ascontiguousarray(x_scaling.apply(x))
    target = y.reshape(-1, 1)
    y_scaling = fit_scaling(target) if standardize_y else Scaling(np.zeros(1), np.ones(1))
    ys = y_scaling.apply(target).astype(xs.dtype)
    if lin:
        check_identified(xs[:, list(lin)].astype(np.float64), factors, [names[j] for j in lin])

    net = partially_linear(lin, nn, hidden, activation,
                           intercept=(effects == "none" and not nn),
                           output_bias=(effects == "none"), eps=bn_eps, ddof=bn_ddof,
                           decay=bn_decay, group_batchnorm=group_batchnorm)
    rng = np.random.default_rng(seed)
    seed_init, seed_fit = (int(s) for s in rng.integers(0, 2**31 - 1, size=2))
    params, state = net.init(xs, seed=seed_init)
    loss = "mse" if effects == "none" else "within_mse"
    l2 = 2.0 * float(alpha) / n
    if tol is None:
        tol = 1e-7 if solver == "lbfgs" else 1e-4
    if nn and start_linear:
        params = _linear_start(params, xs, ys, lin, factors)
    split = None
    if nn and early_stopping and (solver == "lbfgs" or linear_fallback):
        split = _unit_split(ent_codes, n, float(validation_fraction), seed_fit)
    if not nn:
        result = _least_squares(params, state, xs[:, list(lin)], ys, factors)
    elif solver == "lbfgs" and split is not None:
        # An L-BFGS iteration moves further than an epoch's worth of noise-free steps
        # and its held-out loss plateaus before falling again: wait 5× longer.
        result = lbfgs_held_out(net, params, state, xs, ys, loss, l2, groups, split,
                                 int(max_iter), float(tol), 5 * int(patience))
    elif solver == "lbfgs":
        result = train.fit_lbfgs(net, params, state, xs, ys, loss=loss, l2=l2,
                                 max_iter=int(max_iter), tol=float(tol), groups=groups)
    else:
        if solver == "adam":
            optimizer = optim.adam(float(learning_rate))
        else:
            optimizer = optim.sgd(float(learning_rate), momentum=float(momentum),
                                  nesterov=bool(nesterov) and momentum > 0)
        result = train.fit(
            net, params, state, xs, ys, loss=loss, optimizer=optimizer,
            epochs=int(max_iter), batch_size=batch_size, l2=l2,
            validation_fraction=float(validation_fraction) if early_stopping else 0.0,
            early_stopping=True, patience=int(patience), tol=float(tol), seed=seed_fit,
            shuffle=bool(shuffle), progress=bool(progress), groups=groups,
        )

    if nn and early_stopping:
        # Trained without the held-out units: their rows (and, with group-wise
        # batch norm, their own statistics) join the stored statistics now.
        result = result._replace(state=train.population_statistics(
            net, result.params, result.state, xs, batch_size=batch_size, groups=groups))
    history = dict(result.history)
    history["selected"] = "network" if nn else "linear"
    model = PanelModel(
        net=net, params=result.params, state=result.state, x_scaling=x_scaling,
        y_scaling=y_scaling, effects=effects, feature_names=names, linear_columns=lin,
        network_columns=nn, entity_labels=ent_labels, entity_effects=None,
        time_labels=t_labels, time_effects=None, offset=0.0,
        group_batchnorm=bool(group_batchnorm), history=history,
        best_epoch=result.best_epoch, stopped_early=result.stopped_early,
    )
    if effects != "none":
        model = _with_effects(model, x, y, ent_codes, t_codes)
    if nn and linear_fallback and early_stopping:
        model = _select(model, x, y, entity, time, effects, factors, lin, nn, names,
                        _held_out_rows(split, ent_codes, n, float(validation_fraction),
                                       seed_fit))
    return model


# ------------------------------------------------ linear start, held-out units
def _linear_start(params, xs, ys, lin, factors):
    """b at its exact within (least-squares) value; the network's output layer at zero."""
    params = list(params)
    if lin:
        params = _least_squares(params, None, xs[:, list(lin)], ys, factors).params
    last = dict(params[-1][-1])
    for key in last:
        last[key] = np.zeros_like(np.asarray(last[key]))
    params[-1] = [*params[-1][:-1], last]
    return params


def _unit_split(ent_codes, n, fraction, seed):
    """(train rows, held-out rows): about ``fraction`` of the units, or rows without units."""
    from ..train._groups import group_holdout

    # The generator of bnmat.train.fit with the same seed: the same units are held out.
    rng = np.random.default_rng(seed)
    if ent_codes is None:
        n_val = max(1, int(np.ceil(fraction * n)))
        order = rng.permutation(n)
        return np.sort(order[n_val:]), np.sort(order[:n_val])
    return group_holdout(ent_codes, fraction, rng)


def _held_out_rows(split, ent_codes, n, fraction, seed):
    return split if split is not None else _unit_split(ent_codes, n, fraction, seed)


def _within_sq_residuals(y, y_hat, ent, time, effects) -> np.ndarray:
    """Squared within residuals ``(M(y − ŷ))²`` of the held-out rows, shape (M,)."""
    r = np.asarray(y, dtype=np.float64) - np.asarray(y_hat, dtype=np.float64)
    if effects == "none":
        r = r - r.mean()
    else:
        f = [encode_labels(ent, r.shape[0], "entity")[1]]
        if effects == "twoway":
            f.append(encode_labels(time, r.shape[0], "time")[1])
        r = demean(r, f)[0]
    return r ** 2


def identified_columns(x, factors, columns, names) -> tuple:
    """The columns (in order) that can join a linear within regression, greedily."""
    kept = []
    for j in columns:
        try:
            check_identified(np.asarray(x[:, kept + [j]], dtype=np.float64), factors,
                             [names[c] for c in kept + [j]])
        except NotIdentifiedError:
            continue
        kept.append(j)
    return tuple(kept)


def _select(model, x, y, entity, time, effects, factors, lin, nn, names, split):
    """Keep the network, or the linear within regression when it predicts held-out units as well."""
    tr, va = split
    take = (lambda a: None if a is None else np.asarray(a)[tr])
    held = (lambda a: None if a is None else np.asarray(a)[va])
    f_tr = None if factors is None else [f[tr] for f in factors]
    cols = tuple(lin) + identified_columns(x[tr], f_tr, [j for j in nn if j not in lin], names)
    linear = fit_panel(x[tr], y[tr], take(entity), take(time), effects=effects,
                       linear_features=list(cols), network_features=[], feature_names=names)
    with quiet_unseen_groups():
        # The held-out units' effects are unknown to both models and cancel in the within loss.
        sq_net = _within_sq_residuals(y[va], model.predict(x[va], held(entity), held(time)),
                                      held(entity), held(time), effects)
    sq_lin = _within_sq_residuals(y[va], linear.predict(x[va], held(entity), held(time)),
                                  held(entity), held(time), effects)
    val_net, val_lin = float(sq_net.mean()), float(sq_lin.mean())
    # One-standard-error rule: the network must beat the linear model by more than
    # the standard error of the gain, with the held-out units as independent draws.
    unit = (np.arange(va.size) if entity is None
            else encode_labels(held(entity), va.size, "entity")[1])
    gain = np.bincount(unit, weights=sq_lin - sq_net)
    se = float(np.std(gain, ddof=1) * np.sqrt(gain.size)) if gain.size > 1 else math.inf
    network_wins = float(gain.sum()) > se
    history = dict(model.history)
    history.update(val_network=val_net, val_linear=val_lin,
                   val_gain_t=float(gain.sum()) / se if se > 0 else math.inf)
    if network_wins:
        return model._replace(history=history)
    final = fit_panel(x, y, entity, time, effects=effects, linear_features=list(cols),
                      network_features=[], feature_names=names)
    history.update(selected="linear")
    return final._replace(history=history, best_epoch=model.best_epoch,
                          stopped_early=model.stopped_early)


def _least_squares(params, state, x_lin, y, factors) -> train.FitResult:
    """The linear model in closed form: ``b = argmin ‖M(y − X_lin b)‖²``.

    ``b = lstsq(M X_lin, M y)``, M removing the effects (centering when
    there are none, and then the intercept is ``ȳ − x̄_linᵀ b``), computed in
    float64 on the standardized scale the network would be trained on. It is
    the minimizer of the training objective, which for the linear part alone
    has no penalty. ``history`` reports the within MSE at b as one iteration.

    Parameters
    ----------
    params, state : list
        From ``net.init``; ``params[0]`` is the :class:`~bnmat.layers.Linear`
        branch.
    x_lin : ndarray, shape (N, k), standardized
    y : ndarray, shape (N, 1), standardized
    factors : None or list of ndarray of int, shape (N,)
    """
    x64, y64 = x_lin.astype(np.float64), y.astype(np.float64)
    if factors is None:
        mx, my = x64 - x64.mean(axis=0), y64 - y64.mean(axis=0)
    else:
        mx, my = demean(x64, factors)[0], demean(y64, factors)[0]
    coef = np.linalg.lstsq(mx, my, rcond=None)[0]                      # (k, 1)
    resid = my - mx @ coef
    linear = dict(params[0])
    dtype = np.asarray(linear["coef"]).dtype
    linear["coef"] = coef.astype(dtype)
    if "intercept" in linear:
        linear["intercept"] = (y64.mean(axis=0) - x64.mean(axis=0) @ coef).astype(dtype)
    loss = float(np.sum(resid ** 2)) / y.shape[0]
    history = {"epoch": [1], "loss": [loss], "val_loss": []}
    return train.FitResult([linear, *params[1:]], state, history, 1, False)


def _with_effects(model: PanelModel, x, y, ent_codes, t_codes) -> PanelModel:
    """Recover α̂ (and τ̂) from ``y − ŷ``; their row-weighted mean becomes the offset."""
    fitted = model.network_output(x, model.entity_labels[ent_codes])
    residual = y - model.y_scaling.mean[0] - fitted
    if model.effects == "entity":
        alpha = recover_effects(residual, ent_codes)
        alpha = np.array([alpha[k] for k in range(model.entity_labels.shape[0])])
        tau = None
    else:
        alpha, tau = recover_effects(residual, [ent_codes, t_codes])
        alpha = np.array([alpha[k] for k in range(model.entity_labels.shape[0])])
        tau = np.array([tau[k] for k in range(model.time_labels.shape[0])])
        # recover_effects centres τ̂ per connected component; centre it over rows too.
        shift = float(np.mean(tau[t_codes]))
        tau, alpha = tau - shift, alpha + shift
    level = float(np.mean(alpha[ent_codes]))
    return model._replace(entity_effects=alpha - level, time_effects=tau,
                          offset=level)


def within_r2_score(y_true, y_pred, groups) -> float:
    """Within R²: ``1 − ‖M(y − ŷ)‖² / ‖M y‖²``, M removing the group means.

    The share of the variation of y *within* groups (units, or units and
    periods) that ŷ explains; group-constant parts of ŷ (such as unit
    effects) do not matter. On training data with one factor this is
    ``linearmodels``' ``rsquared_within``; on held-out rows it scores how well
    ŷ tracks each unit's changes over the held-out periods.

    Parameters
    ----------
    y_true, y_pred : array_like, shape (N,)
    groups : array_like, shape (N,), or a sequence of such arrays
        Labels whose means M removes (several factors by alternating projections).

    Returns
    -------
    float
    """
    y_true = np.asarray(y_true, dtype=np.float64).reshape(-1)
    y_pred = np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in shape: {y_true.shape}, {y_pred.shape}")
    my = demean(y_true, groups)[0]
    mr = demean(y_true - y_pred, groups)[0]
    denom = float(my @ my)
    if denom == 0.0:
        return math.nan
    return 1.0 - float(mr @ mr) / denom
