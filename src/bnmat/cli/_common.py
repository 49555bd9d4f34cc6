"""What the ``bnmat`` commands share: the usage error, the metadata version, the
training/validation split, metrics, plots, and files written atomically."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["UsageError", "DEFAULT_MODEL", "CLI_FORMAT", "write_atomically", "write_predictions"]

#: Default file that ``bnmat fit`` writes the model to (in the working directory).
DEFAULT_MODEL = "bnmat-model.npz"


class UsageError(ValueError):
    """Bad input from the user: reported in one line with exit status 2."""


#: Version of the command line's metadata layout in model files.
CLI_FORMAT = 1


def _split(n: int, fraction: float, seed: int):
    """Random training and validation row indices (the validation part may be empty)."""
    if not 0 <= fraction < 1:
        raise UsageError(f"--validation-fraction must be in [0, 1); got {fraction}")
    n_val = int(round(fraction * n))
    if fraction > 0:
        n_val = max(n_val, 1)
    if n - n_val < 2:
        need = 2 + (1 if fraction > 0 else 0)
        raise UsageError(
            f"the data have {n} row(s); training with batch statistics needs at least 2 "
            f"rows{' plus 1 for validation' if fraction > 0 else ''}, so at least {need}"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _r2(y, y_hat) -> float:
    ss_tot = float(np.sum((y - np.mean(y, axis=0)) ** 2))
    return 1.0 - float(np.sum((y - y_hat) ** 2)) / ss_tot if ss_tot > 0 else float("nan")


def _fmt_metric(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.4f}"


def _json_float(v: float):
    return float(v) if np.isfinite(v) else None


def _check_writable(path, option: str) -> None:
    """Fail before training (or predicting), not after, when the output cannot be written.

    Besides the folder's existence, a file is created in it and removed, which
    is what writing the output atomically (a temporary name, then a rename)
    will need; permissions, read-only mounts and ACLs all show up here.
    """
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name")
    folder = target.parent
    if not folder.is_dir():
        raise UsageError(f"{option} {path}: the folder {str(folder)!r} does not exist; "
                         "create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe", dir=folder)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot write in the folder {str(folder)!r} "
                         f"({exc.strerror or exc})") from None
    os.close(fd)
    os.unlink(probe)
    if target.exists() and not os.access(target, os.W_OK):
        raise UsageError(f"{option} {path}: the file exists and is read-only")


def write_atomically(path, write) -> None:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it to ``path``.

    A failure (or Ctrl-C) leaves ``path`` as it was and no temporary file;
    the error names ``path``, not the temporary name.
    """
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                               dir=target.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(target)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _check_plotting() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError("--plot needs matplotlib (pip install bnmat[plot])")


def _plot(history, path, loss: str, task: str, ylabel: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = list(history["epoch"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(epochs, history["loss"], label="training")
    val = [v for v in history.get("val_loss", []) if v is not None]
    if val and len(val) == len(epochs):
        ax.plot(epochs, val, label="validation")
    ax.set_xlabel("epoch")
    if ylabel is None:
        ylabel = ("cross-entropy" if loss == "softmax_cross_entropy"
                  else "mean squared error (standardized target)")
    ax.set_ylabel(ylabel)
    ax.set_title(f"bnmat fit: loss curves ({task})")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def _csv_lines(name: str, values, chunk: int = 1 << 16):
    """The CSV text of one column, header first, in pieces of ``chunk`` rows.

    Floats are written with ``repr`` (the shortest text that reads back as
    the same float64); text through the csv module (quoted when needed).
    """
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow([name])
    yield buffer.getvalue()
    numbers = isinstance(values, np.ndarray) and values.dtype.kind == "f"
    for start in range(0, len(values), chunk):
        part = values[start:start + chunk]
        if numbers:
            yield "\n".join(map(repr, part.tolist())) + "\n"
        else:
            buffer = io.StringIO()
            csv.writer(buffer, lineterminator="\n").writerows([v] for v in part)
            yield buffer.getvalue()


def write_predictions(name: str, values, output) -> None:
    """One CSV column ``name`` to the file ``output`` (atomically), or to standard output."""
    if output:
        def write(tmp):
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                fh.writelines(_csv_lines(name, values))

        write_atomically(output, write)
        print(f"{len(values)} predictions written to {Path(output).resolve()}",
              file=sys.stderr)
    else:
        sys.stdout.writelines(_csv_lines(name, values))
