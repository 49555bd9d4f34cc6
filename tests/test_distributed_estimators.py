"""``BNMLPRegressor.fit`` and ``BNMLPClassifier.fit`` with ``reducer=``: one model from all ranks.

Real ``mpiexec -n 2`` (shards of 37 and 63 rows) and ``-n 3`` (37, 0, 63) runs
of ``tests/_distributed_estimator_worker.py``, one BLAS and numba thread per
rank, each rank fitting on its own rows. Every rank's fitted model (scalings,
parameters, batch-norm state, loss curve, iterations, solver, classes) and its
predictions on all rows must be bitwise identical across ranks and within
1e-12 relative of one process fitting all 100 rows.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from bnmat import BNMLPClassifier, BNMLPRegressor
from bnmat.distributed import SingleProcessReducer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _distributed_estimator_worker import class_labels, estimator, model_arrays  # noqa: E402
from _distributed_worker import whole_data  # noqa: E402
from test_distributed import LAYOUTS, RTOL, mpi_env, mpiexec, rel  # noqa: E402

FITS = ("regressor_lbfgs", "regressor_adam", "regressor_auto", "classifier_lbfgs",
        "classifier_adam")
CASES = FITS + ("regressor_no_seed", "bad_shard", "early_stopping")


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks-empty-shard"])
def runs(request, tmp_path_factory):
    k = request.param
    out = tmp_path_factory.mktemp(f"est{k}")
    env = mpi_env()
    cmd = [mpiexec(), "-n", str(k), sys.executable,
           str(HERE / "_distributed_estimator_worker.py"), str(out),
           ",".join(map(str, LAYOUTS[k])), *CASES]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n"
                    f"{proc.stderr[-4000:]}")

    def load(case):
        return [dict(np.load(out / f"{case}-rank{r}.npz")) for r in range(k)]

    return k, load


def one_process(case):
    """The case's estimator fitted in this process on all rows, as arrays."""
    x, y, _ = whole_data()
    target = class_labels(y) if case.startswith("classifier") else y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = estimator(case).fit(x, target)
    return model_arrays(model, x)


def differences(got: dict, want: dict) -> dict:
    """Relative difference per numeric array; non-numeric arrays must be equal (inf if not)."""
    assert set(got) == set(want), (sorted(got), sorted(want))
    out = {}
    for key, b in want.items():
        a = got[key]
        if b.dtype.kind in "fc":
            out[key] = rel(a, b)
        else:
            out[key] = 0.0 if np.array_equal(a, b) else np.inf
    return out


@pytest.mark.parametrize("case", FITS)
def test_fit_with_a_reducer_equals_one_process(runs, case):
    k, load = runs
    ranks = load(case)
    for r, res in enumerate(ranks[1:], start=1):
        for key, value in res.items():
            assert np.array_equal(value, ranks[0][key]), f"{key} differs between rank 0 and {r}"
    diff = differences(ranks[0], one_process(case))
    worst = {key: d for key, d in diff.items() if not d <= RTOL}
    assert not worst, f"{case}, {k} ranks: relative differences from one process {worst}"


def test_the_comparison_fails_on_a_fit_of_one_shard():
    """What the checks compare is sensitive: a fit on rank 0's 37 rows alone is far off."""
    x, y, _ = whole_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shard = model_arrays(estimator("regressor_lbfgs").fit(x[:37], y[:37]), x)
    diff = differences(shard, one_process("regressor_lbfgs"))
    assert diff["params"] > 1e-3 and diff["x_mean"] > 1e-3 and diff["predict"] > 1e-3


def test_auto_choices_count_the_rows_of_all_ranks(runs):
    _, load = runs
    assert str(load("regressor_auto")[0]["solver"]) == "lbfgs"
    assert list(load("classifier_lbfgs")[0]["classes"]) == ["a", "b", "c"]   # "c" not on rank 0


def test_random_state_none_gives_every_rank_rank_zeros_seeds(runs):
    _, load = runs
    ranks = load("regressor_no_seed")
    for res in ranks[1:]:
        assert np.array_equal(res["params"], ranks[0]["params"])
        assert np.array_equal(res["predict"], ranks[0]["predict"])


def test_a_bad_shard_raises_the_same_error_on_every_rank(runs):
    k, load = runs
    errors = {str(res["error"]) for res in load("bad_shard")}
    assert len(errors) == 1, errors
    (error,) = errors
    assert error.startswith(f"rank {k - 1}: ") and "NaN" in error


def test_early_stopping_with_a_reducer_is_refused_on_every_rank(runs):
    _, load = runs
    for res in load("early_stopping"):
        assert "pass early_stopping=False" in str(res["error"])


# ------------------------------------------------------------------ in one process
class _TwoRanks(SingleProcessReducer):
    """Claims two processes (only the checks before any data exchange are exercised)."""

    size = 2


@pytest.mark.parametrize("cls", [BNMLPRegressor, BNMLPClassifier])
def test_single_process_reducer_is_the_ordinary_fit(cls):
    x, y, _ = whole_data()
    target = class_labels(y) if cls is BNMLPClassifier else y
    kw = dict(hidden_layer_sizes=(4,), max_iter=3, random_state=0)   # early stopping on
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = cls(**kw).fit(x, target)
        b = cls(**kw).fit(x, target, reducer=SingleProcessReducer())
    got, want = model_arrays(b, x), model_arrays(a, x)
    assert all(np.array_equal(got[key], want[key]) for key in want)


@pytest.mark.parametrize("cls", [BNMLPRegressor, BNMLPClassifier])
def test_reducer_argument_checks(cls):
    x, y, _ = whole_data()
    target = class_labels(y) if cls is BNMLPClassifier else y
    with pytest.raises(TypeError):
        cls().fit(x, target, reducer=object())
    with pytest.raises(ValueError, match="pass early_stopping=False"):
        cls(early_stopping=True).fit(x, target, reducer=_TwoRanks())
    model = cls(early_stopping=False)
    with pytest.raises(ValueError, match="rank 0: sample_weight is not supported"):
        model.fit(x, target, sample_weight=np.ones(len(x)), reducer=_TwoRanks())
    assert not hasattr(model, "params_")      # a failed fit leaves the estimator unfitted
