#!/usr/bin/env python
"""Cost of one Hessian-vector product relative to one gradient (run on demand).

Usage (from the repository root)::

    PYTHONPATH=src python benchmarks/hvp_cost.py [--rows 4096] [--repeat 7]

Dense256–BN–ReLU–Dense256–BN–ReLU–Dense1 on 64 float64 inputs, MSE. Each side
(``bnmat.value_and_grad`` and ``bnmat.hvp``) runs in its own subprocess; the
median of ``--repeat`` timed calls after one warm-up is printed with the ratio.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = r"""
import sys, time
import numpy as np
import bnmat
from bnmat._tree import tree_map
rows, repeat, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
rng = np.random.default_rng(0)
x, y = rng.normal(size=(rows, 64)), rng.normal(size=rows)
net = bnmat.Sequential([bnmat.Dense(256, bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
                        bnmat.Dense(256, bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
                        bnmat.Dense(1)])
p, s = net.init(x, seed=0)
v = tree_map(lambda a: rng.normal(size=a.shape), p)
if which == "grad":
    f = lambda: bnmat.value_and_grad(net, p, s, x, y, "mse")
else:
    f = lambda: bnmat.hvp(net, p, s, x, y, v, loss="mse")
f()
ts = []
for _ in range(repeat):
    t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
print(float(np.median(ts)))
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args(argv)
    times = {}
    for which in ("grad", "hvp"):
        out = subprocess.run([sys.executable, "-c", CHILD, str(args.rows), str(args.repeat),
                              which], capture_output=True, text=True, check=True)
        times[which] = float(out.stdout.strip())
    print(f"value_and_grad {times['grad']:.4f} s   hvp {times['hvp']:.4f} s   "
          f"ratio {times['hvp'] / times['grad']:.2f}")


if __name__ == "__main__":
    main()
