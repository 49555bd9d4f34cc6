"""The ``bnmat`` command line: fit, predict, gradcheck, demo, and its errors."""

import csv
import subprocess
import sys

import numpy as np
import pytest

from bnmat import load
from bnmat.cli import main


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def regression_csv(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 3))
    y = 2.0 * x[:, 0] - x[:, 1] + 0.5 * x[:, 2] + 0.05 * rng.normal(size=150)
    rows = [[f"{a:.6f}", f"{b:.6f}", f"{c:.6f}", f"{t:.6f}", f"id{i}"]
            for i, (a, b, c, t) in enumerate(zip(*x.T, y))]
    return _write_csv(tmp_path / "train.csv", ["a", "b", "c", "y", "id"], rows), x, y


def _error_line(capsys):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("bnmat: error: ")
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


# ------------------------------------------------------------------ fit

def test_fit_bundled_data_writes_model_in_working_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--epochs", "2", "--hidden", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wage panel" in out and "'lwage'" in out
    assert "3488 training rows, 872 validation rows" in out
    assert "training R² = " in out and "validation R² = " in out
    model = tmp_path / "bnmat-model.npz"
    assert f"model written to {model}" in out
    meta = load(model).metadata
    assert meta["target"] == "lwage" and "nr" not in meta["features"]
    assert meta["dropped"] == ["nr"] and len(meta["features"]) == 10
    assert meta["task"] == "regression"
    assert len(meta["x_mean"]) == len(meta["x_scale"]) == 10


def test_fit_and_predict_a_user_csv(tmp_path, regression_csv, capsys):
    path, x, y = regression_csv
    model = str(tmp_path / "m.npz")
    status = main(["fit", path, "--target", "y", "--drop", "id", "--solver", "lbfgs",
                   "--epochs", "200", "--hidden", "8", "--output", model, "--no-progress"])
    assert status == 0
    out = capsys.readouterr().out
    r2 = float(out.split("validation R² = ")[1].split()[0])
    assert r2 > 0.95  # a linear function, learned from 120 rows

    new = _write_csv(tmp_path / "new.csv", ["c", "b", "a"],  # column order may differ
                     [[f"{c}", f"{b}", f"{a}"] for a, b, c in x[:10]])
    preds = str(tmp_path / "preds.csv")
    assert main(["predict", model, new, "--output", preds]) == 0
    with open(preds) as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["y"] and len(rows) == 11
    np.testing.assert_allclose([float(r[0]) for r in rows[1:]], y[:10], atol=0.3)

    # to standard output; the training file itself (target and dropped id present) works too
    assert main(["predict", model, path]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "y" and len(lines) == 151


def test_fit_classification_with_text_labels(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(90, 2))
    label = np.where(x[:, 0] + x[:, 1] > 0, "yes", "no")
    path = _write_csv(tmp_path / "c.csv", ["u", "v", "label"],
                      [[f"{a}", f"{b}", c] for a, b, c in zip(x[:, 0], x[:, 1], label)])
    model = str(tmp_path / "c.npz")
    assert main(["fit", path, "--target", "label", "--epochs", "60", "--hidden", "8",
                 "--learning-rate", "0.02", "--output", model, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "classification, 2 classes" in out
    assert float(out.split("validation accuracy = ")[1].split()[0]) >= 0.8
    assert main(["predict", model, path]) == 0
    predicted = capsys.readouterr().out.split()
    assert predicted[0] == "label" and set(predicted[1:]) <= {"yes", "no"}
    assert np.mean(np.array(predicted[1:]) == label) > 0.85


def test_plot_writes_a_png(tmp_path, regression_csv, capsys):
    pytest.importorskip("matplotlib")
    path, _, _ = regression_csv
    png = tmp_path / "loss.png"
    assert main(["fit", path, "--target", "y", "--drop", "id", "--epochs", "3",
                 "--output", str(tmp_path / "m.npz"), "--plot", str(png), "--no-progress"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5000
    assert f"loss plot written to {png}" in capsys.readouterr().out


def test_progress_bar_goes_to_stderr(tmp_path, regression_csv, capsys):
    path, _, _ = regression_csv
    assert main(["fit", path, "--target", "y", "--drop", "id", "--epochs", "2", "--solver",
                 "adam", "--output", str(tmp_path / "m.npz")]) == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err and "val_loss" in captured.err


# --------------------------------------------------------------- errors

Y = ["--target", "y"]
MISSING_B = "column 'b' in 1 row(s), the first at line 3"


@pytest.mark.parametrize("content, args, message", [
    ("a,b,y\n1,2,3\n2,,5\n3,5,8\n4,4,8\n", Y, MISSING_B),
    ("a,b,y\n1,2,3\n2,nan,5\n3,5,8\n4,4,8\n", Y, MISSING_B),
    ("a,b,y\n1,2,3\n2,x,5\n3,5,8\n4,4,8\n", Y, "'x', which is not a number"),
    ("a,b,y\n1,2,3\n2,3,5\n", ["--target", "z"], "no column 'z'"),
    ("a,b,y\n1,2,3\n2,3,5\n", [], "--target COL is required"),
    ("a,b,y\n1,2,3\n", Y, "1 row(s)"),
    ("a,b,y\n1,2,3\n2,3,x\n3,5,8\n", Y, "'x', which is not a number, while other rows"),
    ("a,b,y\n1,2,3\n2,3\n", Y, "column 'y' in 1 row(s), the first at line 3"),
    ("a,b,y\n1,2,3\n2,3,4,5\n", Y, "line 3: 4 cells, but the header has 3"),
    ("a,b,y\n", Y, "no rows"),
    ("", Y, "empty"),
])
def test_fit_bad_input_is_one_line_and_status_2(tmp_path, capsys, content, args, message):
    f = tmp_path / "bad.csv"
    f.write_text(content)
    assert main(["fit", str(f), *args, "--no-progress",
                 "--output", str(tmp_path / "m.npz")]) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "m.npz").exists()


def test_missing_file_and_folders(tmp_path, regression_csv, capsys):
    assert main(["fit", str(tmp_path / "nope.csv"), "--target", "y"]) == 2
    assert "no such file" in _error_line(capsys)
    path, _, _ = regression_csv
    assert main(["fit", path, "--target", "y", "--output", str(tmp_path / "no" / "m.npz")]) == 2
    assert "does not exist" in _error_line(capsys)
    assert main(["predict", str(tmp_path / "nope.npz"), path]) == 2
    assert "no such model file" in _error_line(capsys)


def test_predict_column_errors(tmp_path, regression_csv, capsys):
    path, _, _ = regression_csv
    model = str(tmp_path / "m.npz")
    assert main(["fit", path, "--target", "y", "--drop", "id", "--epochs", "1",
                 "--output", model, "--no-progress"]) == 0
    capsys.readouterr()
    missing = _write_csv(tmp_path / "missing.csv", ["a", "b"], [["1", "2"]])
    assert main(["predict", model, missing]) == 2
    assert "missing column(s) 'c'" in _error_line(capsys)
    extra = _write_csv(tmp_path / "extra.csv", ["a", "b", "c", "zzz"], [["1", "2", "3", "4"]])
    assert main(["predict", model, extra]) == 2
    assert "unexpected column(s) 'zzz'" in _error_line(capsys)
    nan = _write_csv(tmp_path / "nan.csv", ["a", "b", "c"], [["1", "NA", "3"]])
    assert main(["predict", model, nan]) == 2
    assert "missing value" in _error_line(capsys)
    assert main(["predict", path, path]) == 2  # a CSV is not a model
    assert "not a bnmat model file" in _error_line(capsys)


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert "required: COMMAND" in _error_line(capsys)
    assert main(["fit", "--solver", "newton"]) == 2
    assert "invalid choice: 'newton'" in _error_line(capsys)
    assert main(["fit", "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in _error_line(capsys)
    assert main(["fit", "--epochs", "many"]) == 2
    assert "invalid int value: 'many'" in _error_line(capsys)
    assert main(["--help"]) == 0
    assert "gradcheck" in capsys.readouterr().out


# ------------------------------------------------------------ gradcheck, demo

@pytest.mark.parametrize("extra", [[], ["--ddof", "1", "--hidden", "3", "2", "2"],
                                   ["--inference", "--activation", "softplus"]])
def test_gradcheck_agrees(capsys, extra):
    assert main(["gradcheck", *extra]) == 0
    out = capsys.readouterr().out
    assert "check_grad: OK" in out
    assert "BatchNorm.gamma" in out and "Dense.w" in out


def test_gradcheck_rejects_eps_zero(capsys):
    assert main(["gradcheck", "--eps", "0"]) == 2
    assert "--eps must be > 0" in _error_line(capsys)


def test_demo_runs(capsys):
    assert main(["demo"]) == 0
    assert capsys.readouterr().out.strip()


def test_python_dash_m(tmp_path):
    out = subprocess.run([sys.executable, "-m", "bnmat", "predict", "missing.npz", "x.csv"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("bnmat: error: ") and "Traceback" not in out.stderr


# ------------------------------------------------------------ panel data (--entity)

def _panel(rng, n_units=15, n_periods=6, labels=None):
    """A balanced panel y = α_i + τ_t + 1.5 a − b + sin(2c) + noise, as arrays."""
    unit = np.repeat(np.arange(n_units), n_periods)
    period = np.tile(np.arange(n_periods) + 2001, n_units)
    alpha = rng.normal(scale=2.0, size=n_units)
    tau = rng.normal(scale=0.5, size=n_periods)
    x = rng.normal(size=(unit.size, 3)) + alpha[unit, None] / 3
    y = (alpha[unit] + tau[period - 2001] + 1.5 * x[:, 0] - x[:, 1] + np.sin(2 * x[:, 2])
         + 0.1 * rng.normal(size=unit.size))
    names = np.array(labels if labels is not None else [f"u{k:02d}" for k in range(n_units)])
    return names[unit], period, x, y


def _panel_csv(path, unit, period, x, y):
    rows = [[u, str(t), *(f"{v:.10f}" for v in xi), f"{yi:.10f}"]
            for u, t, xi, yi in zip(unit, period, x, y)]
    return _write_csv(path, ["firm", "year", "a", "b", "c", "y"], rows)


def _demean(a, labels):
    """Each row minus its unit's mean, by an explicit loop over units (the oracle)."""
    out = np.array(a, dtype=float)
    for u in np.unique(labels):
        out[labels == u] -= out[labels == u].mean(axis=0)
    return out


def _coefficients(out):
    """The coefficients bnmat fit prints: its table's rows, or the lines under 'linear coefficients'."""
    coef = {}
    if "linear coefficients (original scales" in out:
        lines = out.split("linear coefficients (original scales")[1].splitlines()[1:]
        for line in lines:
            if not line.startswith("  "):
                break
            name, value = line.split()
            coef[name] = float(value)
        return coef
    lines = out.split("std err")[1].splitlines()[2:]       # after the header and its rule
    for line in lines:
        if line.startswith("="):
            break
        name, value = line.split()[:2]
        coef[name] = float(value)
    return coef


def test_panel_fit_without_network_is_the_within_regression(tmp_path, capsys):
    unit, period, x, y = _panel(np.random.default_rng(3))
    path = _panel_csv(tmp_path / "p.csv", unit, period, x, y)
    model = tmp_path / "fe.npz"
    # default solver options: without a network the fit is solved, not iterated
    assert main(["fit", path, "--target", "y", "--entity", "firm", "--linear", "a", "b", "c",
                 "--drop", "year", "--validation-fraction", "0", "--output", str(model),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "no network (every feature is linear)" in out and "no validation rows" in out
    assert "least-squares solution: within R²" in out
    # Oracle: least squares on the unit-demeaned data, in closed form.
    xd, yd = _demean(x, unit), _demean(y, unit)
    b = np.linalg.lstsq(xd, yd, rcond=None)[0]
    coef = _coefficients(out)
    assert list(coef) == ["a", "b", "c"]
    np.testing.assert_allclose([coef[k] for k in "abc"], b, rtol=1e-5)  # 6 printed digits
    r2 = 1 - np.sum((yd - xd @ b) ** 2) / np.sum(yd ** 2)
    printed = float(out.split("removed): training ")[1].split(",")[0])
    assert abs(printed - r2) < 1e-4
    assert "recovered 15 unit effects" in out
    assert f"model written to {model}" in out
    meta = load(model).metadata
    assert meta["entity"] == "firm" and meta["time"] is None and meta["target"] == "y"
    assert meta["linear"] == ["a", "b", "c"] and meta["panel"]["effects"] == "entity"


def test_panel_fit_and_predict_known_and_new_units(tmp_path, capsys):
    rng = np.random.default_rng(4)
    unit, period, x, y = _panel(rng, n_units=20)
    path = _panel_csv(tmp_path / "p.csv", unit, period, x, y)
    model = str(tmp_path / "pl.npz")
    assert main(["fit", path, "--target", "y", "--entity", "firm", "--time", "year",
                 "--linear", "a", "b", "--hidden", "8", "--activation", "tanh",
                 "--solver", "lbfgs", "--epochs", "150", "--output", model,
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "unit and period effects ('firm', 'year')" in out
    # 6 periods, validation fraction 0.2: the last round(1.2) = 1 period held out
    assert "100 training rows (20 units), 20 validation rows (year 2006, the last period)" in out
    assert "within R² (unit and period means removed)" in out
    assert "recovered 20 unit effects and 5 period effects" in out
    coef = _coefficients(out)
    assert abs(coef["a"] - 1.5) < 0.1 and abs(coef["b"] + 1.0) < 0.1   # the simulated b

    # Two rows with the same features: unit u00 (seen) and unit zz (new); period 2003.
    from bnmat.panel.table import load_panel_model
    fitted = load_panel_model(model)
    new = _write_csv(tmp_path / "new.csv", ["year", "firm", "c", "b", "a"],
                     [["2003", "u00", "0.3", "-0.2", "0.5"], ["2003", "zz", "0.3", "-0.2", "0.5"],
                      ["2006", "u00", "0.3", "-0.2", "0.5"]])
    assert main(["predict", model, new]) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == "y" and len(lines) == 4
    seen, unseen, late = (float(v) for v in lines[1:])
    # the known unit adds its effect α̂; the new one gets none (f alone, the average unit)
    assert abs(seen - unseen - fitted.effects_dict["u00"]) < 1e-9
    # 2006 was held out: no period effect, so the difference is τ̂_2003 alone
    assert abs(seen - late - fitted.time_effects_dict[2003]) < 1e-9
    assert "1 of 3 row(s) are of 1 unit(s) not seen in training (zz)" in captured.err
    assert "1 of 3 row(s) are of 1 period(s) not seen in training (2006)" in captured.err

    # a new unit whose label is a number while the model's labels are text
    numeric = _write_csv(tmp_path / "num.csv", ["year", "firm", "c", "b", "a"],
                         [["2003", "7", "0.3", "-0.2", "0.5"]])
    preds = tmp_path / "preds.csv"
    assert main(["predict", model, numeric, "--output", str(preds)]) == 0
    assert abs(float(preds.read_text().split()[1]) - unseen) < 1e-9


def test_panel_fit_bundled_wage_panel(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--entity", "nr", "--time", "year", "--linear", "union", "married",
                 "--epochs", "2", "--hidden", "8", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wage panel" in out and "unit and period effects ('nr', 'year'), 9 features" in out
    assert ("3270 training rows (545 units), 1090 validation rows "
            "(year 1986 to 1987, the last 2 periods)") in out
    assert set(_coefficients(out)) == {"union", "married"}
    assert "recovered 545 unit effects and 6 period effects" in out
    model = tmp_path / "bnmat-model.npz"
    assert f"model written to {model}" in out
    meta = load(model).metadata
    assert (meta["entity"], meta["time"], meta["target"]) == ("nr", "year", "lwage")
    assert "year" not in meta["panel"]["feature_names"]

    # without --time: whole men held out, year a feature
    assert main(["fit", "--entity", "nr", "--linear", "union", "married", "--epochs", "1",
                 "--hidden", "8", "--output", "one.npz", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "unit effects ('nr'), 10 features" in out
    assert "3488 training rows (436 units), 872 validation rows (109 whole units)" in out
    assert "recovered 436 unit effects (mean 0" in out


def test_panel_group_batchnorm_fits_and_integer_labels(tmp_path, capsys):
    unit, period, x, y = _panel(np.random.default_rng(5), n_units=12,
                                labels=[101 + 7 * k for k in range(12)])
    path = _panel_csv(tmp_path / "p.csv", unit, period, x, y)
    model = str(tmp_path / "g.npz")
    assert main(["fit", path, "--target", "y", "--entity", "firm", "--drop", "year",
                 "--group-batchnorm", "--hidden", "4", "--epochs", "3", "--output", model,
                 "--early-stopping", "2", "--no-linear-fallback", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(GroupBatchNorm, relu)" in out and "2 whole units" in out
    assert "pooled statistics" in out            # the held-out units are new to the BN
    assert load(model).metadata["panel"]["group_batchnorm"] is True
    assert main(["predict", model, path]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.strip().splitlines()) == 73
    assert "2 unit(s) not seen in training" in captured.err   # the held-out ones


def test_panel_predict_with_text_labels_for_an_integer_model(tmp_path, capsys):
    """Labels of the other kind are new units (or, as decimal text, the same units)."""
    unit, period, x, y = _panel(np.random.default_rng(8), n_units=8,
                                labels=[11 * k + 5 for k in range(8)])
    path = _panel_csv(tmp_path / "p.csv", unit, period, x, y)
    model = str(tmp_path / "int.npz")
    assert main(["fit", path, "--target", "y", "--entity", "firm", "--drop", "year",
                 "--linear", "a", "b", "c", "--validation-fraction", "0", "--output", model,
                 "--no-progress"]) == 0
    capsys.readouterr()
    new = _write_csv(tmp_path / "new.csv", ["firm", "a", "b", "c"],
                     [["16", "0.3", "-0.2", "0.5"], ["firm-x", "0.3", "-0.2", "0.5"]])
    assert main(["predict", model, new]) == 0
    captured = capsys.readouterr()
    seen, unseen = (float(v) for v in captured.out.split()[1:])
    from bnmat.panel.table import load_panel_model
    assert abs(seen - unseen - load_panel_model(model).effects_dict[16]) < 1e-9
    assert "1 of 2 row(s) are of 1 unit(s) not seen in training (firm-x)" in captured.err


PANEL = ["--target", "y", "--entity", "firm"]


@pytest.mark.parametrize("args, message", [
    (["--target", "y", "--entity", "zz"], "no column 'zz' (the --entity)"),
    (PANEL + ["--time", "when"], "no column 'when' (the --time)"),
    (PANEL + ["--linear", "a", "q"], "no column 'q' for --linear"),
    (PANEL + ["--linear", "a", "a"], "--linear lists 'a' twice"),
    (PANEL + ["--linear", "y"], "--linear 'y' is the target column"),
    (PANEL + ["--linear", "firm"], "--linear 'firm' is the --entity column"),
    (PANEL + ["--linear", "a", "--drop", "a"], "--linear 'a' is also in --drop"),
    (PANEL + ["--time", "firm"], "--entity and --time name the same column"),
    (["--target", "y", "--entity", "y"], "the target 'y' cannot also be the --entity"),
    (PANEL + ["--effects", "twoway"], "--effects twoway needs --time"),
    (PANEL + ["--holdout", "periods"], "--holdout periods needs --time"),
    (PANEL + ["--classify"], "--classify cannot be used with --entity"),
    (["--target", "y", "--linear", "a"], "--linear is an option of panel models"),
    (["--target", "y", "--time", "year"], "--time is an option of panel models"),
    (PANEL + ["--linear", "s"], "['s'] are absorbed by the fixed effects (they are constant "
     "within units)"),
    # e = a unit level plus the year: it varies within units but two-way effects absorb it
    (PANEL + ["--time", "year", "--linear", "e"], "['e'] are absorbed by the fixed effects "
     "(each is constant within units, or a unit level plus a period trend"),
    (PANEL + ["--time", "year", "--validation-fraction", "0.6"],
     "holding out the last 2 leaves fewer than 2 for training"),
])
def test_panel_bad_options_are_one_line_and_status_2(tmp_path, capsys, args, message):
    path = _write_csv(tmp_path / "p.csv", ["firm", "year", "a", "s", "e", "y"],
                      [[f"f{i // 3}", str(2000 + i % 3), str(i * 0.37 % 1), str(i // 3),
                        str(2 * (i // 3) + i % 3), str(i % 5)] for i in range(12)])
    assert main(["fit", path, *args, "--epochs", "1", "--no-progress",
                 "--output", str(tmp_path / "m.npz")]) == 2
    assert message in _error_line(capsys)
    assert not (tmp_path / "m.npz").exists()


@pytest.mark.parametrize("content, extra, message", [
    # unit 'c' has one row: group-wise batch norm cannot normalize it
    ("firm,a,y\na,1,2\na,2,3\nb,3,1\nb,1,0\nc,2,2\n", ["--group-batchnorm"],
     "--group-batchnorm needs at least 2 training rows per unit; 1 unit(s)"),
    ("firm,a,y\na,1,2\n,2,3\nb,3,1\nb,1,0\n", [],
     "column 'firm' in 1 row(s), the first at line 3"),
    ("firm,a,y\na,1,2\na,x,3\nb,3,1\nb,1,0\n", [],
     "line 3: feature column 'a' has 'x', which is not a number"),
])
def test_panel_bad_data_is_one_line_and_status_2(tmp_path, capsys, content, extra, message):
    f = tmp_path / "p.csv"
    f.write_text(content)
    assert main(["fit", str(f), "--target", "y", "--entity", "firm", "--validation-fraction",
                 "0", *extra, "--epochs", "1", "--no-progress",
                 "--output", str(tmp_path / "m.npz")]) == 2
    assert message in _error_line(capsys)


def test_panel_predict_errors(tmp_path, capsys):
    unit, period, x, y = _panel(np.random.default_rng(6), n_units=6)
    path = _panel_csv(tmp_path / "p.csv", unit, period, x, y)
    model = str(tmp_path / "m.npz")
    assert main(["fit", path, "--target", "y", "--entity", "firm", "--time", "year",
                 "--hidden", "4", "--epochs", "1", "--output", model, "--no-progress"]) == 0
    capsys.readouterr()
    no_time = _write_csv(tmp_path / "no_time.csv", ["firm", "a", "b", "c"],
                         [["u00", "1", "2", "3"]])
    assert main(["predict", model, no_time]) == 2
    assert "missing column(s) 'year'" in _error_line(capsys)
    extra = _write_csv(tmp_path / "extra.csv", ["firm", "year", "a", "b", "c", "zzz"],
                       [["u00", "2001", "1", "2", "3", "4"]])
    assert main(["predict", model, extra]) == 2
    assert "unexpected column(s) 'zzz'" in _error_line(capsys)
    blank = _write_csv(tmp_path / "blank.csv", ["firm", "year", "a", "b", "c"],
                       [["NA", "2001", "1", "2", "3"]])
    assert main(["predict", model, blank]) == 2
    assert "line 2: the entity column 'firm' has a missing value" in _error_line(capsys)

    # a panel model saved from Python without the column names in its metadata
    from bnmat.panel.table import load_panel_model, save_panel_model
    bare = tmp_path / "bare.npz"
    save_panel_model(bare, load_panel_model(model))
    assert main(["predict", str(bare), path]) == 2
    assert "lacks the name of its entity column" in _error_line(capsys)


def test_panel_validation_on_last_periods_matches_closed_form(tmp_path, capsys):
    # Linear within regression on 2001-2004, scored on 2005-2006 (the last 2 of 6 periods).
    unit, period, x, y = _panel(np.random.default_rng(7))
    path = _panel_csv(tmp_path / "p.csv", unit, period, x, y)
    assert main(["fit", path, "--target", "y", "--entity", "firm", "--time", "year",
                 "--effects", "entity", "--linear", "a", "b", "c", "--solver", "lbfgs",
                 "--alpha", "0", "--epochs", "500", "--validation-fraction", "0.34",
                 "--output", str(tmp_path / "m.npz"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "30 validation rows (year 2005 to 2006, the last 2 periods)" in out
    tr, va = period <= 2004, period >= 2005
    b = np.linalg.lstsq(_demean(x[tr], unit[tr]), _demean(y[tr], unit[tr]), rcond=None)[0]

    def within_r2(rows):   # unit effects cancel: demean y and y − Xb within the rows' units
        yd = _demean(y[rows], unit[rows])
        rd = _demean(y[rows] - x[rows] @ b, unit[rows])
        return 1 - np.sum(rd ** 2) / np.sum(yd ** 2)

    line = out.split("within R² (unit means removed): ")[1].splitlines()[0]
    train, val = (float(part.split()[-1]) for part in line.split(","))
    assert abs(train - within_r2(tr)) < 1e-4 and abs(val - within_r2(va)) < 1e-4
    assert 0 < val < train
