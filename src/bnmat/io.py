"""Save and load networks: one ``.npz`` file, arrays plus a JSON description, no pickle.

File layout (format ``"bnmat-model"``, version 1): a NumPy ``.npz`` archive with

* ``__bnmat__`` — a uint8 array holding UTF-8 JSON::

      {"format": "bnmat-model", "version": 1, "bnmat_version": "...",
       "net": {"layer": "Sequential", "config": {"layers": [...]}},
       "params": [{"w": "params.0", ...}, ...],     # the tree, leaves named
       "state":  [...],
       "metadata": {...}}                           # the user's, JSON

* one array per parameter and state entry, named as in the trees.

Layers are described by their registered name and their dataclass fields
(see :func:`register_layer`), so a file never holds code: :func:`load` reads it
with ``allow_pickle=False`` and rebuilds layers from the registry. A corrupt,
truncated or foreign file, or one written by a newer format version, gets a
``ValueError`` that names the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import zipfile
from zlib import error as zlib_error
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from ._array_api import to_numpy
from .layers._registry import layer_class, layer_name, register_layer, registered_layers

__all__ = ["save", "load", "SavedModel", "register_layer", "registered_layers",
           "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "bnmat-model"
FORMAT_VERSION = 1
_HEADER = "__bnmat__"


class SavedModel(NamedTuple):
    """What :func:`load` returns."""

    net: Any         # the network (Sequential, Additive, a registered layer)
    params: Any      # list of dicts of NumPy arrays
    state: Any
    metadata: dict


# ----------------------------------------------------------------- encoding
def _encode_module(module) -> dict:
    name = layer_name(type(module))
    if name is None or not dataclasses.is_dataclass(module):
        raise TypeError(
            f"cannot save a {type(module).__name__}: only dataclass layers registered "
            "with bnmat.io.register_layer can be written to a model file (make the "
            "class a dataclass of its hyperparameters and decorate it with "
            "@bnmat.io.register_layer)"
        )
    config = {}
    for f in dataclasses.fields(module):
        if f.init:
            config[f.name] = _encode_value(getattr(module, f.name),
                                           f"{type(module).__name__}.{f.name}")
    return {"layer": name, "config": config}


def _encode_value(v, where: str):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        return v.item()
    if isinstance(v, slice):
        return {"__slice__": [_encode_value(p, where) for p in (v.start, v.stop, v.step)]}
    if isinstance(v, (list, tuple)):
        return [_encode_value(item, where) for item in v]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise TypeError(f"cannot save {where}: dict keys must be strings")
        return {"__dict__": {k: _encode_value(item, where) for k, item in v.items()}}
    if (dataclasses.is_dataclass(v) and not isinstance(v, type)) or callable(
        getattr(v, "forward", None)
    ):
        return {"__layer__": _encode_module(v)}
    raise TypeError(
        f"cannot save {where} = {v!r}: a layer's fields must be numbers, strings, "
        "booleans, None, tuples or lists of those, slices, dicts, or registered layers"
    )


def _decode_module(spec, file: str):
    if not (isinstance(spec, dict) and isinstance(spec.get("layer"), str)
            and isinstance(spec.get("config"), dict)):
        raise ValueError(f"{file}: the network description is corrupt (bad layer entry)")
    cls = layer_class(spec["layer"])
    if cls is None:
        raise ValueError(
            f"{file}: unknown layer type {spec['layer']!r}; import the module that defines "
            "it and register the class with bnmat.io.register_layer before loading"
        )
    config = {k: _decode_value(v, file) for k, v in spec["config"].items()}
    try:
        return cls(**config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{file}: cannot rebuild layer {spec['layer']!r}: {exc}") from exc


def _decode_value(v, file: str):
    if isinstance(v, list):
        return tuple(_decode_value(item, file) for item in v)
    if isinstance(v, dict):
        if set(v) == {"__slice__"}:
            return slice(*v["__slice__"])
        if set(v) == {"__dict__"}:
            return {k: _decode_value(item, file) for k, item in v["__dict__"].items()}
        if set(v) == {"__layer__"}:
            return _decode_module(v["__layer__"], file)
        raise ValueError(f"{file}: the network description is corrupt (unknown entry {v!r})")
    return v


def _skeleton(tree, prefix: str, arrays: dict):
    """Replace each leaf by a name (``prefix.0``, ``prefix.1``, …) and store the array
    under that name in ``arrays``."""
    counter = iter(range(1 << 62))

    def walk(t):
        if isinstance(t, dict):
            if not all(isinstance(k, str) for k in t):
                raise TypeError(f"cannot save {prefix}: dict keys must be strings")
            return {k: walk(v) for k, v in t.items()}
        if isinstance(t, (list, tuple)):
            return [walk(v) for v in t]
        return _store(t, f"{prefix}.{next(counter)}", prefix, arrays)

    return walk(tree)


def _store(leaf, key: str, prefix: str, arrays: dict) -> str:
    a = np.asarray(to_numpy(leaf))
    if not (np.issubdtype(a.dtype, np.number) or a.dtype == np.bool_):
        raise TypeError(f"cannot save {prefix} entry of dtype {a.dtype}: numbers only")
    arrays[key] = a
    return key


def _json_default(o):
    if isinstance(o, (np.integer, np.floating, np.bool_)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"metadata value {o!r} of type {type(o).__name__} is not JSON-serializable")


def save(path, net, params, state, *, metadata: dict | None = None) -> Path:
    """Write a network, its parameters and state to one ``.npz`` file.

    Parameters
    ----------
    path : str or path-like
        Written exactly as given (no suffix is added; ``.npz`` is customary).
        The file is written to a temporary name and renamed, so a failed save
        never leaves a half-written file under ``path``.
    net : Sequential, Additive or a registered dataclass layer
    params, state : list
        As from ``net.init`` or :func:`bnmat.train.fit`; arrays of any
        namespace are copied to NumPy.
    metadata : dict, optional
        Anything JSON can hold (NumPy scalars and arrays are converted), for
        example feature names or the target's scaling. Returned by :func:`load`.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    TypeError
        A layer that is not a registered dataclass, a field or metadata that
        JSON cannot hold.
    """
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict; got {type(metadata).__name__}")
    arrays: dict[str, np.ndarray] = {}
    header = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "bnmat_version": _bnmat_version(),
        "net": _encode_module(net),
        "params": _skeleton(params, "params", arrays),
        "state": _skeleton(state, "state", arrays),
        "metadata": metadata,
    }
    try:
        text = json.dumps(header, default=_json_default, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"cannot save: {exc}") from exc
    arrays[_HEADER] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp",
                                   dir=path.parent or ".")
    except OSError as exc:
        # Name the file asked for, not the temporary one.
        raise type(exc)(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        # mkstemp creates the file private (0600); give it the permissions of
        # an ordinary new file under the user's umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _bnmat_version() -> str:
    from ._version import __version__

    return __version__


# ----------------------------------------------------------------- loading
#: Largest JSON description read (bytes); real ones are a few kilobytes.
_MAX_HEADER_BYTES = 64 << 20
#: A compressed member may expand at most this many times, plus _SMALL bytes
#: (:func:`save` never compresses; a higher ratio is a decompression bomb).
_MAX_RATIO, _SMALL = 100, 1 << 20


def _open_archive(name: str) -> zipfile.ZipFile:
    with open(name, "rb") as fh:
        magic = fh.read(4)
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        kind = "empty" if not magic else f"it starts with {magic!r}"
        raise ValueError(f"{name}: not a bnmat model file: not an .npz (zip) archive ({kind})")
    try:
        return zipfile.ZipFile(name)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise ValueError(f"{name}: the model file is corrupt or truncated "
                         f"({type(exc).__name__}: {exc})") from exc


def _read_member(archive: zipfile.ZipFile, key: str, name: str, limit=None) -> np.ndarray:
    """The array stored under ``key``, read with bounded memory.

    The member's ``.npy`` header is read first; its declared shape and dtype
    must account exactly for the member's size, and a compressed member may
    not expand more than ``_MAX_RATIO`` times, before any data are read. So a
    corrupt shape (1e12 elements) or a decompression bomb is refused without
    allocating it.
    """
    try:
        info = archive.getinfo(key + ".npy")
    except KeyError:
        raise ValueError(f"{name}: the model file is incomplete: array {key!r} is missing "
                         "(no .npy member of that name)") from None
    where = f"{name}: array {key!r}"
    if limit is not None and info.file_size > limit:
        raise ValueError(f"{where} is implausibly large ({info.file_size} bytes)")
    if info.compress_type != zipfile.ZIP_STORED and \
            info.file_size > _MAX_RATIO * info.compress_size + _SMALL:
        raise ValueError(f"{where} expands from {info.compress_size} to {info.file_size} "
                         "bytes: refused as a decompression bomb (bnmat never compresses)")
    try:
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            if dtype.hasobject or not (np.issubdtype(dtype, np.number) or dtype == np.bool_):
                raise ValueError(f"dtype {dtype}; numbers expected")
            count = 1
            for d in shape:
                count *= int(d)
            nbytes = count * dtype.itemsize
            if nbytes != info.file_size - fh.tell():
                raise ValueError(f"its header declares shape {shape} of {dtype} "
                                 f"({nbytes} bytes), but it holds {info.file_size - fh.tell()}")
            data = fh.read(nbytes)
    except ValueError as exc:
        raise ValueError(f"{where} is corrupt ({exc})") from exc
    except (zipfile.BadZipFile, EOFError, OSError, NotImplementedError, zlib_error) as exc:
        raise ValueError(f"{where} is corrupt or truncated ({type(exc).__name__}: {exc})") \
            from exc
    if len(data) != nbytes:
        raise ValueError(f"{where} is truncated")
    a = np.frombuffer(data, dtype=dtype, count=count)
    return (a.reshape(shape[::-1]).T if fortran else a.reshape(shape)).copy()


def _read(path) -> tuple[dict, zipfile.ZipFile]:
    """The JSON header and the open archive of a model file; ValueError when unreadable.

    Only the header is read here; arrays are read one by one, when the
    description names them (:func:`_read_member`).
    """
    name = os.fspath(path)
    if not os.path.exists(name):
        raise FileNotFoundError(f"no such model file: {name}")
    archive = _open_archive(name)
    try:
        files = [n[:-4] for n in archive.namelist() if n.endswith(".npy")]
        if _HEADER not in files:
            shown = ", ".join(archive.namelist()[:5]) + \
                (", ..." if len(archive.namelist()) > 5 else "")
            raise ValueError(
                f"{name}: not a bnmat model file: it is a .npz archive without a "
                f"{_HEADER!r} entry (it holds: {shown or 'nothing'})"
            )
        raw = _read_member(archive, _HEADER, name, limit=_MAX_HEADER_BYTES)
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"{name}: the {_HEADER!r} entry is corrupt (dtype {raw.dtype})")
        try:
            header = json.loads(raw.tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{name}: the model description is corrupt ({exc})") from exc
        except RecursionError:
            raise ValueError(f"{name}: the model description is corrupt (nested too "
                             "deeply)") from None
        if not isinstance(header, dict):
            raise ValueError(f"{name}: the model description is corrupt (not a JSON object)")
    except BaseException:
        archive.close()
        raise
    return header, archive


def _rebuild(skeleton, archive: zipfile.ZipFile, used: set, file: str):
    if isinstance(skeleton, dict):
        return {k: _rebuild(v, archive, used, file) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_rebuild(v, archive, used, file) for v in skeleton]
    if not isinstance(skeleton, str) or skeleton == _HEADER or skeleton in used:
        raise ValueError(f"{file}: the model description is corrupt (bad array entry "
                         f"{skeleton!r})")
    used.add(skeleton)
    return _read_member(archive, skeleton, file)


def load(path) -> SavedModel:
    """Read a model written by :func:`save`.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    SavedModel
        ``(net, params, state, metadata)``; arrays are NumPy arrays.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not a bnmat model (a text file, an arbitrary ``.npz``), is
        corrupt or truncated, was written by a newer format version, or names
        a layer type that is not registered. The message names the file.
    """
    name = os.fspath(path)
    header, archive = _read(path)
    try:
        with archive:
            return _load(name, header, archive)
    except RecursionError:
        raise ValueError(f"{name}: the model description is corrupt (nested too "
                         "deeply)") from None


def _load(name: str, header: dict, archive: zipfile.ZipFile) -> SavedModel:
    if header.get("format") != FORMAT_NAME:
        raise ValueError(
            f"{name}: not a bnmat model file (format {header.get('format')!r}, expected "
            f"{FORMAT_NAME!r})"
        )
    version = header.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{name}: the model description is corrupt (version {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{name}: written in model format version {version} (by bnmat "
            f"{header.get('bnmat_version', '?')}); this bnmat ({_bnmat_version()}) reads "
            f"versions up to {FORMAT_VERSION}. Upgrade bnmat to load it."
        )
    for key in ("net", "params", "state"):
        if key not in header:
            raise ValueError(f"{name}: the model description is corrupt (no {key!r})")
    net = _decode_module(header["net"], name)
    used: set = set()
    params = _rebuild(header["params"], archive, used, name)
    state = _rebuild(header["state"], archive, used, name)
    stored = {n[:-4] if n.endswith(".npy") else n for n in archive.namelist()}
    extra = sorted(stored - used - {_HEADER})
    if extra:
        raise ValueError(f"{name}: the model file has arrays its description lacks: {extra}")
    metadata = header.get("metadata", {})
    if not isinstance(metadata, dict):
        raise ValueError(f"{name}: the model description is corrupt (metadata)")
    return SavedModel(net, params, state, metadata)
