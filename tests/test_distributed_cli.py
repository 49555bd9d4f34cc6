"""``mpiexec -n 2 bnmat fit --distributed`` writes the model one process writes.

Adam (mini-batches, validation split) and L-BFGS on the bundled wage panel;
a bad cell in one rank's slice ends both ranks with that rank's message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnmat import io
from bnmat.cli import main
from bnmat.layers import tree_leaves

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_distributed import mpi_env, mpiexec  # noqa: E402

RTOL = 1e-12


def run_distributed(k, args, cwd, timeout=600):
    env = mpi_env()
    cmd = [mpiexec(), "-n", str(k), sys.executable, "-m", "bnmat", "fit", *args,
           "--distributed"]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def model_differences(path_a, path_b) -> dict:
    """Largest relative differences between two model files.

    Parameters: ``max|a − b| / max|b|`` per array. Batch-norm means relative
    to the column standard deviation (a mean that is zero up to rounding has
    no relative accuracy of its own), variances relative to their maximum;
    counts and the non-numeric metadata must be equal.
    """
    a, b = io.load(path_a), io.load(path_b)
    assert a.net == b.net

    def rel(u, v):
        u, v = np.asarray(u, dtype=float), np.asarray(v, dtype=float)
        return float(np.max(np.abs(u - v)) / max(float(np.max(np.abs(v))), 1e-300))

    state = 0.0
    for s, t in zip(a.state, b.state):
        if "var" in t:
            sd = float(np.sqrt(np.max(t["var"])))
            state = max(state, float(np.max(np.abs(s["mean"] - t["mean"]))) / sd,
                        rel(s["var"], t["var"]))
            assert int(s["count"]) == int(t["count"])
    numeric = ("x_mean", "x_scale", "y_mean", "y_scale", "metrics", "data")
    for key in a.metadata:
        if key not in numeric:
            assert a.metadata[key] == b.metadata[key], key
    return {
        "params": max(rel(u, v) for u, v in zip(tree_leaves(a.params), tree_leaves(b.params))),
        "state": state,
        "scaling": max(rel(a.metadata[k], b.metadata[k])
                       for k in ("x_mean", "x_scale", "y_mean", "y_scale")),
        "metrics": max(rel(a.metadata["metrics"][k], b.metadata["metrics"][k])
                       for k in ("train", "validation")),
    }


@pytest.mark.parametrize("options", [
    ["--epochs", "2", "--hidden", "16", "8", "--batch-size", "300"],
    ["--solver", "lbfgs", "--epochs", "5", "--hidden", "8"],
], ids=["adam", "lbfgs"])
def test_distributed_fit_writes_the_same_model(tmp_path, options, capsys):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    assert main(["fit", *options, "--no-progress", "-o", str(one)]) == 0
    printed = capsys.readouterr().out
    proc = run_distributed(2, [*options, "--no-progress", "-o", str(two)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    # rank 0 alone prints: the same lines as one process, plus the rank count
    assert proc.stdout.count("model written to") == 1
    assert printed.splitlines()[-2] == proc.stdout.splitlines()[-2]   # the metrics line
    diffs = model_differences(two, one)
    assert max(diffs.values()) <= RTOL, diffs


def test_the_model_comparison_fails_on_another_model(tmp_path):
    one, other = tmp_path / "one.npz", tmp_path / "other.npz"
    options = ["--epochs", "1", "--hidden", "8", "--no-progress"]
    assert main(["fit", *options, "-o", str(one)]) == 0
    assert main(["fit", *options, "--seed", "1", "-o", str(other)]) == 0
    with pytest.raises(AssertionError):      # another seed: another split and other weights
        diffs = model_differences(other, one)
        assert max(diffs.values()) <= RTOL, diffs


def test_a_failing_rank_ends_every_rank_with_its_message(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["a,b,y"] + [f"{u:.6f},{v:.6f},{w:.6f}" for u, v, w in rng.normal(size=(40, 3))]
    lines[31] = "1.0,oops,2.0"            # row 30: in rank 1's slice (rows 20–39)
    data = tmp_path / "bad.csv"
    data.write_text("\n".join(lines) + "\n")
    proc = run_distributed(2, [str(data), "--target", "y", "--epochs", "1", "--no-progress",
                               "-o", str(tmp_path / "m.npz")], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "rank 1 of 2" in proc.stderr and "oops" in proc.stderr
    assert not (tmp_path / "m.npz").exists()


def test_distributed_refuses_classification(tmp_path):
    proc = run_distributed(2, ["--classify", "--epochs", "1", "-o", str(tmp_path / "m.npz")],
                           tmp_path, timeout=120)
    assert proc.returncode != 0 and "regression" in proc.stderr
