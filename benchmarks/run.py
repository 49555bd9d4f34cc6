#!/usr/bin/env python
"""bnmat against PyTorch (and JAX, when installed) on the CPU, in one interleaved run.

Usage (from the repository root; not collected by pytest)::

    python benchmarks/run.py                    # full run, ~10 min on 2 cores
    python benchmarks/run.py --quick            # smoke run, ~2 min
    python benchmarks/run.py --parts bn,mem --out bench-results/today
    python benchmarks/run.py --render bench-results/today/results.json

Parts (each case in a fresh subprocess, OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE and
GLIBC_TUNABLES removed from its environment):

  bw    memory bandwidth (copy, add; NumPy 1 thread, torch 1 and 2 threads, a
        2-thread numba copy) at L2-, L3- and DRAM-sized arrays; the floor of a
        batch-norm call is 5 N×p arrays at the rate of the level holding them
  bn    batch norm forward + backward, float32 and float64, at 256×64, 4096×256,
        65536×256 and 16384×1024: bnmat (kernels; and with out= buffers; and the
        reference formulas) against torch native kernels (2 threads and 1),
        torch eager autograd and JAX jit, interleaved; correctness first
  mlp   one SGD step of 64→256→BN→ReLU→256→BN→ReLU→1 (MSE, float32) at N = 1024
        and 16384: bnmat (ops + fused kernels; the Sequential/train API) against
        torch eager (with and without the biases in front of batch norm) and JAX
  mem   transient peak memory per call (VmHWM after a warm-up, one subprocess
        per variant and case)
  job   the users' real job: 50 epochs of Adam, batch 200, 10→64→BN→ReLU→64→BN→
        ReLU→1, float64, on 3,488 rows of the bundled wage panel: bnmat.fit
        (kernels; NumPy formulas; the general value_and_grad step) against torch
        eager and scikit-learn's MLPRegressor (no batch norm), each run in its
        own process, rounds alternating the order; reported as medians and as
        same-round ratios
  threshold  the public batch-norm ops on the kernels and on the reference
        formulas, interleaved in one process, from 8×64 to 256×64 (where
        ``MIN_ELEMENTS`` sends NumPy input to the kernels)
  cold  ``bnmat fit`` (the command line, defaults, wage panel) as a fresh
        install runs it (an empty numba cache: the kernels compile in the
        background) against the warm run after the compile finished

Configurations (``--configs``): ``default`` is everything as installed; ``thp``
sets ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (torch's allocator then gets
transparent huge pages, as NumPy's arrays already do); ``passive`` sets
``OMP_WAIT_POLICY=PASSIVE`` (OpenMP threads sleep instead of spinning between
parallel regions, which matters when OpenBLAS's threads spin too); ``spin1000``
sets ``GOMP_SPINCOUNT=1000``, what bnmat itself sets up for numba's OpenMP
runtime when it is the first to load it (in these workers torch loads it first,
so ``default`` shows bnmat next to torch as installed, and ``spin1000`` both
under bnmat's setting).

Writes ``results.json`` and ``tables.md`` to ``--out`` (default
``bench-results/<date-time>``) and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

BN_SIZES = [(256, 64), (4096, 256), (65536, 256), (16384, 1024)]
QUICK_BN = [((256, 64), "float32"), ((4096, 256), "float32"), ((4096, 256), "float64"),
            ((65536, 256), "float32")]
DTYPES = ["float32", "float64"]
MLP_NS = [1024, 16384]
ITEMSIZE = {"float32": 4, "float64": 8}
RESULT_TAG = "RESULT "
MIN_ARRAYS = 5        # read x, write y | read dy, read x, write dx
TWO_PASS_ARRAYS = 8   # + a statistics sweep over x and a sums sweep over (dy, x)

CONFIG_ENV = {
    "default": {},
    "thp": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin1000": {"GOMP_SPINCOUNT": "1000"},
}
BN_DEFAULT = ("bnmat,bnmat_out,bnmat_1t,bnmat_ref,torch_native,torch_native_1t,torch_eager,"
              "jax_fused")
BN_OTHER_CONFIGS = "bnmat,bnmat_out,torch_native,torch_eager"
MLP_DEFAULT = "bnmat_ops,bnmat_train,torch_eager,torch_eager_nobias,jax_jit"
MEM_BN = ["bnmat", "bnmat_out", "bnmat_ref", "torch_native", "torch_eager", "jax_fused"]
MEM_MLP = ["bnmat_ops", "bnmat_train", "torch_eager", "jax_jit"]


def _have(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ============================================================================ workers
def worker_bw(args):
    import harness
    import numpy as np
    import torch
    from numba import njit, prange

    @njit(parallel=True, cache=False)
    def numba_copy(a, c):
        for i in prange(a.shape[0]):
            c[i] = a[i]

    levels = {"L2": 192 * 1024, "L3": 4 * 1024 * 1024, "DRAM": 256 * 1024 * 1024}
    threads = torch.get_num_threads()
    pc = time.perf_counter
    res = {}
    for level, nbytes in levels.items():
        a = np.random.default_rng(0).standard_normal(nbytes // 8)
        b, c = np.ones_like(a), np.empty_like(a)
        ta, tb, tc = (torch.from_numpy(v) for v in (a, b, c))
        methods = {  # name: (call, streams, torch threads)
            "numpy_copy": (lambda: np.copyto(c, a), 2, None),
            "numpy_add": (lambda: np.add(a, b, out=c), 3, None),
            "numba2t_copy": (lambda: numba_copy(a, c), 2, None),
            "torch1t_copy": (lambda: tc.copy_(ta), 2, 1),
            "torch1t_add": (lambda: torch.add(ta, tb, out=tc), 3, 1),
            "torch2t_copy": (lambda: tc.copy_(ta), 2, threads),
            "torch2t_add": (lambda: torch.add(ta, tb, out=tc), 3, threads),
        }
        for name, (f, streams, nt) in methods.items():
            if nt is not None:
                torch.set_num_threads(nt)
            for _ in range(3):
                f()
            ts, t_end = [], pc() + 0.35 * args.budget_scale
            while pc() < t_end or len(ts) < 5:
                t0 = pc()
                f()
                ts.append(pc() - t0)
            torch.set_num_threads(threads)
            ts.sort()
            med = ts[len(ts) // 2]
            res[f"{level}/{name}"] = dict(level=level, method=name, array_bytes=nbytes,
                                          gbps=streams * nbytes / med / 1e9, n=len(ts))
    return {"bw": res, "versions": harness.versions()}


def worker_bn(args):
    import bn_variants as B
    import harness
    import numpy as np

    n, p, dtype = args.N, args.p, args.dtype
    x, gamma, beta, dy = B.make_inputs(n, p, dtype)
    fns, errors, check = {}, {}, {}
    for name in args.variants.split(","):
        try:
            fns[name] = B.VARIANTS[name](x, gamma, beta, dy)
        except Exception as exc:  # noqa: BLE001 - e.g. JAX not installed
            errors[name] = f"{type(exc).__name__}: {exc}"
    # correctness before timing: against float64 formulas and torch eager
    x64, g64, dy64 = (a.astype(np.float64) for a in (x, gamma, dy))
    x_hat = (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + B.EPS)
    dbeta = dy64.sum(0)
    dgamma = (dy64 * x_hat).sum(0)
    exact = [x_hat * g64 + beta, (dy64 - dbeta / n - x_hat * dgamma / n) * (g64 / np.sqrt(
        x64.var(0) + B.EPS)), dgamma, dbeta]
    labels = ("y", "dx", "dgamma", "dbeta")
    for name, f in list(fns.items()):
        try:
            outs = [np.asarray(B.to_numpy(o), dtype=np.float64) for o in harness.call(f)]
        except Exception as exc:  # noqa: BLE001
            errors[name] = f"{type(exc).__name__}: {exc}"
            del fns[name]
            continue
        check[name] = {k: float(np.max(np.abs(o - r)) / np.max(np.abs(r)))
                       for k, o, r in zip(labels, outs, exact)}
    timing = harness.time_interleaved(fns, args.budget * args.budget_scale,
                                      seed=(n * 31 + p) & 0xFFFF, gap_s=0.02)
    return {"case": dict(N=n, p=p, dtype=dtype), "config": args.config, "timing": timing,
            "check": check, "errors": errors, "versions": harness.versions(),
            "isa": harness.isa_report()}


def worker_mlp(args):
    import harness
    import mlp_variants as M
    import numpy as np

    params = M.make_params()
    X, Y = M.make_data(args.N)
    names = args.variants.split(",")
    errors, after = {}, {}
    for name in names:
        try:
            step, get_params = M.VARIANTS[name](params, X, Y)
            after[name] = (float(step()), get_params())
        except Exception as exc:  # noqa: BLE001
            errors[name] = f"{type(exc).__name__}: {exc}"
    check = {}
    if "torch_eager" in after:
        ref_loss, ref = after["torch_eager"]
        for name, (loss, P) in after.items():
            check[name] = dict(loss=loss, loss_diff=abs(loss - ref_loss),
                               param_diff=max(float(np.max(np.abs(P[k] - ref[k]))) for k in ref),
                               update=max(float(np.max(np.abs(ref[k] - params[k]))) for k in ref))
    fns = {name: M.VARIANTS[name](params, X, Y)[0] for name in names if name not in errors}
    # OpenBLAS's threads spin ~0.1 s after a matmul: 0.12 s between blocks
    timing = harness.time_interleaved(fns, args.budget * args.budget_scale, seed=args.N,
                                      min_block_s=0.1, gap_s=0.12)
    return {"case": dict(N=args.N), "config": args.config, "timing": timing, "check": check,
            "errors": errors, "versions": harness.versions()}


def worker_mem(args):
    import gc

    import harness
    import numpy as np

    if args.kind == "bn":
        import bn_variants as B

        inputs = B.make_inputs(args.N, args.p, args.dtype)
        unit = args.N * args.p * np.dtype(args.dtype).itemsize
        factory = lambda: B.VARIANTS[args.variant](*inputs)
    else:
        import mlp_variants as M

        params = M.make_params()
        X, Y = M.make_data(args.N)
        unit = args.N * M.H * 4
        factory = lambda: M.VARIANTS[args.variant](params, X, Y)[0]
    gc.collect()
    rss0 = harness.status_kb("VmRSS")
    f = factory()
    for _ in range(2):  # warm-up: JIT compilation, lazy initialisation, buffers
        out = harness.call(f)
        del out
    gc.collect()
    rss1 = harness.status_kb("VmRSS")
    reset = harness.reset_peak_rss()
    for _ in range(2):
        out = harness.call(f)
        del out
    gc.collect()
    peak = harness.status_kb("VmHWM")
    return dict(kind=args.kind, variant=args.variant, N=args.N, p=args.p, dtype=args.dtype,
                transient_bytes=(peak - rss1) * 1024, persistent_bytes=(rss1 - rss0) * 1024,
                unit_bytes=unit, hwm_reset=reset)


JOB_VARIANTS = ["bnmat", "bnmat_numpy", "bnmat_general", "torch_eager", "sklearn"]
#: thread settings of the job part: as installed (every library's default on
#: all cores) and one thread for every library (OpenBLAS, OpenMP/torch, numba)
JOB_THREADS = ["default", "1"]


def _job_data():
    import numpy as np

    from bnmat.layers._mlp import fit_scaling
    from bnmat.datasets import load_wage_panel

    panel = load_wage_panel()
    x, y = panel.data, panel.target[:, None]
    tr = np.random.default_rng(0).permutation(len(x))[:3488]
    return fit_scaling(x[tr]).apply(x[tr]), fit_scaling(y[tr]).apply(y[tr])


def _job_runner(variant, x, y):
    """A function that runs the whole job once and returns its final training loss."""
    if variant.startswith("bnmat"):
        from bnmat import optim, train
        from bnmat.layers._mlp import build_mlp

        def run():
            net = build_mlp((64, 64), "relu", 1)
            params, state = net.init(x, seed=0)
            result = train.fit(net, params, state, x, y, loss="mse",
                               optimizer=optim.adam(1e-3), epochs=50, batch_size=200,
                               l2=2e-4 / len(x), seed=0, progress=False)
            return result.history["loss"][-1]
        return run
    if variant == "torch_eager":
        import torch

        xt, yt = torch.tensor(x), torch.tensor(y)

        def run():
            torch.manual_seed(0)
            nn = torch.nn
            net = nn.Sequential(nn.Linear(10, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                                nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(),
                                nn.Linear(64, 1)).double()
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)
            gen = torch.Generator().manual_seed(0)
            n = xt.shape[0]
            for _ in range(50):
                perm = torch.randperm(n, generator=gen)
                total = 0.0
                for i in range(0, n, 200):
                    b = perm[i:i + 200]
                    opt.zero_grad()
                    loss = torch.mean((net(xt[b]) - yt[b]) ** 2)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(b)
            return total / n
        return run
    if variant == "sklearn":
        import warnings

        from sklearn.neural_network import MLPRegressor

        def run():
            model = MLPRegressor(hidden_layer_sizes=(64, 64), solver="adam", batch_size=200,
                                 max_iter=50, tol=0.0, n_iter_no_change=10_000, random_state=0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model.fit(x, y[:, 0])
            return float(model.loss_) * 2      # scikit-learn's loss is half the MSE
        return run
    raise ValueError(variant)


def worker_job(args):
    import time as _time

    x, y = _job_data()
    run = _job_runner(args.variant, x, y)
    loss = run()                      # warm-up: imports, kernel cache, allocator
    walls, cpus = [], []
    for _ in range(max(1, int(args.budget))):
        t, c = _time.perf_counter(), _time.process_time()
        loss = run()
        walls.append(_time.perf_counter() - t)
        cpus.append(_time.process_time() - c)
    return {"variant": args.variant, "wall": walls, "cpu": cpus, "loss": loss}


def worker_cold(args):
    """``bnmat fit`` with an empty numba cache, then warm; whole-process wall times."""
    import tempfile
    import time as _time

    cache = tempfile.mkdtemp(prefix="bnmat-cold-")
    env = clean_env({"NUMBA_CACHE_DIR": cache})
    env.pop("BNMAT_KERNELS_COMPILE", None)
    cmd = [sys.executable, "-m", "bnmat", "fit", "--no-progress"]

    def once():
        t = _time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
        return _time.perf_counter() - t, proc.returncode, proc.stderr.strip()[-400:]

    cold = once()
    waited = _time.perf_counter()
    while not any(f.startswith("bnmat-kernels-ready") for _, _, fs in os.walk(cache)
                  for f in fs):
        if _time.perf_counter() - waited > 600:
            break
        _time.sleep(2)
    compile_s = _time.perf_counter() - waited
    warm = [once() for _ in range(2)]
    return {"cold": cold, "warm": warm, "background_compile_wait_s": compile_s}


THRESHOLD_SHAPES = [(8, 64), (16, 64), (32, 64), (64, 64), (128, 64), (256, 64)]


def worker_threshold(args):
    """Public batch-norm ops (forward + backward) on the kernels and on the reference
    formulas, interleaved in one process, at sizes around ``MIN_ELEMENTS``."""
    import time as _time

    import numpy as np

    from bnmat import ops
    from bnmat._kernels import _config

    def quartile(f, n=300):
        for _ in range(20):
            f()
        ts = []
        for _ in range(n):
            t = _time.perf_counter()
            f()
            ts.append(_time.perf_counter() - t)
        ts.sort()
        return ts[len(ts) // 4]

    rows = []
    for dtype in ("float32", "float64"):
        for n, p in THRESHOLD_SHAPES:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((n, p)).astype(dtype)
            dy = rng.standard_normal((n, p)).astype(dtype)
            g, b = np.ones(p, dtype), np.zeros(p, dtype)

            def run():
                _, cache = ops.batchnorm_forward(x, g, b)
                ops.batchnorm_backward(dy, cache)

            kern, ref = [], []
            for _ in range(2):
                _config.MIN_ELEMENTS = 0
                kern.append(quartile(run))
                os.environ["BNMAT_DISABLE_KERNELS"] = "1"
                ref.append(quartile(run))
                del os.environ["BNMAT_DISABLE_KERNELS"]
            rows.append(dict(dtype=dtype, N=n, p=p, kernel=min(kern), reference=min(ref)))
    return {"rows": rows, "min_elements": int(os.environ.get("BNMAT_KERNELS_MIN_ELEMENTS",
                                                              "4096"))}


WORKERS = {"bw": worker_bw, "bn": worker_bn, "mlp": worker_mlp, "mem": worker_mem,
           "job": worker_job, "cold": worker_cold, "threshold": worker_threshold}


# ============================================================================ orchestration
#: environment of every worker for ``--isa`` (set by main); {} for the native ISA
ISA_ENV = {}


def isa_environment(isa):
    """Worker environment that keeps every library to ``isa`` ("native" or "avx2").

    For "avx2" on an AVX-512 CPU: numba targets znver3 (AMD hosts) or haswell
    with the host's features minus every AVX-512/AMX/AVX10 one
    (``NUMBA_CPU_NAME``, ``NUMBA_CPU_FEATURES``; a CPU name alone keeps the
    host's features, AVX-512 included) and compiles into its own cache folder
    (``NUMBA_CACHE_DIR``), so that the ISA builds never mix; torch runs its
    AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``); NumPy switches off its
    AVX-512 dispatch targets (``NPY_DISABLE_CPU_FEATURES``); OpenBLAS uses its
    Haswell kernels (``OPENBLAS_CORETYPE``). Every worker reports what it really
    used (:func:`harness.isa_report`), and the tables print it.
    """
    if isa == "native":
        return {}
    if isa != "avx2":
        raise ValueError(f"unknown --isa {isa!r}; use native or avx2")
    import llvmlite.binding as ll
    from numpy._core._multiarray_umath import __cpu_dispatch__

    off = ("avx512", "amx", "avx10", "evex512")
    features = ",".join(("-" + f[1:]) if f[1:].startswith(off) else f
                        for f in ll.get_host_cpu_features().flatten().split(","))
    host = ll.get_host_cpu_name()
    return {
        "NUMBA_CPU_NAME": "znver3" if host.startswith("znver") else "haswell",
        "NUMBA_CPU_FEATURES": features,
        "NUMBA_CACHE_DIR": os.path.join(ROOT, "bench-results", ".numba-cache-avx2"),
        "ATEN_CPU_CAPABILITY": "avx2",
        "NPY_DISABLE_CPU_FEATURES": " ".join(
            f for f in __cpu_dispatch__ if f.startswith("AVX512") or f == "X86_V4"),
        "OPENBLAS_CORETYPE": "Haswell",
    }


def clean_env(extra=None):
    env = dict(os.environ)
    for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "GLIBC_TUNABLES", "OMP_WAIT_POLICY",
              "GOMP_SPINCOUNT", "BNMAT_DISABLE_KERNELS", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES",
              "ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES"):
        env.pop(k, None)
    env.update(ISA_ENV)
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.join(ROOT, "src"), HERE]
        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.update(extra or {})
    return env


def spawn(worker_args, extra_env=None, timeout=900):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker"] + [str(a) for a in worker_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(extra_env),
                              cwd=ROOT, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s: {' '.join(map(str, worker_args))}"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    return {"error": f"rc={proc.returncode}: " + (proc.stderr or proc.stdout)[-2000:]}


def machine_info():
    info = {"platform": platform.platform(), "nproc": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU family", "Model", "L1d cache", "L2 cache",
                             "L3 cache", "Hypervisor vendor"):
                info[k.strip()] = v.strip()
    except OSError:
        pass
    for key, path in (("THP", "/sys/kernel/mm/transparent_hugepage/enabled"),
                      ("loadavg", "/proc/loadavg")):
        try:
            with open(path) as fh:
                info[key] = fh.read().strip()
        except OSError:
            pass
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer cases, shorter budgets")
    ap.add_argument("--parts", default="bw,bn,mlp,mem")
    ap.add_argument("--configs", default="default",
                    help="comma list of " + ", ".join(CONFIG_ENV))
    ap.add_argument("--out", default=None, help="output folder")
    ap.add_argument("--budget-scale", type=float, default=1.0)
    ap.add_argument("--render", metavar="RESULTS_JSON", help="only print an earlier run's tables")
    ap.add_argument("--isa", default="native", choices=("native", "avx2"),
                    help="instruction set of every worker: native, or avx2 (AVX-512 switched "
                         "off in numba, torch, NumPy and OpenBLAS)")
    ap.add_argument("--isolate", action="store_true",
                    help="bn part: each variant in its own process, --rounds rounds, the order "
                         "alternating; medians over rounds and same-round ratios")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bn-cases", default=None,
                    help="bn cases as NxP:dtype, comma separated (e.g. 256x64:float32)")
    ap.add_argument("--bn-variants", default=None,
                    help="comma list of bn variants (default: all that run here)")
    # worker arguments
    ap.add_argument("--worker", choices=sorted(WORKERS))
    ap.add_argument("--N", type=int)
    ap.add_argument("--p", type=int, default=0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--variants", default="")
    ap.add_argument("--variant", default="")
    ap.add_argument("--kind", default="bn")
    ap.add_argument("--budget", type=float, default=1.0)
    ap.add_argument("--config", default="default")
    args = ap.parse_args(argv)

    if args.worker:
        print(RESULT_TAG + json.dumps(WORKERS[args.worker](args)), flush=True)
        return 0
    if args.render:
        with open(args.render) as fh:
            print(render(json.load(fh)))
        return 0

    ISA_ENV.clear()
    ISA_ENV.update(isa_environment(args.isa))
    parts = set(args.parts.split(","))
    configs = [c for c in args.configs.split(",") if c in CONFIG_ENV]
    scale = args.budget_scale * (0.3 if args.quick else 1.0)
    out_dir = args.out or os.path.join(ROOT, "bench-results", time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    t_start = time.time()
    R = {"machine": machine_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
         "quick": args.quick, "bn": [], "mlp": [], "mem": [], "job": [], "isa": args.isa,
         "isa_env": {k: v for k, v in ISA_ENV.items() if k != "NUMBA_CPU_FEATURES"},
         "command": " ".join(["python", "benchmarks/run.py"] + list(argv or sys.argv[1:]))}

    def log(msg):
        print(f"[{time.time() - t_start:6.1f}s] {msg}", flush=True)

    def record(key, result):
        if "error" in result:
            log("  ERROR " + result["error"][-600:])
        R[key].append(result)

    if parts & {"bn", "mlp", "mem", "job", "threshold"}:
        # compile (or load) the kernels for this ISA first: a worker that found
        # them missing would time the NumPy formulas while they compile
        log(f"kernels for --isa {args.isa} ...")
        subprocess.run([sys.executable, "-m", "bnmat._kernels._warm"], env=clean_env(),
                       cwd=ROOT, capture_output=True, timeout=1800)
    if "bw" in parts:
        log("bandwidth ...")
        R["bw"] = spawn(["bw", "--budget-scale", scale])
    bn_cases = QUICK_BN if args.quick else [(s, dt) for s in BN_SIZES for dt in DTYPES]
    if args.bn_cases:
        bn_cases = [(tuple(int(v) for v in c.split(":")[0].split("x")),
                     (c.split(":") + ["float32"])[1]) for c in args.bn_cases.split(",")]
    if "bn" in parts:
        for (n, p), dt in bn_cases:
            for cfg in configs:
                if cfg == "thp" and n * p < 1 << 20:
                    continue  # small arrays are not mmapped: THP changes nothing
                variants = BN_DEFAULT if cfg == "default" else BN_OTHER_CONFIGS
                if args.bn_variants:
                    variants = args.bn_variants
                if not _have("jax"):
                    variants = ",".join(v for v in variants.split(",") if not v.startswith("jax"))
                budget = 1.2 if n * p >= 1 << 22 else 0.6
                if args.isolate:
                    record("bn", bn_isolated(n, p, dt, cfg, variants.split(","), budget, scale,
                                             args.rounds, log))
                    continue
                log(f"BN {n}x{p} {dt} [{cfg}] ...")
                record("bn", spawn(["bn", "--N", n, "--p", p, "--dtype", dt, "--budget",
                                    budget, "--budget-scale", scale,
                                    "--variants", variants, "--config", cfg],
                                   CONFIG_ENV[cfg]))
    mlp_ns = MLP_NS[:1] if args.quick else MLP_NS
    if "mlp" in parts:
        for n in mlp_ns:
            for cfg in configs:
                log(f"MLP N={n} [{cfg}] ...")
                variants = ",".join(v for v in MLP_DEFAULT.split(",")
                                    if _have("jax") or not v.startswith("jax"))
                record("mlp", spawn(["mlp", "--N", n, "--budget", 2.0, "--budget-scale", scale,
                                     "--variants", variants, "--config", cfg],
                                    CONFIG_ENV[cfg]))
    if "mem" in parts:
        log("transient memory (one subprocess per variant and case) ...")
        mem_env = {"MALLOC_MMAP_THRESHOLD_": "65536"}  # freed temporaries leave the RSS
        sizes = sorted({s for s, _ in bn_cases if s[0] * s[1] >= 1 << 20})
        for (n, p) in sizes:
            for v in MEM_BN:
                if v.startswith("jax") and not _have("jax"):
                    continue
                record("mem", spawn(["mem", "--kind", "bn", "--variant", v, "--N", n, "--p", p,
                                     "--dtype", "float32"], mem_env))
        for n in mlp_ns:
            for v in MEM_MLP:
                if v.startswith("jax") and not _have("jax"):
                    continue
                record("mem", spawn(["mem", "--kind", "mlp", "--variant", v, "--N", n], mem_env))
    if "job" in parts:
        rounds = 2 if args.quick else 3
        variants = [v for v in JOB_VARIANTS if v != "sklearn" or _have("sklearn")]
        for threads in JOB_THREADS:
            for r in range(rounds):
                order = variants if r % 2 == 0 else variants[::-1]
                for v in order:
                    log(f"job [{threads} threads] round {r + 1}: {v} ...")
                    env = {"BNMAT_DISABLE_KERNELS": "1"} if v == "bnmat_numpy" else {}
                    if v == "bnmat_general":
                        env = {"BNMAT_DISABLE_FAST_STEP": "1"}
                    if threads == "1":
                        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                                   MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
                    res = spawn(["job", "--variant", v, "--budget", 1 if args.quick else 2],
                                env)
                    res["round"], res["threads"] = r, threads
                    record("job", res)
    if "threshold" in parts:
        log("dispatch threshold: kernels against the reference formulas ...")
        R["threshold"] = spawn(["threshold"])
    if "cold" in parts:
        log("cold start of bnmat fit (empty numba cache), then warm ...")
        R["cold"] = spawn(["cold"], timeout=1800)
    R["total_s"] = time.time() - t_start
    with open(os.path.join(out_dir, "results.json"), "w") as fh:
        json.dump(R, fh, indent=1)
    text = render(R)
    with open(os.path.join(out_dir, "tables.md"), "w") as fh:
        fh.write(text)
    print(text)
    log(f"done; wrote {os.path.relpath(out_dir, ROOT)}/results.json and tables.md")
    return 0


def bn_isolated(n, p, dt, cfg, variants, budget, scale, rounds, log):
    """One bn case with each variant in its own process: ``rounds`` rounds, the
    order reversed every other round. The merged result has, per variant, the
    median over rounds of each round's median (``timing``), every round's
    median (``per_round``) and, per round, the ratio to torch_native measured in
    the same round (``ratios``)."""
    per_round = {v: [] for v in variants}
    merged = {"case": dict(N=n, p=p, dtype=dt), "config": cfg, "isolated": True,
              "rounds": rounds, "timing": {}, "check": {}, "errors": {}, "ratios": {},
              "loadavg": []}
    for r in range(rounds):
        order = variants if r % 2 == 0 else variants[::-1]
        for v in order:
            log(f"BN {n}x{p} {dt} [{cfg}] round {r + 1}: {v} ...")
            res = spawn(["bn", "--N", n, "--p", p, "--dtype", dt, "--budget", budget,
                         "--budget-scale", scale, "--variants", v, "--config", cfg],
                        CONFIG_ENV[cfg])
            try:
                with open("/proc/loadavg") as fh:
                    merged["loadavg"].append(float(fh.read().split()[0]))
            except OSError:
                pass
            if "error" in res or v not in res.get("timing", {}):
                merged["errors"][v] = res.get("error") or res.get("errors", {}).get(v, "?")
                per_round[v].append(None)
                continue
            per_round[v].append(res["timing"][v])
            merged["check"].setdefault(v, res["check"].get(v))
            merged.setdefault("versions", res.get("versions"))
            merged.setdefault("isa", res.get("isa"))
    for v, ts in per_round.items():
        good = [t for t in ts if t]
        if not good:
            continue
        meds = sorted(t["median"] for t in good)
        t = dict(good[0])
        t.update(median=meds[len(meds) // 2], per_round=[x and x["median"] for x in ts],
                 rounds=len(good), quiet_rounds=sum(1 for x in good if not x["noisy"]),
                 foreign_mean=sum(x["foreign_mean"] for x in good) / len(good),
                 foreign_max=max(x["foreign_max"] for x in good))
        merged["timing"][v] = t
    ref = per_round.get("torch_native") or []
    for v, ts in per_round.items():
        merged["ratios"][v] = [a["median"] / b["median"] if a and b else None
                               for a, b in zip(ts, ref)]
    return merged


def render_isolated(bn):
    rows = []
    for r in bn:
        c = r["case"]
        for v, ratios in r["ratios"].items():
            t = r["timing"].get(v)
            if not t:
                continue
            good = [x for x in ratios if x is not None]
            rows.append([f"{c['N']}×{c['p']} {c['dtype']}", v, fmt_time(t["median"]),
                         ", ".join(fmt_time(x) for x in t["per_round"] if x),
                         ", ".join(f"{x:.2f}×" for x in good),
                         f"{sorted(good)[len(good) // 2]:.2f}×" if good else "-",
                         f"{t['foreign_mean']:.2f}/{t['foreign_max']:.2f}"])
    loads = [x for r in bn for x in r.get("loadavg", [])]
    head = ("Batch norm forward+backward, each variant in its own process (rounds alternating "
            "the order): median of the round medians; same-round ratio to torch_native")
    from report import table

    return table(head, ["case", "variant", "median", "round medians", "same-round ratios",
                        "median ratio", "other load mean/max cores"], rows,
                 f"load average during the run: {min(loads, default=float('nan')):.2f}–"
                 f"{max(loads, default=float('nan')):.2f}")


def fmt_time(t):
    from report import fmt_t

    return fmt_t(t)


def render(R):
    from report import render as _render

    parts = []
    if R.get("isa"):
        isa = next((r.get("isa") for r in R.get("bn", []) if r.get("isa")), None)
        parts.append(f"ISA: --isa {R['isa']}; environment {R.get('isa_env') or '{}'}; "
                     f"in use (a bn worker): {isa}; command: {R.get('command')}\n")
    parts.append(_render(R))
    iso = [r for r in R.get("bn", []) if r.get("isolated")]
    if iso:
        parts.append(render_isolated(iso))
    if R.get("job"):
        parts.append(render_job(R))
    if R.get("cold"):
        parts.append(render_cold(R["cold"]))
    if R.get("threshold"):
        parts.append(render_threshold(R["threshold"]))
    return "\n\n".join(parts)


def _median(v):
    v = sorted(v)
    return v[len(v) // 2] if len(v) % 2 else 0.5 * (v[len(v) // 2 - 1] + v[len(v) // 2])


def render_job(R):
    """The users' job, per thread setting: medians and same-round ratios."""
    out = []
    for threads in JOB_THREADS:
        rows = [r for r in R["job"] if "error" not in r and r.get("threads", "default") == threads]
        if rows:
            out.append(_render_job_rows(rows, threads, R))
    return "\n\n".join(out)


def _render_job_rows(rows, threads, R):
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    best = {(r["variant"], r["round"]): min(r["wall"]) for r in rows}
    rounds = sorted({r["round"] for r in rows})
    label = "as installed (all cores)" if threads == "default" else "one thread per library"
    out = ["### The users' job: 50 epochs, Adam, batch 200, 10→64→BN→ReLU→64→BN→ReLU→1, "
           f"float64, 3,488 rows — {label}", "",
           "| variant | wall (median of runs) | CPU | final loss | × torch eager (per round) "
           "| × scikit-learn (per round) |", "|---|---|---|---|---|---|"]
    for v in JOB_VARIANTS:
        if v not in by:
            continue
        walls = [w for r in by[v] for w in r["wall"]]
        cpus = [c for r in by[v] for c in r["cpu"]]
        ratios = {}
        for ref in ("torch_eager", "sklearn"):
            vals = [best[(v, k)] / best[(ref, k)] for k in rounds
                    if (v, k) in best and (ref, k) in best]
            ratios[ref] = (f"{min(vals):.2f}–{max(vals):.2f}" if vals else "–")
        out.append(f"| {v} | {_median(walls):.3f} s ({min(walls):.3f}–{max(walls):.3f}) | "
                   f"{_median(cpus):.3f} s | {by[v][-1]['loss']:.5f} | {ratios['torch_eager']} "
                   f"| {ratios['sklearn']} |")
    out.append("")
    out.append(f"load average at start: {R['machine'].get('loadavg', '?')}")
    return "\n".join(out)


def render_threshold(T):
    if "error" in T:
        return "### Dispatch threshold\n\nERROR " + T["error"][-400:]
    out = ["### Dispatch threshold: public BN forward + backward, first quartile of 300 calls",
           "", "| dtype | N×p | elements | kernels | reference formulas | kernels / reference |",
           "|---|---|---|---|---|---|"]
    for r in T["rows"]:
        out.append(f"| {r['dtype']} | {r['N']}×{r['p']} | {r['N'] * r['p']} | "
                   f"{r['kernel'] * 1e6:.0f} µs | {r['reference'] * 1e6:.0f} µs | "
                   f"{r['kernel'] / r['reference']:.2f} |")
    return "\n".join(out)


def render_cold(C):
    if "error" in C:
        return "### Cold start\n\nERROR " + C["error"][-400:]
    cold = C["cold"][0]
    warm = [w[0] for w in C["warm"]]
    return "\n".join([
        "### `bnmat fit` on a fresh install (empty numba cache) against warm", "",
        "| run | wall (whole process) |", "|---|---|",
        f"| fresh (kernels compile in the background) | {cold:.2f} s |",
        *(f"| warm {i + 1} | {w:.2f} s |" for i, w in enumerate(warm)),
        f"| fresh / warm | {cold / min(warm):.2f}× |", "",
        f"background compilation finished {C['background_compile_wait_s']:.0f} s after the "
        "fresh run ended", "", "stderr of the fresh run: `" + C["cold"][2].replace("\n", " ")
        + "`"])


if __name__ == "__main__":
    sys.exit(main())
