"""Batch-norm gradients against a high-precision oracle on data no test uses.

The oracle is independent of bnmat: the forward pass is written again with
``mpmath`` at 40 significant digits and differentiated numerically by
``mpmath.diff`` (a high-order difference at that precision), entry by entry.
The data are drawn fresh from heavy-tailed and skewed distributions with a seed
given on the command line, so they are not the data of any test.

    python tools/heldout_check.py [--seed 12345] [--rows 9] [--cols 3]

Prints the largest relative error of dx, dgamma, dbeta for ddof 0 and 1 with
eps = 0, and exits 1 when any exceeds 1e-7.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from bnmat import ops

try:
    import mpmath as mp
except ImportError:  # pragma: no cover
    sys.exit("this check needs mpmath (pip install mpmath)")

mp.mp.dps = 40


def _objective(x, gamma, beta, weights, ddof):
    """Σ W ∘ BN(x) in mpmath, written from the definition."""
    n, p = len(x), len(x[0])
    total = mp.mpf(0)
    for j in range(p):
        col = [x[i][j] for i in range(n)]
        mean = mp.fsum(col) / n
        var = mp.fsum((c - mean) ** 2 for c in col) / (n - ddof)
        inv = 1 / mp.sqrt(var)
        for i in range(n):
            total += weights[i][j] * (gamma[j] * (col[i] - mean) * inv + beta[j])
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=98765)
    ap.add_argument("--rows", type=int, default=9)
    ap.add_argument("--cols", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n, p = args.rows, args.cols
    x = rng.standard_t(3, size=(n, p)) * rng.lognormal(size=p) + rng.exponential(5, size=p)
    gamma, beta = rng.standard_cauchy(p), rng.gumbel(size=p)
    weights = rng.laplace(size=(n, p))
    worst = 0.0
    for ddof in (0, 1):
        _, cache = ops.batchnorm_forward(x, gamma, beta, eps=0.0, ddof=ddof)
        dx, dgamma, dbeta = ops.batchnorm_backward(weights, cache)
        X = [[mp.mpf(float(v)) for v in row] for row in x]
        G, B = [mp.mpf(float(v)) for v in gamma], [mp.mpf(float(v)) for v in beta]
        W = [[mp.mpf(float(v)) for v in row] for row in weights]

        def num_dx(i, j):
            def f(t):
                Xt = [r[:] for r in X]
                Xt[i][j] = t
                return _objective(Xt, G, B, W, ddof)
            return float(mp.diff(f, X[i][j]))

        def num_vec(vec, which, j):
            def f(t):
                v = vec[:]
                v[j] = t
                return _objective(X, v, B, W, ddof) if which == "gamma" else \
                    _objective(X, G, v, W, ddof)
            return float(mp.diff(f, vec[j]))

        ref_dx = np.array([[num_dx(i, j) for j in range(p)] for i in range(n)])
        ref_dg = np.array([num_vec(G, "gamma", j) for j in range(p)])
        ref_db = np.array([num_vec(B, "beta", j) for j in range(p)])
        for name, got, ref in (("dx", dx, ref_dx), ("dgamma", dgamma, ref_dg),
                               ("dbeta", dbeta, ref_db)):
            err = float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
            worst = max(worst, err)
            print(f"ddof={ddof} eps=0  {name:<7} max relative error {err:.2e}")
    ok = worst <= 1e-7
    print("OK" if ok else "FAIL", f"(largest {worst:.2e}, tolerance 1e-7)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
