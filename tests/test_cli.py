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
    assert main(["fit", path, "--target", "y", "--drop", "id", "--epochs", "2",
                 "--output", str(tmp_path / "m.npz")]) == 0
    captured = capsys.readouterr()
    assert "2/2" in captured.err and "val_loss" in captured.err


# --------------------------------------------------------------- errors

Y = ["--target", "y"]
MISSING_B = "line 3: feature column 'b' has a missing value"


@pytest.mark.parametrize("content, args, message", [
    ("a,b,y\n1,2,3\n2,,5\n3,5,8\n4,4,8\n", Y, MISSING_B),
    ("a,b,y\n1,2,3\n2,nan,5\n3,5,8\n4,4,8\n", Y, MISSING_B),
    ("a,b,y\n1,2,3\n2,x,5\n3,5,8\n4,4,8\n", Y, "'x', which is not a number"),
    ("a,b,y\n1,2,3\n2,3,5\n", ["--target", "z"], "no column 'z'"),
    ("a,b,y\n1,2,3\n2,3,5\n", [], "--target COL is required"),
    ("a,b,y\n1,2,3\n", Y, "1 row(s)"),
    ("a,b,y\n1,2,3\n2,3,x\n3,5,8\n", Y, "'x', which is not a number, while other rows"),
    ("a,b,y\n1,2,3\n2,3\n", Y, "line 3: 2 cells, but the header has 3"),
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
