"""Monte Carlo study: the linear coefficient of a partially linear fixed-effects model.

Run from the repository root (needs scikit-learn, pandas, linearmodels, doubleml)::

    python benchmarks/panel_simulation.py                       # 200 replications, N = 50 and 100
    python benchmarks/panel_simulation.py --reps 20 --units 50  # a quick look

Set ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` on a shared machine: the
problems are tiny and BLAS threads only contend (3× the CPU time measured).

The data, for unit i = 1..N and period t = 1..T (T = 5), with θ = 0.5::

    y_it = α_i + θ d_it + g(x_it) + e_it,    g(x) = cos(2 x₁) + 0.5 x₂²
    d_it = 0.5 α_i + m(x_it) + v_it,         m(x) = 0.8 cos(2 x₁) + 0.3 x₂
    x_it = 0.5 α_i + N(0, I₂),   α_i, e_it, v_it ~ N(0, 1) independent

so d is correlated with x (through m, which shares g's nonlinearity) and with
the unit effect; a regression linear in x is biased for θ.

``--design b`` is a second data-generating process, written after the
default ``crossfit_alpha`` was chosen on the first (design a) and used to
check that choice on data it was not tuned on::

    g(x) = 1.5 tanh(2 x₁) + 0.5 x₁ x₂,   m(x) = 0.6 tanh(2 x₁) + 0.4 (x₂² − 1)

(a threshold-like effect and an interaction instead of a periodic one).

Estimators of θ and their 95 % intervals:

* ``PanelOLS`` — ``linearmodels.PanelOLS(y ~ d + x₁ + x₂, entity_effects=True)``,
  clustered by unit (linear in x: biased by design);
* ``bnmat joint`` — :class:`bnmat.PanelBNMLPRegressor` with ``d`` linear and a
  (8,) network of x, defaults otherwise (at most 200 L-BFGS iterations,
  early stopping on held-out units, linear fallback); its interval is the
  within interval that treats the fitted network as known (no valid SE
  exists; shown for comparison);
* ``bnmat crossfit`` — the same with ``inference="crossfit"`` (5 folds of
  units, clustered SE; the nuisance networks penalized by ``crossfit_alpha``
  and trained without early stopping or fallback; ``--n-rep R`` fold draws
  with median aggregation, default 3 as the estimator's);
* ``DoubleMLPLR`` — ``doubleml.DoubleMLPLR`` (partialling out, 5 folds of rows)
  on the within-transformed data (ỹ, d̃, x̃ demeaned by unit), with
  ``SplineTransformer → RidgeCV`` learners for both nuisance functions.

Reported per estimator: bias, RMSE, mean SE, coverage of the 95 % interval,
each with its Monte Carlo standard error (bias: sd/√R; RMSE: delta method;
coverage: √(p(1−p)/R)). A line of progress per replication goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings

import numpy as np

THETA = 0.5
ESTIMATORS = ("PanelOLS", "bnmat joint", "bnmat crossfit", "DoubleMLPLR")


def simulate(n_units: int, n_periods: int, rng, design: str = "a"):
    """One panel: X = [d, x₁, x₂] (N·T, 3), y, unit labels."""
    units = np.repeat(np.arange(n_units), n_periods)
    alpha = rng.normal(size=n_units)[units]
    x = 0.5 * alpha[:, None] + rng.normal(size=(units.size, 2))
    if design == "a":
        m = 0.8 * np.cos(2 * x[:, 0]) + 0.3 * x[:, 1]
        g = np.cos(2 * x[:, 0]) + 0.5 * x[:, 1] ** 2
    elif design == "b":
        m = 0.6 * np.tanh(2 * x[:, 0]) + 0.4 * (x[:, 1] ** 2 - 1)
        g = 1.5 * np.tanh(2 * x[:, 0]) + 0.5 * x[:, 0] * x[:, 1]
    else:
        raise ValueError(f"design must be 'a' or 'b'; got {design!r}")
    d = 0.5 * alpha + m + rng.normal(size=units.size)
    y = alpha + THETA * d + g + rng.normal(size=units.size)
    return np.column_stack([d, x]), y, units


def panel_ols(X, y, units):
    import pandas as pd
    from linearmodels import PanelOLS

    index = pd.MultiIndex.from_arrays([units, np.arange(units.size) % 1000])
    exog = pd.DataFrame(X, index=index, columns=["d", "x1", "x2"])
    res = PanelOLS(pd.Series(y, index=index), exog, entity_effects=True).fit(
        cov_type="clustered", cluster_entity=True)
    ci = res.conf_int().loc["d"].to_numpy()
    return float(res.params["d"]), float(res.std_errors["d"]), ci


def bnmat_fits(X, y, units, seed, n_rep=1, crossfit_alpha=0.1, max_iter=200):
    from bnmat import PanelBNMLPRegressor
    from bnmat.panel.inference import within_inference

    common = dict(hidden_layer_sizes=(8,), max_iter=max_iter, linear_features=[0],
                  random_state=seed)
    # One fit gives both: the fitted model is the joint one (coef_linear_model_), and
    # inference="crossfit" adds the cross-fitted estimate with its standard error.
    joint = PanelBNMLPRegressor(inference="crossfit", cv=5, n_rep=n_rep,
                                crossfit_alpha=crossfit_alpha, **common).fit(
        X, y, groups=units)
    b = joint.coef_linear_model_["x0"]
    out = {}
    if joint.selected_ == "network":
        # The network part of the joint fit, treated as known: y − f̂(x) on d.
        f_hat = joint.model_.network_output(X) - b * X[:, 0]
        naive = within_inference(X[:, :1], y - f_hat, np.array([b]), names=["d"],
                                 effects="entity", entity_codes=units)
        out["bnmat joint"] = (b, float(naive.stderr[0]), naive.conf_int()[0])
    else:   # the linear fallback: a PanelOLS-equal fit on d, x1, x2
        info = within_inference(X, y, np.array(list(joint.coef_linear_model_.values())),
                                names=["d", "x1", "x2"], effects="entity", entity_codes=units)
        out["bnmat joint"] = (b, float(info.stderr[0]), info.conf_int()[0])
    ci = joint.conf_int_linear()["x0"]
    out["bnmat crossfit"] = (joint.coef_linear_["x0"], joint.stderr_linear_["x0"],
                             np.array(ci))
    return out, joint.selected_


def doubleml_plr(X, y, units, seed):
    import doubleml as dml
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import SplineTransformer

    from bnmat.panel import demean

    z = demean(np.column_stack([y, X]), units)[0]
    data = dml.DoubleMLData.from_arrays(z[:, 2:], z[:, 0], z[:, 1])

    def learner():
        return make_pipeline(SplineTransformer(n_knots=6), RidgeCV(np.logspace(-3, 3, 7)))

    np.random.seed(seed)   # doubleml draws its folds from NumPy's global generator
    plr = dml.DoubleMLPLR(data, learner(), learner(), n_folds=5, score="partialling out")
    plr.fit()
    ci = plr.confint(level=0.95).to_numpy()[0]
    return float(plr.coef[0]), float(plr.se[0]), ci


def summarize(records):
    table = {}
    for name in ESTIMATORS:
        est = np.array([r[name][0] for r in records])
        se = np.array([r[name][1] for r in records])
        cover = np.array([r[name][2] <= THETA <= r[name][3] for r in records], dtype=float)
        reps = est.size
        err = est - THETA
        bias, sd = float(err.mean()), float(err.std(ddof=1))
        mse = float(np.mean(err ** 2))
        rmse = math.sqrt(mse)
        # delta method: sd(err²)/√R / (2 RMSE)
        rmse_mc = float(np.std(err ** 2, ddof=1) / math.sqrt(reps) / (2 * rmse))
        p = float(cover.mean())
        table[name] = {"bias": bias, "bias_mc": sd / math.sqrt(reps), "rmse": rmse,
                       "rmse_mc": rmse_mc, "sd": sd, "mean_se": float(se.mean()),
                       "coverage": p, "coverage_mc": math.sqrt(p * (1 - p) / reps),
                       "bias_over_se": bias / float(se.mean()), "reps": reps}
    return table


def print_table(n_units, n_periods, table, seconds):
    print(f"\nN = {n_units} units × T = {n_periods}  ({table[ESTIMATORS[0]]['reps']} "
          f"replications, θ = {THETA}; ± Monte Carlo standard errors; {seconds:.0f} s)")
    head = (f"{'estimator':<16} {'bias':>16} {'RMSE':>16} {'sd':>7} {'mean SE':>8} "
            f"{'bias/SE':>8} {'95% coverage':>16}")
    print(head)
    print("-" * len(head))
    for name, r in table.items():
        print(f"{name:<16} {r['bias']:>8.4f} ± {r['bias_mc']:.4f} {r['rmse']:>8.4f} ± "
              f"{r['rmse_mc']:.4f} {r['sd']:>7.4f} {r['mean_se']:>8.4f} "
              f"{r['bias_over_se']:>8.2f} {r['coverage']:>8.3f} ± {r['coverage_mc']:.3f}")
    sys.stdout.flush()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--units", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--periods", type=int, default=5)
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--json", help="also write the tables to this JSON file")
    parser.add_argument("--n-rep", type=int, default=3,
                        help="fold draws of the cross-fitted estimate (median aggregation)")
    parser.add_argument("--design", choices=["a", "b"], default="a",
                        help="data-generating process (see the module docstring)")
    parser.add_argument("--crossfit-alpha", type=float, default=0.1,
                        help="weight decay of the cross-fitting nuisance networks")
    parser.add_argument("--max-iter", type=int, default=200,
                        help="L-BFGS iterations of every bnmat fit (the default's 200)")
    args = parser.parse_args(argv)

    results = {}
    for n_units in args.units:
        records, fallbacks = [], 0
        t0 = time.process_time()
        for rep in range(args.reps):
            rng = np.random.default_rng([args.seed, n_units, rep])
            X, y, units = simulate(n_units, args.periods, rng, args.design)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = {"PanelOLS": panel_ols(X, y, units)}
                fits, selected = bnmat_fits(X, y, units, rep, args.n_rep,
                                            args.crossfit_alpha, args.max_iter)
                row.update(fits)
                row["DoubleMLPLR"] = doubleml_plr(X, y, units, rep)
            fallbacks += selected == "linear"
            records.append({k: (v[0], v[1], float(v[2][0]), float(v[2][1]))
                            for k, v in row.items()})
            elapsed = time.process_time() - t0
            print(f"N={n_units} rep {rep + 1}/{args.reps}  {elapsed:.0f} s CPU  "
                  f"crossfit θ̂={row['bnmat crossfit'][0]:.3f}", file=sys.stderr, flush=True)
        table = summarize(records)
        print(f"\ndesign {args.design}, crossfit_alpha={args.crossfit_alpha}, "
              f"max_iter={args.max_iter}, n_rep={args.n_rep}")
        print_table(n_units, args.periods, table, time.process_time() - t0)
        print(f"(bnmat joint kept the linear fallback in {fallbacks} of {args.reps} "
              "replications)")
        results[str(n_units)] = table
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
