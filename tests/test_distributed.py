"""Data-parallel training over several processes equals one process on the whole batch.

The multi-process runs are real: ``mpiexec -n 2`` and ``-n 3`` (the MPICH that
the test extra installs into the virtual environment, one BLAS thread per
rank) start ``tests/_distributed_worker.py``, whose ranks hold shards of 37
and 63 rows (and, with three ranks, an empty shard between them) of one data
set. Each rank saves what it computed; here it is compared with one process
on the whole data:

* equal within 1e-12 relative (``max|a − b| / max|b|`` per quantity; what
  rounding leaves is ≈1e-15);
* bitwise identical on every rank.

The comparison is shown to fail on naive data parallelism (each rank's own
batch statistics, gradients summed), which is off by tens of percent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import bnmat
from bnmat.distributed import (MPIReducer, SingleProcessReducer, TorchDistributedReducer,
                               check_reducer)
from bnmat.layers import tree_leaves

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _distributed_worker import bn_net, flat, group_net, whole_data  # noqa: E402

RTOL = 1e-12
CASES = ("grad", "unsynced", "adam", "adam_minibatch", "lbfgs", "group", "nan",
         "split_units", "bytes")
LAYOUTS = {2: (37, 63), 3: (37, 0, 63)}


def mpiexec() -> str:
    """The mpiexec of this interpreter's environment (the ``mpich`` wheel puts it there)."""
    bindir = Path(sys.executable).parent
    found = shutil.which("mpiexec", path=str(bindir))
    if found is None:
        pytest.fail(f"no mpiexec in {bindir}: install the test extra (pip install -e '.[test]', "
                    "which brings mpi4py and the mpich wheel)")
    return found


def mpi_env(**extra) -> dict:
    """The environment of launched ranks: this bnmat first on the path, one thread per library."""
    env = dict(os.environ)
    env.update(extra)
    src = str(Path(bnmat.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMBA_NUM_THREADS"):
        env[var] = "1"
    return env


def launch(k: int, out: Path, cases, reducer: str = "mpi", extra_env=None) -> None:
    env = mpi_env(**(extra_env or {}), BNMAT_TEST_REDUCER=reducer)
    sizes = ",".join(map(str, LAYOUTS[k]))
    cmd = [mpiexec(), "-n", str(k), sys.executable, str(HERE / "_distributed_worker.py"),
           str(out), sizes, *cases]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n"
                    f"{proc.stderr[-4000:]}")


@pytest.fixture(scope="module", params=[(2, "0"), (3, "0"), (2, None)],
                ids=["2ranks-kernels", "3ranks-empty-shard-kernels", "2ranks-reference"])
def runs(request, tmp_path_factory):
    """Run every case; with "0", every array takes the numba pieces (BNMAT_KERNELS_MIN_ELEMENTS=0)."""
    k, min_elements = request.param
    out = tmp_path_factory.mktemp(f"mpi{k}")
    env = {"BNMAT_DISABLE_KERNELS": "1"} if min_elements is None else {
        "BNMAT_KERNELS_MIN_ELEMENTS": min_elements}
    launch(k, out, CASES, extra_env=env)

    def load(case):
        return [dict(np.load(out / f"{case}-rank{r}.npz")) for r in range(k)]

    return k, load


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def assert_close(ranks, key, reference):
    """Every rank's ``key`` equals ``reference`` within RTOL and all ranks are identical."""
    first = ranks[0][key]
    for r, res in enumerate(ranks):
        assert np.array_equal(res[key], first), f"{key} differs between rank 0 and rank {r}"
    err = rel(first, reference)
    assert err <= RTOL, f"{key}: relative difference {err:.2e} from one process"
    return err


@pytest.fixture(scope="module")
def whole():
    x, y, units = whole_data()
    net = bn_net()
    params, state = net.init(x, seed=1)
    return x, y, units, net, params, state


# ------------------------------------------------------------------ environment
def test_mpiexec_is_the_virtual_environments():
    assert Path(mpiexec()).parent == Path(sys.executable).parent


def test_ranks_with_different_parameters_are_caught():
    """The per-step check fails when one rank's parameters differ (a fake two-rank reducer)."""
    from bnmat.train._distributed import check_identical, digest

    class Diverged(SingleProcessReducer):
        size = 2

        def _allreduce_max(self, a):      # the other rank holds other parameters
            return np.maximum(a, [a[0] + 1.0, -a[0]])

    params = [{"w": np.ones(3)}]
    check_identical(SingleProcessReducer(), params)
    with pytest.raises(RuntimeError, match="differ between ranks"):
        check_identical(Diverged(), params)
    assert digest(params) != digest([{"w": np.ones(3) + 1e-16 * 4}])


# ------------------------------------------------------------------ equality
def test_loss_gradients_and_batch_statistics(runs, whole):
    _, load = runs
    x, y, _, net, params, state = whole
    ranks = load("grad")
    for loss in ("sse", "mse"):
        v, g, s = bnmat.value_and_grad(net, params, state, x, y, loss)
        assert_close(ranks, f"{loss}_loss", v)
        assert_close(ranks, f"{loss}_state", flat(s))     # running stats from batch stats
        ref = flat(g)
        assert_close(ranks, f"{loss}_grads", ref)
        # every parameter array on its own, not only the largest entries
        got = ranks[0][f"{loss}_grads"]
        at = 0
        for leaf in tree_leaves(g):
            n = np.size(leaf)
            assert rel(got[at:at + n], ref[at:at + n]) <= RTOL
            at += n
    v, g, _ = bnmat.value_and_grad(net, params, state, x, y, "mse", training=False, l2=0.1)
    assert_close(ranks, "inference_loss", v)
    assert_close(ranks, "inference_grads", flat(g))


def test_the_comparison_fails_on_unsynchronized_batch_norm(runs, whole):
    _, load = runs
    x, y, _, net, params, state = whole
    _, g, _ = bnmat.value_and_grad(net, params, state, x, y, "sse")
    assert rel(load("unsynced")[0]["sse_grads"], flat(g)) > 1e-3


@pytest.mark.parametrize("case,kw", [("adam", dict(epochs=5)),
                                     ("adam_minibatch", dict(epochs=2, batch_size=30))])
def test_adam_steps_equal_one_process(runs, whole, case, kw):
    _, load = runs
    x, y, _, net, params, state = whole
    per_epoch = []
    r = bnmat.fit(net, params, state, x, y, loss="mse", optimizer=bnmat.optim.adam(0.05), seed=3,
                  progress=False, population_stats=False,
                  callback=lambda e, logs: per_epoch.append(flat(logs["params"])), **kw)
    ranks = load(case)
    assert_close(ranks, "params", flat(r.params))
    assert_close(ranks, "state", flat(r.state))            # running statistics
    assert_close(ranks, "per_epoch", np.stack(per_epoch))  # identical on all ranks every epoch
    assert_close(ranks, "loss", r.history["loss"])
    pop = bnmat.population_statistics(net, r.params, r.state, x)
    assert_close(ranks, "population", flat(pop))


def test_lbfgs_equals_one_process(runs, whole):
    _, load = runs
    x, y, _, net, params, state = whole
    r = bnmat.fit_lbfgs(net, params, state, x, y, loss="sse", max_iter=5)
    ranks = load("lbfgs")
    assert_close(ranks, "params", flat(r.params))
    assert_close(ranks, "state", flat(r.state))
    assert_close(ranks, "loss", r.history["loss"])


def test_group_batchnorm_with_units_on_different_ranks(runs):
    _, load = runs
    x, y, units = whole_data()
    net = group_net()
    params, state = net.init(x, seed=2)
    v, g, s = bnmat.value_and_grad(net, params, state, x, y, "sse", groups=units)
    ranks = load("group")
    assert_close(ranks, "loss", v)
    assert_close(ranks, "grads", flat(g))
    assert_close(ranks, "state", flat(s))      # the table of every unit, on every rank
    r = bnmat.fit(net, params, state, x, y, loss="mse", groups=units, epochs=5, batch_size=30,
                  optimizer=bnmat.optim.adam(0.05), seed=4, progress=False)
    assert_close(ranks, "fit_params", flat(r.params))
    assert_close(ranks, "fit_state", flat(r.state))


def test_a_bad_shard_raises_on_every_rank(runs):
    k, load = runs
    msgs = [str(r["error"]) for r in load("nan")]
    assert all(m == msgs[0] for m in msgs)
    assert msgs[0].startswith(f"rank {k - 1}: ValueError: Input X contains NaN")
    msgs = [str(r["error"]) for r in load("split_units")]
    assert all("has rows on more than one rank" in m for m in msgs)


def test_bytes_exchanged_per_step_match_the_formula(runs):
    """Per rank and step: Σ over BN layers (5p + 1) floats, plus 1 + P for loss and gradients."""
    _, load = runs
    widths = [5, 4]                       # the batch norms of bn_net
    for res in load("bytes"):
        p_total = int(res["n_params"])
        assert int(res["calls"]) == 3 * len(widths) + 1
        assert int(res["bytes"]) == 8 * (sum(5 * p + 1 for p in widths) + 1 + p_total)


# ------------------------------------------------------------------ torch.distributed
def test_torch_distributed_reducer_gloo(tmp_path, whole):
    pytest.importorskip("torch")
    launch(2, tmp_path, ["grad", "lbfgs", "group"], reducer="torch")
    x, y, units, net, params, state = whole
    ranks = [dict(np.load(tmp_path / f"grad-rank{r}.npz")) for r in range(2)]
    v, g, s = bnmat.value_and_grad(net, params, state, x, y, "sse")
    assert_close(ranks, "sse_loss", v)
    assert_close(ranks, "sse_grads", flat(g))
    r = bnmat.fit_lbfgs(net, params, state, x, y, loss="sse", max_iter=5)
    ranks = [dict(np.load(tmp_path / f"lbfgs-rank{r}.npz")) for r in range(2)]
    assert_close(ranks, "params", flat(r.params))
    gnet = group_net()
    gp, gs = gnet.init(x, seed=2)
    v, g, s = bnmat.value_and_grad(gnet, gp, gs, x, y, "sse", groups=units)
    ranks = [dict(np.load(tmp_path / f"group-rank{r}.npz")) for r in range(2)]
    assert_close(ranks, "grads", flat(g))
    assert_close(ranks, "state", flat(s))            # the all-gathered unit table


# ------------------------------------------------------------------ in one process
class Loopback(SingleProcessReducer):
    """One process posing as one of two ranks whose other rank holds no rows."""

    size = 2


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "reference"])
def test_synchronized_path_in_one_process_equals_the_ordinary_path(monkeypatch, kernels):
    """The synchronized batch norm (numba pieces or NumPy) on all rows equals the plain step."""
    if not kernels:
        monkeypatch.setenv("BNMAT_DISABLE_KERNELS", "1")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2000, 3)) * [1.0, 4.0, 0.1] + [0.0, 50.0, -3.0]
    y = rng.normal(size=2000)
    net = bn_net()
    params, state = net.init(x, seed=3)
    red = Loopback()
    for loss in ("sse", "mse"):
        a = bnmat.value_and_grad(net, params, state, x, y, loss)
        b = bnmat.value_and_grad(net, params, state, x, y, loss, reducer=red)
        assert rel(b[0], a[0]) <= RTOL
        assert rel(flat(b[1]), flat(a[1])) <= RTOL
        assert rel(flat(b[2]), flat(a[2])) <= RTOL
    assert red.stats.calls > 0
    pop_a = bnmat.population_statistics(net, params, state, x, batch_size=700)
    pop_b = bnmat.population_statistics(net, params, state, x, batch_size=700, reducer=red)
    assert rel(flat(pop_b), flat(pop_a)) <= RTOL


def test_single_process_reducer_is_the_ordinary_path(whole):
    x, y, _, net, params, state = whole
    red = SingleProcessReducer()
    a = bnmat.value_and_grad(net, params, state, x, y, "mse")
    b = bnmat.value_and_grad(net, params, state, x, y, "mse", reducer=red)
    assert a[0] == b[0]
    assert np.array_equal(flat(a[1]), flat(b[1])) and np.array_equal(flat(a[2]), flat(b[2]))
    assert red.stats.calls == 0
    r1 = bnmat.fit(net, params, state, x, y, epochs=2, progress=False)
    r2 = bnmat.fit(net, params, state, x, y, epochs=2, progress=False, reducer=red)
    assert np.array_equal(flat(r1.params), flat(r2.params))


def test_single_process_reducer_collectives():
    red = SingleProcessReducer()
    buf = np.arange(3.0)
    out = red.allreduce(buf)
    assert np.array_equal(out, buf) and out is not buf
    assert red.allgather("a") == ["a"]
    assert np.array_equal(red.broadcast(buf), buf)
    assert red.stats.calls == 3 and red.stats.bytes >= 48
    with pytest.raises(SystemExit):
        red.abort("stop")


def test_not_a_reducer_is_a_type_error(whole):
    x, y, _, net, params, state = whole
    with pytest.raises(TypeError, match="lacks"):
        bnmat.value_and_grad(net, params, state, x, y, reducer=object())
    with pytest.raises(TypeError):
        check_reducer(3)


def test_missing_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    with pytest.raises(ImportError, match=r"bnmat\[mpi\]"):
        MPIReducer()


def test_torch_reducer_needs_an_initialised_group():
    pytest.importorskip("torch")
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="init_process_group"):
        TorchDistributedReducer()


# ------------------------------------------------------------------ the guide
DOC = HERE.parent / "docs" / "scaling.md"


def test_scaling_guide_example_in_one_process(capsys):
    from _doc_examples import check_doc_examples

    check_doc_examples(DOC, capsys)


def test_scaling_guide_example_under_mpiexec(tmp_path):
    """The guide's script under ``mpiexec -n 3 python -m mpi4py`` prints what it documents."""
    import re

    from _doc_examples import expected_output, same_output

    block = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)[0]
    script = tmp_path / "train.py"
    script.write_text(block)
    env = mpi_env()
    proc = subprocess.run([mpiexec(), "-n", "3", sys.executable, "-m", "mpi4py", str(script)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    got = proc.stdout.strip().splitlines()
    want = expected_output(block)
    assert len(got) == len(want) == 1 and same_output(got[0], want[0]), (got, want)


def test_fused_synchronized_pair_differentiated_layer_by_layer():
    """A Sequential's fused BN+ReLU under a reducer: each layer's own backward agrees."""
    from bnmat.layers._sync import synchronized

    rng = np.random.default_rng(8)
    x = rng.normal(size=(3000, 4)) + 2.0
    net = bnmat.Sequential([bnmat.BatchNorm(), bnmat.ReLU()])
    params, state = net.init(x, seed=0)
    params[0]["beta"] = rng.normal(size=4) * 0.3
    dh = rng.normal(size=x.shape)
    with synchronized(Loopback()):
        h, _, cache = net.forward(params, state, x, training=True)
    c_bn, c_relu = cache.caches
    assert getattr(c_bn, "relu", False) is True       # the fused synchronized pair ran
    dx_fused, grads = net.backward(dh, cache)
    db = net.layers[1].backward(dh, c_relu)[0]
    dx, g = net.layers[0].backward(db, c_bn)
    assert rel(dx, dx_fused) <= RTOL
    assert rel(g["gamma"], grads[0]["gamma"]) <= RTOL and rel(g["beta"], grads[0]["beta"]) <= RTOL
    h_ref, _, ref_cache = net.forward(params, state, x, training=True)   # one process
    assert rel(h, h_ref) <= RTOL
    dx_ref, grads_ref = net.backward(dh, ref_cache)
    assert rel(dx_fused, dx_ref) <= RTOL
    assert rel(grads[0]["gamma"], grads_ref[0]["gamma"]) <= RTOL


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "reference"])
def test_synchronized_path_keeps_float32(monkeypatch, kernels):
    """float32 data: float32 out, float64 sums; within float32 rounding of the plain path."""
    if not kernels:
        monkeypatch.setenv("BNMAT_DISABLE_KERNELS", "1")
    rng = np.random.default_rng(6)
    x = (rng.normal(size=(2000, 3)) * [1.0, 1e-2, 3.0] + [0.0, 1e4, 0.0]).astype(np.float32)
    y = rng.normal(size=2000).astype(np.float32)
    net = bn_net()
    params, state = net.init(x, seed=3)
    a = bnmat.value_and_grad(net, params, state, x, y, "mse")
    b = bnmat.value_and_grad(net, params, state, x, y, "mse", reducer=Loopback())
    assert all(g.dtype == np.float32 for g in tree_leaves(b[1]))
    assert all(s.dtype == np.float32 for s in tree_leaves(b[2]) if s.dtype.kind == "f")
    assert rel(b[0], a[0]) <= 1e-5
    assert rel(flat(b[1]), flat(a[1])) <= 5e-4


def test_synchronized_path_takes_torch_tensors():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x, y = torch.asarray(rng.normal(size=(300, 3))), torch.asarray(rng.normal(size=300))
    net = bn_net()
    params, state = net.init(x, seed=0)
    a = bnmat.value_and_grad(net, params, state, x, y, "mse")
    b = bnmat.value_and_grad(net, params, state, x, y, "mse", reducer=Loopback())
    assert all(isinstance(g, torch.Tensor) for g in tree_leaves(b[1]))
    assert rel(b[0], a[0]) <= RTOL
    assert rel(np.concatenate([np.asarray(g).ravel() for g in tree_leaves(b[1])]),
               np.concatenate([np.asarray(g).ravel() for g in tree_leaves(a[1])])) <= RTOL
