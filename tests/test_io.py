"""Tests of bnmat.io: round trips (identical predictions), custom layers, and a clear
ValueError for every kind of bad file."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass

import numpy as np
import pytest

import bnmat
from bnmat import io, train
from bnmat.layers import (
    Additive,
    BatchNorm,
    Dense,
    Identity,
    LeakyReLU,
    ReLU,
    Sequential,
    Sigmoid,
    Softplus,
    Tanh,
    tree_leaves,
)


def trained(net, x, rng):
    y = rng.normal(size=x.shape[0])
    return train.fit(net, *net.init(x, seed=1), x, y, epochs=3, progress=False)


@pytest.fixture
def model(rng, tmp_path):
    net = Additive([
        ([0, 3], Dense(1, bias=False)),
        (slice(1, None), Sequential([
            Dense(5, bias=False, init="glorot"), BatchNorm(eps=1e-3, ddof=1, decay=0.7),
            LeakyReLU(0.1), Dense(4), BatchNorm(), Tanh(),
            Sequential([Dense(3), Sigmoid(), Dense(3), Softplus(), Identity(), ReLU()]),
            Dense(1),
        ])),
    ])
    x = rng.normal(size=(40, 4))
    result = trained(net, x, rng)
    return net, result.params, result.state, x, tmp_path / "model.npz"


def test_round_trip(model):
    net, params, state, x, path = model
    meta = {"features": ["a", "b", "c", "d"], "y_scale": np.float64(2.5), "n": np.int64(3),
            "mean": np.arange(2.0)}
    written = bnmat.save(path, net, params, state, metadata=meta)
    assert written == path and path.exists()
    loaded = bnmat.load(path)
    assert loaded.net == net
    assert loaded.metadata == {"features": ["a", "b", "c", "d"], "y_scale": 2.5, "n": 3,
                               "mean": [0.0, 1.0]}
    np.testing.assert_array_equal(loaded.net.predict(loaded.params, loaded.state, x),
                                  net.predict(params, state, x))
    for a, b in zip(tree_leaves([params, state]), tree_leaves([loaded.params, loaded.state])):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert type(loaded.params[1]) is list and set(loaded.state[1][1]) == {"mean", "var", "count"}


def test_float32_round_trip_and_exact_path(rng, tmp_path):
    net = Sequential([Dense(3, bias=False), BatchNorm(), ReLU(), Dense(1)])
    x = rng.normal(size=(10, 2)).astype(np.float32)
    params, state = net.init(x)
    path = tmp_path / "no_suffix"
    io.save(path, net, params, state)
    assert path.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["no_suffix"]
    loaded = io.load(str(path))
    assert loaded.params[0]["w"].dtype == np.float32
    np.testing.assert_array_equal(loaded.net.predict(loaded.params, loaded.state, x),
                                  net.predict(params, state, x))


@io.register_layer
@dataclass(frozen=True)
class PowerBasis:
    """y = Σ_k x^k b_k, k = 1..degree (a custom layer used in these tests)."""

    degree: int = 2
    powers: tuple = (1.0,)

    def init(self, rng, in_features):
        return 1, {"b": np.zeros((in_features * self.degree, 1))}, {}

    def forward(self, params, state, x, *, training):
        basis = np.concatenate([x ** k for k in range(1, self.degree + 1)], axis=1)
        return basis @ params["b"], state, basis

    def backward(self, dy, basis):
        return None, {"b": basis.T @ dy}


def test_registered_custom_layer_round_trip(rng, tmp_path):
    net = Additive([([0], PowerBasis(degree=3, powers=(1.0, 2.0))),
                    ([1, 2], Sequential([Dense(2), BatchNorm(), ReLU(), Dense(1)]))])
    x = rng.normal(size=(12, 3))
    params, state = net.init(x)
    params[0]["b"] = rng.normal(size=(3, 1))
    io.save(tmp_path / "m.npz", net, params, state)
    loaded = io.load(tmp_path / "m.npz")
    assert loaded.net == net and loaded.net.branches[0][1].powers == (1.0, 2.0)
    np.testing.assert_array_equal(loaded.net.predict(loaded.params, loaded.state, x),
                                  net.predict(params, state, x))


def test_unsaveable_things_are_type_errors(rng, tmp_path):
    class Plain:
        def init(self, rng, in_features):
            return in_features, {}, {}

        def forward(self, params, state, x, *, training):
            return x, state, None

        def backward(self, dy, cache):
            return dy, {}

    net = Sequential([Plain(), Dense(1)])
    x = rng.normal(size=(4, 2))
    params, state = net.init(x)
    with pytest.raises(TypeError, match="register_layer"):
        io.save(tmp_path / "m.npz", net, params, state)
    net = Sequential([Dense(1)])
    params, state = net.init(x)
    with pytest.raises(TypeError, match="JSON"):
        io.save(tmp_path / "m.npz", net, params, state, metadata={"f": object()})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        io.save(tmp_path / "m.npz", net, params, state, metadata=[1])
    assert list(tmp_path.iterdir()) == []          # nothing half-written


def test_register_layer_rejects_non_dataclasses_and_clashes():
    with pytest.raises(TypeError, match="dataclass"):
        io.register_layer(int)

    @dataclass(frozen=True)
    class Dense:          # same name as the built-in, different class
        def init(self, rng, in_features): ...
        def forward(self, params, state, x, *, training): ...
        def backward(self, dy, cache): ...

    with pytest.raises(ValueError, match="already registered"):
        io.register_layer(Dense)
    io.register_layer(Dense, name="tests.Dense")
    assert io.registered_layers()["tests.Dense"] is Dense


# --------------------------------------------------------------------------- bad files
def rewrite_header(path, out, change):
    """Copy a model file, letting ``change(header_dict)`` edit its JSON."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    header = json.loads(arrays["__bnmat__"].tobytes().decode())
    change(header, arrays)
    arrays["__bnmat__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(out, **arrays)


@pytest.fixture
def saved(model):
    net, params, state, _, path = model
    io.save(path, net, params, state)
    return path


def expect_error(path, match):
    with pytest.raises(ValueError, match=match) as info:
        io.load(path)
    assert str(path) in str(info.value)


def test_text_file(tmp_path):
    bad = tmp_path / "model.npz"
    bad.write_text("a,b\n1,2\n")
    expect_error(bad, "not a bnmat model file: not an .npz")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    expect_error(empty, "empty")


def test_foreign_npz_and_npy(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, weights=np.ones(3), bias=np.zeros(1))
    expect_error(other, "without a '__bnmat__' entry.*weights")
    npy = tmp_path / "array.npy"
    np.save(npy, np.ones(3))
    expect_error(npy, "not an .npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __bnmat__=np.array([{"a": 1}], dtype=object))
    expect_error(pickled, "corrupt")


def test_truncated_file(saved, tmp_path):
    data = saved.read_bytes()
    for cut in (len(data) // 3, len(data) - 10):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        expect_error(bad, "corrupt or truncated")


def test_corrupted_bytes(saved, tmp_path):
    """Flip bytes inside an array's data: the zip CRC catches it."""
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("params.0.npy")
    start = info.header_offset + 30 + len(info.filename) + 100
    data[start:start + 8] = bytes(8)
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    expect_error(bad, "corrupt")


def test_newer_version_and_bad_headers(saved, tmp_path):
    cases = {
        "newer": (lambda h, a: h.update(version=99), "version 99.*Upgrade bnmat"),
        "format": (lambda h, a: h.update(format="something-else"), "format 'something-else'"),
        "layer": (lambda h, a: h["net"].update(layer="NoSuchLayer"), "unknown layer type"),
        "config": (lambda h, a: h["net"].update(config={"nonsense": 1}), "cannot rebuild"),
        "missing": (lambda h, a: a.pop("params.0"), "array 'params.0' is missing"),
        "extra": (lambda h, a: a.update(stray=np.ones(2)), "lacks.*stray"),
        "no_net": (lambda h, a: h.pop("net"), "no 'net'"),
    }
    for name, (change, match) in cases.items():
        out = tmp_path / f"{name}.npz"
        rewrite_header(saved, out, change)
        expect_error(out, match)


def test_header_not_json(saved, tmp_path):
    with np.load(saved, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["__bnmat__"] = np.frombuffer(b"{not json", dtype=np.uint8)
    out = tmp_path / "bad_json.npz"
    np.savez(out, **arrays)
    expect_error(out, "description is corrupt")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such model file"):
        io.load(tmp_path / "nope.npz")


def test_saved_file_gets_ordinary_permissions(tmp_path):
    import os
    import stat

    net = Sequential([Dense(2)])
    x = np.ones((3, 2))
    params, state = net.init(x, seed=0)
    path = io.save(tmp_path / "m.npz", net, params, state)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask
