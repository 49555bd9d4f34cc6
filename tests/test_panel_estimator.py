"""PanelBNMLPRegressor, fit_panel and the CSV/model-file path for panel models.

Oracles: the within-OLS estimate computed here in closed form (numpy lstsq on
unit-demeaned data; two-way: unit-demeaned data with period dummies), and
``linearmodels.PanelOLS`` where it is installed; simulated panels with known
coefficients and effects.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from _doc_examples import check_doc_examples

import bnmat.train
from bnmat.panel._inputs import label_codes
from bnmat.datasets import read_table
from bnmat.ops import UnseenGroupWarning
from bnmat.panel.estimator import PanelBNMLPRegressor
from bnmat.panel.model import (
    AbsorbedFeaturesError, CollinearFeaturesError, NotIdentifiedError, SmallGroupsError,
    fit_panel, within_r2_score,
)
from bnmat.panel.table import (
    fit_panel_from_table, load_panel_model, predict_panel_table, save_panel_model,
)


def unit_demean(a, units):
    """Each row minus its unit's mean, by an explicit loop over the units."""
    out = np.array(a, dtype=float)
    for u in np.unique(units):
        out[units == u] -= out[units == u].mean(axis=0)
    return out


def within_ols(x, y, units):
    return np.linalg.lstsq(unit_demean(x, units), unit_demean(y, units), rcond=None)[0]


def simulated_panel(rng, n_units=40, max_t=6, balanced=False):
    """Unbalanced panel: 2..max_t periods per unit; effects correlated with x0."""
    sizes = np.full(n_units, max_t) if balanced else rng.integers(2, max_t + 1, size=n_units)
    units = np.repeat(100 + np.arange(n_units), sizes)
    periods = np.concatenate([rng.choice(max_t, size=s, replace=False) for s in sizes]) + 2000
    alpha = rng.normal(scale=2.0, size=n_units)
    n = units.size
    x = rng.normal(size=(n, 4))
    x[:, 0] += alpha[units - 100]                        # regressor correlated with the effect
    return x, units, periods, alpha


LINEAR_ONLY = dict(network_features=[])      # no network: solved directly, any solver


def period_dummies(periods):
    """Indicators of every period but the first (the oracle's two-way design)."""
    return (periods[:, None] == np.unique(periods)[None, 1:]).astype(float)


# --------------------------------------------------------------------------- exactness
def test_default_fit_panel_without_network_is_closed_form_within_ols(rng):
    """Default arguments (solver adam, default tol): exact, not iterated to a tolerance."""
    x, units, periods, alpha = simulated_panel(rng)
    tau = rng.normal(size=periods.max() + 1)
    y = 1.5 * x[:, 0] - 0.7 * x[:, 1] + 0.3 * x[:, 2] + alpha[units - 100] + tau[periods] \
        + 0.1 * rng.normal(size=units.size)
    xl = x[:, :3]
    # one-way: least squares on unit-demeaned data
    model = fit_panel(xl, y, units, linear_features=[0, 1, 2], network_features=[])
    got = np.array([model.coef_linear[f"x{j}"] for j in range(3)])
    np.testing.assert_allclose(got, within_ols(xl, y, units), rtol=1e-8)
    # two-way: least squares on unit-demeaned data with period dummies
    model = fit_panel(xl, y, units, periods, effects="twoway", linear_features=[0, 1, 2],
                      network_features=[])
    got = np.array([model.coef_linear[f"x{j}"] for j in range(3)])
    b = within_ols(np.hstack([xl, period_dummies(periods)]), y, units)[:3]
    np.testing.assert_allclose(got, b, rtol=1e-8)
    # no effects: ordinary least squares with an intercept
    model = fit_panel(xl, y, effects="none", linear_features=[0, 1, 2], network_features=[])
    b = np.linalg.lstsq(np.column_stack([np.ones(units.size), xl]), y, rcond=None)[0]
    np.testing.assert_allclose([model.intercept, *model.coef_linear.values()], b, rtol=1e-8)
    assert len(model.history["loss"]) == 1


def test_estimator_without_network_is_exact_for_every_solver(rng):
    x, units, _, alpha = simulated_panel(rng, n_units=25)
    y = 2.0 * x[:, 0] - x[:, 1] + alpha[units - 100] + 0.1 * rng.normal(size=units.size)
    b = within_ols(x[:, :2], y, units)
    for solver in ("adam", "sgd", "lbfgs"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")          # no ConvergenceWarning at max_iter=1
            est = PanelBNMLPRegressor(linear_features=[0, 1], network_features=[],
                                      solver=solver, max_iter=1).fit(x[:, :2], y, groups=units)
        np.testing.assert_allclose([est.coef_linear_["x0"], est.coef_linear_["x1"]], b,
                                   rtol=1e-8, err_msg=solver)


def test_default_tolerance_depends_on_the_solver(rng, monkeypatch):
    """tol=None: fit_lbfgs gets its own default 1e-7, adam and sgd scikit-learn's 1e-4."""
    seen = {}
    fit_lbfgs, fit = bnmat.train.fit_lbfgs, bnmat.train.fit

    def spy(real, name):
        def wrapped(*args, **kwargs):
            seen[name] = kwargs["tol"]
            return real(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(bnmat.train, "fit_lbfgs", spy(fit_lbfgs, "lbfgs"))
    # L-BFGS stopped on held-out units calls it from there
    monkeypatch.setattr(bnmat.train._held_out, "fit_lbfgs", spy(fit_lbfgs, "lbfgs"))
    monkeypatch.setattr(bnmat.train, "fit", spy(fit, "adam"))
    x, units, _, _ = simulated_panel(rng, n_units=10)
    y = x[:, 0] + np.sin(x[:, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # ConvergenceWarning at max_iter
        for solver in ("lbfgs", "adam"):
            PanelBNMLPRegressor((4,), solver=solver, max_iter=2).fit(x, y, groups=units)
    assert seen == {"lbfgs": 1e-7, "adam": 1e-4}
    PanelBNMLPRegressor((4,), solver="lbfgs", max_iter=2, tol=1e-3).fit(x, y, groups=units)
    assert seen["lbfgs"] == 1e-3


def test_linear_part_with_f_zero_is_within_ols(rng):
    x, units, _, alpha = simulated_panel(rng)
    y = 1.5 * x[:, 0] - 0.7 * x[:, 1] + 0.3 * x[:, 2] + alpha[units - 100] \
        + 0.1 * rng.normal(size=units.size)
    est = PanelBNMLPRegressor(linear_features=[0, 1, 2], **LINEAR_ONLY).fit(
        x[:, :3], y, groups=units)
    b = within_ols(x[:, :3], y, units)
    got = np.array([est.coef_linear_[f"x{j}"] for j in range(3)])
    np.testing.assert_allclose(got, b, rtol=1e-8)
    # effects: α̂_i = ȳ_i − x̄_iᵀ b, then centred over rows (the level is intercept_)
    a_hat = np.array([y[units == u].mean() - x[units == u, :3].mean(axis=0) @ b
                      for u in np.unique(units)])
    level = np.mean(a_hat[np.searchsorted(np.unique(units), units)])
    got_a = np.array([est.effects_[int(u)] for u in np.unique(units)])
    np.testing.assert_allclose(got_a, a_hat - level, atol=1e-9)
    assert est.intercept_ == pytest.approx(level, abs=1e-9)
    np.testing.assert_allclose(est.predict(x[:, :3], groups=units),
                               x[:, :3] @ b + a_hat[np.searchsorted(np.unique(units), units)],
                               atol=1e-9)


def test_two_way_f_zero_is_ols_with_period_dummies(rng):
    x, units, periods, alpha = simulated_panel(rng, n_units=30)
    tau = {t: v for t, v in zip(range(2000, 2006), rng.normal(size=6))}
    y = x[:, 0] - 2.0 * x[:, 1] + alpha[units - 100] + np.array([tau[t] for t in periods]) \
        + 0.1 * rng.normal(size=units.size)
    est = PanelBNMLPRegressor(effects="twoway", linear_features=[0, 1], **LINEAR_ONLY)
    est.fit(x[:, :2], y, groups=units, time=periods)
    b = within_ols(np.hstack([x[:, :2], period_dummies(periods)]), y, units)[:2]
    np.testing.assert_allclose([est.coef_linear_["x0"], est.coef_linear_["x1"]], b, rtol=1e-8)
    # row-weighted means of both sets of effects are zero
    t_hat = np.array([est.time_effects_[int(t)] for t in periods])
    assert abs(t_hat.mean()) < 1e-9
    a_hat = np.array([est.effects_[int(u)] for u in units])
    assert abs(a_hat.mean()) < 1e-9


def test_f_zero_reproduces_panelols_on_simulated_and_wage_panel(rng):
    pd = pytest.importorskip("pandas")
    linearmodels = pytest.importorskip("linearmodels")
    from bnmat.datasets import load_wage_panel

    x, units, periods, alpha = simulated_panel(rng)
    y = 1.5 * x[:, 0] - 0.7 * x[:, 1] + alpha[units - 100] + 0.1 * rng.normal(size=units.size)
    frame = pd.DataFrame(x[:, :2], columns=["a", "b"]).assign(u=units, t=periods, y=y)
    frame = frame.set_index(["u", "t"])
    ref = linearmodels.PanelOLS(frame["y"], frame[["a", "b"]], entity_effects=True).fit()
    est = PanelBNMLPRegressor(linear_features=["a", "b"], **LINEAR_ONLY)
    est.fit(frame[["a", "b"]].reset_index(drop=True), y, groups=units)
    np.testing.assert_allclose([est.coef_linear_["a"], est.coef_linear_["b"]],
                               ref.params[["a", "b"]].to_numpy(), rtol=1e-8)

    df = load_wage_panel(as_frame=True).frame
    cols = ["exper", "expersq", "union", "married", "hours"]
    panel = df.set_index(["nr", "year"])
    ref = linearmodels.PanelOLS(panel["lwage"], panel[cols], entity_effects=True).fit()
    est = PanelBNMLPRegressor(linear_features=cols, **LINEAR_ONLY)
    est.fit(df[cols], df["lwage"], groups=df["nr"])
    np.testing.assert_allclose([est.coef_linear_[c] for c in cols],
                               ref.params[cols].to_numpy(), rtol=1e-8)
    np.testing.assert_allclose([est.coef_linear_[c] for c in cols],
                               within_ols(df[cols].to_numpy(), df["lwage"].to_numpy(),
                                          df["nr"].to_numpy()), rtol=1e-8)
    fitted = est.predict(df[cols], groups=df["nr"])
    assert within_r2_score(df["lwage"], fitted, df["nr"]) == pytest.approx(
        ref.rsquared_within, rel=1e-8)


# --------------------------------------------------------------------------- networks
def test_partially_linear_network_recovers_coefficients_and_effects(rng):
    x, units, _, alpha = simulated_panel(rng, n_units=40, max_t=6, balanced=True)
    y = 1.5 * x[:, 0] - 0.7 * x[:, 1] + np.sin(2 * x[:, 2]) + 0.5 * x[:, 3] ** 2 \
        + alpha[units - 100] + 0.05 * rng.normal(size=units.size)
    est = PanelBNMLPRegressor((8,), activation="tanh", linear_features=[0, 1],
                              solver="lbfgs", max_iter=100, tol=1e-8, alpha=1e-4,
                              random_state=0)
    est.fit(x, y, groups=units)
    assert est.coef_linear_["x0"] == pytest.approx(1.5, abs=0.03)
    assert est.coef_linear_["x1"] == pytest.approx(-0.7, abs=0.03)
    assert est.linear_features_ == ["x0", "x1"] and est.network_features_ == ["x2", "x3"]
    a_hat = np.array([est.effects_[100 + k] for k in range(40)])
    truth = alpha - alpha.mean()
    # α̂_i also carries the error of f averaged over unit i's six rows
    assert np.sqrt(np.mean((a_hat - a_hat.mean() - truth) ** 2)) < 0.1
    assert np.corrcoef(a_hat, truth)[0, 1] > 0.999
    assert est.within_score(x, y, units) > 0.99
    # the decomposition ŷ = intercept_ + x_linᵀ b + f + α̂_i holds row by row
    f_branch = est.model_.net.branches[1][1].predict(
        est.params_[1], est.state_[1], est.x_scaling_.apply(x)[:, 2:])[:, 0] \
        * est.y_scaling_.scale[0]
    np.testing.assert_allclose(
        est.intercept_ + x[:, :2] @ [est.coef_linear_["x0"], est.coef_linear_["x1"]]
        + f_branch + a_hat[units - 100], est.predict(x, groups=units), rtol=1e-10, atol=1e-10)


def test_group_batchnorm_estimator_and_prediction_for_new_units(rng):
    x, units, _, alpha = simulated_panel(rng, n_units=30, max_t=5, balanced=True)
    y = x[:, 0] + np.tanh(x[:, 1] * x[:, 2]) + alpha[units - 100]
    est = PanelBNMLPRegressor((8,), activation="tanh", group_batchnorm=True, solver="adam",
                              batch_size=40, learning_rate_init=1e-2, max_iter=30,
                              random_state=0, linear_fallback=False)   # keep the network
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # ConvergenceWarning at max_iter
        est.fit(x, y, groups=units)
    assert est.state_[0][1]["labels"].size == 30        # per-unit statistics stored
    known = est.predict(x[:5], groups=units[:5])
    assert np.all(np.isfinite(known))
    with pytest.warns(UnseenGroupWarning, match="not seen in training"):
        new = est.predict(x[:5], groups=np.full(5, -7))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(new, est.predict(x[:5]), rtol=1e-12)   # f + intercept_


def test_new_units_get_no_effect_without_group_batchnorm(rng):
    x, units, _, alpha = simulated_panel(rng, n_units=20)
    y = x[:, 0] + alpha[units - 100]
    est = PanelBNMLPRegressor(linear_features=[0], **LINEAR_ONLY).fit(x[:, :1], y, groups=units)
    base = est.predict(x[:4, :1])
    np.testing.assert_allclose(est.predict(x[:4, :1], groups=np.array([1, 2, 3, 4])), base)
    effect = est.effects_[int(units[0])]
    np.testing.assert_allclose(est.predict(x[:1, :1], groups=units[:1]), base[:1] + effect)


def test_label_codes_with_labels_of_the_other_kind():
    ints, text = np.array([3, 7, 12]), np.array(["07", "a", "b"])
    # integer and text: the canonical integer literals are matched, any other text
    # ("+3", "03", " 3") is new, as it is a distinct label in a CSV column (issue 9)
    np.testing.assert_array_equal(
        label_codes(ints, np.array(["7", "zz", "12", "+3", " 3", "3.0"]), "u", missing=-1),
        [1, -1, 2, -1, -1, -1])
    # a mixed list is text to NumPy (as it is in training): 7 is still unit 7
    np.testing.assert_array_equal(label_codes(ints, ["zz", 7], "u", missing=-1), [-1, 1])
    # text and integer: compared as decimal text ("07" is not 7)
    np.testing.assert_array_equal(label_codes(text, np.array([7, 1]), "u", missing=-9),
                                  [-9, -9])
    np.testing.assert_array_equal(label_codes(np.array(["1", "a"]), np.array([1, 2]), "u",
                                              missing=-1), [0, -1])
    np.testing.assert_array_equal(label_codes(ints, np.array([b"7"]), "u", missing=-1), [1])


def test_predict_with_labels_of_the_other_kind_gives_new_units_no_effect(rng):
    """A model fitted on integer units, given text labels (and the reverse): no error."""
    x, units, periods, alpha = simulated_panel(rng, n_units=12)
    y = x[:, 0] + alpha[units - 100] + 0.1 * rng.normal(size=units.size)
    model = fit_panel(x[:, :1], y, units, periods, effects="twoway", linear_features=[0],
                      network_features=[])
    rows = x[:3, :1]
    base = model.predict(rows)                                     # no effects at all
    got = model.predict(rows, np.array(["zz", str(units[0]), "a"]),
                        np.array(["late", str(periods[0]), "x"]))
    a0 = model.effects_dict[int(units[0])]
    t0 = model.time_effects_dict[int(periods[0])]
    np.testing.assert_allclose(got, base + [0.0, a0 + t0, 0.0], atol=1e-12)

    text = fit_panel(x[:, :1], y, np.array([f"u{u}" for u in units]), linear_features=[0],
                     network_features=[])
    np.testing.assert_allclose(text.predict(rows, np.array([100, 101, 102])),
                               text.predict(rows), atol=1e-12)


def test_group_batchnorm_with_labels_of_the_other_kind_uses_pooled_statistics(rng):
    x, units, _, alpha = simulated_panel(rng, n_units=10, max_t=4, balanced=True)
    y = x[:, 0] + np.tanh(x[:, 1]) + alpha[units - 100]
    model = fit_panel(x, y, units, hidden=(4,), group_batchnorm=True, solver="lbfgs",
                      max_iter=5)
    with pytest.warns(UnseenGroupWarning, match=r"'zz'"):
        got = model.predict(x[:2], np.array(["zz", str(units[1])]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(got[0], model.predict(x[:1])[0], rtol=1e-12)
        np.testing.assert_allclose(got[1], model.predict(x[1:2], units[1:2])[0], rtol=1e-12)


# --------------------------------------------------------------------------- errors
def test_specification_errors_carry_the_columns_and_name_no_argument(rng):
    x, units, periods, _ = simulated_panel(rng, n_units=12, max_t=5)
    y = x[:, 0] + rng.normal(size=units.size)
    # experience: a unit level plus a common trend. It varies within units, so unit
    # effects leave it identified; unit and period effects absorb it.
    exper = rng.integers(0, 10, size=200)[units - 100] + (periods - 2000).astype(float)
    xe = np.column_stack([x[:, 0], exper])
    names = ["z", "exper"]
    fit_panel(xe, y, units, linear_features=["exper"], feature_names=names,
              network_features=[])
    with pytest.raises(AbsorbedFeaturesError) as info:
        fit_panel(xe, y, units, periods, effects="twoway", linear_features=["z", "exper"],
                  feature_names=names, network_features=[])
    err = info.value
    assert isinstance(err, NotIdentifiedError) and isinstance(err, ValueError)
    assert err.columns == ("exper",) and err.effects == "twoway"
    assert "a unit level plus a period trend common to all units" in str(err)
    with pytest.raises(AbsorbedFeaturesError, match=r"constant within units\)") as info:
        fit_panel(np.column_stack([x[:, 0], units % 3]), y, units, linear_features=[0, 1])
    assert info.value.columns == ("x1",) and info.value.effects == "entity"
    with pytest.raises(CollinearFeaturesError) as info:
        fit_panel(np.column_stack([x[:, 0], 2 * x[:, 0] + units % 3]), y, units,
                  linear_features=[0, 1])
    assert info.value.columns == ("x0", "x1") and info.value.condition_number > 1e8
    single = units.copy()
    single[0] = 999
    with pytest.raises(SmallGroupsError) as info:
        fit_panel(x, y, single, group_batchnorm=True, bn_ddof=1)
    assert info.value.units.tolist() == [999] and info.value.need == 2
    for e in (err, info.value):
        assert not any(word in str(e) for word in ("linear_features", "group_batchnorm"))


def test_errors_name_the_problem(rng):
    x, units, periods, _ = simulated_panel(rng, n_units=10)
    y = x[:, 0]
    with pytest.raises(ValueError, match="needs the unit of every row"):
        PanelBNMLPRegressor().fit(x, y)
    with pytest.raises(ValueError, match="needs the period"):
        PanelBNMLPRegressor(effects="twoway").fit(x, y, groups=units)
    invariant = np.column_stack([x[:, 0], (units % 3).astype(float)])
    with pytest.raises(ValueError, match=r"\['x1'\] are absorbed"):
        PanelBNMLPRegressor(linear_features=[0, 1], **LINEAR_ONLY).fit(invariant, y, groups=units)
    collinear = np.column_stack([x[:, 0], 2 * x[:, 0] + (units % 3)])
    with pytest.raises(ValueError, match="collinear"):
        PanelBNMLPRegressor(linear_features=[0, 1], **LINEAR_ONLY).fit(collinear, y, groups=units)
    with pytest.raises(ValueError, match="no feature named 'z'"):
        PanelBNMLPRegressor(linear_features=["z"]).fit(x, y, groups=units)
    single = units.copy()
    single[0] = 999
    with pytest.raises(ValueError, match="at least 2 rows per unit"):
        PanelBNMLPRegressor(group_batchnorm=True).fit(x, y, groups=single)
    with pytest.raises(ValueError, match="effects must be one of"):
        PanelBNMLPRegressor(effects="random").fit(x, y, groups=units)


# --------------------------------------------------------------------------- sklearn
def test_sklearn_conventions():
    from sklearn.base import clone
    from sklearn.utils.estimator_checks import (
        check_get_params_invariance, check_no_attributes_set_in_init,
        check_parameters_default_constructible, check_set_params,
    )

    est = PanelBNMLPRegressor((8,), effects="twoway", linear_features=["a"],
                              group_batchnorm=True)
    params = est.get_params()
    assert params["effects"] == "twoway" and params["linear_features"] == ["a"]
    twin = clone(est)
    assert twin.get_params() == params and twin is not est
    for check in (check_no_attributes_set_in_init, check_parameters_default_constructible,
                  check_get_params_invariance, check_set_params):
        check("PanelBNMLPRegressor", PanelBNMLPRegressor())


def test_plain_regressor_without_groups(rng):
    """effects="none": fit(X, y) works without groups (scikit-learn's check_estimator
    passes in this configuration; it takes minutes, so it is not run here)."""
    x = rng.normal(size=(60, 3))
    y = 2.0 * x[:, 0] - x[:, 1] + 3.0
    est = PanelBNMLPRegressor(effects="none", linear_features=[0, 1], network_features=[],
                              solver="lbfgs", alpha=0.0, tol=1e-14, max_iter=500).fit(x, y)
    assert est.coef_linear_ == pytest.approx({"x0": 2.0, "x1": -1.0}, abs=1e-6)
    np.testing.assert_allclose(est.predict(x), y, atol=1e-6)
    assert est.effects_ == {}


# --------------------------------------------------------------------------- CSV and files
def test_table_fit_save_load_predict(rng, tmp_path):
    x, units, periods, alpha = simulated_panel(rng, n_units=15, max_t=4, balanced=True)
    y = 1.2 * x[:, 0] + np.sin(x[:, 1]) + alpha[units - 100]
    names = ["u", "t", "a", "b", "c", "y"]
    lines = [",".join(names)] + [
        f"id{u},{t},{float(r[0])!r},{float(r[1])!r},{float(r[2])!r},{float(v)!r}"
        for u, t, r, v in zip(units, periods, x, y)
    ]
    path = tmp_path / "panel.csv"
    path.write_text("\n".join(lines) + "\n")
    table = read_table(path)
    model = fit_panel_from_table(table, "y", entity="u", time="t", linear=["a"],
                                 hidden=(4,), solver="lbfgs", max_iter=50)
    assert model.effects == "twoway" and model.feature_names == ("a", "b", "c")
    assert set(model.coef_linear) == {"a"}
    assert set(model.effects_dict) == {f"id{u}" for u in np.unique(units)}
    saved = save_panel_model(tmp_path / "m.npz", model, metadata={"note": "x"})
    back = load_panel_model(saved)
    np.testing.assert_array_equal(predict_panel_table(back, table, entity="u", time="t"),
                                  predict_panel_table(model, table, entity="u", time="t"))
    assert back.coef_linear == model.coef_linear
    with pytest.raises(ValueError, match="no column 'nope'"):
        fit_panel_from_table(table, "y", entity="nope")


# --------------------------------------------------------------------------- docs
DOC = Path(__file__).resolve().parents[1] / "docs" / "panel.md"


def test_panel_guide_examples_run(tmp_path, monkeypatch, capsys):
    """Every ```python block of docs/panel.md runs, in order, and prints what it says."""
    if not DOC.exists():
        pytest.skip("docs/panel.md not present")
    monkeypatch.chdir(tmp_path)
    check_doc_examples(DOC, capsys, ignore_warnings=True)
