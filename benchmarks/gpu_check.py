#!/usr/bin/env python
"""bnmat on a GPU: correctness against the CPU float64 result, then speed against cuDNN.

Usage (from the repository root; not collected by pytest)::

    python benchmarks/gpu_check.py                 # CUDA when torch sees a GPU, else CPU
    python benchmarks/gpu_check.py --device cpu    # force the CPU (checks the script itself)
    python benchmarks/gpu_check.py --quick

What it does, for each library present (torch on ``--device``; CuPy when it
imports and sees a GPU):

1. Correctness. The network 64→Dense256→BN→ReLU→Dense256→BN→ReLU→Dense1 (MSE):
   ``value_and_grad`` and three steps of ``fit`` (Adam, mini-batches) on the
   device in float64 against the same calls on NumPy float64 on the CPU (the
   reference); the largest difference relative to each array's scale must be
   below 1e-10. float32 on the device against the float64 reference: below 1e-3.
2. Batch norm forward + backward, float32, at 256×64, 4096×256 and 65536×256:
   ``bnmat.ops`` on device tensors against torch's native batch norm
   (``aten.native_batch_norm`` + ``native_batch_norm_backward``: cuDNN on CUDA).
3. One SGD training step of the network above at N = 16384, float32:
   ``Sequential`` + ``value_and_grad`` + ``sgd`` against torch eager
   (``nn.BatchNorm1d``, cuDNN on CUDA).

Timings synchronize the device around each call and report the median of
repeated calls. The script exits with status 1 when a correctness check fails.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

import bnmat
from bnmat._array_api import to_numpy
from bnmat.optim import tree_leaves


def _net():
    return bnmat.Sequential([
        bnmat.Dense(256, bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
        bnmat.Dense(256, bias=False), bnmat.BatchNorm(), bnmat.ReLU(), bnmat.Dense(1)])


def _data(n, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 64))
    y = (np.sin(x[:, :1]) + 0.1 * rng.standard_normal((n, 1)))
    return x, y


def _max_rel(tree, ref):
    worst = 0.0
    for u, v in zip(tree_leaves(tree), tree_leaves(ref)):
        u = to_numpy(u).astype(np.float64)
        v = np.asarray(v, np.float64)
        scale = max(float(np.max(np.abs(v))), 1.0) if v.size else 1.0
        worst = max(worst, float(np.max(np.abs(u - v))) / scale if v.size else 0.0)
    return worst


class Library:
    """How to move arrays to one library/device and wait for it."""

    def __init__(self, name, to_device, sync):
        self.name, self.to_device, self.sync = name, to_device, sync


def libraries(device):
    libs = []
    import torch

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    libs.append(Library(f"torch ({device})",
                        lambda a, dtype=None: torch.asarray(
                            a if dtype is None else a.astype(dtype), device=dev), sync))
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            libs.append(Library("cupy", lambda a, dtype=None: cupy.asarray(
                a if dtype is None else a.astype(dtype)),
                lambda: cupy.cuda.Stream.null.synchronize()))
    except Exception:  # noqa: BLE001 - CuPy absent or without a GPU
        pass
    return libs


def check_correctness(lib, quick):
    net = _net()
    n = 512 if quick else 2048
    x, y = _data(n)
    params, state = net.init(x, seed=0)
    ref = bnmat.value_and_grad(net, params, state, x, y, loss="mse")
    fit_kw = dict(loss="mse", optimizer=bnmat.optim.adam(1e-3), epochs=3, batch_size=256,
                  seed=0, progress=False)
    ref_fit = bnmat.fit(net, params, state, x, y, **fit_kw)
    rows = []
    for dtype, limit in ((np.float64, 1e-10), (np.float32, 1e-3)):
        xd, yd = lib.to_device(x, dtype), lib.to_device(y, dtype)
        p, s = net.init(xd, seed=0)
        value, grads, new_state = bnmat.value_and_grad(net, p, s, xd, yd, loss="mse")
        err_grad = max(abs(value - ref[0]) / abs(ref[0]), _max_rel(grads, ref[1]),
                       _max_rel(new_state, ref[2]))
        result = bnmat.fit(net, p, s, xd, yd, **fit_kw)
        err_fit = max(_max_rel(result.params, ref_fit.params),
                      _max_rel(result.state, ref_fit.state))
        pred = net.predict(result.params, result.state, xd)
        err_pred = float(np.max(np.abs(to_numpy(pred) - net.predict(ref_fit.params,
                                                                    ref_fit.state, x))))
        ok = max(err_grad, err_fit, err_pred) < limit
        rows.append((lib.name, np.dtype(dtype).name, err_grad, err_fit, err_pred, limit, ok))
    return rows


def _time(fn, sync, repeat):
    fn()
    sync()
    ts = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_bn(device, quick):
    import torch

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    sizes = [(256, 64), (4096, 256)] if quick else [(256, 64), (4096, 256), (65536, 256)]
    rows = []
    for n, p in sizes:
        rng = np.random.default_rng(0)
        x = torch.asarray(rng.standard_normal((n, p)).astype(np.float32), device=dev)
        dy = torch.asarray(rng.standard_normal((n, p)).astype(np.float32), device=dev)
        g = torch.ones(p, device=dev)
        b = torch.zeros(p, device=dev)

        def ours():
            y, cache = bnmat.ops.batchnorm_forward(x, g, b, eps=1e-5)
            return bnmat.ops.batchnorm_backward(dy, cache)

        def native():
            y, mean, rstd = torch.ops.aten.native_batch_norm(x, g, b, None, None, True, 0.0,
                                                             1e-5)
            return torch.ops.aten.native_batch_norm_backward(dy, x, g, None, None, mean, rstd,
                                                             True, 1e-5, [True, True, True])

        repeat = 20 if quick else 100
        t_ours, t_native = _time(ours, sync, repeat), _time(native, sync, repeat)
        rows.append((f"{n}×{p}", t_ours, t_native))
    return rows


def bench_step(device, quick):
    import torch

    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    n = 2048 if quick else 16384
    x, y = _data(n)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    net = _net()
    xd, yd = torch.asarray(x32, device=dev), torch.asarray(y32, device=dev)
    params, state = net.init(xd, seed=0)
    opt = bnmat.optim.sgd(1e-3)
    opt_state = opt.init(params)

    def ours():
        bnmat.train.train_step(net, opt, params, state, opt_state, xd, yd, loss="mse")

    nn = torch.nn
    model = nn.Sequential(nn.Linear(64, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(),
                          nn.Linear(256, 256, bias=False), nn.BatchNorm1d(256), nn.ReLU(),
                          nn.Linear(256, 1)).to(dev)
    sgd = torch.optim.SGD(model.parameters(), lr=1e-3)

    def theirs():
        sgd.zero_grad()
        loss = torch.mean((model(xd) - yd) ** 2)
        loss.backward()
        sgd.step()

    repeat = 5 if quick else 30
    return [(f"N={n}", _time(ours, sync, repeat), _time(theirs, sync, repeat))]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU (no GPU)"
    print(f"# bnmat GPU check on {device}: {name}; torch {torch.__version__}, "
          f"bnmat {getattr(bnmat, '__version__', '?')}\n")

    print("## Correctness against NumPy float64 on the CPU\n")
    print("| library | dtype | value_and_grad | fit (3 epochs) | predict | limit | ok |")
    print("|---|---|---|---|---|---|---|")
    all_ok = True
    for lib in libraries(device):
        for row in check_correctness(lib, args.quick):
            all_ok &= row[-1]
            print(f"| {row[0]} | {row[1]} | {row[2]:.1e} | {row[3]:.1e} | {row[4]:.1e} | "
                  f"{row[5]:.0e} | {'yes' if row[6] else 'NO'} |")

    print("\n## Batch norm forward + backward, float32 (median)\n")
    print("| size | bnmat.ops | torch native (cuDNN on CUDA) | ratio |")
    print("|---|---|---|---|")
    for size, ours, native in bench_bn(device, args.quick):
        print(f"| {size} | {ours * 1e6:.0f} µs | {native * 1e6:.0f} µs | {ours / native:.2f}× |")

    print("\n## Training step, float32 (median)\n")
    print("| batch | bnmat (Sequential + value_and_grad + sgd) | torch eager | ratio |")
    print("|---|---|---|---|")
    for size, ours, theirs in bench_step(device, args.quick):
        print(f"| {size} | {ours * 1e3:.2f} ms | {theirs * 1e3:.2f} ms | {ours / theirs:.2f}× |")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
