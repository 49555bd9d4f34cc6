"""Strong scaling of a full-batch training step: 1 process against K processes over MPI.

The step is the users' network, 10 → 64 → BN → ReLU → 64 → BN → ReLU → 1 in
float64, one full-batch gradient (``bnmat.value_and_grad``, loss "mse") and
one Adam update, on N rows in all (default 200,000). Every process uses one
BLAS/numba thread, so K processes use K cores:

* ``one``: one process, the ordinary path (fused kernels when numba is there);
* ``one-reference``: one process with ``BNMAT_DISABLE_KERNELS=1`` (the NumPy
  formulas that the synchronized batch norm also uses);
* ``mpi``: ``mpiexec -n K``, N/K rows per rank, ``reducer=MPIReducer()``.

Each side runs in its own process; the speed-up is the ratio of median step
times. Every rank also reports the bytes it sent to all-reduces per step,
compared with the formula of docs/scaling.md::

    8 · [ Σ_BN (5 p_l + 1) + 1 + P ]   bytes    (P parameters, p_l BN widths)

plus 16 bytes for the per-step check that the parameters are identical.

Usage::

    python benchmarks/scaling.py [--rows 200000] [--ranks 2] [--steps 15]
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        python benchmarks/scaling.py --in-process      # work per rank, no MPI, CPU time

On a shared machine the timings are noisy; the script reports how busy the
rest of the machine was (cores used by other processes) during each side, and
the speed-up three ways: median wall time, fastest step, and CPU time per step
(what a process computes, whatever share of a core it got).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WIDTHS = (64, 64)
P_IN = 10


def _busy():
    """(busy jiffies of the machine, jiffies of this process): see harness.cpu_jiffies."""
    sys.path.insert(0, str(HERE))
    from harness import cpu_jiffies

    return cpu_jiffies()


def _data(lo, hi, seed=0):
    """Rows lo..hi−1 of the synthetic data set (each row from its own seed: any slicing)."""
    rng = np.random.default_rng([seed, lo])
    x = rng.normal(size=(hi - lo, P_IN))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2] + 0.1 * rng.normal(size=hi - lo)
    return x, y


def worker(args) -> None:
    import bnmat
    from bnmat.train._distributed import check_identical

    red = None
    rank, size = 0, 1
    if args.mpi:
        from bnmat.distributed import MPIReducer

        red = MPIReducer()
        rank, size = red.rank, red.size
    lo, hi = rank * args.rows // size, (rank + 1) * args.rows // size
    x, y = _data(lo, hi)
    net = bnmat.Sequential([bnmat.Dense(WIDTHS[0], bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
                            bnmat.Dense(WIDTHS[1], bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
                            bnmat.Dense(1)])
    params, state = net.init(np.zeros((1, P_IN)), seed=0)
    opt = bnmat.optim.adam(1e-3)
    opt_state = opt.init(params)
    n_params = sum(int(np.size(a)) for a in bnmat.layers.tree_leaves(params))

    def step(params, state, opt_state):
        if red is None:
            _, grads, state = bnmat.value_and_grad(net, params, state, x, y, "mse")
        else:
            from bnmat.train._distributed import distributed_value_and_grad

            _, grads, state = distributed_value_and_grad(net, params, state, x, y, "mse",
                                                         reducer=red, _counts=[args.rows])
        params, opt_state = opt.update(grads, opt_state, params)
        if red is not None:
            check_identical(red, params)
        return params, state, opt_state

    for _ in range(3):                                   # warm-up: JIT, caches, pools
        params, state, opt_state = step(params, state, opt_state)
    times = []
    bytes0 = calls0 = seconds0 = 0
    if red is not None:
        red.allreduce(np.zeros(1))                       # line the ranks up
        bytes0, calls0, seconds0 = red.stats.bytes, red.stats.calls, red.stats.seconds
    busy0, own0 = _busy()
    wall0 = time.perf_counter()
    cpu = []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        params, state, opt_state = step(params, state, opt_state)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    wall = time.perf_counter() - wall0
    busy1, own1 = _busy()
    out = {"rank": rank, "size": size, "rows": hi - lo, "median_s": statistics.median(times),
           "min_s": min(times), "cpu_s": statistics.median(cpu), "steps": args.steps, "n_params": n_params,
           "machine_busy_cores": (busy1 - busy0) / os.sysconf("SC_CLK_TCK") / wall,
           "own_cores": (own1 - own0) / os.sysconf("SC_CLK_TCK") / wall}
    if red is not None:
        out["comm_s_per_step"] = (red.stats.seconds - seconds0) / args.steps
        out["bytes_per_step"] = (red.stats.bytes - bytes0) / args.steps
        out["calls_per_step"] = (red.stats.calls - calls0) / args.steps
        out["formula_bytes"] = 8 * (sum(5 * p + 1 for p in WIDTHS) + 1 + n_params) + 16
        gathered = red.allgather(out)
        if rank == 0:
            print(json.dumps(gathered))
    else:
        print(json.dumps([out]))


def in_process(args) -> None:
    """One process, one thread: the synchronized gradient on N/2 rows against the plain one on N.

    A reducer of size 2 whose all-reduce returns its input (one rank of two,
    the other holding no rows) runs the synchronized code path without MPI, so
    the ratio of CPU times is the work-per-rank speed-up with no waiting at all.
    """
    import bnmat
    from bnmat.distributed import SingleProcessReducer
    from bnmat.train._distributed import distributed_value_and_grad

    class Loopback(SingleProcessReducer):
        size = 2

    half = args.rows // 2
    xa, ya = _data(0, args.rows)
    xb, yb = xa[:half], ya[:half]
    net = bnmat.Sequential([bnmat.Dense(WIDTHS[0], bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
                            bnmat.Dense(WIDTHS[1], bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
                            bnmat.Dense(1)])
    params, state = net.init(xa[:2], seed=0)
    red = Loopback()
    sync = lambda: distributed_value_and_grad(net, params, state, xb, yb, "mse",  # noqa: E731
                                              reducer=red, _counts=[half])
    plain = lambda: bnmat.value_and_grad(net, params, state, xa, ya, "mse")  # noqa: E731
    for f in (sync, plain, sync, plain):
        f()
    cpu = {"sync": [], "plain": []}
    for _ in range(args.steps):                         # interleaved
        for name, f in (("sync", sync), ("plain", plain)):
            c0 = time.process_time()
            f()
            cpu[name].append(time.process_time() - c0)
    s, p = statistics.median(cpu["sync"]), statistics.median(cpu["plain"])
    print(f"in one process: synchronized gradient on {half:,} rows {s:.3f} CPU s, plain gradient "
          f"on {args.rows:,} rows {p:.3f} CPU s: work ratio {p / s:.2f}×")


def _run(cmd, extra_env):
    env = dict(os.environ)
    env.update({v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                 "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")})
    env.update(extra_env)
    src = HERE.parent / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--in-process", action="store_true",
                    help="compare the synchronized path on N/2 rows with the plain one on N "
                         "in this process (no MPI), by CPU time")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mpi", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.in_process:
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
            if os.environ.get(var) != "1":
                print(f"set {var}=1 for a one-core comparison", file=sys.stderr)
        in_process(args)
        return 0
    me = [sys.executable, str(Path(__file__).resolve()), "--worker", "--rows", str(args.rows),
          "--steps", str(args.steps)]
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
    one = _run(me, {})[0]
    ref = _run(me, {"BNMAT_DISABLE_KERNELS": "1"})[0]
    many = _run([mpiexec, "-n", str(args.ranks), *me, "--mpi"], {})
    t_many = max(r["median_s"] for r in many)
    print(f"full-batch step, N = {args.rows:,} rows, float64, 10→64→BN→ReLU→64→BN→ReLU→1, "
          f"Adam; one thread per process")
    print(f"  1 process (kernels)       {one['median_s'] * 1e3:8.1f} ms   "
          f"(rest of machine busy: {one['machine_busy_cores'] - one['own_cores']:.2f} cores)")
    print(f"  1 process (reference)     {ref['median_s'] * 1e3:8.1f} ms   "
          f"(rest of machine busy: {ref['machine_busy_cores'] - ref['own_cores']:.2f} cores)")
    busy = statistics.mean(r["machine_busy_cores"] for r in many) - sum(
        r["own_cores"] for r in many)
    print(f"  {args.ranks} processes (MPI)        {t_many * 1e3:8.1f} ms   "
          f"(slowest rank; rest of machine busy: {max(busy, 0):.2f} cores)")
    c_many = max(r["cpu_s"] for r in many)
    print(f"  CPU seconds per step: 1 process {one['cpu_s']:.3f} (kernels), "
          f"{ref['cpu_s']:.3f} (reference); {args.ranks} processes {c_many:.3f} (busiest rank; "
          "MPICH polls while it waits, so waiting counts)")
    print(f"  speed-up vs kernels   {one['median_s'] / t_many:5.2f}× (median wall), "
          f"{one['min_s'] / min(r['min_s'] for r in many):5.2f}× (fastest step), "
          f"{one['cpu_s'] / c_many:5.2f}× (CPU time)")
    print(f"  speed-up vs reference {ref['median_s'] / t_many:5.2f}×")
    # Bounds for idle cores. CPU time counts a rank's busy-polling in the
    # collectives as work (pessimistic); subtracting the wall time spent inside
    # them over-subtracts when the rank was descheduled there (optimistic).
    work = max(r["cpu_s"] - r["comm_s_per_step"] for r in many)
    print(f"  speed-up on {args.ranks} idle cores, bounds from CPU time: "
          f"{one['cpu_s'] / c_many:5.2f}× (waits counted as work) to "
          f"{one['cpu_s'] / max(work, 1e-9):5.2f}× (waits removed)")
    r0 = many[0]
    print(f"  exchanged per rank per step: {r0['bytes_per_step']:.0f} bytes in "
          f"{r0['calls_per_step']:.0f} collectives; formula {r0['formula_bytes']} bytes "
          f"(P = {r0['n_params']} parameters)")
    print(json.dumps({"one": one, "one_reference": ref, "mpi": many}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
