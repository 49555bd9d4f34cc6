"""Standard errors of the linear part, cross-fitting by units, and the defaults' linear fallback.

Oracles: linearmodels' PanelOLS (standard errors, p-values, intervals),
scikit-learn's LinearRegression (least squares), and simulations with a known θ.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pd = pytest.importorskip("pandas")
linearmodels = pytest.importorskip("linearmodels")
pytest.importorskip("sklearn")

from bnmat import BNMLPRegressor, PanelBNMLPRegressor  # noqa: E402
from bnmat.panel import demean  # noqa: E402
from bnmat.panel.inference import (  # noqa: E402
    crossfit_inference, linear_covariance, unit_folds, within_inference,
)
from bnmat.train import StallWarning  # noqa: E402
from bnmat.train._fit import _warn_if_still_falling  # noqa: E402


def _panel(seed=0, n_units=12, n_periods=5, drop=0.15):
    """Unbalanced panel with heteroskedastic, unit-correlated errors; X correlated with α."""
    rng = np.random.default_rng(seed)
    ent = np.repeat(np.arange(n_units), n_periods)
    tim = np.tile(np.arange(n_periods), n_units)
    keep = rng.random(ent.size) > drop
    ent, tim = ent[keep], tim[keep]
    alpha = rng.normal(size=n_units)[ent]
    x = rng.normal(size=(ent.size, 2)) + alpha[:, None]
    y = (x @ np.array([1.0, -0.5]) + alpha + 0.3 * tim
         + rng.normal(size=ent.size) * (1 + np.abs(x[:, 0])) + rng.normal(size=n_units)[ent])
    return x, y, ent, tim


def _panel_ols(x, y, ent, tim, effects, cov_type):
    from linearmodels import PanelOLS

    index = pd.MultiIndex.from_arrays([ent, tim])
    exog = pd.DataFrame(x, index=index, columns=["a", "b"])
    dep = pd.Series(y, index=index)
    kw = {"cluster_entity": True} if cov_type == "clustered" else {}
    if effects == "none":
        exog = exog.assign(const=1.0)
        return PanelOLS(dep, exog).fit(cov_type=cov_type, **kw)
    return PanelOLS(dep, exog, entity_effects=True,
                    time_effects=(effects == "twoway")).fit(cov_type=cov_type, **kw)


# --------------------------------------------------- standard errors = PanelOLS's

@pytest.mark.parametrize("effects", ["entity", "twoway", "none"])
@pytest.mark.parametrize("cov_type", ["clustered", "robust", "unadjusted"])
def test_estimator_without_network_has_panelols_standard_errors(effects, cov_type):
    x, y, ent, tim = _panel(seed=1)
    res = _panel_ols(x, y, ent, tim, effects, cov_type)
    est = PanelBNMLPRegressor(effects=effects, linear_features=[0, 1], network_features=[],
                              cov_type=cov_type).fit(x, y, groups=ent, time=tim)
    se = np.array([est.stderr_linear_["x0"], est.stderr_linear_["x1"]])
    np.testing.assert_allclose(se, res.std_errors[["a", "b"]], rtol=1e-6)
    np.testing.assert_allclose([est.coef_linear_["x0"], est.coef_linear_["x1"]],
                               res.params[["a", "b"]], rtol=1e-6)
    ci = est.conf_int_linear(0.05)
    np.testing.assert_allclose([ci["x0"], ci["x1"]], res.conf_int().loc[["a", "b"]], rtol=1e-6)
    np.testing.assert_allclose(est.inference_.pvalues, res.pvalues[["a", "b"]], rtol=1e-6,
                               atol=1e-12)
    assert est.inference_.df_resid == res.df_resid
    table = est.summary()
    assert "within (fixed-effects) least squares" in table and "x0" in table
    assert {"clustered": "clustered by unit", "robust": "heteroskedasticity-robust",
            "unadjusted": "unadjusted"}[cov_type] in table


def test_the_se_comparison_can_fail():
    # The oracle check above distinguishes the covariance types and the df adjustment.
    x, y, ent, tim = _panel(seed=2)
    res = _panel_ols(x, y, ent, tim, "entity", "clustered")
    wrong = within_inference(x, y, res.params.to_numpy(), names=["a", "b"], effects="entity",
                             entity_codes=ent, cov_type="robust")
    assert np.max(np.abs(wrong.stderr / res.std_errors.to_numpy() - 1)) > 1e-3
    xt, yt = demean(x, ent)[0], demean(y, ent)[0]
    e = yt - xt @ res.params.to_numpy()
    uncounted, _ = linear_covariance(xt, e, ent, cov_type="unadjusted", n_absorbed=0,
                                     nested=False)   # effects not counted: too small
    assert np.all(np.sqrt(np.diag(uncounted)) < 0.99 * _panel_ols(
        x, y, ent, tim, "entity", "unadjusted").std_errors.to_numpy())


def test_conf_int_level_and_errors():
    x, y, ent, tim = _panel(seed=3)
    est = PanelBNMLPRegressor(linear_features=[0, 1], network_features=[]).fit(x, y, groups=ent)
    res = _panel_ols(x, y, ent, tim, "entity", "clustered")
    lo, hi = est.conf_int_linear(0.1)["x1"]
    np.testing.assert_allclose([lo, hi], res.conf_int(level=0.9).loc["b"], rtol=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        est.conf_int_linear(1.5)
    with pytest.raises(ValueError, match="cov_type"):
        PanelBNMLPRegressor(network_features=[], linear_features=[0], cov_type="hac").fit(
            x, y, groups=ent)
    with pytest.raises(ValueError, match="inference"):
        PanelBNMLPRegressor(linear_features=[0], inference="bootstrap").fit(x, y, groups=ent)


# ---------------------------------------------------------------- cross-fitting

def test_unit_folds_hold_whole_units_and_are_balanced():
    ent = np.repeat(np.arange(23), 3)[::-1]
    folds = unit_folds(ent, 5, seed=0)
    for u in np.unique(ent):
        assert np.unique(folds[ent == u]).size == 1           # a unit is never split
    per_fold = np.bincount([folds[ent == u][0] for u in np.unique(ent)], minlength=5)
    assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == 23
    np.testing.assert_array_equal(folds, unit_folds(ent, 5, seed=0))
    with pytest.raises(ValueError, match="at least 5 units"):
        unit_folds(np.repeat(np.arange(3), 2), 5, seed=0)


def _linear_nuisance(seen):
    """A within regression on a cubic basis of x_nn; records the units it was trained on."""
    def basis(x):
        return np.column_stack([x, x ** 2, x ** 3])

    def fit(x_nn, target, entity, period):
        seen.append(np.unique(entity))
        coef = np.linalg.lstsq(demean(basis(x_nn), entity)[0], demean(target, entity)[0],
                               rcond=None)[0]
        return lambda x_new: basis(x_new) @ coef
    return fit


def _plm(rng, n_units=60, n_periods=4, theta=0.5):
    ent = np.repeat(np.arange(n_units), n_periods)
    alpha = rng.normal(size=n_units)[ent]
    z = 0.5 * alpha + rng.normal(size=ent.size)
    d = 0.5 * alpha + 0.8 * z ** 2 + rng.normal(size=ent.size)
    y = alpha + theta * d + z ** 3 - z + rng.normal(size=ent.size)
    return np.column_stack([d, z]), y, ent


def test_crossfit_trains_each_nuisance_without_the_held_out_units():
    x, y, ent = _plm(np.random.default_rng(0))
    seen = []
    info, (v, u, folds) = crossfit_inference(
        x, y, ent, None, lin=(0,), nn=(1,), names=["d"], effects="entity",
        fit_nuisance=_linear_nuisance(seen), cv=4, seed=1)
    assert len(seen) == 4 * 2                                   # (y, d) per fold
    for k in range(4):
        held = np.unique(ent[folds == k])
        for units in seen[2 * k:2 * k + 2]:
            assert not np.isin(held, units).any()
            assert np.union1d(units, held).size == 60
    # The residuals are demeaned within units, and b is residual-on-residual OLS.
    np.testing.assert_allclose(demean(v, ent)[0], v, atol=1e-12)
    np.testing.assert_allclose(info.coef, np.linalg.lstsq(v, u, rcond=None)[0], rtol=1e-12)
    assert info.method == "crossfit" and info.folds == 4


def test_crossfit_coverage_smoke():
    # 120 panels with a known θ and correct nuisance models: the 95 % interval covers
    # θ in 0.95 ± 3 Monte Carlo SE (0.02) of them, and the bias is below 0.1 SE.
    rng = np.random.default_rng(20261130)
    hits, est, ses = [], [], []
    for _ in range(120):
        x, y, ent = _plm(rng)
        info, _ = crossfit_inference(x, y, ent, None, lin=(0,), nn=(1,), names=["d"],
                                     effects="entity", fit_nuisance=_linear_nuisance([]),
                                     cv=5, seed=int(rng.integers(1 << 30)))
        lo, hi = info.conf_int()[0]
        hits.append(lo <= 0.5 <= hi)
        est.append(info.coef[0])
        ses.append(info.stderr[0])
    coverage = np.mean(hits)
    assert 0.89 <= coverage <= 1.0, coverage
    assert abs(np.mean(est) - 0.5) < 0.1 * np.mean(ses) + 3 * np.std(est) / np.sqrt(120)
    # The check can fail: intervals from half the standard error cover far less.
    narrow = np.mean([abs(b - 0.5) <= 1.97 * s / 2 for b, s in zip(est, ses)])
    assert narrow < 0.85


def test_estimator_crossfit_reports_standard_errors_by_unit():
    x, y, ent = _plm(np.random.default_rng(4), n_units=30, n_periods=4)
    est = PanelBNMLPRegressor((4,), linear_features=[0], inference="crossfit", cv=3,
                              max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(x, y, groups=ent)
    assert set(est.stderr_linear_) == {"x0"} and est.stderr_linear_["x0"] > 0
    lo, hi = est.conf_int_linear()["x0"]
    assert lo < est.coef_linear_["x0"] < hi
    assert "cross-fitted partialling out, 3 folds of units" in est.summary()
    assert est.inference_.n_units == 30
    assert "x0" in est.coef_linear_model_


def test_no_standard_errors_for_a_jointly_trained_network():
    x, y, ent = _plm(np.random.default_rng(5), n_units=20, n_periods=3)
    est = PanelBNMLPRegressor((4,), linear_features=[0], max_iter=20, random_state=0,
                              linear_fallback=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(x, y, groups=ent)
    assert est.stderr_linear_ is None
    with pytest.raises(ValueError, match="inference='crossfit'"):
        est.summary()
    with pytest.raises(ValueError, match="unit effects"):
        PanelBNMLPRegressor((4,), effects="none", linear_features=[0],
                            inference="crossfit").fit(x, y)


# ------------------------------------------------------------- default training

def test_panel_defaults_never_below_the_linear_fallback_on_held_out_units():
    from linearmodels import PanelOLS

    rng = np.random.default_rng(6)
    ent = np.repeat(np.arange(40), 5)
    x = rng.normal(size=(200, 3)) + rng.normal(size=40)[ent, None]
    y = x @ np.array([1.0, 0.5, -1.0]) + rng.normal(size=40)[ent] + rng.normal(size=200)
    index = pd.MultiIndex.from_arrays([ent, np.tile(np.arange(5), 40)])
    ols = PanelOLS(pd.Series(y, index=index), pd.DataFrame(x, index=index),
                   entity_effects=True).fit().params.to_numpy()
    kept = []
    for seed in range(4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            est = PanelBNMLPRegressor((16,), linear_features=[0], random_state=seed).fit(
                x, y, groups=ent)
        h = est.model_.history
        kept.append(est.selected_)
        if est.selected_ == "network":    # only when it beats the linear model held out
            assert h["val_network"] < h["val_linear"] and h["val_gain_t"] > 1.0
        else:                             # the exact within regression on every column
            assert h["val_gain_t"] <= 1.0
            np.testing.assert_allclose(list(est.coef_linear_model_.values()), ols, rtol=1e-8)
            assert est.summary().count("x") >= 3       # SEs of the linear model kept
    assert "linear" in kept               # linear data: the rule does fall back


def test_panel_defaults_keep_a_network_only_when_it_wins_on_held_out_units():
    rng = np.random.default_rng(7)
    ent = np.repeat(np.arange(60), 5)
    x = rng.normal(size=(300, 2))
    y = 0.5 * x[:, 0] + 2 * np.sin(2 * x[:, 1]) + rng.normal(size=60)[ent] \
        + 0.3 * rng.normal(size=300)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = PanelBNMLPRegressor((16,), linear_features=[0], random_state=0).fit(
            x, y, groups=ent)
    h = est.model_.history
    assert est.selected_ == "network"
    assert h["val_network"] < h["val_linear"] and h["val_gain_t"] > 1.0


def test_training_starts_at_the_linear_within_solution():
    from bnmat.panel.model import fit_panel

    x, y, ent = _plm(np.random.default_rng(8))
    model = fit_panel(x, y, ent, linear_features=[0], hidden=(4,), solver="lbfgs", max_iter=1,
                      start_linear=True)
    exact = fit_panel(x, y, ent, linear_features=[0], network_features=[])
    first = model.history["loss"][0]
    assert first <= exact.history["loss"][0] + 1e-12   # not above the linear fit's loss


def test_bnmlp_default_never_below_least_squares_on_validation():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(9)
    X = rng.normal(size=(150, 4))
    y = X @ np.array([1.0, -2.0, 0.5, 0.0]) + rng.normal(size=150)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = BNMLPRegressor(random_state=0).fit(X, y)
    assert est.selected_ == "linear" and est.validation_gain_t_ <= 1
    # The fallback is RidgeCV on the standardized columns, refitted on all rows.
    from sklearn.linear_model import RidgeCV

    xs, ys = (X - X.mean(0)) / X.std(0), (y - y.mean()) / y.std()
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 13)).fit(xs, ys)
    np.testing.assert_allclose(est.predict(X), ridge.predict(xs) * y.std() + y.mean(),
                               rtol=1e-8, atol=1e-8)
    assert np.max(np.abs(est.predict(X) - LinearRegression().fit(X, y).predict(X))) < 0.05
    Xn = rng.normal(size=(400, 2))
    yn = np.sin(3 * Xn[:, 0]) * 2 + Xn[:, 1] ** 2 + 0.1 * rng.normal(size=400)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = BNMLPRegressor((32,), solver="lbfgs", random_state=0).fit(Xn, yn)
    assert net.selected_ == "network" and net.validation_gain_t_ > 1


def test_auto_batch_never_one_step_per_epoch():
    from bnmat.layers._mlp import auto_batch_size, auto_solver

    for n in (20, 176, 442, 3270, 100_000):
        b = auto_batch_size(n)
        assert 2 <= b <= min(200, n) and -(-n // b) >= 2
    assert auto_solver(3270) == "lbfgs" and auto_solver(50_000) == "adam"


# ---------------------------------------------------------------- stall warning

def test_stall_warning_only_when_the_loss_still_falls():
    with pytest.warns(StallWarning, match="still descending"):
        _warn_if_still_falling([1.0, 0.99995, 0.9999, 0.99985, 0.9998], 4, 1e-4, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_still_falling([1.0, 1.00001, 0.99999, 1.0, 1.00002], 4, 1e-4, 12)  # plateau


def test_fit_warns_when_adam_stalls_far_from_the_minimum():
    import bnmat
    from bnmat import optim, train

    rng = np.random.default_rng(10)
    x = rng.normal(size=(60, 3))
    y = (x @ np.array([1.0, 2.0, -1.0]))[:, None]
    net = bnmat.Sequential([bnmat.Dense(1)])
    params, state = net.init(x, seed=0)
    with pytest.warns(StallWarning):
        result = train.fit(net, params, state, x, y, optimizer=optim.adam(1e-5), epochs=200,
                           early_stopping=True, patience=5, tol=1e-3, progress=False)
    assert result.stopped_early and result.history["loss"][-1] > 1.0   # far from 0


def test_repeated_crossfit_takes_medians_and_adds_the_spread():
    x, y, ent = _plm(np.random.default_rng(11))
    kw = dict(lin=(0,), nn=(1,), names=["d"], effects="entity",
              fit_nuisance=_linear_nuisance([]), cv=4)
    draws = [crossfit_inference(x, y, ent, None, seed=7 + r, **kw)[0] for r in range(3)]
    agg = crossfit_inference(x, y, ent, None, seed=7, n_rep=3, **kw)[0]
    b = np.array([d.coef[0] for d in draws])
    assert agg.coef[0] == np.median(b)
    want = np.median([d.cov[0, 0] + (bi - np.median(b)) ** 2 for d, bi in zip(draws, b)])
    np.testing.assert_allclose(agg.cov[0, 0], want, rtol=1e-12)
    assert len(set(np.round(b, 12))) == 3        # the draws differ: the check can fail
    with pytest.raises(ValueError, match="n_rep"):
        crossfit_inference(x, y, ent, None, seed=7, n_rep=0, **kw)


def test_bnmat_fit_without_hidden_layers_is_least_squares(tmp_path, capsys):
    from sklearn.linear_model import LinearRegression

    from bnmat.cli._common import _split
    from bnmat.cli import main

    rng = np.random.default_rng(12)
    X = rng.normal(size=(120, 3)) * [1.0, 100.0, 0.01]
    y = X @ np.array([2.0, 0.03, 50.0]) + 0.1 * rng.normal(size=120)
    path = tmp_path / "d.csv"
    pd.DataFrame(np.column_stack([X, y]), columns=["a", "b", "c", "y"]).to_csv(path, index=False)
    assert main(["fit", str(path), "--target", "y", "--hidden", "--no-progress",
                 "--output", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    assert "linear model (no hidden layer), solved by least squares" in out
    assert "BatchNorm" not in out
    tr, va = _split(120, 0.2, 0)
    ols = LinearRegression().fit(X[tr], y[tr])
    printed = out.split("least-squares solution: training R² = ")[1]
    r2_train, r2_val = float(printed.split(",")[0]), float(printed.split("= ")[1].split()[0])
    assert abs(r2_train - ols.score(X[tr], y[tr])) < 1e-4      # 4 printed decimals
    assert abs(r2_val - ols.score(X[va], y[va])) < 1e-4


# ------------------------------------------------ the nuisance networks' own training rule

def _spy_fit_panel(monkeypatch, module):
    """Record the keyword arguments of every fit_panel call made from ``module``."""
    calls = []
    real = module.fit_panel

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)
    monkeypatch.setattr(module, "fit_panel", spy)
    return calls


def test_crossfit_nuisances_are_penalized_and_never_stopped_early(monkeypatch):
    import bnmat.panel._linear_report as report

    calls = _spy_fit_panel(monkeypatch, report)
    x, y, ent = _plm(np.random.default_rng(3), n_units=24, n_periods=4)
    est = PanelBNMLPRegressor((4,), linear_features=[0], inference="crossfit", cv=3,
                              max_iter=20, alpha=1e-4, crossfit_alpha=0.37, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(x, y, groups=ent)
    assert len(calls) == 3 * 3 * 2                  # (y, d) per fold, n_rep=3 draws
    for kw in calls:
        assert kw["alpha"] == 0.37 and kw["hidden"] == (4,) and kw["max_iter"] == 20
        assert kw["early_stopping"] is False and kw["linear_fallback"] is False
        assert kw["solver"] == est.solver_ == "lbfgs"
    # the fitted model itself kept its own rule (early stopping, alpha 1e-4)
    assert est.model_.history["selected"] in ("network", "linear")


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), "0.1", True])
def test_crossfit_alpha_must_be_a_finite_number(bad):
    x, y, ent = _plm(np.random.default_rng(3), n_units=12, n_periods=3)
    est = PanelBNMLPRegressor((3,), linear_features=[0], inference="crossfit",
                              crossfit_alpha=bad, max_iter=5)
    with pytest.raises(ValueError, match="crossfit_alpha must be a finite number >= 0"):
        est.fit(x, y, groups=ent)
    assert not hasattr(est, "model_")


def test_cli_crossfit_nuisances_use_crossfit_alpha_and_lbfgs(tmp_path, monkeypatch, capsys):
    import bnmat.panel._linear_report as report
    from bnmat.cli import main

    monkeypatch.chdir(tmp_path)
    calls = _spy_fit_panel(monkeypatch, report)
    common = ["fit", "--entity", "nr", "--time", "year", "--linear", "union", "married",
              "--epochs", "3", "--hidden", "4", "--no-progress", "--inference", "crossfit",
              "--cv", "2"]
    assert main(common + ["--crossfit-alpha", "-1"]) == 2
    assert "--crossfit-alpha must be a finite number >= 0; got -1.0" in capsys.readouterr().err
    assert main(common + ["--n-rep", "0"]) == 2
    assert "--n-rep must be at least 1; got 0" in capsys.readouterr().err
    assert calls == [] and not (tmp_path / "bnmat-model.npz").exists()   # refused before training
    assert main(common + ["--crossfit-alpha", "0.25", "--n-rep", "1"]) == 0
    out = capsys.readouterr().out
    assert "cross-fitted partialling out, 2 folds of units" in out
    assert len(calls) == 2 * 3                      # (lwage, union, married) per fold
    for kw in calls:
        assert kw["alpha"] == 0.25 and kw["solver"] == "lbfgs" and kw["max_iter"] == 3
        assert kw["early_stopping"] is False and kw["linear_fallback"] is False
