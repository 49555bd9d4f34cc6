"""Fixed-effects networks beside the linear fixed-effects regression on the wage panel.

Run from the repository root (needs scikit-learn, pandas and linearmodels)::

    python benchmarks/panel_wage.py
    python benchmarks/panel_wage.py --seeds 0 1 2 3 4

Data: the Vella–Verbeek wage panel bundled with bnmat (545 men, 1980–1987,
target ``lwage``). Every model is fitted on **1980–1985** and scored on the
held-out periods **1986–1987** of the same men.

Scores on the held-out rows:

* **within R²** — ``1 − ‖M(y − ŷ)‖²/‖My‖²`` with M removing each man's mean
  over his held-out rows (:func:`bnmat.panel.model.within_r2_score`). Unit
  effects cancel, so it measures how well the model predicts each man's
  change in wage between 1986 and 1987 from the change in his covariates;
* **RMSE** of the level forecast ``ŷ = α̂_i + x_linᵀb + f(x)``, which also
  uses each man's estimated effect from 1980–1985.

Models:

* ``PanelOLS`` — ``linearmodels.PanelOLS(lwage ~ exper + expersq + union +
  married + hours, entity_effects=True)``, the reference; its forecast adds
  its estimated effects;
* ``bnmat, linear`` — :class:`bnmat.PanelBNMLPRegressor` with the same linear
  part and no network (``network_features=[]``): the same estimator computed
  by training (its coefficients are compared with PanelOLS's);
* ``FE network`` — unit effects + f(exper, hours, married, union, occupation,
  educ, black, hisp), f a 32-unit batch-normalized tanh network;
* ``FE network, Adam + ES`` — the same, trained by Adam on mini-batches of
  whole men (≥ 200 rows), stopped early on the within loss of 20% of the men
  held out of training;
* ``partially linear`` — unit effects + b·(union, married) + f(exper, hours,
  occupation, educ, black, hisp);
* ``FE network, group BN`` — the FE network with group-wise batch norm
  (statistics per man).

Unless said otherwise the networks are trained full-batch by L-BFGS (exact
gradients, at most 300 iterations) with α = 1e-2. No setting was tuned on the
held-out years (the early-stopping row was added after the L-BFGS rows showed
overfitting). Several seeds give the spread over initialisations.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

LINEAR = ["exper", "expersq", "union", "married", "hours"]
NETWORK = ["exper", "hours", "married", "union", "occupation", "educ", "black", "hisp"]
TRAIN_YEARS, TEST_YEARS = (1980, 1985), (1986, 1987)


def panel_ols(train, test):
    """PanelOLS with entity effects; returns (coefficients, train within R², test ŷ)."""
    from linearmodels import PanelOLS

    tr = train.set_index(["nr", "year"])
    res = PanelOLS(tr["lwage"], tr[LINEAR], entity_effects=True).fit()
    effects = res.estimated_effects.groupby(level="nr").first()["estimated_effects"]
    y_hat = test[LINEAR].to_numpy() @ res.params[LINEAR].to_numpy() \
        + effects.reindex(test["nr"]).to_numpy()
    return res.params[LINEAR].to_numpy(), float(res.rsquared_within), y_hat


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-iter", type=int, default=300)
    args = parser.parse_args(argv)

    from bnmat.datasets import load_wage_panel
    from bnmat.panel.estimator import PanelBNMLPRegressor
    from bnmat.panel.model import within_r2_score

    df = load_wage_panel(as_frame=True).frame
    train = df[df["year"].between(*TRAIN_YEARS)].reset_index(drop=True)
    test = df[df["year"].between(*TEST_YEARS)].reset_index(drop=True)
    y_tr, y_te = train["lwage"].to_numpy(), test["lwage"].to_numpy()
    g_tr, g_te = train["nr"].to_numpy(), test["nr"].to_numpy()
    print(f"wage panel: {train['nr'].nunique()} men; train {TRAIN_YEARS[0]}-{TRAIN_YEARS[1]} "
          f"({len(train)} rows), test {TEST_YEARS[0]}-{TEST_YEARS[1]} ({len(test)} rows)")

    def rmse(y_hat):
        return float(np.sqrt(np.mean((y_te - y_hat) ** 2)))

    rows = []
    t0 = time.perf_counter()
    b_ols, r2_train_ols, y_hat = panel_ols(train, test)
    rows.append(("PanelOLS (entity effects)", [(r2_train_ols, within_r2_score(y_te, y_hat, g_te),
                                                rmse(y_hat), time.perf_counter() - t0)]))

    def bnmat_row(name, seeds, columns, **params):
        results = []
        for seed in seeds:
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")   # ConvergenceWarning at max_iter
                est = PanelBNMLPRegressor(random_state=seed, **params)
                est.fit(train[columns], y_tr, groups=g_tr)
            elapsed = time.perf_counter() - t
            fit_hat = est.predict(train[columns], groups=g_tr)
            y_hat = est.predict(test[columns], groups=g_te)
            results.append((within_r2_score(y_tr, fit_hat, g_tr),
                            within_r2_score(y_te, y_hat, g_te), rmse(y_hat), elapsed))
        rows.append((name, results))
        return est

    lin = bnmat_row("bnmat, linear (f = 0)", [0], LINEAR, linear_features=LINEAR,
                    network_features=[])
    b_bnmat = np.array([lin.coef_linear_[c] for c in LINEAR])

    net = dict(hidden_layer_sizes=(32,), activation="tanh", solver="lbfgs",
               max_iter=args.max_iter, alpha=1e-2)
    bnmat_row("FE network", args.seeds, NETWORK, **net)
    bnmat_row("FE network, Adam + ES", args.seeds, NETWORK, hidden_layer_sizes=(32,),
              activation="tanh", solver="adam", batch_size=200, max_iter=args.max_iter,
              early_stopping=True, validation_fraction=0.2)
    bnmat_row("partially linear", args.seeds, NETWORK, linear_features=["union", "married"],
              **net)
    bnmat_row("FE network, group BN", args.seeds, NETWORK, group_batchnorm=True, **net)

    print()
    print("coefficients (linear part)   PanelOLS        bnmat, f = 0")
    for c, a, b in zip(LINEAR, b_ols, b_bnmat):
        print(f"  {c:<26} {a:>14.9f}  {b:>14.9f}")
    rel = np.max(np.abs(b_bnmat - b_ols) / np.abs(b_ols))
    print(f"  largest relative difference: {rel:.1e}")
    print()
    header = (f"{'model':<26} {'within R2 train':>16} {'within R2 test':>16} "
              f"{'RMSE test':>15} {'seconds':>8}")
    print(header)
    print("-" * len(header))
    for name, results in rows:
        arr = np.array(results)
        mean = arr.mean(axis=0)
        if len(results) > 1:
            sd = arr.std(axis=0, ddof=1)
            cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[:3], sd[:3])]
        else:
            cells = [f"{m:.3f}" for m in mean[:3]]
        print(f"{name:<26} {cells[0]:>16} {cells[1]:>16} {cells[2]:>15} {mean[3]:>8.1f}")
    if len(args.seeds) > 1:
        print(f"(networks: mean ± sd over seeds {args.seeds})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
