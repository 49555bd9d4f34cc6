"""Training with rows spread over several processes (ranks), reduced by a reducer.

Reached from :func:`bnmat.value_and_grad`, :func:`bnmat.fit`,
:func:`bnmat.fit_lbfgs` and :func:`bnmat.population_statistics` when they get
``reducer=`` of size > 1 (:mod:`bnmat.distributed`). Rank r holds rows
``[o_r, o_r + N_r)`` of the whole data (the ranks' rows concatenated in rank
order); every function returns what one process would return on the whole
data, on every rank:

* the loss is the sum of the ranks' sums (SSE), or that sum over the total
  count (MSE: N·k; cross-entropy: N);
* batch norms normalize with the whole batch's statistics
  (:mod:`bnmat.layers._sync`);
* the parameter gradients are the sum of the ranks' contributions, in one
  flat float64 all-reduce (with the loss in its first slot);
* mini-batches are drawn from one generator seeded alike on every rank,
  over global row indices: each batch holds the rows one process would draw,
  and every rank takes those of its own;
* after every step the parameters are checked to be identical on every rank
  (a 128-bit digest, compared by one all-reduce of two numbers).
"""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np

from .._array_api import as_float, check_2d, get_namespace, to_numpy
from ..layers._network import population_forward, uses_groups
from ..layers._sync import synchronized
from ..layers._tree import tree_leaves, tree_unflatten
from .. import ops
from ._data import check_xy, row_chunks, take_rows
from ._groups import as_factors, group_batches, take_factors

__all__ = ["distributed_value_and_grad", "distributed_fit", "distributed_fit_lbfgs",
           "distributed_population_statistics", "check_identical", "is_distributed"]

_LOSSES = ("sse", "mse", "softmax_cross_entropy")


def is_distributed(reducer) -> bool:
    """True for a reducer of more than one process (None and size 1: the ordinary path)."""
    if reducer is None:
        return False
    from ..distributed import check_reducer  # noqa: F401  (interface check only)

    check_reducer(reducer)
    return int(reducer.size) > 1


# ------------------------------------------------------------------ checks
def digest(tree) -> float:
    """A 52-bit digest of every leaf's bytes (shape and dtype included), as a float."""
    h = hashlib.blake2b(digest_size=16)
    for leaf in tree_leaves(tree):
        a = np.ascontiguousarray(to_numpy(leaf))
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return float(int.from_bytes(h.digest()[:6], "little") + 1)


def check_identical(reducer, params, what: str = "parameters") -> None:
    """Raise ``RuntimeError`` on every rank unless ``params`` are bitwise equal on all ranks."""
    d = digest(params)
    hi, neg_lo = reducer.allreduce_max(np.asarray([d, -d]))
    if hi != -neg_lo:
        raise RuntimeError(
            f"the {what} differ between ranks (digests {-neg_lo:.0f} to {hi:.0f}): every "
            "rank must start from the same values, and the reducer must return identical "
            "sums on every rank"
        )


def _local_input(x, y):
    """This rank's (x, y), checked; 0 rows allowed. Returns (x, y, error or None)."""
    try:
        if hasattr(x, "shape") and len(x.shape) == 2 and x.shape[0] == 0:
            x = check_2d(as_float(x, "X"), "X")
            y = y if hasattr(y, "shape") else np.asarray(y)
            if y.ndim not in (1, 2) or y.shape[0] != 0:
                raise ValueError(f"y must have shape (N,) or (N, k) with N = 0 (the rows of "
                                 f"X); got shape {tuple(y.shape)}")
            return x, as_float(y, "y"), None
        x, y = check_xy(x, y)
        return x, y, None
    except (ValueError, TypeError) as exc:
        return x, y, exc


def _preflight(reducer, x, y, params, factors):
    """One all-gather: every rank's rows, widths, label set, parameter digest and error.

    Raises the same error on every rank when any rank's input is bad, or the
    ranks disagree on the columns or the parameters.

    Returns
    -------
    counts : list of int
        Rows per rank.
    """
    x, y, exc = _local_input(x, y)
    width = (int(x.shape[1]) if exc is None else None,
             tuple(y.shape[1:]) if exc is None else None)
    info = reducer.allgather({
        "rows": int(x.shape[0]) if exc is None else 0,
        "width": width,
        "error": None if exc is None else f"{type(exc).__name__}: {exc}",
        "digest": digest(params),
    })
    for rank, item in enumerate(info):
        if item["error"] is not None:
            raise ValueError(f"rank {rank}: {item['error']}")
    widths = {item["width"] for item in info}
    if len(widths) > 1:
        raise ValueError(
            "the ranks' data have different widths (columns of X, shape of y): "
            + ", ".join(f"rank {r}: {it['width']}" for r, it in enumerate(info)))
    if len({item["digest"] for item in info}) > 1:
        raise RuntimeError("the parameters differ between ranks: every rank must start from "
                           "the same values (same seed in net.init)")
    counts = [item["rows"] for item in info]
    if sum(counts) == 0:
        raise ValueError("Found array with 0 sample(s) on all ranks; at least 1 is required")
    return x, y, counts


def _check_loss(loss):
    if not (isinstance(loss, str) and loss in _LOSSES):
        raise ValueError(
            f"distributed training supports loss in {_LOSSES}; got {loss!r} (the within "
            "losses project out effects of factors whose rows may span ranks, and a custom "
            "pair's normalization is unknown)"
        )
    return loss


# ------------------------------------------------------------------ value and grad
def _local_loss(name, y_pred, target, n_total):
    """This rank's share of the loss and ∂R/∂ŷ of the whole-batch loss.

    sse: Σ r²,  ∂ = 2r;   mse: Σ r²/(N·k),  ∂ = 2r/(N·k);
    softmax_cross_entropy: −Σ Y∘log softmax(ŷ)/N,  ∂ = (P∘(Y1) − Y)/N.
    """
    xp = get_namespace(y_pred)
    if name in ("sse", "mse"):
        r = y_pred - target
        k = r.shape[1] if r.ndim == 2 else 1
        scale = 1.0 if name == "sse" else 1.0 / (n_total * k)
        return float(xp.sum(r * r)) * scale, (2.0 * scale) * r
    scale = 1.0 / n_total
    if y_pred.shape[0] == 0:
        return 0.0, y_pred * 0.0
    logp = ops.log_softmax(y_pred, xp)
    value = -float(xp.sum(target * logp)) * scale
    row_mass = xp.sum(target, axis=1, keepdims=True)
    return value, scale * (xp.exp(logp) * row_mass - target)


def _reduce_tree(reducer, value, grads, params):
    """Sum the loss and every gradient leaf over ranks in one flat float64 buffer."""
    leaves = tree_leaves(grads, like=params)
    host = [np.asarray(to_numpy(g), dtype=np.float64).ravel() for g in leaves]
    flat = np.concatenate([[value], *host]) if host else np.asarray([value])
    total = reducer.allreduce(flat)
    out, at = [], 1
    for g, p in zip(host, tree_leaves(params)):
        ref = to_numpy(p)
        piece = total[at:at + g.size].reshape(ref.shape).astype(ref.dtype, copy=False)
        at += g.size
        out.append(piece if isinstance(p, np.ndarray) else get_namespace(p).asarray(piece))
    return float(total[0]), tree_unflatten(params, out)


def distributed_value_and_grad(net, params, state, x, y, loss="sse", *, training=True,
                               l2=0.0, groups=None, reducer, _counts=None):
    """:func:`bnmat.value_and_grad` of the rows of all ranks (see the module docstring).

    ``_counts`` (rows per rank, internal) skips the input checks, for training
    loops that checked the data once.
    """
    from ._grad import _backward_without_dx, _match_target, _add_l2, check_l2, l2_penalty
    from ._grad import net_kwargs

    l2 = check_l2(l2)
    name = _check_loss(loss)
    if _counts is None:
        x, y, counts = _preflight(reducer, x, y, params, None)
    else:
        counts = _counts
    n_total = int(sum(counts))
    factors = as_factors(groups, x.shape[0])
    if factors is not None and len(factors) > 1 and uses_groups(net):
        factors = factors[:1]
    with synchronized(reducer):
        y_pred, new_state, cache = net.forward(params, state, x, training=training,
                                               **net_kwargs(net, factors))
    target = _match_target(y_pred, y, name)
    value, dy_pred = _local_loss(name, y_pred, target, n_total)
    _, grads = _backward_without_dx(net, dy_pred, cache)
    value, grads = _reduce_tree(reducer, value, grads, params)
    if l2:
        value += l2_penalty(params, l2)
        grads = _add_l2(grads, params, l2)
    return value, grads, new_state


def distributed_loss_value(net, params, state, x, y, loss, *, groups, reducer, n_total):
    """The inference-mode loss of the rows of all ranks."""
    from ._grad import _match_target, net_kwargs

    factors = as_factors(groups, x.shape[0])
    y_pred, _, _ = net.forward(params, state, x, training=False, **net_kwargs(net, factors))
    value, _ = _local_loss(loss, y_pred, _match_target(y_pred, y, loss), n_total)
    return float(reducer.allreduce(np.asarray([value]))[0])


# ------------------------------------------------------------------ statistics
def distributed_population_statistics(net, params, state, x, *, batch_size=None, groups=None,
                                      reducer):
    """:func:`bnmat.population_statistics` over the rows of all ranks; identical on every rank."""
    x, _, exc = _local_input(x, np.zeros(x.shape[0] if hasattr(x, "shape") else 0))
    errors = reducer.allgather(None if exc is None else f"{type(exc).__name__}: {exc}")
    for rank, err in enumerate(errors):
        if err is not None:
            raise ValueError(f"rank {rank}: {err}")
    chunks = row_chunks(x.shape[0], batch_size) if x.shape[0] else [None]
    xs = [take_rows(x, idx) for idx in chunks]
    factors = as_factors(groups, x.shape[0])
    labels = None
    if factors is not None and uses_groups(net):
        labels = [factors[0] if idx is None else factors[0][idx] for idx in chunks]
    with synchronized(reducer):
        _, new_state = population_forward(net, params, state, xs, labels)
    return new_state


# ------------------------------------------------------------------ fit
def _global_labels(reducer, factors):
    """The first factor of all ranks' rows, concatenated in rank order."""
    parts = reducer.allgather(None if factors is None else np.asarray(factors[0]))
    if any(p is None for p in parts):
        if all(p is None for p in parts):
            return None
        raise ValueError("groups= was given on some ranks and not on others")
    return np.concatenate(parts)


def _local_rows(idx, lo, hi):
    """This rank's rows (local indices) among the global row indices ``idx``, in order."""
    if idx is None:
        return None
    idx = np.asarray(idx)
    return idx[(idx >= lo) & (idx < hi)] - lo


def distributed_fit(net, params, state, x, y, *, loss, optimizer, epochs, batch_size, l2,
                    validation_data, validation_fraction, early_stopping, patience, tol, seed,
                    shuffle, callback, progress, drop_last, population_stats, groups,
                    reducer):
    """:func:`bnmat.fit` over the rows of all ranks (checked arguments; see the module docstring)."""
    from ..optim import adam
    from ._fit import (FitResult, _Progress, _all_finite, divergence_error,
                       is_nonfinite_error)

    name = _check_loss(loss)
    if validation_fraction:
        raise ValueError(
            "validation_fraction is not supported with a reducer: hold out rows on each rank "
            "and pass them as validation_data=(x_val, y_val) (each rank its own)")
    x, y, counts = _preflight(reducer, x, y, params, None)
    rank = int(reducer.rank)
    lo = int(sum(counts[:rank]))
    hi = lo + counts[rank]
    n = int(sum(counts))
    factors = as_factors(groups, x.shape[0])
    if factors is not None and len(factors) > 1:
        factors = factors[:1]
    labels_all = _global_labels(reducer, factors)
    optimizer = adam(1e-3) if optimizer is None else optimizer
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    x_val = y_val = g_val = None
    n_val = 0
    if validation_data is not None:
        x_val, y_val, n_val_counts = _preflight(reducer, validation_data[0],
                                                validation_data[1], params, None)
        n_val = int(sum(n_val_counts))
        if len(validation_data) == 3:
            g_val = as_factors(validation_data[2], x_val.shape[0])

    opt_state = optimizer.init(params)
    history = {"epoch": [], "loss": [], "val_loss": []}
    best, best_epoch, best_params, best_state = math.inf, 0, params, state
    wait, stopped_early = 0, False
    bar = _Progress(epochs, progress and rank == 0)
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for epoch in range(1, epochs + 1):
                if labels_all is not None:
                    batches = group_batches(labels_all, batch_size, rng, shuffle, drop_last)
                else:
                    order = (rng.permutation(n) if (shuffle and batch_size and batch_size < n)
                             else None)
                    batches = row_chunks(n, batch_size, order, drop_last)
                total, rows = 0.0, 0
                for idx in batches:
                    local = _local_rows(idx, lo, hi)
                    xb, yb = take_rows(x, local), take_rows(y, local)
                    m = n if idx is None else int(np.asarray(idx).shape[0])
                    try:
                        value, grads, new_state = distributed_value_and_grad(
                            net, params, state, xb, yb, name, l2=l2,
                            groups=take_factors(factors, local), reducer=reducer,
                            _counts=[m])
                    except ValueError as exc:
                        if is_nonfinite_error(exc):
                            raise divergence_error(epoch, params, state, history, exc) from exc
                        raise
                    new_params, opt_state = optimizer.update(grads, opt_state, params)
                    if not (math.isfinite(value) and _all_finite(new_params)):
                        raise divergence_error(epoch, params, state, history)
                    check_identical(reducer, new_params)
                    params, state = new_params, new_state
                    total, rows = total + value * m, rows + m
                epoch_loss = total / rows
                val_loss = None
                if x_val is not None:
                    with warnings.catch_warnings():
                        if epoch > 1:
                            warnings.simplefilter("ignore")
                        val_loss = distributed_loss_value(net, params, state, x_val, y_val,
                                                          name, groups=g_val, reducer=reducer,
                                                          n_total=n_val)
                history["epoch"].append(epoch)
                history["loss"].append(epoch_loss)
                if x_val is not None:
                    history["val_loss"].append(val_loss)
                bar.update(epoch, epoch_loss, val_loss)
                metric = val_loss if x_val is not None else epoch_loss
                wait = wait + 1 if metric > best - tol else 0
                if metric < best:
                    best, best_epoch, best_params, best_state = metric, epoch, params, state
                logs = {"loss": epoch_loss, "val_loss": val_loss, "params": params,
                        "state": state}
                stop = callback is not None and callback(epoch, logs) is True
                # the callback runs on every rank; stop when any rank's asks to
                if callback is not None:
                    stop = bool(reducer.allreduce_max(np.asarray([float(stop)]))[0])
                if stop or (early_stopping and wait >= patience):
                    stopped_early = True
                    break
    finally:
        bar.close()

    if early_stopping:
        params, state = best_params, best_state
    if population_stats:
        state = distributed_population_statistics(net, params, state, x,
                                                  batch_size=batch_size, groups=factors,
                                                  reducer=reducer)
    return FitResult(params, state, history, best_epoch, stopped_early)


def distributed_fit_lbfgs(net, params, state, x, y, *, loss, l2, max_iter, tol, callback,
                          population_stats, groups, reducer):
    """:func:`bnmat.fit_lbfgs` over the rows of all ranks.

    Every rank runs SciPy's L-BFGS-B on the same objective values and
    gradients (reduced over ranks), so every rank takes the same iterates;
    they are checked to be identical at every evaluation.
    """
    from scipy.optimize import minimize

    from ._fit import FitResult, divergence_error, is_nonfinite_error

    name = _check_loss(loss)
    x, y, counts = _preflight(reducer, x, y, params, None)
    factors = as_factors(groups, x.shape[0])
    leaves = tree_leaves(params)
    host = [to_numpy(a) for a in leaves]
    offsets = np.cumsum([0] + [a.size for a in host])

    def unflatten(theta):
        return tree_unflatten(params, [
            theta[offsets[i]:offsets[i + 1]].reshape(a.shape).astype(a.dtype)
            for i, a in enumerate(host)])

    def flatten(tree):
        parts = [np.asarray(to_numpy(a), dtype=np.float64).ravel()
                 for a in tree_leaves(tree, like=params)]
        return np.concatenate(parts) if parts else np.zeros(0)

    def objective(theta):
        p = unflatten(theta)
        check_identical(reducer, p)
        try:
            value, grads, _ = distributed_value_and_grad(
                net, p, state, x, y, name, l2=l2, groups=factors, reducer=reducer,
                _counts=counts)
        except ValueError as exc:
            if is_nonfinite_error(exc):
                return math.inf, np.zeros_like(theta)
            raise
        if not math.isfinite(value):
            return math.inf, np.zeros_like(theta)
        return value, flatten(grads)

    history = {"epoch": [], "loss": [], "val_loss": []}
    stopped = [False]

    def on_iteration(intermediate_result):
        it = len(history["epoch"]) + 1
        history["epoch"].append(it)
        history["loss"].append(float(intermediate_result.fun))
        if callback is not None:
            logs = {"loss": float(intermediate_result.fun), "val_loss": None,
                    "params": unflatten(intermediate_result.x), "state": state}
            stop = callback(it, logs) is True
            if bool(reducer.allreduce_max(np.asarray([float(stop)]))[0]):
                stopped[0] = True
                raise StopIteration

    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        result = minimize(objective, flatten(params), jac=True, method="L-BFGS-B", tol=tol,
                          callback=on_iteration, options={"maxiter": max_iter})
    if not np.all(np.isfinite(result.x)):
        raise divergence_error(len(history["epoch"]) + 1, params, state, history)
    new_params = unflatten(result.x)
    check_identical(reducer, new_params)
    if population_stats:
        state = distributed_population_statistics(net, new_params, state, x, groups=factors,
                                                  reducer=reducer)
    return FitResult(new_params, state, history, len(history["epoch"]), stopped[0])
