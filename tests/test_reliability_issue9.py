"""Regression tests for issue 9: silent wrong answers in scaling, y precision, refits,
overflow, and divergence found at the end of training.

Each test is a reproduction from the issue; the numbers in the comments are
what the code gave before the fix.
"""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

import bnmat
from bnmat import BNMLPClassifier, BNMLPRegressor, PanelBNMLPRegressor, optim
from bnmat.layers._mlp import Scaling, fit_scaling

# Short fits are the point of several tests here, not convergence.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 2))
    return x, x[:, 0] - 0.5 * x[:, 1] ** 2


def _r2(y, y_hat):
    return 1 - np.sum((y - y_hat) ** 2) / np.sum((y - y.mean()) ** 2)


# ------------------------------------------------------------- item 1: small spreads
def test_small_target_spread_is_standardized():
    # Before: y_scaling_.scale == [1.], training R² −6.5e10.
    x, y = _data()
    y = y * 1e-7
    model = BNMLPRegressor((32,), solver="lbfgs", random_state=0).fit(x.astype(np.float32), y)
    assert model.y_scaling_.scale[0] == pytest.approx(np.std(y), rel=1e-6)
    assert _r2(y, model.predict(x.astype(np.float32))) > 0.95


@pytest.mark.parametrize("dtype, sd", [(np.float32, 1e-7), (np.float64, 1e-16)])
def test_feature_with_tiny_spread_is_used(dtype, sd):
    # Before: the feature was treated as constant, R² 0.003 instead of 0.97.
    x, _ = _data()
    y = x[:, 1] ** 2 + x[:, 0]
    xt = (x * np.array([1.0, sd])).astype(dtype)
    model = BNMLPRegressor((32,), solver="lbfgs", random_state=0).fit(xt, y)
    assert model.x_scaling_.scale[1] != 1.0
    assert _r2(y, model.predict(xt)) > 0.9


def test_fit_scaling_constant_only_when_all_values_equal():
    x = np.array([[5.0, 0.0, 1.0], [5.0, 1e-310, 1.0 + 2.0 ** -52], [5.0, 0.0, 1.0]])
    s = fit_scaling(x)
    assert s.scale[0] == 1.0 and s.mean[0] == 5.0
    assert 0 < s.scale[1] < 1e-300 and 0 < s.scale[2] < 1e-15
    z = s.apply(x)
    assert np.all(np.isfinite(z)) and np.allclose(z.std(axis=0)[1:], 1.0)


def test_cli_scaling_of_small_spread(tmp_path, capsys):
    # The command line shares fit_scaling: a target of size 1e-7 is learned.
    x, y = _data(300)
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([x, y * 1e-7]), delimiter=",", header="a,b,y",
               comments="", fmt="%.17g")
    from bnmat.cli import main
    assert main(["fit", str(path), "--target", "y", "--solver", "lbfgs", "--hidden", "32",
                 "--epochs", "200", "--no-progress", "-o", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    r2 = float(out.split("training R² = ")[1].split(",")[0])
    assert r2 > 0.9


# ------------------------------------------------------------- item 2: y in float64
def test_float32_x_keeps_y_precision():
    # Before: R² 0.000 with float32 X (float64 X: 0.990).
    x, _ = _data()
    y = 1e8 + x[:, 0]
    model = BNMLPRegressor((32,), solver="lbfgs", random_state=0).fit(x.astype(np.float32), y)
    pred = model.predict(x.astype(np.float32))
    assert pred.dtype == np.float64
    assert _r2(y, pred) > 0.95
    assert model.params_[0]["w"].dtype == np.float32


def test_float32_x_and_y_predict_float32():
    x, y = _data(100)
    model = BNMLPRegressor((8,), max_iter=3, random_state=0).fit(
        x.astype(np.float32), y.astype(np.float32))
    assert model.predict(x.astype(np.float32)).dtype == np.float32
    assert model.predict(x).dtype == np.float64


# ------------------------------------------------------------- item 3: transactional fit
def _small(**kw):
    return dict(hidden_layer_sizes=(8,), max_iter=5, random_state=0, **kw)


@pytest.mark.parametrize("make", [
    lambda: BNMLPRegressor(**_small()),
    lambda: BNMLPClassifier(**_small()),
    lambda: PanelBNMLPRegressor(**_small(effects="none")),
])
def test_failed_refit_keeps_previous_model(make):
    # Before: predict gave [28.3, 28.5, 28.5] where the model gave [−0.61, −0.28, −0.88].
    x, y = _data(120)
    if isinstance(make(), BNMLPClassifier):
        y = y > 0
    model = make().fit(x, y)
    before = model.predict(x[:3])
    attrs = dict(model.__dict__)
    model.set_params(solver="sgd", learning_rate_init=1e200, max_iter=3)
    x_new = x * 3 + 10
    with pytest.raises(ValueError, match="diverged"):
        model.fit(x_new, y)
    assert set(model.__dict__) == set(attrs)
    np.testing.assert_array_equal(model.predict(x[:3]), before)


def test_interrupted_refit_keeps_previous_model(monkeypatch):
    x, y = _data(120)
    model = BNMLPRegressor(**_small()).fit(x, y)
    before = model.predict(x[:3])

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bnmat.train, "fit", interrupt)
    with pytest.raises(KeyboardInterrupt):
        model.fit(x[:50] * 5, y[:50])
    np.testing.assert_array_equal(model.predict(x[:3]), before)


def test_failed_first_fit_is_not_fitted():
    # Before: AttributeError: params_.
    x, y = _data(120)
    model = BNMLPRegressor(**_small(solver="sgd", learning_rate_init=1e200))
    with pytest.raises(ValueError, match="diverged"):
        model.fit(x * 1e3, y)
    with pytest.raises(NotFittedError):
        model.predict(x)
    assert not hasattr(model, "n_features_in_")


def test_bnmat_fit_leaves_its_inputs_alone_on_failure():
    x, y = _data(60)
    net = bnmat.Sequential([bnmat.Dense(4, bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
                            bnmat.Dense(1)])
    params, state = net.init(x, seed=0)
    copies = [{k: v.copy() for k, v in layer.items()} for layer in params]
    with pytest.raises(bnmat.DivergenceError):
        bnmat.fit(net, params, state, x, y, optimizer=optim.sgd(1e200), epochs=2,
                  progress=False)
    for layer, saved in zip(params, copies):
        for k in layer:
            np.testing.assert_array_equal(layer[k], saved[k])


# ------------------------------------------------------------- item 5: overflow
def test_huge_target_is_learned_not_zeroed():
    # Before: R² n/a, predictions equal to the mean.
    x, y = _data()
    model = BNMLPRegressor((32,), solver="lbfgs", random_state=0).fit(x, 1e160 * y)
    pred = model.predict(x)
    assert np.all(np.isfinite(pred))
    assert _r2(y, pred / 1e160) > 0.95


def test_huge_feature_is_not_zeroed():
    # Before: the decisive feature ~1e160 was zeroed (its variance overflowed).
    x, _ = _data()
    y = x[:, 1] ** 2
    xb = x * np.array([1.0, 1e160])
    model = BNMLPRegressor((32,), solver="lbfgs", random_state=0).fit(xb, y)
    assert _r2(y, model.predict(xb)) > 0.9


def test_scaling_near_float_max():
    x = np.array([[1.7e308], [-1.7e308], [0.0], [1.0]])
    s = fit_scaling(x)
    z = s.apply(x)
    assert np.all(np.isfinite(z))
    np.testing.assert_allclose(s.invert(z), x, rtol=1e-15)
    with pytest.raises(ValueError, match="overflows"):
        Scaling(np.zeros(1), np.full(1, 1e-300)).apply(np.array([[1e300]]))
    with pytest.raises(ValueError, match="overflows"):
        s.invert(np.array([[1e10]]))


def test_cli_huge_target_has_a_metric(tmp_path, capsys):
    # Before: "R² = n/a".
    x, y = _data(300)
    path = tmp_path / "d.csv"
    np.savetxt(path, np.column_stack([x, y * 1e160]), delimiter=",", header="a,b,y",
               comments="", fmt="%.17g")
    from bnmat.cli import main
    assert main(["fit", str(path), "--target", "y", "--solver", "lbfgs", "--hidden", "32",
                 "--epochs", "200", "--no-progress", "-o", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    assert float(out.split("training R² = ")[1].split(",")[0]) > 0.9


# ------------------------------------------------------------- item 7: late divergence
@pytest.mark.parametrize("epochs", [1, 2])
def test_divergence_in_last_step_is_divergence(epochs):
    # Before: "the variance of column 0 of x overflows float64; rescale the data".
    x, y = _data(60)
    net = bnmat.Sequential([bnmat.Dense(4, bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
                            bnmat.Dense(1)])
    params, state = net.init(x, seed=0)
    with pytest.raises(bnmat.DivergenceError, match="diverged at epoch") as info:
        bnmat.fit(net, params, state, x, y, optimizer=optim.sgd(1e200), epochs=epochs,
                  progress=False)
    assert "rescale the data" not in str(info.value)
    assert all(np.all(np.isfinite(v)) for layer in info.value.params for v in layer.values())


# ------------------------------------------------------------- item 4: panel labels
@pytest.mark.parametrize("missing", [None, np.nan])
def test_missing_unit_labels_are_errors(missing):
    # Before: NaN/None became units named "nan"/"None".
    pd = pytest.importorskip("pandas")
    x, y = _data(40)
    ids = pd.Series([i // 4 for i in range(40)], dtype=object)
    ids[7] = missing
    with pytest.raises(ValueError, match="missing label.*row 7"):
        PanelBNMLPRegressor(**_small()).fit(x, y, groups=ids)
    with pytest.raises(ValueError, match="missing label"):
        bnmat.fit_panel(x, y, ids.to_numpy(), max_iter=2)


def test_pandas_na_label_is_an_error():
    pd = pytest.importorskip("pandas")
    x, y = _data(40)
    ids = pd.Series([f"u{i // 4}" for i in range(40)], dtype="string")
    ids[3] = pd.NA
    with pytest.raises(ValueError, match="missing label.*row 3"):
        bnmat.fit_panel(x, y, ids, max_iter=2)


def test_canonical_integer_labels():
    from bnmat.panel._inputs import canonical_integers, label_codes
    assert canonical_integers(["1", "-2", "0"]).tolist() == [1, -2, 0]
    for odd in ("01", "+1", "1_0", " 1", "-0x", "", "1.0"):
        assert canonical_integers(["1", odd]) is None
    known = np.array([1, 10])
    assert label_codes(known, np.array(["+1", "01", "1", "1_0"]), "u", missing=-1).tolist() \
        == [-1, -1, 0, -1]


def test_cli_entity_ids_01_and_1_are_two_people(tmp_path, capsys):
    # Before: "01" and "1" were merged; the coefficient came out 3.31 instead of 2.
    rng = np.random.default_rng(0)
    ids = ["1"] * 6 + ["01"] * 6 + ["2"] * 6 + ["02"] * 6
    alpha = {"1": 0.0, "01": 5.0, "2": -3.0, "02": 2.0}
    x = rng.normal(size=24) + np.array([alpha[i] for i in ids])   # x correlates with α
    y = 2 * x + np.array([alpha[i] for i in ids]) + 0.01 * rng.normal(size=24)
    path = tmp_path / "p.csv"
    rows = "".join(f"{i},{a:.17g},{b:.17g}\n" for i, a, b in zip(ids, x, y))
    path.write_text("id,x,y\n" + rows)
    from bnmat.cli import main
    assert main(["fit", str(path), "--target", "y", "--entity", "id", "--linear", "x",
                 "--validation-fraction", "0", "-o", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    assert "4 units" in out
    row = next(line for line in out.splitlines() if line.startswith("x "))   # the table's row
    coef = float(row.split()[1])
    assert coef == pytest.approx(2.0, abs=0.02)


def test_fit_panel_nan_names_the_row():
    # Before: the message pointed at row 0.
    x, y = _data(40)
    x[17, 1] = np.nan
    x[30, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 row\(s\); the first is row 17, column 'x1' \(NaN\)"):
        bnmat.fit_panel(x, y, np.arange(40) // 4, max_iter=2)


# ------------------------------------------------------------- bounded memory on big tables
def test_chunked_population_statistics_and_validation_match_one_pass():
    from bnmat.cli._chunked import population_statistics_chunked, predict_chunked
    from bnmat.layers._mlp import build_mlp
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 4))
    y = rng.normal(size=(500, 1))
    net = build_mlp([8, 6], "relu", 1, ddof=1)
    params, state = net.init(x, seed=0)
    params = [{k: v + 0.3 * rng.normal(size=v.shape) for k, v in layer.items()}
              for layer in params]
    exact = bnmat.population_statistics(net, params, state, x)   # one pass, the oracle
    chunked = population_statistics_chunked(net, params, state, x, rows=37)
    for a, b in zip(exact, chunked):
        for k in ("mean", "var"):
            if k in a:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(predict_chunked(net, params, exact, x, rows=41),
                               np.asarray(net.predict(params, exact, x)), rtol=1e-12)
    kw = dict(epochs=2, batch_size=50, validation_data=(x[:123], y[:123]), progress=False)
    one = bnmat.fit(net, params, state, x, y, **kw)
    many = bnmat.fit(net, params, state, x, y, validation_batch_size=10, **kw)
    np.testing.assert_allclose(many.history["val_loss"], one.history["val_loss"], rtol=1e-12)
    with pytest.raises(ValueError, match="validation_batch_size"):
        bnmat.fit(net, params, state, x, y, validation_batch_size=0, **kw)


# ------------------------------------------------------------- dependencies, docs
def test_estimators_without_scikit_learn_say_what_to_install():
    import subprocess
    import sys
    code = ("import sys; sys.modules['sklearn'] = None\n"
            "import bnmat\n"
            "bnmat.fit, bnmat.load\n"                       # the rest works
            "try:\n    bnmat.BNMLPRegressor\n"
            "except ImportError as e:\n    print(type(e).__name__, '|', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ImportError |")
    assert "pip install 'bnmat[sklearn]'" in out.stdout
    assert "ModuleNotFoundError" not in out.stdout + out.stderr


def test_first_readme_command_installs_what_bnmat_fit_shows():
    # The README's first command is `pip install -e . && bnmat fit`: its progress bar
    # (tqdm), its --plot (matplotlib) and its CSV reader (pandas) must be required.
    import re
    from pathlib import Path
    text = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    deps = text.split("dependencies = [", 1)[1].split("]", 1)[0]
    names = set(re.findall(r'"([A-Za-z0-9_.-]+)', deps))
    assert {"tqdm", "matplotlib", "pandas"} <= names


def test_batchnorm_layer_with_eps_zero_is_exact_and_names_a_constant_column():
    # docs/networks.md §3 says what the layer does with eps = 0.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(10, 3))
    net = bnmat.Sequential([bnmat.BatchNorm(eps=0.0, ddof=1)])
    params, state = net.init(x, seed=0)
    y = np.asarray(net.forward(params, state, x, training=True)[0])
    np.testing.assert_allclose(y, (x - x.mean(0)) / x.std(0, ddof=1), rtol=1e-12)
    x[:, 1] = 2.0
    with pytest.raises(ValueError, match="column 1"):
        net.forward(params, state, x, training=True)


@pytest.mark.parametrize("activation", ["relu", "tanh", "logistic", "identity", "leaky_relu",
                                        "softplus"])
def test_folded_chunked_prediction_equals_net_predict(activation):
    # bnmat predict folds each inference batch norm into the dense layer before it;
    # the oracle is the network's own predict (separate Dense, BatchNorm, activation).
    from bnmat.cli._chunked import predict_chunked
    from bnmat.layers._mlp import build_mlp
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1000, 4))
    net = build_mlp([8, 6], activation, 2)
    params, state = net.init(x, seed=0)
    params = [{k: v + 0.3 * rng.normal(size=v.shape) for k, v in layer.items()}
              for layer in params]
    state = [dict(d, mean=rng.normal(size=d["mean"].shape),
                  var=rng.uniform(0.5, 2.0, size=d["var"].shape)) if "mean" in d else d
             for d in state]
    expected = np.asarray(net.predict(params, state, x))
    got = predict_chunked(net, params, state, x, rows=333)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())
    wrong = [dict(d) for d in state]
    wrong[1] = dict(wrong[1], var=wrong[1]["var"] * 2)       # the check can fail
    assert not np.allclose(predict_chunked(net, params, wrong, x), expected)


def test_panel_estimator_scales_a_small_target():
    # Item 1's sibling: the panel estimator shares fit_scaling.
    x, y = _data(200)
    model = PanelBNMLPRegressor(hidden_layer_sizes=(8,), effects="none", solver="lbfgs",
                                max_iter=50, random_state=0).fit(x.astype(np.float32), y * 1e-7)
    assert model.y_scaling_.scale[0] == pytest.approx(np.std(y * 1e-7), rel=1e-6)
    assert _r2(y * 1e-7, model.predict(x.astype(np.float32))) > 0.9
