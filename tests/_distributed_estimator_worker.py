"""Run under ``mpiexec -n K``: the scikit-learn estimators' ``fit(..., reducer=)`` on one rank.

Usage: ``python _distributed_estimator_worker.py OUTDIR SIZES [CASE ...]``, SIZES
the rows per rank (e.g. ``37,0,63``). Every rank builds the same whole data set
(:func:`_distributed_worker.whole_data` and :func:`class_labels`), fits the
case's estimator on its own rows with an :class:`bnmat.distributed.MPIReducer`
and saves the fitted model and its predictions on all rows to
``OUTDIR/<case>-rank<r>.npz``. ``tests/test_distributed_estimators.py``
compares them with one process on all rows; nothing is compared here.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _distributed_worker import flat, run_shard, whole_data  # noqa: E402

from bnmat import BNMLPClassifier, BNMLPRegressor  # noqa: E402
from bnmat.distributed import MPIReducer  # noqa: E402


def class_labels(y):
    """Three string classes cut from y; the first 37 rows hold none of ``"c"``."""
    labels = np.where(y < -0.5, "a", np.where(y < 0.5, "b", "c")).astype(object)
    labels[:37][labels[:37] == "c"] = "b"
    return labels.astype(str)


def estimator(case):
    """The estimator of a case (also built by the test for one process)."""
    common = dict(hidden_layer_sizes=(5, 4), early_stopping=False, random_state=3)
    if case == "regressor_lbfgs":
        return BNMLPRegressor(solver="lbfgs", max_iter=20, alpha=1e-3, **common)
    if case == "regressor_adam":
        return BNMLPRegressor(solver="adam", max_iter=3, learning_rate_init=1e-2, **common)
    if case == "regressor_auto":     # solver and batch size chosen from N of all ranks
        return BNMLPRegressor(solver="auto", max_iter=15, **common)
    if case == "classifier_lbfgs":
        # 12 iterations: the ill-conditioned cross-entropy's L-BFGS path amplifies
        # rounding (loss curves agree to 1e-16 at first, 1e-13 by iteration 16)
        return BNMLPClassifier(solver="lbfgs", max_iter=12, **common)
    if case == "classifier_adam":
        return BNMLPClassifier(solver="adam", max_iter=3, batch_size=30, **common)
    if case == "regressor_no_seed":
        return BNMLPRegressor(hidden_layer_sizes=(5,), solver="adam", max_iter=2,
                              early_stopping=False, random_state=None)
    raise ValueError(f"unknown case {case!r}")


def model_arrays(model, x):
    """The fitted model as arrays (and its predictions on the whole ``x``)."""
    res = {
        "params": flat(model.params_), "state": flat(model.state_),
        "x_mean": model.x_scaling_.mean, "x_scale": model.x_scaling_.scale,
        "loss_curve": np.asarray(model.loss_curve_), "n_iter": np.asarray(model.n_iter_),
        "solver": np.asarray(model.solver_),
    }
    if isinstance(model, BNMLPClassifier):
        res["classes"] = np.asarray(model.classes_)
        res["predict"] = np.asarray(model.predict(x))
        res["proba"] = model.predict_proba(x)
    else:
        res["y_mean"], res["y_scale"] = model.y_scaling_.mean, model.y_scaling_.scale
        res["predict"] = model.predict(x)
    return res


def run_cases(cases, red, lo, hi, out):
    x, y, _ = whole_data()
    labels = class_labels(y)
    for case in cases:
        if case == "bad_shard":      # NaN on the last non-empty rank: the same error everywhere
            xs = x[lo:hi].copy()
            if hi == x.shape[0] and hi > lo:
                xs[0, 1] = np.nan
            try:
                estimator("regressor_lbfgs").fit(xs, y[lo:hi], reducer=red)
                res = {"error": np.asarray("")}
            except ValueError as exc:
                res = {"error": np.asarray(str(exc))}
        elif case == "early_stopping":
            try:
                BNMLPRegressor(max_iter=2).fit(x[lo:hi], y[lo:hi], reducer=red)
                res = {"error": np.asarray("")}
            except ValueError as exc:
                res = {"error": np.asarray(str(exc))}
        else:
            target = labels if case.startswith("classifier") else y
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")      # ConvergenceWarning of the short runs
                model = estimator(case).fit(x[lo:hi], target[lo:hi], reducer=red)
            res = model_arrays(model, x)
        np.savez(f"{out}/{case}-rank{red.rank}.npz", **res)


def main(argv):
    run_shard(MPIReducer(), argv, run_cases)


if __name__ == "__main__":
    main(sys.argv[1:])
