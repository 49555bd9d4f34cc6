#!/usr/bin/env python
"""Peak memory and wall time of ``bnmat fit`` and ``bnmat predict`` on a large CSV file.

Usage (from the repository root; not collected by pytest)::

    python benchmarks/csv_io.py                  # 1e6 rows × 4 numeric columns (~50 MiB)
    python benchmarks/csv_io.py --rows 200000    # a quicker run

Writes the file to a temporary folder, then runs, each in its own fresh
process (``python -m bnmat``):

* ``bnmat fit DATA.csv --target y --epochs 1 --no-progress -o model.npz``
* ``bnmat predict model.npz DATA.csv -o predictions.csv``
* the same two commands on a 1,000-row file: the baseline.

For each it reports the wall time and the peak resident memory (``ru_maxrss``
of that child, from ``os.wait4``), and the ratio to the file's size of the
peak above the baseline: what the data cost. The baseline (interpreter, NumPy,
pandas, SciPy, numba and its compiled kernels) is ~250 MiB whatever the file.
The targets of issue 9: fit and predict ≤ 3× the file size; predict ≤ 2.7 s.
``--compare ../main/src`` runs another source tree the same way, interleaved,
for same-run ratios on a busy machine.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

def write_csv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        fh.write("x0,x1,x2,y\n")
        for start in range(0, rows, 100_000):
            m = min(100_000, rows - start)
            x = rng.normal(size=(m, 3))
            y = x[:, 0] - 0.5 * x[:, 1] ** 2 + 0.1 * rng.normal(size=m)
            np.savetxt(fh, np.column_stack([x, y]), delimiter=",", fmt="%.9f")


def run(cmd: list[str], env: dict) -> tuple[float, int, int]:
    """Wall seconds, peak RSS in bytes, exit status of ``cmd`` in a fresh process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        print(err, file=sys.stderr)
    return wall, usage.ru_maxrss * 1024, proc.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=2, help="runs of each command (best kept)")
    parser.add_argument("--compare", metavar="SRC",
                        help="another source tree (say the main branch's src/) run the same "
                             "way, interleaved, for same-run ratios")
    args = parser.parse_args()
    trees = {"this": str(Path(__file__).resolve().parents[1] / "src")}
    if args.compare:
        trees["compare"] = str(Path(args.compare).resolve())
    py = sys.executable
    mib = 1 << 20
    with tempfile.TemporaryDirectory() as tmp:
        big, tiny = Path(tmp) / "data.csv", Path(tmp) / "tiny.csv"
        write_csv(big, args.rows)
        write_csv(tiny, 1000)
        size = big.stat().st_size
        print(f"file: {args.rows} rows x 4 columns, {size / mib:.1f} MiB; baseline: the same "
              f"command on 1,000 rows; python {sys.version.split()[0]}; best of {args.repeat}")
        print(f"{'tree':<8}{'command':<10}{'wall s':>8}{'peak MiB':>10}{'base MiB':>10}"
              f"{'(peak-base)/file':>18}{'peak/file':>11}")
        for tree, src in trees.items():
            env = dict(os.environ, PYTHONPATH=src)
            model, preds = Path(tmp) / f"{tree}.npz", Path(tmp) / f"{tree}.csv"
            tmodel = Path(tmp) / f"{tree}-tiny.npz"

            def fit(data, out):
                return [py, "-m", "bnmat", "fit", str(data), "--target", "y", "--epochs", "1",
                        "--no-progress", "-o", str(out)]

            def predict(m, data):
                return [py, "-m", "bnmat", "predict", str(m), str(data), "-o", str(preds)]

            for name, cmd_big, cmd_tiny in (("fit", fit(big, model), fit(tiny, tmodel)),
                                            ("predict", predict(model, big),
                                             predict(tmodel, tiny))):
                runs, bases = [], []
                for _ in range(args.repeat):
                    bases.append(run(cmd_tiny, env))
                    runs.append(run(cmd_big, env))
                if any(r[2] for r in runs + bases):
                    print(f"{tree} {name}: failed", file=sys.stderr)
                    return 1
                wall = min(r[0] for r in runs)
                peak = min(r[1] for r in runs)
                base = min(r[1] for r in bases)
                print(f"{tree:<8}{name:<10}{wall:>8.2f}{peak / mib:>10.0f}{base / mib:>10.0f}"
                      f"{(peak - base) / size:>18.2f}{peak / size:>11.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
