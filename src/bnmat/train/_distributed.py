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

import numpy as np

from .._array_api import as_float, check_2d, get_namespace, to_numpy
from ..layers._network import population_forward, uses_groups
from ..layers._sync import synchronized
from .._tree import tree_leaves, tree_unflatten
from .. import ops
from ._data import check_xy, row_chunks, take_rows
from ._groups import as_factors

__all__ = ["distributed_value_and_grad", "distributed_loss_value",
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
    from ._loss import _add_l2, _backward_without_dx, _match_target, check_l2, l2_penalty
    from ._loss import net_kwargs

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
    from ._loss import _match_target, net_kwargs

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
