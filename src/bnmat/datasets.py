"""The real data set shipped with bnmat, and the CSV reader the command line uses.

The wage panel of Vella and Verbeek (1998) — 545 young men observed every year
from 1980 to 1987, 4,360 rows — is stored in ``bnmat/data/wage_panel.csv.gz``
exactly as the ``linearmodels`` package distributes it (see
``bnmat/data/README.md`` for the source, the licence and the citation). It is
read, like every CSV file the command line reads, by pandas' C reader
(:func:`read_table`).
"""

from __future__ import annotations

import csv
import gzip
import re
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = [
    "Table",
    "WagePanel",
    "WAGE_PANEL_DESCR",
    "load_wage_panel",
    "read_table",
    "table_columns",
    "wage_panel_path",
]

WAGE_PANEL_DESCR = """\
Vella and Verbeek (1998) wage panel: 545 men, 1980-1987, 4,360 rows.

nr          person identifier (the panel's entity)
year        1980 to 1987 (the panel's time)
black       1 if black
exper       labour market experience, years
hisp        1 if Hispanic
hours       annual hours worked
married     1 if married
educ        years of schooling
union       1 if the wage is set in a collective bargaining agreement
lwage       log of the hourly wage (the target)
expersq     exper squared
occupation  occupation code, 1 to 9 (a category stored as a number)

F. Vella and M. Verbeek (1998), "Whose wages do unions raise? A dynamic model of
unionism and wage rate determination for young men", Journal of Applied
Econometrics 13(2), 163-183. Also Wooldridge's WAGEPAN.
"""

#: Columns that are neither features nor the target.
_WAGE_ENTITY, _WAGE_TIME, _WAGE_TARGET = "nr", "year", "lwage"

#: Strings read as a missing value (then reported, never imputed).
MISSING = frozenset({"", "na", "nan", "n/a", "null", "none", "."})


#: Cells read as missing, besides pandas' defaults ("", "NA", "nan", "null", "None", …):
#: Stata's "." as well.
_EXTRA_MISSING = [".", "na", "none", "Nan", "NAN", "Null"]

_DECIMAL_COMMA = re.compile(r"[+-]?[0-9]*,[0-9]+([eE][+-]?[0-9]+)?")


class Table:
    """A CSV file as read by pandas: the header, and the columns asked for.

    Attributes
    ----------
    columns : tuple of str, length p
        Every column of the header, in file order (also those not read).
    frame : pandas.DataFrame, shape (N, k)
        The columns read (all, unless ``usecols`` was given): numbers as
        float64/int64, text as ``object``; missing cells are NaN.
    source : str
        Where the table came from, for error messages.
    n_rows : int
    """

    def __init__(self, columns, frame, source: str, reread=None):
        self.columns = tuple(columns)
        self.frame = frame
        self.source = source
        self.n_rows = int(frame.shape[0])
        # reread(name) -> the column as text, one cell per row of the file
        self._reread = reread

    @property
    def rows(self) -> range:
        """Row positions ``range(n_rows)`` (``len(table.rows)`` is the number of rows)."""
        return range(self.n_rows)

    def line(self, i: int) -> int:
        """The file line of row ``i`` (line 1 is the header; blank lines are not counted)."""
        return int(self.frame.index[i]) + 2

    def _series(self, name):
        if name not in self.frame.columns:
            raise KeyError(f"{self.source}: column {name!r} was not read")
        return self.frame[name]

    def column(self, name: str) -> list:
        """The cells of column ``name`` as text, exactly as written ("" where missing).

        A column parsed as numbers is read again from the file as text (so
        "01" and "1" stay two labels); list label columns in ``text_columns``
        to read them as text once.

        Returns
        -------
        list of str, length N
        """
        col = self._series(name)
        if col.dtype.kind in "fiub":
            if self._reread is None:
                return ["" if v != v else str(v) for v in col.tolist()]
            # Read as numbers, "01" and "1" would be one value: read the text again.
            col = self._reread(name).loc[self.frame.index]
        return [v if isinstance(v, str) else "" for v in col.tolist()]

    def is_text(self, name: str) -> bool:
        """True when column ``name`` holds text (a cell that is not a number)."""
        return self._series(name).dtype.kind not in "fiub"

    def missing(self, names) -> np.ndarray:
        """Boolean (N, k) mask of the missing cells in the columns ``names``."""
        return self.frame[list(names)].isna().to_numpy()

    def take(self, keep) -> "Table":
        """The table with the rows where ``keep`` (bool, shape (N,)) is True; lines kept."""
        return Table(self.columns, self.frame[np.asarray(keep, dtype=bool)], self.source,
                     self._reread)

    def numeric(self, names: Sequence[str], *, what: str = "column") -> np.ndarray:
        """The columns ``names`` as float64.

        Parameters
        ----------
        names : sequence of str, length k
        what : str
            How the columns are described in error messages ("feature column").

        Returns
        -------
        ndarray, shape (N, k), float64

        Raises
        ------
        ValueError
            Cells that are not numbers, missing cells or infinities. The
            message counts the rows concerned in each column and names the
            first (its file line and cell), so that one run lists every problem.
        """
        import pandas as pd

        names = list(names)
        out = np.empty((self.n_rows, len(names)), dtype=np.float64)
        problems = []
        for k, name in enumerate(names):
            col = self._series(name)
            if col.dtype.kind in "fiub":
                out[:, k] = col.to_numpy(dtype=np.float64, na_value=np.nan)
                text = None
            else:
                text = col
                out[:, k] = pd.to_numeric(col, errors="coerce").to_numpy(
                    dtype=np.float64, na_value=np.nan)
            problems += self._problems(name, out[:, k], text, what)
        if problems:
            raise ValueError(f"{self.source}: " + "; ".join(problems))
        return out

    def _problems(self, name, values, text, what) -> list:
        out = []
        nan = np.isnan(values)
        if text is not None:
            na = text.isna().to_numpy()
            bad = np.flatnonzero(nan & ~na)
            if bad.size:
                i = int(bad[0])
                hint = _decimal_hint(text.iloc[bad[:20]].tolist())
                out.append(f"line {self.line(i)}: {what} {name!r} has {text.iloc[i]!r}, which "
                           f"is not a number ({bad.size} such row(s) in all){hint}")
            nan = nan & na
        missing = np.flatnonzero(nan)
        if missing.size:
            out.append(f"line {self.line(int(missing[0]))}: {what} {name!r} has a missing "
                       f"value ({missing.size} such row(s) in all); remove or fill those "
                       "rows first")
        inf = np.flatnonzero(np.isinf(values))
        if inf.size:
            out.append(f"line {self.line(int(inf[0]))}: {what} {name!r} is infinite "
                       f"({inf.size} such row(s) in all)")
        return out


def _decimal_hint(cells) -> str:
    if cells and all(isinstance(c, str) and _DECIMAL_COMMA.fullmatch(c.strip()) for c in cells):
        return " (decimal commas? pass --decimal ,)"
    return ""


def _read_header(path: Path, source: str, sep: str) -> list:
    """The header row, read by the csv module, checked; with a hint for a wrong separator."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
            line = fh.readline()
            while line and not line.strip():
                line = fh.readline()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not a UTF-8 text file ({exc.reason})") from None
    except (gzip.BadGzipFile, EOFError) as exc:
        raise ValueError(f"{source}: not a gzip file ({exc})") from None
    if not line.strip():
        raise ValueError(f"{source}: the file is empty; expected a header row of column names")
    try:
        header = next(csv.reader([line.rstrip("\r\n")], delimiter=sep))
    except csv.Error as exc:
        raise ValueError(f"{source}: not a valid CSV file ({exc})") from None
    columns = [cell.strip() for cell in header]
    if len(columns) == 1:
        counts = {d: line.count(d) for d in (";", "\t", "|", ",") if d != sep}
        best = max(counts, key=counts.get)
        if counts[best] > 0:
            shown = "a tab" if best == "\t" else repr(best)
            flag = "--sep '\\t'" if best == "\t" else f"--sep '{best}'"
            extra = " (and --decimal , if numbers are written 1,5)" if best == ";" else ""
            raise ValueError(
                f"{source}: the header has a single column {columns[0][:60]!r}; the file "
                f"looks separated by {shown}, not {sep!r}. Pass {flag}{extra}")
    empty = [j + 1 for j, name in enumerate(columns) if not name]
    if empty:
        raise ValueError(f"{source}: header column {empty[0]} has no name")
    seen = set()
    for name in columns:
        if name in seen:
            raise ValueError(f"{source}: column name {name!r} appears twice in the header")
        seen.add(name)
    return columns


def table_columns(path, *, source: str | None = None, sep: str = ",") -> list:
    """The column names of a CSV file's header (checked as :func:`read_table` checks them)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    return _read_header(path, source or str(path), sep)


def read_table(path, *, source: str | None = None, usecols=None, text_columns=(),
               sep: str = ",", decimal: str = ".") -> Table:
    """Read a CSV file with a header row (gzip-compressed when it ends in ``.gz``).

    The cells are parsed by pandas' C reader (``pandas.read_csv``) straight
    into float64/int64 columns, so a file of N rows and p numeric columns
    takes about 8·N·p bytes, not a Python object per cell.

    Parameters
    ----------
    path : str or path-like
        The file; ``-`` is not special.
    source : str, optional
        Name used in error messages; defaults to ``path``.
    usecols : sequence of str, optional
        Read only these columns (all by default); ``Table.columns`` still
        lists the whole header.
    text_columns : sequence of str, default ()
        Columns read as text exactly as written (labels such as "01").
    sep, decimal : str, default "," and "."
        The field separator and the decimal mark (``";"`` and ``","`` for
        files written with a European locale).

    Returns
    -------
    Table

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        An empty file, a header with an empty or repeated name (with a hint
        when the separator looks wrong), a row with more cells than the
        header (the message names the line), a file that is not UTF-8.
        Missing cells are NaN in the table; :meth:`Table.numeric` reports them.
    """
    import pandas as pd

    path = Path(path)
    source = source or str(path)
    if not path.exists():
        raise FileNotFoundError(2, "No such file or directory", str(path))
    if path.is_dir():
        raise IsADirectoryError(21, "Is a directory", str(path))
    columns = _read_header(path, source, sep)
    if usecols is not None:
        unknown = [c for c in usecols if c not in columns]
        if unknown:
            raise ValueError(f"{source}: no column(s) {', '.join(map(repr, unknown))}; the "
                             f"columns are {', '.join(columns)}")
        wanted = set(usecols)
        usecols = [c for c in columns if c in wanted]
    text = {c: str for c in text_columns if usecols is None or c in usecols}
    options = dict(sep=sep, decimal=decimal, header=0, names=columns, na_values=_EXTRA_MISSING,
                   keep_default_na=True, skipinitialspace=True, encoding="utf-8-sig",
                   engine="c", compression="gzip" if path.suffix == ".gz" else None,
                   skip_blank_lines=True)

    def reread(name):
        return pd.read_csv(path, usecols=[name], dtype=str, **options)[name]

    try:
        frame = pd.read_csv(path, usecols=usecols, dtype=text or None, **options)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not a UTF-8 text file ({exc.reason})") from None
    except pd.errors.EmptyDataError:
        raise ValueError(f"{source}: the file is empty; expected a header row of column "
                         "names") from None
    except pd.errors.ParserError as exc:
        msg = " ".join(str(exc).split())
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", msg)
        if m:
            raise ValueError(f"{source}, line {m.group(2)}: {m.group(3)} cells, but the "
                             f"header has {m.group(1)} columns") from None
        raise ValueError(f"{source}: not a valid CSV file ({msg})") from None
    return Table(columns, frame, source, reread)


class WagePanel(NamedTuple):
    """The wage panel as arrays (see :data:`WAGE_PANEL_DESCR`).

    Attributes
    ----------
    data : ndarray, shape (4360, 10), float64
        Features, columns in ``feature_names`` order.
    target : ndarray, shape (4360,), float64
        ``lwage``, the log hourly wage.
    feature_names : tuple of str, length 10
    target_name : str
    entity : ndarray, shape (4360,), int64
        Person identifier ``nr`` (545 distinct values): use it for grouped
        cross-validation, since rows of one man are not independent.
    time : ndarray, shape (4360,), int64
        ``year``, 1980 to 1987 (also among the features).
    frame : pandas.DataFrame or None
        All 12 columns, when ``as_frame=True``.
    descr : str
    """

    data: np.ndarray
    target: np.ndarray
    feature_names: tuple
    target_name: str
    entity: np.ndarray
    time: np.ndarray
    frame: Any
    descr: str


def wage_panel_path() -> Path:
    """Path of the bundled ``wage_panel.csv.gz`` (4,360 rows, 12 columns)."""
    return Path(str(resources.files("bnmat") / "data" / "wage_panel.csv.gz"))


#: Columns the bundled data set drops from the features: the entity identifier.
WAGE_PANEL_DROP = (_WAGE_ENTITY,)


def load_wage_panel(*, as_frame: bool = False) -> WagePanel:
    """Load the Vella–Verbeek (1998) wage panel shipped with bnmat.

    The features are every column except the person identifier ``nr`` and the
    target ``lwage``: ``year, black, exper, hisp, hours, married, educ, union,
    expersq, occupation``. ``occupation`` is a code 1–9 kept as a number, as the
    source stores it; one-hot encode it if you want it as a category.

    Parameters
    ----------
    as_frame : bool, default False
        Also return the 12 columns as a pandas DataFrame (needs pandas).

    Returns
    -------
    WagePanel
        ``data`` (4360, 10), ``target`` (4360,), ``feature_names``,
        ``target_name``, ``entity`` and ``time`` (4360,), ``frame``, ``descr``.

    Examples
    --------
    >>> from bnmat.datasets import load_wage_panel
    >>> panel = load_wage_panel()
    >>> panel.data.shape, panel.target_name, len(set(panel.entity))
    ((4360, 10), 'lwage', 545)
    """
    table = read_table(wage_panel_path(), source="wage_panel.csv.gz")
    features = tuple(c for c in table.columns if c not in (_WAGE_ENTITY, _WAGE_TARGET))
    data = table.numeric(features)
    target = table.numeric([_WAGE_TARGET])[:, 0]
    ids = table.numeric([_WAGE_ENTITY, _WAGE_TIME]).astype(np.int64)
    frame = None
    if as_frame:
        import pandas as pd

        frame = pd.DataFrame(table.numeric(table.columns), columns=list(table.columns))
        ints = [c for c in table.columns if c != _WAGE_TARGET]
        frame[ints] = frame[ints].astype(np.int64)
    return WagePanel(
        data=data,
        target=target,
        feature_names=features,
        target_name=_WAGE_TARGET,
        entity=ids[:, 0],
        time=ids[:, 1],
        frame=frame,
        descr=WAGE_PANEL_DESCR,
    )
