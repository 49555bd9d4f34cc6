"""Reading tables in the command line (issue 9): column selection, missing values,
categorical columns, separators, class labels."""

import numpy as np
import pytest

from bnmat import load
from bnmat.cli import main


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnmat: error: "), err
    return err[0]


def _fit(path, tmp_path, *extra, target="y"):
    return main(["fit", str(path), "--target", target, "--epochs", "2", "--hidden", "4",
                 "--no-progress", "-o", str(tmp_path / "m.npz"), *extra])


def _wide_csv(path, n=60, p=54, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    names = [f"c{j}" for j in range(p)]
    y = x[:, 0] - x[:, 3]
    np.savetxt(path, np.column_stack([x, y]), delimiter=",", header=",".join(names + ["y"]),
               comments="", fmt="%.8g")
    return path


def test_features_selects_and_reads_only_those_columns(tmp_path, capsys, monkeypatch):
    path = _wide_csv(tmp_path / "wide.csv")
    import bnmat.cli._table as cli_fit
    seen = {}
    real = cli_fit.read_table

    def spy(*args, **kwargs):
        seen["usecols"] = kwargs.get("usecols")
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_fit, "read_table", spy)
    assert _fit(path, tmp_path, "--features", "c0", "c3", "c7", "c9", "c11") == 0
    assert "5 features" in capsys.readouterr().out
    assert seen["usecols"] == ["y", "c0", "c3", "c7", "c9", "c11"]
    assert load(tmp_path / "m.npz").metadata["features"] == ["c0", "c3", "c7", "c9", "c11"]
    # predict needs only those columns; the others in the file are dropped, not errors
    assert main(["predict", str(tmp_path / "m.npz"), str(path)]) == 2   # extra columns
    small = tmp_path / "small.csv"
    small.write_text("c11,c0,c9,c3,c7\n1,2,3,4,5\n")
    assert main(["predict", str(tmp_path / "m.npz"), str(small)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


@pytest.mark.parametrize("args, message", [
    (["--features", "c0", "nope"], "no column(s) 'nope'"),
    (["--features", "c0", "c0"], "lists 'c0' twice"),
    (["--features", "y"], "also in --features"),
    (["--features", "c0", "--drop", "c1"], "either --features"),
])
def test_features_errors(tmp_path, capsys, args, message):
    path = _wide_csv(tmp_path / "wide.csv", p=4)
    assert _fit(path, tmp_path, *args) == 2
    assert message in _error(capsys)


def _gappy_csv(path):
    path.write_text("a,b,y\n1,2,3\n2,,5\n3,5,\n,4,8\n5,6,7\n6,NA,1\n7,8,9\n8,1,2\n9,2,4\n")
    return path


def test_missing_values_error_counts_every_row(tmp_path, capsys):
    path = _gappy_csv(tmp_path / "gaps.csv")
    assert _fit(path, tmp_path) == 2
    err = _error(capsys)
    assert "missing values in 4 of 9 row(s)" in err
    assert "column 'a' in 1 row(s), the first at line 5" in err
    assert "column 'b' in 2 row(s), the first at line 3" in err
    assert "column 'y' in 1 row(s), the first at line 4" in err
    assert "--dropna" in err


def test_dropna_drops_and_says_how_many(tmp_path, capsys):
    path = _gappy_csv(tmp_path / "gaps.csv")
    assert _fit(path, tmp_path, "--dropna", "--validation-fraction", "0") == 0
    out = capsys.readouterr().out
    assert "--dropna: dropped 4 of 9 row(s) with missing values" in out
    assert "5 training rows" in out


def test_non_numbers_are_counted(tmp_path, capsys):
    path = tmp_path / "typos.csv"
    path.write_text("a,b,y\n1,2,3\n2,x,5\n3,5,7\n4,y,8\n5,6,inf\n")
    assert _fit(path, tmp_path) == 2
    err = _error(capsys)
    assert "line 3: feature column 'b' has 'x', which is not a number (2 such row(s)" in err


def test_text_column_gets_a_hint(tmp_path, capsys):
    path = tmp_path / "text.csv"
    path.write_text("a,city,y\n1,Oslo,3\n2,Rome,5\n3,Oslo,7\n4,Rome,8\n")
    assert _fit(path, tmp_path) == 2
    err = _error(capsys)
    assert "'city' holds text" in err and "--categorical city" in err and "--drop city" in err


def test_categorical_one_hot_stored_and_reused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    cities = rng.choice(["Oslo", "Rome", "Lima"], size=200)
    effect = {"Oslo": 3.0, "Rome": -2.0, "Lima": 0.0}
    a = rng.normal(size=200)
    y = a + np.array([effect[c] for c in cities])
    path = tmp_path / "cat.csv"
    path.write_text("a,city,y\n" + "".join(f"{u:.6f},{c},{v:.6f}\n"
                                           for u, c, v in zip(a, cities, y)))
    assert main(["fit", str(path), "--target", "y", "--categorical", "city", "--solver",
                 "lbfgs", "--epochs", "200", "--hidden", "16", "--no-progress",
                 "-o", str(tmp_path / "m.npz")]) == 0
    out = capsys.readouterr().out
    assert "1 categorical, one-hot: 4 inputs" in out
    meta = load(tmp_path / "m.npz").metadata
    assert meta["categorical"] == {"city": ["Lima", "Oslo", "Rome"]}
    assert meta["inputs"] == ["a", "city=Lima", "city=Oslo", "city=Rome"]
    new = tmp_path / "new.csv"
    new.write_text("city,a\nRome,0\nOslo,0\nLima,0\n")     # other column order
    assert main(["predict", str(tmp_path / "m.npz"), str(new)]) == 0
    pred = np.array(capsys.readouterr().out.split()[1:], dtype=float)
    np.testing.assert_allclose(pred, [-2.0, 3.0, 0.0], atol=0.3)
    unseen = tmp_path / "unseen.csv"
    unseen.write_text("a,city\n0,Rome\n0,Paris\n1,Paris\n2,Kyiv\n")
    assert main(["predict", str(tmp_path / "m.npz"), str(unseen)]) == 2
    err = _error(capsys)
    assert "2 level(s) not seen in training, in 3 row(s): 'Paris', 'Kyiv'" in err
    assert "first at line 3" in err and "'Lima', 'Oslo', 'Rome'" in err


@pytest.mark.parametrize("sep, shown, flag", [(";", "';'", "--sep ';'"),
                                              ("\t", "a tab", "--sep '\\t'")])
def test_wrong_separator_hint(tmp_path, capsys, sep, shown, flag):
    path = tmp_path / "semi.csv"
    path.write_text(sep.join(["a", "b", "y"]) + "\n" + sep.join(["1", "2", "3"]) + "\n")
    assert _fit(path, tmp_path) == 2
    err = _error(capsys)
    assert f"looks separated by {shown}" in err and flag in err


def test_semicolons_and_decimal_commas(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 2))
    rows = "".join(f"{a:.4f};{b:.4f};{a - b:.4f}\n".replace(".", ",") for a, b in x)
    path = tmp_path / "eu.csv"
    path.write_text("a;b;y\n" + rows)
    assert _fit(path, tmp_path, "--sep", ";") == 2
    assert "decimal commas? pass --decimal ," in _error(capsys)
    assert _fit(path, tmp_path, "--sep", ";", "--decimal", ",") == 0
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m.npz"), str(path), "--sep", ";",
                 "--decimal", ","]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 41
    tab = tmp_path / "tab.tsv"
    tab.write_text("a\tb\ty\n" + "".join(f"{a}\t{b}\t{a - b}\n" for a, b in x))
    assert _fit(tab, tmp_path, "--sep", "\\t") == 0


def test_classify_one_and_one_point_zero_are_one_class(tmp_path, capsys):
    # Before: "1" and "1.0" were two classes.
    path = tmp_path / "cls.csv"
    rows = "".join(f"{i},{['0', '1', '1.0', '0.0'][i % 4]}\n" for i in range(40))
    path.write_text("a,y\n" + rows)
    assert _fit(path, tmp_path, "--classify") == 0
    assert "2 classes" in capsys.readouterr().out
    assert load(tmp_path / "m.npz").metadata["classes"] == ["0", "1"]


def test_labels_read_as_text(tmp_path):
    from bnmat.datasets import read_table
    path = tmp_path / "ids.csv"
    path.write_text("id,x\n01,1\n1,2\n+1,3\n")
    table = read_table(path, text_columns=["id"])
    assert table.column("id") == ["01", "1", "+1"]
    # parsed as numbers, the column is read again as text for its labels
    table = read_table(path)
    assert table.frame["id"].tolist() == [1, 1, 1]
    assert table.column("id") == ["01", "1", "+1"]
    assert table.take(np.array([False, True, True])).column("id") == ["1", "+1"]


def test_fit_panel_from_table_keeps_01_and_1_apart(tmp_path):
    # Item 4's sibling in the Python API: a table read with default types.
    from bnmat.datasets import read_table
    from bnmat.panel.table import fit_panel_from_table
    rng = np.random.default_rng(0)
    ids = ["1"] * 6 + ["01"] * 6 + ["2"] * 6 + ["02"] * 6
    alpha = {"1": 0.0, "01": 5.0, "2": -3.0, "02": 2.0}
    x = rng.normal(size=24) + np.array([alpha[i] for i in ids])
    y = 2 * x + np.array([alpha[i] for i in ids]) + 0.01 * rng.normal(size=24)
    path = tmp_path / "p.csv"
    path.write_text("id,x,y\n" + "".join(f"{i},{a:.17g},{b:.17g}\n"
                                         for i, a, b in zip(ids, x, y)))
    model = fit_panel_from_table(read_table(path), "y", entity="id", linear=["x"],
                                 network_features=[])
    assert sorted(model.entity_labels.tolist()) == ["01", "02", "1", "2"]
    assert model.coef_linear["x"] == pytest.approx(2.0, abs=0.02)


def test_panel_fit_with_features_and_dropna(tmp_path, capsys):
    rng = np.random.default_rng(0)
    units = np.repeat(np.arange(20), 5)
    x = rng.normal(size=units.size)
    noise = rng.normal(size=(units.size, 3))
    y = 2 * x + units * 0.3 + 0.01 * rng.normal(size=units.size)
    lines = [f"{u},{a:.8f},{n[0]:.4f},{n[1]:.4f},{n[2]:.4f},{b:.8f}"
             for u, a, n, b in zip(units, x, noise, y)]
    lines[7] = lines[7].rsplit(",", 1)[0] + ","            # a missing target
    path = tmp_path / "panel.csv"
    path.write_text("id,x,z1,z2,z3,y\n" + "\n".join(lines) + "\n")
    args = ["fit", str(path), "--target", "y", "--entity", "id", "--linear", "x",
            "--features", "z1", "--validation-fraction", "0", "--no-progress",
            "-o", str(tmp_path / "m.npz"), "--epochs", "2", "--hidden", "4"]
    assert main(args) == 2
    assert "column 'y' in 1 row(s), the first at line 9" in _error(capsys)
    assert main(args + ["--dropna"]) == 0
    out = capsys.readouterr().out
    assert "--dropna: dropped 1 of 100 row(s)" in out
    assert "2 features" in out and "99 training rows" in out
    assert load(tmp_path / "m.npz").metadata["features"] == ["x", "z1"]


def test_panel_fit_and_predict_with_a_categorical_column(tmp_path, capsys):
    rng = np.random.default_rng(0)
    units = np.repeat(np.arange(30), 6)
    sector = rng.choice(["farm", "shop", "mill"], size=units.size)
    bump = {"farm": 1.0, "shop": -1.0, "mill": 0.0}
    x = rng.normal(size=units.size)
    y = 2 * x + units * 0.1 + np.array([bump[s] for s in sector]) \
        + 0.01 * rng.normal(size=units.size)
    path = tmp_path / "panel.csv"
    path.write_text("id,x,sector,y\n" + "".join(
        f"{u},{a:.8f},{s},{b:.8f}\n" for u, a, s, b in zip(units, x, sector, y)))
    model = tmp_path / "m.npz"
    base = ["fit", str(path), "--target", "y", "--entity", "id", "--validation-fraction", "0",
            "--no-progress", "-o", str(model), "--epochs", "2", "--hidden", "4"]
    assert main(base + ["--linear", "sector", "--categorical", "sector"]) == 2
    assert "also in --linear" in _error(capsys)
    assert main(base + ["--linear", "x", "--categorical", "sector"]) == 0
    assert "network 3 → 4 → 1" in capsys.readouterr().out
    meta = load(model).metadata
    assert meta["categorical"] == {"sector": ["farm", "mill", "shop"]}
    new = tmp_path / "new.csv"
    new.write_text("id,x,sector\n1,0.5,farm\n2,0.1,mill\n")
    assert main(["predict", str(model), str(new)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    new.write_text("id,x,sector\n1,0.5,mine\n")
    assert main(["predict", str(model), str(new)]) == 2
    assert "level(s) not seen in training" in _error(capsys)
