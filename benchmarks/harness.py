"""Timing and measurement helpers shared by the benchmark workers.

Lessons carried over from the performance anchors (issue 4):

* Interleave: every variant of a case runs in the same stretch of machine noise,
  one block of calls per variant per round, in a shuffled order.
* Sleep after every block: OpenBLAS worker threads spin for about 0.1 s after a
  matmul and would steal the second core from whichever library runs next.
* Watch the rest of the machine: each round records how many cores *other*
  processes used (from /proc/stat); statistics keep the quiet rounds when there
  are enough of them, and every result says how noisy its run was.
* Fresh subprocess per case (the orchestrator's job): allocator state, JIT
  caches and thread pools of one case never leak into the next.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import statistics
import time

__all__ = ["call", "cpu_jiffies", "isa_report", "reset_peak_rss", "status_kb", "time_interleaved",
           "versions"]

_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_jiffies():
    """(busy jiffies of the whole machine, jiffies of this process incl. threads)."""
    try:
        with open("/proc/stat") as fh:
            v = [int(a) for a in fh.readline().split()[1:9]]
        with open("/proc/self/stat") as fh:
            s = fh.read().rsplit(")", 1)[1].split()
        # user nice system [idle iowait] irq softirq steal
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7], int(s[11]) + int(s[12])
    except (OSError, ValueError, IndexError):
        return 0, 0


def status_kb(field: str) -> int:
    """A ``/proc/self/status`` field in KiB (VmRSS, VmHWM), or -1."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def call(f):
    """Call f between its optional ``enter``/``leave`` hooks."""
    enter, leave = getattr(f, "enter", None), getattr(f, "leave", None)
    if enter:
        enter()
    try:
        return f()
    finally:
        if leave:
            leave()


def _q(sorted_ts, q):
    return sorted_ts[min(len(sorted_ts) - 1, int(q * len(sorted_ts)))]


def time_interleaved(fns, budget_s, *, min_block_s=0.02, gap_s=0.02, seed=0,
                     min_rounds=7, max_rounds=400, quiet_cores=0.25):
    """Time zero-argument callables interleaved; per-call statistics in seconds.

    A callable may carry ``enter``/``leave`` attributes (run untimed around each
    block: thread counts, environment switches). Each round runs one block per
    callable, in a shuffled order; every block lasts about ``max(min_block_s,
    slowest call)``, its first call is dropped when it has three or more (a
    thread pool waking up, caches refilling after another variant), and
    ``gap_s`` of sleep follows it. Rounds where other processes used fewer than
    ``quiet_cores`` cores are kept when there are at least 3 and 40 % of them;
    otherwise all rounds are used and the result says ``noisy``.
    """
    pc = time.perf_counter
    est = {}
    for name, f in fns.items():
        for _ in range(2):
            call(f)  # warm-up, JIT compilation included
        ts = []
        for _ in range(3):
            t0 = pc()
            call(f)
            ts.append(pc() - t0)
        est[name] = statistics.median(ts)
    block_s = max(min_block_s, max(est.values()))
    nblock = {n: max(1, int(round(block_s / max(est[n], 1e-7)))) for n in fns}
    rounds = int(min(max_rounds, max(min_rounds, round(budget_s / block_s))))
    samples = {n: [] for n in fns}
    foreign = []
    rng = random.Random(seed)
    order = list(fns)
    gc.collect()
    gc.disable()
    try:
        for _ in range(rounds):
            rng.shuffle(order)
            b0, o0, w0 = *cpu_jiffies(), pc()
            for name in order:
                f = fns[name]
                enter, leave = getattr(f, "enter", None), getattr(f, "leave", None)
                if enter:
                    enter()
                ts = []
                for _ in range(nblock[name]):
                    t0 = pc()
                    f()
                    ts.append(pc() - t0)
                if leave:
                    leave()
                samples[name].append(ts[1:] if len(ts) >= 3 else ts)
                if gap_s:
                    time.sleep(gap_s)
            b1, o1, w1 = *cpu_jiffies(), pc()
            foreign.append(max(0.0, ((b1 - b0) - (o1 - o0)) / _CLK / (w1 - w0)))
            gc.collect()
    finally:
        gc.enable()
    quiet = [i for i, fl in enumerate(foreign) if fl < quiet_cores]
    noisy = len(quiet) < max(3, 0.4 * rounds)
    use = range(rounds) if noisy else quiet
    out = {}
    for n, per_round in samples.items():
        ts = sorted(t for i in use for t in per_round[i])
        every = [t for r in per_round for t in r]
        out[n] = dict(median=statistics.median(ts), min=min(every), p25=_q(ts, 0.25),
                      p75=_q(ts, 0.75), n=len(ts), block=nblock[n], rounds=rounds,
                      quiet_rounds=len(quiet), noisy=noisy,
                      foreign_mean=sum(foreign) / len(foreign), foreign_max=max(foreign))
    return out


def isa_report():
    """What instruction set each library really uses in this process.

    numba: its target CPU and whether a freshly compiled vectorizable loop uses
    512-bit registers (zmm); NumPy: whether any AVX-512 dispatch target is on;
    torch: ``torch.backends.cpu.get_cpu_capability()``; OpenBLAS: its core type
    (in :func:`versions`' thread pools).
    """
    r = {}
    try:
        import numpy as np
        from numba import njit
        from numba.core import config

        @njit(cache=False)
        def _axpy(a, x, y):
            for i in range(x.shape[0]):
                y[i] += a * x[i]

        x = np.ones(4096, np.float32)
        _axpy(np.float32(2), x, x.copy())
        asm = next(iter(_axpy.inspect_asm().values()))
        r["numba_cpu"] = config.CPU_NAME or "host"
        r["numba_features_set"] = config.CPU_FEATURES is not None
        r["numba_zmm"] = "zmm" in asm
        r["numba_ymm"] = "ymm" in asm
    except Exception as exc:  # noqa: BLE001
        r["numba"] = f"unavailable ({type(exc).__name__})"
    try:
        from numpy._core._multiarray_umath import __cpu_dispatch__, __cpu_features__

        r["numpy_avx512_dispatch"] = sorted(f for f in __cpu_dispatch__
                                            if __cpu_features__.get(f)
                                            and (f.startswith("AVX512") or f == "X86_V4"))
    except Exception:  # noqa: BLE001
        pass
    try:
        import torch

        r["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        pass
    try:
        from bnmat import _kernels

        r["bnmat_kernels_enabled"] = bool(_kernels.enabled())
    except Exception:  # noqa: BLE001
        pass
    return r


def versions():
    """Versions of Python, NumPy, numba, torch, JAX and the thread pools in use."""
    v = {"python": platform.python_version()}
    import numpy

    v["numpy"] = numpy.__version__
    for mod in ("numba", "torch", "jax", "jaxlib"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - report whatever went wrong
            v[mod] = f"unavailable ({type(exc).__name__})"
    try:
        import numba

        v["numba_threads"] = numba.get_num_threads()
        v["numba_layer"] = numba.threading_layer()
    except Exception:  # noqa: BLE001 - no parallel region ran, or no numba
        pass
    try:
        import torch

        v["torch_threads"] = torch.get_num_threads()
        v["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001
        pass
    try:
        import threadpoolctl

        v["threadpools"] = [{k: d.get(k) for k in ("internal_api", "version", "architecture",
                                                    "num_threads")}
                            for d in threadpoolctl.threadpool_info()]
    except Exception:  # noqa: BLE001
        pass
    return v
