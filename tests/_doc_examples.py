"""Run a guide's ```python blocks and compare what they print with what the guide says.

A block documents its output as ``# ...`` comment lines right after a
``print(...)`` statement. Numbers are compared loosely (0.01 + 5 % of the
documented value), since BLAS builds round differently; the words must match.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

_NUMBER = r"-?\d+(?:\.\d*)?(?:e-?\d+)?"


def expected_output(block: str) -> list[str]:
    """The ``# ...`` comment lines right after a print(...) statement: its documented output."""
    out, after_print, depth = [], False, 0
    for line in block.splitlines():
        stripped = line.strip()
        if after_print and depth == 0 and stripped.startswith("# "):
            out.append(stripped[2:])
            continue
        if depth > 0:                       # continuation of a multi-line print(...)
            depth += line.count("(") - line.count(")")
            continue
        after_print = "print(" in line
        depth = line.count("(") - line.count(")") if after_print else 0
    return out


def same_output(got: str, want: str) -> bool:
    """Equal up to the last digits of numbers."""
    if re.sub(_NUMBER, "#", got).split() != re.sub(_NUMBER, "#", want).split():
        return False
    pairs = zip(re.findall(_NUMBER, got), re.findall(_NUMBER, want))
    return all(abs(float(a) - float(b)) <= 0.01 + 0.05 * abs(float(b)) for a, b in pairs)


def check_doc_examples(doc: Path, capsys, *, ignore_warnings: bool = False) -> None:
    """Run every ```python block of ``doc`` in order, in one namespace; assert its output.

    Parameters
    ----------
    doc : Path
        The Markdown guide.
    capsys : pytest's capsys fixture
    ignore_warnings : bool
        Silence warnings the examples provoke on purpose.
    """
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), flags=re.S)
    assert blocks
    namespace: dict = {"__name__": doc.stem + "_guide"}
    for i, block in enumerate(blocks):
        capsys.readouterr()
        with warnings.catch_warnings():
            if ignore_warnings:
                warnings.simplefilter("ignore")
            exec(compile(block, f"{doc.name}, block {i}", "exec", dont_inherit=True), namespace)
        got = capsys.readouterr().out.splitlines()
        want = expected_output(block)
        assert len(got) == len(want), (i, got, want)
        for g, w in zip(got, want):
            assert same_output(g, w), (i, g, w)
