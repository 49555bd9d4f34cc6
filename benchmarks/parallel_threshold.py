#!/usr/bin/env python
"""Where the parallel kernel builds start to pay: serial against parallel, per size.

The public batch-norm ops run the serial build of the kernels below
``PARALLEL_MIN_ELEMENTS`` elements and the parallel build (all of numba's
threads) from there on; both give bitwise the same results. This script times
forward + backward through the public ops with the threshold forced above the
size (serial) and to 0 (parallel), interleaved in one process, at N×256 float32
for N from 256 to 16384, and prints the median and the first quartile of each.

    python benchmarks/parallel_threshold.py [--dtype float32] [--p 256]

Run it on a quiet machine: with other processes on the cores, a parallel region
waits for a thread the OS has not scheduled and the parallel column is
meaningless (the script prints the load average before and after).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--p", type=int, default=256)
    ap.add_argument("--rows", default="256,1024,2048,4096,8192,16384")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    from bnmat import ops
    from bnmat._kernels import _config

    def load():
        with open("/proc/loadavg") as fh:
            return fh.read().split()[0]

    print(f"load average {load()}; numba threads: ", end="")
    import numba

    print(numba.get_num_threads())
    print("| N×p | elements | serial median (q1) | parallel median (q1) | parallel/serial |")
    print("|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    saved = _config.PARALLEL_MIN_ELEMENTS
    try:
        for n in (int(v) for v in args.rows.split(",")):
            p = args.p
            x = (3 + 2 * rng.standard_normal((n, p))).astype(args.dtype)
            g = np.ones(p, args.dtype)
            b = np.zeros(p, args.dtype)
            dy = rng.standard_normal((n, p)).astype(args.dtype)

            def pair():
                y, cache = ops.batchnorm_forward(x, g, b, eps=1e-5)
                return ops.batchnorm_backward(dy, cache)

            reps = max(3, int(4e6 // (n * p)))
            times = {"serial": [], "parallel": []}
            for r in range(args.rounds):
                for name in (("serial", "parallel") if r % 2 else ("parallel", "serial")):
                    _config.PARALLEL_MIN_ELEMENTS = 0 if name == "parallel" else 1 << 62
                    pair()
                    t0 = time.perf_counter()
                    for _ in range(reps):
                        pair()
                    times[name].append((time.perf_counter() - t0) / reps)
                    time.sleep(0.01)
            st = {k: (statistics.median(v), sorted(v)[len(v) // 4]) for k, v in times.items()}
            print(f"| {n}×{p} | {n * p} | {st['serial'][0] * 1e6:.0f} µs ({st['serial'][1] * 1e6:.0f})"
                  f" | {st['parallel'][0] * 1e6:.0f} µs ({st['parallel'][1] * 1e6:.0f}) | "
                  f"{st['parallel'][0] / st['serial'][0]:.2f} |", flush=True)
    finally:
        _config.PARALLEL_MIN_ELEMENTS = saved
    print(f"load average {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
