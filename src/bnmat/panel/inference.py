"""Standard errors for the linear part of a panel model, and the cross-fitted estimate.

Two estimators of b in ``y_it = α_i (+ τ_t) + x_lin,itᵀ b + f(x_nn,it) + e_it``:

* **within** (no network, f ≡ 0): ``b̂ = (X̃ᵀX̃)⁻¹X̃ᵀỹ`` with X̃ = M X_lin and
  ỹ = M y, M removing the effects. Its covariance is that of
  ``linearmodels.PanelOLS(y, X_lin, entity_effects=True [, time_effects=True]).fit(cov_type=...)``
  with PanelOLS's default adjustments (``debiased=True``, ``auto_df=True``,
  ``group_debias=False``); see :func:`linear_covariance`.
* **cross-fitted partialling out** (a network present): the units are split
  into ``cv`` folds; for each fold, fixed-effects networks fitted on the other
  folds predict y and each linear column from the network columns
  (``l̂(x) ≈ E[y − α_i | x]``, ``m̂_j(x) ≈ E[x_lin,j − γ_ij | x]``), the
  held-out fold's residuals are demeaned within its units,
  ``ũ = M(y − l̂(x))``, ``Ṽ = M(X_lin − m̂(x))``, and b̂ is the
  residual-on-residual regression ``(ṼᵀṼ)⁻¹Ṽᵀũ`` over all folds. Its score
  ``ṽ(ũ − ṽᵀb)`` is Neyman-orthogonal: errors in l̂ and m̂ enter b̂ only as
  products (Chernozhukov et al. 2018, *Double/debiased machine learning*,
  the partially linear model; here with the effects removed by the within
  transform, the held-out units' effects by their own means). Standard errors
  are the covariance of :func:`linear_covariance` applied to (Ṽ, ũ).

This module needs NumPy and SciPy only; the fitting of the nuisance networks
is :func:`bnmat.panel.model.fit_panel`'s.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .._segments import demean

__all__ = ["COV_TYPES", "INFERENCE", "LinearInference", "linear_covariance",
           "within_inference", "crossfit_inference", "unit_folds"]

#: Covariance estimators (linearmodels' names).
COV_TYPES = ("clustered", "robust", "unadjusted")
#: Values of the estimators' ``inference`` parameter.
INFERENCE = ("none", "crossfit")


def _check_cov_type(cov_type: str) -> str:
    if cov_type not in COV_TYPES:
        raise ValueError(f"cov_type must be one of {COV_TYPES}; got {cov_type!r}")
    return cov_type


def n_effects(effects: str, entity_codes, time_codes) -> int:
    """Degrees of freedom the effects use, as PanelOLS counts them.

    ``"entity"``: G; ``"twoway"``: G + T − 1; ``"none"``: 1 (the intercept,
    which PanelOLS counts as a regressor).
    """
    if effects == "none":
        return 1
    g = int(np.unique(entity_codes).size)
    if effects == "entity":
        return g
    return g + int(np.unique(time_codes).size) - 1


def linear_covariance(x_tilde, resid, clusters, *, cov_type: str = "clustered",
                      n_absorbed: int, nested: bool) -> tuple[np.ndarray, int]:
    """Covariance of ``b̂ = (X̃ᵀX̃)⁻¹X̃ᵀỹ``, PanelOLS's small-sample conventions.

    With n rows, k columns, d absorbed degrees of freedom (:func:`n_effects`)
    and A = (X̃ᵀX̃)⁻¹::

        unadjusted:  V = s² A,                       s² = ẽᵀẽ / (n − d − k)
        robust:      V = n/(n − d − k) · A (Σᵢ ẽᵢ² x̃ᵢx̃ᵢᵀ) A
        clustered:   V = n/(n − d' − k) · A (Σ_g s_g s_gᵀ) A,  s_g = Σ_{i∈g} ẽᵢ x̃ᵢ

    with d' = 0 when the effects are nested in the clusters (unit effects
    alone, clusters = units) and d' = d otherwise, as PanelOLS's ``auto_df``.
    Inference uses t(n − k − d) (PanelOLS's ``debiased=True``).

    Parameters
    ----------
    x_tilde : ndarray, shape (n, k)
        Columns with the effects removed.
    resid : ndarray, shape (n,)
        ``ỹ − X̃ b̂``.
    clusters : ndarray, shape (n,)
        Unit codes (read for ``"clustered"`` only).
    cov_type : {"clustered", "robust", "unadjusted"}
    n_absorbed : int
        d.
    nested : bool
        Whether the effects are nested in the clusters.

    Returns
    -------
    cov : ndarray, shape (k, k)
    df_resid : int
        n − k − d.

    Raises
    ------
    ValueError
        No residual degrees of freedom, fewer than two clusters, a singular X̃ᵀX̃.
    """
    _check_cov_type(cov_type)
    x = np.asarray(x_tilde, dtype=np.float64)
    e = np.asarray(resid, dtype=np.float64).reshape(-1)
    n, k = x.shape
    df_resid = n - k - int(n_absorbed)
    extra = 0 if (cov_type == "clustered" and nested) else int(n_absorbed)
    if df_resid <= 0 or n - extra - k <= 0:
        raise ValueError(
            f"no residual degrees of freedom for standard errors: {n} rows, {k} linear "
            f"coefficients and {n_absorbed} degrees of freedom absorbed by the effects")
    bread = np.linalg.inv(x.T @ x)
    if cov_type == "unadjusted":
        cov = float(e @ e) / df_resid * bread
    else:
        if cov_type == "robust":
            xe = x * e[:, None]
            meat = xe.T @ xe
        else:
            codes = np.unique(np.asarray(clusters), return_inverse=True)[1].reshape(-1)
            if codes.max(initial=0) < 1:
                raise ValueError("clustered standard errors need at least two clusters (units)")
            sums = np.zeros((codes.max() + 1, k))
            np.add.at(sums, codes, x * e[:, None])
            meat = sums.T @ sums
        cov = n / (n - extra - k) * (bread @ meat @ bread)
    return (cov + cov.T) / 2, df_resid


class LinearInference(NamedTuple):
    """Estimates, covariance and tests for the linear coefficients.

    Attributes
    ----------
    names : tuple of str, length k
    coef : ndarray, shape (k,)
    cov : ndarray, shape (k, k)
    df_resid : int
        Degrees of freedom of the t distribution used for p-values and intervals.
    cov_type : str
        "clustered" (by unit), "robust" or "unadjusted".
    method : str
        "within" (no network: the exact fixed-effects regression) or
        "crossfit" (cross-fitted partialling out, ``cv`` folds of units).
    n_obs, n_units : int
    folds : int
        0 for "within".
    """

    names: tuple
    coef: np.ndarray
    cov: np.ndarray
    df_resid: int
    cov_type: str
    method: str
    n_obs: int
    n_units: int
    folds: int = 0

    @property
    def stderr(self) -> np.ndarray:
        """Standard errors, shape (k,)."""
        return np.sqrt(np.diag(self.cov))

    @property
    def tstat(self) -> np.ndarray:
        """``coef / stderr``, shape (k,)."""
        return self.coef / self.stderr

    @property
    def pvalues(self) -> np.ndarray:
        """Two-sided p-values of t(df_resid), shape (k,)."""
        from scipy import stats

        return 2 * stats.t.sf(np.abs(self.tstat), self.df_resid)

    def conf_int(self, alpha: float = 0.05) -> np.ndarray:
        """``coef ± t_{1−α/2}(df_resid) · stderr``, shape (k, 2)."""
        from scipy import stats

        if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
            raise ValueError(f"alpha must lie in (0, 1); got {alpha!r}")
        q = stats.t.ppf(1 - alpha / 2, self.df_resid)
        se = self.stderr
        return np.column_stack([self.coef - q * se, self.coef + q * se])

    def summary(self, alpha: float = 0.05, title: str = "Linear part") -> str:
        """A statsmodels-style table: coefficient, SE, t, p, confidence interval."""
        method = {"within": "within (fixed-effects) least squares",
                  "crossfit": f"cross-fitted partialling out, {self.folds} folds of units"}
        cov = {"clustered": "clustered by unit", "robust": "heteroskedasticity-robust",
               "unadjusted": "unadjusted (homoskedastic)"}[self.cov_type]
        ci = self.conf_int(alpha)
        width = max([len(n) for n in self.names] + [10])
        lo, hi = f"[{alpha / 2:.3g}", f"{1 - alpha / 2:.3g}]"
        head = (f"{'':<{width}} {'coef':>11} {'std err':>11} {'t':>8} {'P>|t|':>7} "
                f"{lo:>11} {hi:>11}")
        rule = "=" * len(head)
        lines = [rule, title.center(len(head)), rule,
                 f"Estimator:        {method[self.method]}",
                 f"Covariance type:  {cov}",
                 f"Observations:     {self.n_obs:<10d} Units: {self.n_units}",
                 f"Residual df:      {self.df_resid} (t distribution)",
                 "-" * len(head), head, "-" * len(head)]
        for j, name in enumerate(self.names):
            lines.append(
                f"{name:<{width}} {self.coef[j]:>11.6g} {self.stderr[j]:>11.4g} "
                f"{self.tstat[j]:>8.3f} {self.pvalues[j]:>7.3f} {ci[j, 0]:>11.4g} "
                f"{ci[j, 1]:>11.4g}")
        lines.append(rule)
        return "\n".join(lines)


def _factors(effects, entity_codes, time_codes):
    if effects == "entity":
        return [entity_codes]
    if effects == "twoway":
        return [entity_codes, time_codes]
    return None


def _remove_effects(a, factors):
    a = np.asarray(a, dtype=np.float64)
    if factors is None:
        return a - a.mean(axis=0)
    return demean(a, factors)[0]


def _inference(names, x_tilde, u_tilde, coef, effects, entity_codes, time_codes, cov_type,
               method, folds=0) -> LinearInference:
    resid = u_tilde - x_tilde @ coef
    clusters = entity_codes if entity_codes is not None else np.arange(x_tilde.shape[0])
    cov, df = linear_covariance(
        x_tilde, resid, clusters, cov_type=cov_type,
        n_absorbed=n_effects(effects, entity_codes, time_codes),
        nested=(effects == "entity"))
    n_units = int(np.unique(clusters).size)
    return LinearInference(tuple(names), np.asarray(coef, dtype=np.float64), cov, df,
                           cov_type, method, int(x_tilde.shape[0]), n_units, folds)


def within_inference(x_lin, y, coef, *, names, effects, entity_codes, time_codes=None,
                     cov_type: str = "clustered") -> LinearInference:
    """Inference for the exact within regression (no network), equal to PanelOLS's.

    Parameters
    ----------
    x_lin : ndarray, shape (N, k)
        Linear columns on their original scale.
    y : ndarray, shape (N,)
    coef : ndarray, shape (k,)
        The within estimate b̂ (original scale).
    names : sequence of str, length k
    effects : {"entity", "twoway", "none"}
    entity_codes, time_codes : ndarray of int, shape (N,), or None
    cov_type : {"clustered", "robust", "unadjusted"}
        Clustered by unit (rows are the clusters when there are no units).

    Returns
    -------
    LinearInference
    """
    _check_cov_type(cov_type)
    factors = _factors(effects, entity_codes, time_codes)
    x_t = _remove_effects(x_lin, factors)
    y_t = _remove_effects(np.asarray(y, dtype=np.float64).reshape(-1, 1), factors)[:, 0]
    return _inference(names, x_t, y_t, np.asarray(coef, dtype=np.float64), effects,
                      entity_codes, time_codes, cov_type, "within")


def unit_folds(entity_codes, cv: int, seed: int) -> np.ndarray:
    """Fold of every row, whole units per fold, shape (N,), values 0..cv−1.

    The units are shuffled by ``numpy.random.default_rng(seed)`` and dealt
    into ``cv`` folds of (nearly) equal numbers of units.
    """
    codes = np.asarray(entity_codes).reshape(-1)
    units = np.unique(codes)
    if not (isinstance(cv, (int, np.integer)) and not isinstance(cv, bool) and cv >= 2):
        raise ValueError(f"cv must be an integer >= 2; got {cv!r}")
    if units.size < cv:
        raise ValueError(f"cv={cv} folds of whole units need at least {cv} units; "
                         f"the data have {units.size}")
    order = np.random.default_rng(seed).permutation(units.size)
    fold_of_unit = np.empty(units.size, dtype=np.intp)
    fold_of_unit[order] = np.arange(units.size) % cv
    return fold_of_unit[np.searchsorted(units, codes)]


def crossfit_inference(x, y, entity_codes, time_codes, *, lin, nn, names, effects, fit_nuisance,
                       cv: int = 5, seed: int = 0, cov_type: str = "clustered", n_rep: int = 1):
    """Cross-fitted partialling-out estimate of b with its covariance.

    For each fold k of units (:func:`unit_folds`), ``fit_nuisance(x_nn, t,
    entity, time)`` is called on the rows of the other folds, once for y and
    once for each linear column t, and must return a function ``x_nn ->
    prediction`` (without effects). The held-out fold's residuals ``t − t̂`` are
    then demeaned within its own units (and periods), and
    ``b̂ = (ṼᵀṼ)⁻¹Ṽᵀũ`` pools all folds.

    Parameters
    ----------
    x : ndarray, shape (N, p)
    y : ndarray, shape (N,)
    entity_codes : ndarray of int, shape (N,)
    time_codes : ndarray of int, shape (N,), or None
    lin, nn : tuple of int
        Linear and network columns of x.
    names : sequence of str
        Names of the linear columns.
    effects : {"entity", "twoway"}
    fit_nuisance : callable
    cv : int, default 5
    seed : int, default 0
        Draws the folds.
    cov_type : {"clustered", "robust", "unadjusted"}
    n_rep : int, default 1
        Repeat the cross-fitting with ``n_rep`` draws of the folds (seeds
        ``seed, seed + 1, …``) and aggregate by medians (Chernozhukov et al.
        2018, §3.4): ``b̃ = median_r b_r`` and
        ``V = median_r (V_r + (b_r − b̃)(b_r − b̃)ᵀ)`` elementwise, so the spread
        over fold draws enters the standard errors.

    Returns
    -------
    LinearInference
        ``method="crossfit"``.
    residuals : tuple (v_tilde (N, k), u_tilde (N,), folds (N,))
        Of the first draw.
    """
    if not (isinstance(n_rep, (int, np.integer)) and not isinstance(n_rep, bool) and n_rep >= 1):
        raise ValueError(f"n_rep must be an integer >= 1; got {n_rep!r}")
    if n_rep > 1:
        draws = [crossfit_inference(x, y, entity_codes, time_codes, lin=lin, nn=nn, names=names,
                                    effects=effects, fit_nuisance=fit_nuisance, cv=cv,
                                    seed=seed + r, cov_type=cov_type) for r in range(n_rep)]
        coefs = np.array([d[0].coef for d in draws])                  # (R, k)
        coef = np.median(coefs, axis=0)
        dev = coefs - coef
        cov = np.median(np.array([d[0].cov + np.outer(v, v) for d, v in zip(draws, dev)]),
                        axis=0)
        first = draws[0][0]
        return first._replace(coef=coef, cov=(cov + cov.T) / 2), draws[0][1]
    _check_cov_type(cov_type)
    if effects == "none" or entity_codes is None:
        raise ValueError("inference='crossfit' needs unit effects (effects='entity' or "
                         "'twoway') and the units of the rows: the folds are whole units")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    folds = unit_folds(entity_codes, cv, seed)
    targets = np.column_stack([y, x[:, list(lin)]])              # (N, 1 + k)
    resid = np.empty_like(targets)
    x_nn = x[:, list(nn)]
    for k in range(cv):
        test, train = folds == k, folds != k
        t_tr = None if time_codes is None else time_codes[train]
        for j in range(targets.shape[1]):
            predict = fit_nuisance(x_nn[train], targets[train, j], entity_codes[train], t_tr)
            resid[test, j] = targets[test, j] - np.asarray(predict(x_nn[test])).reshape(-1)
    # Each fold's residuals lose their own units' (and periods') means: the effects of
    # held-out units are unknown to the nuisance fits and cancel here.
    tilde = np.empty_like(resid)
    for k in range(cv):
        test = folds == k
        t_te = None if time_codes is None else time_codes[test]
        tilde[test] = _remove_effects(resid[test], _factors(effects, entity_codes[test], t_te))
    u_t, v_t = tilde[:, 0], tilde[:, 1:]
    coef = np.linalg.lstsq(v_t, u_t, rcond=None)[0]
    if not np.all(np.isfinite(coef)):
        raise ValueError("the cross-fitted residuals of the linear columns are collinear")
    info = _inference(names, v_t, u_t, coef, effects, entity_codes, time_codes, cov_type,
                      "crossfit", folds=cv)
    return info, (v_t, u_t, folds)

