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

A second table (``--part defaults``) uses :class:`bnmat.PanelBNMLPRegressor`
**with its default hyperparameters** (only ``random_state`` and, per row, the
solver set) on the nine columns union, married, exper, expersq, hours,
occupation, educ, black, hisp:

* ``partially linear`` — union and married linear, the other seven in the network;
* ``FE network`` — all nine in the network;

each with ``solver`` = default ("auto", which is lbfgs for these 3,270 rows),
"adam", "sgd" and "lbfgs"; the held-out within R² is the mean over the seeds,
beside PanelOLS's. It ends with the union premium and its standard error
clustered by man: PanelOLS; bnmat without a network (equal to PanelOLS by
construction); and the partially linear model's cross-fitted estimate
(``inference="crossfit"``, 5 folds of men).
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
    parser.add_argument("--part", choices=["all", "models", "defaults"], default="all",
                        help="models: the first table; defaults: the second; all: both")
    args = parser.parse_args(argv)
    if args.part == "defaults":
        return defaults_table(args.seeds)

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
    if args.part == "all":
        return defaults_table(args.seeds)
    return 0


NINE = ["union", "married", "exper", "expersq", "hours", "occupation", "educ", "black", "hisp"]


def defaults_table(seeds) -> int:
    """Held-out within R² of PanelBNMLPRegressor's defaults, per solver; the union premium."""
    from linearmodels import PanelOLS

    from bnmat.datasets import load_wage_panel
    from bnmat.panel.estimator import PanelBNMLPRegressor
    from bnmat.panel.model import within_r2_score

    df = load_wage_panel(as_frame=True).frame
    train = df[df["year"].between(*TRAIN_YEARS)].reset_index(drop=True)
    test = df[df["year"].between(*TEST_YEARS)].reset_index(drop=True)
    _, _, y_hat = panel_ols(train, test)
    r2_ols = within_r2_score(test["lwage"], y_hat, test["nr"])
    print(f"\ndefault hyperparameters, nine columns; held-out within R², mean over seeds {seeds}")
    print(f"PanelOLS (entity effects; {', '.join(LINEAR)}): {r2_ols:.3f}")
    header = f"{'model':<18} {'solver':<14} {'within R2 test':>16} {'per seed':>24} {'kept':>18}"
    print(header)
    print("-" * len(header))
    models = {"partially linear": dict(linear_features=["union", "married"]),
              "FE network": {}}
    for name, kw in models.items():
        for solver in (None, "adam", "sgd", "lbfgs"):
            scores, kept = [], []
            for seed in seeds:
                params = dict(kw, random_state=seed)
                if solver is not None:
                    params["solver"] = solver
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")   # ConvergenceWarning at max_iter
                    est = PanelBNMLPRegressor(**params).fit(train[NINE], train["lwage"],
                                                            groups=train["nr"])
                y_hat = est.predict(test[NINE], groups=test["nr"])
                scores.append(within_r2_score(test["lwage"], y_hat, test["nr"]))
                kept.append(est.selected_[0])
            label = "default (" + est.solver_ + ")" if solver is None else solver
            per = " ".join(f"{v:.3f}" for v in scores)
            print(f"{name:<18} {label:<14} {np.mean(scores):>16.3f} {per:>24} "
                  f"{''.join(kept):>18}", flush=True)
    print("(kept: n = network, l = the linear fallback, per seed)")

    tr = train.set_index(["nr", "year"])
    res = PanelOLS(tr["lwage"], tr[LINEAR], entity_effects=True).fit(
        cov_type="clustered", cluster_entity=True)
    lin = PanelBNMLPRegressor(linear_features=LINEAR, network_features=[]).fit(
        train[LINEAR], train["lwage"], groups=train["nr"])
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cross = PanelBNMLPRegressor(linear_features=["union", "married"], inference="crossfit",
                                    random_state=seeds[0]).fit(
            train[NINE], train["lwage"], groups=train["nr"])
    seconds = time.perf_counter() - t0
    print("\nunion premium (1980-1985), standard errors clustered by man")
    print(f"  PanelOLS ({', '.join(LINEAR)}):      {res.params['union']:.4f} "
          f"(SE {res.std_errors['union']:.4f})")
    print(f"  bnmat, no network (same columns):       {lin.coef_linear_['union']:.4f} "
          f"(SE {lin.stderr_linear_['union']:.4f})")
    print(f"  bnmat partially linear, cross-fitted:   {cross.coef_linear_['union']:.4f} "
          f"(SE {cross.stderr_linear_['union']:.4f}; {seconds:.0f} s)")
    print(cross.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
