"""The bundled wage panel and the CSV reader."""

import gzip

import numpy as np
import pytest

from bnmat.datasets import load_wage_panel, read_table, wage_panel_path


def test_wage_panel_shape_and_panel_structure():
    panel = load_wage_panel()
    assert panel.data.shape == (4360, 10)
    assert panel.target.shape == (4360,)
    assert panel.data.dtype == np.float64 and panel.target.dtype == np.float64
    assert panel.target_name == "lwage"
    assert "nr" not in panel.feature_names and "lwage" not in panel.feature_names
    # 545 men, each observed once in every year 1980–1987
    men, counts = np.unique(panel.entity, return_counts=True)
    assert len(men) == 545 and set(counts) == {8}
    assert sorted(set(panel.time)) == list(range(1980, 1988))
    for man in men[:20]:
        assert sorted(panel.time[panel.entity == man]) == list(range(1980, 1988))
    assert np.all(np.isfinite(panel.data)) and np.all(np.isfinite(panel.target))


def test_wage_panel_internal_consistency():
    # Relations that hold in the published data, independent of how it was read.
    panel = load_wage_panel()
    col = {name: panel.data[:, j] for j, name in enumerate(panel.feature_names)}
    np.testing.assert_array_equal(col["expersq"], col["exper"] ** 2)
    for name in ("black", "hisp", "married", "union"):
        assert set(np.unique(col[name])) <= {0.0, 1.0}
    assert set(np.unique(col["occupation"])) <= set(range(1, 10))
    # experience grows by one year per year for each man
    order = np.lexsort((panel.time, panel.entity))
    exper = col["exper"][order].reshape(545, 8)
    np.testing.assert_array_equal(np.diff(exper, axis=1), 1.0)
    # log wages of US men in the 1980s: mean about 1.65 (about $5.2 an hour)
    assert 1.5 < panel.target.mean() < 1.8


def test_wage_panel_as_frame_matches_arrays():
    pd = pytest.importorskip("pandas")
    panel = load_wage_panel(as_frame=True)
    assert isinstance(panel.frame, pd.DataFrame)
    assert panel.frame.shape == (4360, 12)
    np.testing.assert_array_equal(panel.frame[list(panel.feature_names)].to_numpy(), panel.data)
    np.testing.assert_array_equal(panel.frame["lwage"].to_numpy(), panel.target)
    assert load_wage_panel().frame is None


def test_bundled_file_is_inside_the_package():
    path = wage_panel_path()
    assert path.is_file() and path.parent.name == "data"
    assert (path.parent / "README.md").is_file()  # source and citation
    with gzip.open(path, "rt") as fh:
        assert fh.readline().strip().split(",")[:3] == ["nr", "year", "black"]


def test_read_table_parses_and_reports_bad_cells(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("a,b,c\n1,2,x\n3,4.5,y\n\n")
    table = read_table(f)
    assert table.columns == ("a", "b", "c") and len(table.rows) == 2
    np.testing.assert_array_equal(table.numeric(["a", "b"]), [[1.0, 2.0], [3.0, 4.5]])
    with pytest.raises(ValueError, match=r"line 2: column 'c' has 'x', which is not a number"):
        table.numeric(["c"])


@pytest.mark.parametrize("cell, message", [
    ("", "missing value"), ("NA", "missing value"), ("nan", "missing value"),
    ("inf", "infinite"), ("1e999", "infinite"),
])
def test_read_table_rejects_missing_and_infinite(tmp_path, cell, message):
    f = tmp_path / "d.csv"
    f.write_text(f"a,b\n1,2\n{cell},3\n")
    with pytest.raises(ValueError, match=f"line 3: column 'a'.*{message}"):
        read_table(f).numeric(["a", "b"])


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("a,a\n1,2\n", "appears twice"),
    ("a,,c\n1,2,3\n", "no name"),
    ("a,b\n1,2\n3,4,5\n", "line 3: 3 cells, but the header has 2"),
])
def test_read_table_rejects_malformed_files(tmp_path, text, message):
    f = tmp_path / "d.csv"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_table(f)


def test_read_table_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_table(tmp_path / "nope.csv")


def test_read_table_binary_file(tmp_path):
    f = tmp_path / "d.csv"
    f.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        read_table(f)
