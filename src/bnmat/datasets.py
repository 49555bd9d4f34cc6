"""The real data set shipped with bnmat, and the CSV reader the command line uses.

The wage panel of Vella and Verbeek (1998) — 545 young men observed every year
from 1980 to 1987, 4,360 rows — is stored in ``bnmat/data/wage_panel.csv.gz``
exactly as the ``linearmodels`` package distributes it (see
``bnmat/data/README.md`` for the source, the licence and the citation). It is
read with the standard library and NumPy; pandas is needed only for
``as_frame=True``.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
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


class Table(NamedTuple):
    """A CSV file as read: a header and the cells as strings.

    Attributes
    ----------
    columns : tuple of str, length p
    rows : list of tuple of str, N rows of p cells
    source : str
        Where the table came from, for error messages.
    """

    columns: tuple
    rows: list
    source: str

    def column(self, name: str) -> list:
        """The cells of column ``name`` as a list of N strings."""
        j = self.columns.index(name)
        return [row[j] for row in self.rows]

    def numeric(self, names: Sequence[str], *, what: str = "column") -> np.ndarray:
        """The columns ``names`` parsed as float64.

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
            A cell that is not a finite number; the message names the column,
            the line of the file and the cell. Missing values ("", "NA", "nan")
            and infinities are reported, not imputed.
        """
        idx = [self.columns.index(name) for name in names]
        out = np.empty((len(self.rows), len(idx)), dtype=np.float64)
        for i, row in enumerate(self.rows):
            for k, j in enumerate(idx):
                out[i, k] = _parse_number(row[j], self.columns[j], i, what, self.source)
        return out


def _parse_number(cell: str, name: str, i: int, what: str, source: str) -> float:
    line = i + 2  # line 1 is the header
    text = cell.strip()
    if text.lower() in MISSING:
        raise ValueError(
            f"{source}, line {line}: {what} {name!r} has a missing value ({cell!r}); "
            "remove or fill the row first"
        )
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"{source}, line {line}: {what} {name!r} has {cell!r}, which is not a "
            "number"
        ) from None
    if math.isnan(value):
        raise ValueError(f"{source}, line {line}: {what} {name!r} is NaN")
    if math.isinf(value):
        raise ValueError(f"{source}, line {line}: {what} {name!r} is infinite ({cell!r})")
    return value


def read_table(path, *, source: str | None = None) -> Table:
    """Read a CSV file with a header row (gzip-compressed when it ends in ``.gz``).

    Parameters
    ----------
    path : str or path-like
        The file; ``-`` is not special.
    source : str, optional
        Name used in error messages; defaults to ``path``.

    Returns
    -------
    Table
        Cells are kept as strings; parse them with :meth:`Table.numeric`.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        An empty file, a header with an empty or repeated name, or a row whose
        number of cells differs from the header's (the message names the line).
    """
    path = Path(path)
    source = source or str(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8-sig") as fh:
            return _parse(fh, source)
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not a UTF-8 text file ({exc.reason})") from None
    except gzip.BadGzipFile as exc:
        raise ValueError(f"{source}: not a gzip file ({exc})") from None
    except csv.Error as exc:
        raise ValueError(f"{source}: not a valid CSV file ({exc})") from None


def _parse(fh: io.TextIOBase, source: str) -> Table:
    reader = csv.reader(fh)
    header = next(reader, None)
    if header is None or not any(cell.strip() for cell in header):
        raise ValueError(f"{source}: the file is empty; expected a header row of column names")
    columns = tuple(cell.strip() for cell in header)
    empty = [j + 1 for j, name in enumerate(columns) if not name]
    if empty:
        raise ValueError(f"{source}: header column {empty[0]} has no name")
    seen = set()
    for name in columns:
        if name in seen:
            raise ValueError(f"{source}: column name {name!r} appears twice in the header")
        seen.add(name)
    rows = []
    for row in reader:
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(columns):
            raise ValueError(
                f"{source}, line {reader.line_num}: {len(row)} cells, but the header "
                f"has {len(columns)} columns"
            )
        rows.append(tuple(row))
    return Table(columns=columns, rows=rows, source=source)


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
