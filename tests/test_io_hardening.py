"""Model files built to break the reader (issue 9, item 8): each gets a ValueError that
names the file, with bounded memory, and ``bnmat predict`` reports it in one line."""

from __future__ import annotations

import io as _io
import json
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

import bnmat
from bnmat.cli import main


@pytest.fixture
def saved(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 3))
    net = bnmat.Sequential([bnmat.Dense(4, bias=False), bnmat.BatchNorm(), bnmat.ReLU(),
                            bnmat.Dense(1)])
    params, state = net.init(x, seed=0)
    return bnmat.save(tmp_path / "model.npz", net, params, state)


def _members(path) -> dict:
    with zipfile.ZipFile(path) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path, members: dict, compress=None):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data, compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))
    return path


def _npy_header(shape, dtype="<f8") -> bytes:
    buf = _io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _header_member(header: dict) -> bytes:
    buf = _io.BytesIO()
    np.save(buf, np.frombuffer(json.dumps(header).encode(), dtype=np.uint8))
    return buf.getvalue()


def _header(path) -> dict:
    raw = np.load(_io.BytesIO(_members(path)["__bnmat__.npy"]))
    return json.loads(raw.tobytes().decode())


def _expect(path, match, capsys=None):
    with pytest.raises(ValueError, match=match) as info:
        bnmat.load(path)
    assert str(path) in str(info.value)


def test_flipped_compression_byte(saved, tmp_path):
    # Before: NotImplementedError (and a traceback from bnmat predict).
    data = bytearray(saved.read_bytes())
    at = data.find(b"PK\x01\x02")          # first central directory entry
    data[at + 10] = 99                      # an unknown compression method
    bad = tmp_path / "method.npz"
    bad.write_bytes(bytes(data))
    _expect(bad, "corrupt")


def test_declared_shape_of_1e12_is_refused_without_allocating(saved, tmp_path):
    # Before: MemoryError.
    members = _members(saved)
    members["params.0.npy"] = _npy_header((10**12,)) + bytes(96)
    bad = _write(tmp_path / "shape.npz", members)
    _expect(bad, r"declares shape \(1000000000000,\)")


def test_deeply_nested_json(saved, tmp_path):
    # Before: RecursionError.
    members = _members(saved)
    deep = "[" * 200_000 + "]" * 200_000
    text = '{"format": "bnmat-model", "version": 1, "net": ' + deep + "}"
    buf = _io.BytesIO()
    np.save(buf, np.frombuffer(text.encode(), dtype=np.uint8))
    members["__bnmat__.npy"] = buf.getvalue()
    _expect(_write(tmp_path / "deep.npz", members), "nested too deeply")


def test_nested_layer_config_within_json_limits(saved, tmp_path):
    members = _members(saved)
    header = _header(saved)
    nested = 1
    for _ in range(400):
        nested = [nested]
    header["net"]["config"]["layers"][0]["__layer__"]["config"]["units"] = nested
    text = json.dumps(header)
    buf = _io.BytesIO()
    np.save(buf, np.frombuffer(text.encode(), dtype=np.uint8))
    members["__bnmat__.npy"] = buf.getvalue()
    bad = _write(tmp_path / "deepconfig.npz", members)
    with pytest.raises(ValueError) as info:
        bnmat.load(bad)
    assert str(bad) in str(info.value)


def test_header_pointing_at_a_non_npy_member(saved, tmp_path):
    # Before: AttributeError (NumPy returns the raw bytes of a member without .npy).
    members = _members(saved)
    header = _header(saved)
    header["params"][0]["w"] = "evil"
    members["evil"] = b"not an array"
    members["__bnmat__.npy"] = _header_member(header)
    del members["params.0.npy"]
    _expect(_write(tmp_path / "evil.npz", members), "array 'evil' is missing")


def test_header_naming_itself_or_one_array_twice(saved, tmp_path):
    members = _members(saved)
    header = _header(saved)
    header["params"][0]["w"] = "__bnmat__"
    members["__bnmat__.npy"] = _header_member(header)
    _expect(_write(tmp_path / "self.npz", members), "bad array entry")


def test_deflate_bomb_is_refused_with_bounded_memory(saved, tmp_path):
    # Before: every member was read first; 1.5 MB of deflate drove memory to 1.5 GiB.
    members = _members(saved)
    n = 200 * (1 << 20)
    members_bomb = dict(members)
    del members_bomb["params.0.npy"]
    bomb = tmp_path / "bomb2.npz"
    with zipfile.ZipFile(bomb, "w") as zf:
        for name, data in members_bomb.items():
            zf.writestr(name, data)
        info = zipfile.ZipInfo("params.0.npy")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as fh:
            fh.write(_npy_header((n // 8,)))
            zero = bytes(1 << 20)
            for _ in range(n >> 20):
                fh.write(zero)
    assert bomb.stat().st_size < 2 * (1 << 20)
    tracemalloc.start()
    try:
        _expect(bomb, "decompression bomb")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * (1 << 20)


def test_compressed_model_of_ordinary_ratio_still_loads(saved, tmp_path):
    members = _members(saved)
    ok = _write(tmp_path / "compressed.npz", members,
                compress={n: zipfile.ZIP_DEFLATED for n in members})
    loaded = bnmat.load(ok)
    assert loaded.params[0]["w"].shape == (3, 4)


@pytest.mark.parametrize("make", ["method", "shape"])
def test_predict_reports_bad_model_files_in_one_line(saved, tmp_path, capsys, make):
    # Before: bnmat predict printed tracebacks for these two.
    data = tmp_path / "d.csv"
    data.write_text("a,b,c\n1,2,3\n")
    if make == "method":
        raw = bytearray(saved.read_bytes())
        raw[raw.find(b"PK\x01\x02") + 10] = 99
        bad = tmp_path / "m.npz"
        bad.write_bytes(bytes(raw))
    else:
        members = _members(saved)
        members["params.0.npy"] = _npy_header((10**12,)) + bytes(96)
        bad = _write(tmp_path / "m.npz", members)
    assert main(["predict", str(bad), str(data)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnmat: error:") and err.count("\n") == 1
    assert "Traceback" not in err
