"""Cross-validated R² of BNMLPRegressor against scikit-learn's MLPRegressor and ridge.

Run from the repository root::

    python benchmarks/compare_sklearn.py            # both data sets, 5 folds
    python benchmarks/compare_sklearn.py --folds 10 --seeds 0 1 2

Every model is scored by the same splits with ``cross_val_score(scoring="r2")``:

* the bundled Vella–Verbeek wage panel (4,360 rows, target ``lwage``), with
  ``GroupKFold`` by person so that no man is in both the training and the test
  part of a split (his eight rows are not independent);
* scikit-learn's diabetes data (442 rows, 10 features), with shuffled ``KFold``;
* statsmodels' star98 data (303 school districts, 20 features; target: the share
  of pupils above the national median in maths), with shuffled ``KFold``.

``BNMLPRegressor()``'s defaults hold out 10 % of the training rows, stop on
them, and keep least squares instead of the network unless the network beats
it there by more than a standard error (``linear_fallback``).

Models, each with its library's default settings (only ``random_state`` set):

* ``BNMLPRegressor()`` — bnmat, which standardizes X and y internally;
* ``MLPRegressor()`` — on the raw columns, exactly as constructed by default;
* ``StandardScaler → MLPRegressor()`` — the way scikit-learn's guide advises;
* ``StandardScaler → RidgeCV(alphas=logspace(-3, 3, 13))`` — the linear benchmark.

Several seeds vary the neural networks' initialisation and shuffling; the
table reports the mean and standard deviation of R² over folds × seeds.

A last table scores ``bnmat fit`` itself (the command line with its defaults:
64-64 network, 50 epochs) on its own 80/20 validation split of the wage panel,
next to the same models fitted on the same training rows and scored on the
same validation rows, for each seed (the seed also draws the split).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from sklearn.datasets import load_diabetes
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import GroupKFold, KFold, cross_val_score
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bnmat import BNMLPRegressor
from bnmat.datasets import load_wage_panel


def models(seed: int) -> dict:
    return {
        "BNMLPRegressor()": BNMLPRegressor(random_state=seed),
        "MLPRegressor()": MLPRegressor(random_state=seed),
        "StandardScaler+MLPRegressor()": make_pipeline(StandardScaler(),
                                                       MLPRegressor(random_state=seed)),
        "StandardScaler+RidgeCV": make_pipeline(StandardScaler(),
                                                RidgeCV(alphas=np.logspace(-3, 3, 13))),
    }


def datasets(folds: int) -> dict:
    panel = load_wage_panel()
    diabetes = load_diabetes()
    return {
        "wage panel (lwage), GroupKFold by person": (
            panel.data, panel.target, GroupKFold(n_splits=folds), panel.entity),
        "wage panel (lwage), shuffled KFold by row": (
            panel.data, panel.target, KFold(n_splits=folds, shuffle=True, random_state=0), None),
        "diabetes, shuffled KFold": (
            diabetes.data, diabetes.target, KFold(n_splits=folds, shuffle=True, random_state=0),
            None),
        "star98, shuffled KFold": (
            *star98(), KFold(n_splits=folds, shuffle=True, random_state=0), None),
    }


def star98():
    """statsmodels' star98 (303 California school districts, 20 columns): X and the share of
    pupils above the national median maths score, ``NABOVE / (NABOVE + NBELOW)``."""
    import statsmodels.api as sm

    data = sm.datasets.star98.load_pandas()
    counts = data.endog.to_numpy(dtype=float)
    return data.exog.to_numpy(dtype=float), counts[:, 0] / counts.sum(axis=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=["wage", "diabetes", "star98"], default=None)
    args = parser.parse_args(argv)

    import sklearn

    import bnmat

    print(f"bnmat {bnmat.__version__}, scikit-learn {sklearn.__version__}, numpy {np.__version__}")
    print(f"{args.folds}-fold cross-validated R², seeds {args.seeds}: "
          "mean ± sd over folds × seeds")
    for data_name, (X, y, cv, groups) in datasets(args.folds).items():
        if args.only and not data_name.startswith(args.only):
            continue
        print(f"\n{data_name}: {X.shape[0]} rows, {X.shape[1]} features")
        print(f"  {'model':<32} {'R² mean':>8} {'± sd':>7} {'seconds':>8}")
        for model_name in models(0):
            scores, start = [], time.perf_counter()
            seeds = [args.seeds[0]] if "Ridge" in model_name else args.seeds
            for seed in seeds:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    scores.extend(cross_val_score(models(seed)[model_name], X, y, groups=groups,
                                                  cv=cv, scoring="r2"))
            elapsed = time.perf_counter() - start
            print(f"  {model_name:<32} {np.mean(scores):8.4f} {np.std(scores):7.4f} "
                  f"{elapsed:8.1f}")
    if args.only in (None, "wage"):
        cli_split(args.seeds)
    return 0


def cli_split(seeds) -> None:
    """Validation R² of ``bnmat fit`` (defaults) and the other models on its split."""
    import contextlib
    import io
    import os
    import tempfile

    from bnmat import load
    from bnmat.cli._common import _split
    from bnmat.cli import main as bnmat_main

    panel = load_wage_panel()
    X, y = panel.data, panel.target
    print("\nwage panel, the 80/20 validation split of `bnmat fit --seed S` (validation R²)")
    names = ["bnmat fit (64-64, 50 epochs)", *models(0)]
    print("  " + f"{'seed':<6}" + "".join(f"{n[:30]:>32}" for n in names))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            path = os.path.join(tmp, "model.npz")
            with contextlib.redirect_stdout(io.StringIO()):
                status = bnmat_main(["fit", "--no-progress", "--seed", str(seed), "--output", path])
            if status != 0:
                raise SystemExit(f"bnmat fit failed with status {status}")
            scores = [load(path).metadata["metrics"]["validation"]]
            train_rows, val_rows = _split(len(y), 0.2, seed)
            for model in models(seed).values():
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    model.fit(X[train_rows], y[train_rows])
                scores.append(model.score(X[val_rows], y[val_rows]))
            print("  " + f"{seed:<6}" + "".join(f"{v:32.4f}" for v in scores))


if __name__ == "__main__":
    raise SystemExit(main())
