"""Run under ``mpiexec -n K``: one rank's part of the distributed-training scenarios.

Usage: ``python _distributed_worker.py OUTDIR SIZES [CASE ...]`` where SIZES is
the rows per rank (e.g. ``37,0,63``). Every rank builds the same whole data set
(:func:`whole_data`), takes its slice, runs the cases with an
:class:`bnmat.distributed.MPIReducer` and saves its results to
``OUTDIR/<case>-rank<r>.npz``; the tests compare them with one process on the
whole data. Nothing is compared here.
"""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

import bnmat
from bnmat.distributed import MPIReducer, TorchDistributedReducer
from bnmat.train._distributed import distributed_value_and_grad
from bnmat.layers import GroupBatchNorm, tree_leaves

#: Group sizes of the group-batch-norm data; the first five sum to 37 and the
#: last five to 63, so shards of 37 and 63 rows hold whole units.
UNIT_SIZES = (5, 6, 7, 8, 11, 9, 10, 12, 14, 18)


def whole_data(n=100, p=3, seed=7):
    """The whole data set: X (n, p), y (n,), unit labels (n,) (whole units in order)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p)) * [1.0, 3.0, 0.5] + [2.0, -1.0, 10.0]
    y = np.sin(x[:, 0]) + 0.3 * x[:, 1] + 0.1 * rng.normal(size=n)
    units = np.repeat(100 + 7 * np.arange(len(UNIT_SIZES)), UNIT_SIZES)[:n]
    return x, y, units


def bn_net():
    return bnmat.Sequential([
        bnmat.Dense(5, bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
        bnmat.Dense(4, bias=False), bnmat.BatchNorm(ddof=1, decay=0.5), bnmat.Tanh(),
        bnmat.Dense(1)])


def group_net():
    return bnmat.Sequential([
        bnmat.Dense(4, bias=False), GroupBatchNorm(decay=0.5), bnmat.ReLU(),
        bnmat.Dense(1)])


def flat(tree):
    leaves = [np.asarray(a, dtype=np.float64).ravel() for a in tree_leaves(tree)]
    return np.concatenate(leaves) if leaves else np.zeros(0)


def run_cases(cases, red, lo, hi, out):
    x, y, units = whole_data()
    xs, ys, us = x[lo:hi], y[lo:hi], units[lo:hi]
    for case in cases:
        res = {}
        if case == "grad":
            net = bn_net()
            params, state = net.init(x, seed=1)
            for loss in ("sse", "mse"):
                v, g, s = bnmat.value_and_grad(net, params, state, xs, ys, loss, reducer=red)
                res[f"{loss}_loss"] = np.asarray(v)
                res[f"{loss}_grads"] = flat(g)
                res[f"{loss}_state"] = flat(s)
            # inference mode and an L2 penalty
            v, g, _ = bnmat.value_and_grad(net, params, state, xs, ys, "mse", training=False,
                                           l2=0.1, reducer=red)
            res["inference_loss"], res["inference_grads"] = np.asarray(v), flat(g)
        elif case == "bytes":
            # what one training step exchanges (input checks done once, as in fit)
            net = bn_net()
            params, state = net.init(x, seed=1)
            calls, nbytes = red.stats.calls, red.stats.bytes
            distributed_value_and_grad(net, params, state, xs, ys, "sse", reducer=red,
                                       _counts=[x.shape[0]])
            res["calls"] = np.asarray(red.stats.calls - calls)
            res["bytes"] = np.asarray(red.stats.bytes - nbytes)
            res["n_params"] = np.asarray(flat(params).size)
        elif case == "unsynced":
            # What naive data parallelism computes: each rank's own batch norm
            # statistics, gradients summed. The tests show it is not the answer.
            net = bn_net()
            params, state = net.init(x, seed=1)
            if hi > lo:
                v, g, _ = bnmat.value_and_grad(net, params, state, xs, ys, "sse")
                local = np.concatenate([[v], flat(g)])
            else:
                local = np.zeros(1 + flat(params).size)
            total = red.allreduce(local)
            res["sse_loss"], res["sse_grads"] = total[:1], total[1:]
        elif case in ("adam", "adam_minibatch"):
            net = bn_net()
            params, state = net.init(x, seed=1)
            digests = []
            cb = lambda epoch, logs: digests.append(flat(logs["params"]))  # noqa: E731
            kw = dict(epochs=5) if case == "adam" else dict(epochs=2, batch_size=30)
            r = bnmat.fit(net, params, state, xs, ys, loss="mse",
                          optimizer=bnmat.optim.adam(0.05), seed=3, progress=False,
                          callback=cb, reducer=red, population_stats=False, **kw)
            res["params"], res["state"] = flat(r.params), flat(r.state)
            res["per_epoch"] = np.stack(digests)
            res["loss"] = np.asarray(r.history["loss"])
            pop = bnmat.population_statistics(net, r.params, r.state, xs, reducer=red)
            res["population"] = flat(pop)
        elif case == "lbfgs":
            net = bn_net()
            params, state = net.init(x, seed=1)
            r = bnmat.fit_lbfgs(net, params, state, xs, ys, loss="sse", max_iter=5,
                                reducer=red)
            res["params"], res["state"] = flat(r.params), flat(r.state)
            res["loss"] = np.asarray(r.history["loss"])
        elif case == "group":
            net = group_net()
            params, state = net.init(x, seed=2)
            v, g, s = bnmat.value_and_grad(net, params, state, xs, ys, "sse", groups=us,
                                           reducer=red)
            res["loss"], res["grads"], res["state"] = np.asarray(v), flat(g), flat(s)
            r = bnmat.fit(net, params, state, xs, ys, loss="mse", groups=us, epochs=5,
                          batch_size=30, optimizer=bnmat.optim.adam(0.05), seed=4,
                          progress=False, reducer=red)
            res["fit_params"], res["fit_state"] = flat(r.params), flat(r.state)
        elif case == "nan":
            # the last rank's rows hold a NaN: every rank must raise, none may hang
            xb = xs.copy()
            if red.rank == red.size - 1 and xb.shape[0]:
                xb[0, 0] = np.nan
            net = bn_net()
            params, state = net.init(x, seed=1)
            try:
                bnmat.value_and_grad(net, params, state, xb, ys, "sse", reducer=red)
                res["error"] = np.asarray("")
            except ValueError as exc:
                res["error"] = np.asarray(str(exc))
        elif case == "split_units":
            # a unit with rows on two ranks: refused with a clear error on every rank
            net = group_net()
            params, state = net.init(x, seed=2)
            bad = np.zeros_like(us)
            try:
                bnmat.value_and_grad(net, params, state, xs, ys, "sse", groups=bad,
                                     reducer=red)
                res["error"] = np.asarray("")
            except ValueError as exc:
                res["error"] = np.asarray(str(exc))
        else:
            raise ValueError(f"unknown case {case!r}")
        np.savez(f"{out}/{case}-rank{red.rank}.npz", **res)


def run_shard(red, argv, run_cases):
    """``run_cases`` on this rank's rows: ``argv`` is (out, shard sizes "37,0,63", cases...).

    Any failure aborts every rank with its traceback (never a hang).
    """
    out, sizes, cases = argv[0], [int(s) for s in argv[1].split(",")], argv[2:]
    if red.size != len(sizes):
        red.abort(f"expected {len(sizes)} ranks, got {red.size}")
    lo = sum(sizes[:red.rank])
    try:
        run_cases(cases, red, lo, lo + sizes[red.rank], out)
    except BaseException:
        red.abort(f"rank {red.rank} failed:\n{traceback.format_exc()}")


def main(argv):
    out = argv[0]
    if os.environ.get("BNMAT_TEST_REDUCER") == "torch":
        # gloo on the CPU; mpiexec only starts the processes (PMI_RANK, PMI_SIZE)
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{out}/torch-store",
                                rank=int(os.environ["PMI_RANK"]),
                                world_size=int(os.environ["PMI_SIZE"]))
        red = TorchDistributedReducer()
    else:
        red = MPIReducer()
    run_shard(red, argv, run_cases)
    if isinstance(red, TorchDistributedReducer):
        # gloo's threads must be stopped before the interpreter exits, else
        # C++ terminates the process while they run
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
