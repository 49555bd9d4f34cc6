"""Whole-data passes in row chunks, so memory stays bounded on large tables.

The command line trains on files of millions of rows. A pass of the network
over all of them at once (validation loss, predictions, the final population
statistics) would hold several N×width arrays per layer — gigabytes for a
CSV file of 50 MB. These helpers do the same computations a chunk of rows at
a time and give the same numbers up to rounding.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .. import ops
from ..layers import BatchNorm, Sequential

__all__ = ["CHUNK_ROWS", "one_blas_thread", "predict_chunked", "population_statistics_chunked"]

#: Rows per chunk: 8192 rows × 64 units × 8 bytes = 4 MiB per array.
CHUNK_ROWS = 8192


@contextlib.contextmanager
def one_blas_thread():
    """Run the block with one BLAS thread (threadpoolctl), then restore the setting.

    The products of mini-batches and row chunks are small (8192 × 64 × 64 is
    3e7 flops): splitting them over threads gains little, and on a machine
    whose cores are busy OpenBLAS's threads wait for each other at every
    product — 19 ms per product measured on a shared 2-core machine, against
    0.1–0.8 ms with one thread (``benchmarks/csv_io.py``, docs/cli.md).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:                 # pragma: no cover - a required dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _chunks(n: int, rows: int):
    return [slice(i, min(i + rows, n)) for i in range(0, n, rows)] or [slice(0, 0)]


def predict_chunked(net, params, state, x, rows: int = CHUNK_ROWS) -> np.ndarray:
    """``net.predict(params, state, x)`` (inference mode), a chunk of ``rows`` rows at a time.

    For the command line's networks (:func:`bnmat.layers._mlp.build_mlp`: a flat
    ``Sequential`` of Dense, BatchNorm and activation layers) each batch norm
    is folded into the dense layer before it, since in inference mode it is an
    affine map per column::

        BN(X W + 1bᵀ) = X W diag(s) + 1 (β + (b − m) ∘ s)ᵀ,   s = γ ∘ (v + ε)^(−1/2)

    so a chunk costs one product, one bias and one activation per layer. The
    result equals ``net.predict`` up to rounding (the product is taken with the
    scaled weights). Other networks are run as they are.

    Parameters
    ----------
    x : ndarray, shape (N, p)

    Returns
    -------
    ndarray, shape (N, k)
    """
    with one_blas_thread():
        return _predict_chunked(net, params, state, x, rows)


def _predict_chunked(net, params, state, x, rows):
    folded = _fold(net, params, state)
    if folded is None:
        parts = [np.asarray(net.predict(params, state, x[s]))
                 for s in _chunks(x.shape[0], rows)]
        return np.concatenate(parts, axis=0)
    out = None
    for s in _chunks(x.shape[0], rows):
        h = np.asarray(x[s], dtype=folded[0][0].dtype)
        for w, b, act in folded:
            h = h @ w
            h += b
            if act is not None:
                h = act(h)
        if out is None:
            out = np.empty((x.shape[0], h.shape[1]), dtype=h.dtype)
        out[s] = h
    return out


def _fold(net, params, state):
    """``[(w, b, activation), ...]`` with every batch norm folded into the dense layer
    before it; None when ``net`` is not a flat Sequential of those layers."""
    from ..layers import Dense

    if not isinstance(net, Sequential):
        return None
    out, i, layers = [], 0, net.layers
    while i < len(layers):
        layer = layers[i]
        if not isinstance(layer, Dense):
            return None
        w = np.asarray(params[i]["w"])
        b = np.asarray(params[i]["b"]) if layer.bias else np.zeros(w.shape[1], w.dtype)
        i += 1
        if i < len(layers) and isinstance(layers[i], BatchNorm):
            bn, p, st = layers[i], params[i], state[i]
            scale = np.asarray(p["gamma"]) / np.sqrt(np.asarray(st["var"]) + bn.eps)
            w, b = w * scale, (b - np.asarray(st["mean"])) * scale + np.asarray(p["beta"])
            i += 1
        act = None
        if i < len(layers) and not isinstance(layers[i], (Dense, BatchNorm)):
            act = _activation(layers[i], params[i], state[i])
            if act is None:
                return None
            i += 1
        out.append((w.astype(np.asarray(params[0]["w"]).dtype), b.astype(w.dtype), act))
    return out


def _activation(layer, params, state):
    """An elementwise function for an activation layer (in place for ReLU)."""
    if getattr(layer, "population_state", None) is not None or params or state:
        return None
    if type(layer).__name__ == "ReLU":
        return lambda h: np.maximum(h, 0, out=h)
    return lambda h: np.asarray(layer.forward(params, state, h, training=False)[0])


def population_statistics_chunked(net, params, state, x, rows: int = CHUNK_ROWS):
    """:func:`bnmat.train.population_statistics` for a flat ``Sequential``, in bounded memory.

    For each batch norm in turn, the rows are streamed, a chunk at a time,
    through the layers before it in inference mode — with the population
    statistics already set for the earlier batch norms, which makes their
    output equal to the training-mode output on all rows — and the chunks'
    moments are merged with count weights (Chan, Golub and LeVeque)::

        μ  = Σ Nᵢ μᵢ / N,   σ² = [Σ Nᵢ σ²ᵢ,₀ + Σ Nᵢ (μᵢ − μ)²] / (N − ddof)

    Memory: one chunk of each layer's output; time: one pass per batch norm.
    Any other network goes to :func:`bnmat.train.population_statistics`.

    Returns
    -------
    new_state : list
        ``state`` with ``mean`` and ``var`` replaced in every batch norm.
    """
    if not (isinstance(net, Sequential)
            and all(not hasattr(layer, "population_state") or isinstance(layer, BatchNorm)
                    for layer in net.layers)):
        from ..train import population_statistics

        return population_statistics(net, params, state, x, batch_size=rows)
    with one_blas_thread():
        return _population_statistics_chunked(net, params, list(state), x, rows)


def _population_statistics_chunked(net, params, state, x, rows):
    n = x.shape[0]
    for k, layer in enumerate(net.layers):
        if not isinstance(layer, BatchNorm):
            continue
        parts = []
        for s in _chunks(n, rows):
            h = x[s]
            for j in range(k):
                h = net.layers[j].forward(params[j], state[j], h, training=False)[0]
            moments = ops.column_moments(np.asarray(h), ddof=0)
            parts.append((s.stop - s.start, np.asarray(moments.mean, dtype=np.float64),
                          np.asarray(moments.var, dtype=np.float64)))
        if n - layer.ddof < 1 or n < 2:
            raise ValueError(f"batch statistics need at least {max(2, layer.ddof + 1)} rows; "
                             f"got N={n}")
        mean = sum(m * mu for m, mu, _ in parts) / n
        m2 = sum(m * v + m * (mu - mean) ** 2 for m, mu, v in parts)
        var = m2 / (n - layer.ddof)
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(var))):
            raise ValueError("the batch statistics overflow: Input x contains NaN or infinity.")
        dtype = np.asarray(state[k]["mean"]).dtype
        state[k] = {**state[k], "mean": mean.astype(dtype), "var": var.astype(dtype)}
    return state
