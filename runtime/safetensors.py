"""Named tensors in a safetensors file: no pickle, no code, only a JSON header and raw bytes.

The layout (Hugging Face's safetensors format):

    8 bytes       N, the header length, a little-endian u64
    N bytes       UTF-8 JSON: {"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, ...,
                               "__metadata__": {"step": "10"}}   (metadata optional, str -> str)
    the buffer    each tensor's bytes, little-endian and row-major; offsets count from the buffer's start
                  and the tensors tile it exactly: no gaps, no overlaps, nothing after the last one

Reading is strict: anything else raises `SafetensorsError` naming the file and what is wrong with it.
Writing is atomic: the file appears whole or the old one stays.

>>> import torch, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> save({"w": torch.ones(2, 3), "b": torch.zeros(3)}, path, metadata={"step": "10"})
>>> load(path)["w"].shape, load_metadata(path)
(torch.Size([2, 3]), {'step': '10'})
"""
from __future__ import annotations

import itertools
import json
import math
import os
import stat
import struct
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from axon.codegen.files import atomic_write
from axon.ir.errors import AxonError

MAX_HEADER_BYTES = 100_000_000  # the reference implementation's cap: a longer header is a corrupt length
HEADER_ALIGN = 8                # the header is padded with spaces so the buffer starts 8-byte aligned
METADATA_KEY = "__metadata__"
ENTRY_KEYS = {"dtype", "shape", "data_offsets"}

# The format's dtype codes and torch's names for them; a code whose torch dtype this build lacks is left out.
_TORCH_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}
DTYPES: dict[str, torch.dtype] = {code: getattr(torch, name) for code, name in _TORCH_NAMES.items()
                                  if hasattr(torch, name)}
_CODES = {dtype: code for code, dtype in DTYPES.items()}


class SafetensorsError(AxonError):
    """A safetensors file that cannot be read (missing, truncated, malformed), or tensors it cannot hold."""


@dataclass(frozen=True)
class _Entry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


# --- writing ---------------------------------------------------------------------------------------

def save(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (any device, any strides) to `path`, replacing the file atomically.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.safetensors")
    >>> save({"x": torch.arange(6).reshape(2, 3).t()}, path)   # saved as the 3x2 it shows, not its storage
    >>> load(path)["x"].tolist()
    [[0, 3], [1, 4], [2, 5]]
    """
    path = os.fspath(path)
    names = _check_tensors(tensors, path)
    header: dict[str, object] = {}
    if metadata is not None:
        header[METADATA_KEY] = _check_metadata(metadata, path, "metadata")
    # Data goes widest element first (as the reference implementation lays it out), so with the buffer
    # 8-byte aligned every tensor starts at a multiple of its element size; the header lists names sorted.
    layout = sorted(names, key=lambda name: (-tensors[name].element_size(), name))
    offsets, offset = {}, 0
    for name in layout:
        t = tensors[name]
        offsets[name] = [offset, offset + t.numel() * t.element_size()]
        offset = offsets[name][1]
    for name in names:
        t = tensors[name]
        header[name] = {"dtype": _CODES[t.dtype], "shape": list(t.shape), "data_offsets": offsets[name]}
    try:
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as e:
        raise SafetensorsError(f"{path}: a name or metadata string is not valid Unicode: {e}") from e
    text += b" " * (-len(text) % HEADER_ALIGN)
    data = (_tensor_bytes(tensors[name]) for name in layout)  # one tensor in memory at a time
    chunks = itertools.chain([struct.pack("<Q", len(text)), text], data)
    try:
        atomic_write(path, chunks)
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot write: {e.strerror or e}") from e


def _check_tensors(tensors: Mapping[str, torch.Tensor], path: str) -> list[str]:
    """The names, sorted (the header's order), after refusing anything the format cannot hold."""
    if not isinstance(tensors, Mapping):
        raise SafetensorsError(f"{path}: expected a mapping of names to tensors, "
                               f"got {type(tensors).__name__}")
    for name, t in tensors.items():
        if not isinstance(name, str) or name == METADATA_KEY:
            raise SafetensorsError(f"{path}: {name!r} cannot name a tensor "
                                   f"(names are strings, not {METADATA_KEY!r})")
        if not isinstance(t, torch.Tensor):
            raise SafetensorsError(f"{path}: tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.dtype not in _CODES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {t.dtype}, not one safetensors holds",
                                   hint=f"supported: {', '.join(str(d) for d in _CODES)}")
        if t.layout != torch.strided or t.device.type == "meta":
            raise SafetensorsError(f"{path}: tensor {name!r} has no dense data to save "
                                   f"(layout {t.layout}, device {t.device})")
    return sorted(tensors)


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's elements as little-endian row-major bytes (copied to the CPU, made contiguous)."""
    flat = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return memoryview(_to_or_from_little(flat, t.element_size()))


def _to_or_from_little(raw: np.ndarray, itemsize: int) -> np.ndarray:
    # The file is little-endian; a big-endian host reverses each element's bytes (both ways).
    if sys.byteorder == "little" or itemsize == 1:
        return raw
    return np.ascontiguousarray(raw.reshape(-1, itemsize)[:, ::-1]).reshape(-1)


# --- reading ---------------------------------------------------------------------------------------

def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor in the file, by name (sorted), on `device`.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "b.safetensors")
    >>> save({"b": torch.zeros(3)}, path)
    >>> load(path, device="cpu")["b"]
    tensor([0., 0., 0.])
    """
    path = os.fspath(path)
    dev = _device(device, path)
    with _open(path) as f:
        entries, _ = _read_header(f, path)
        tensors = {e.name: _read_tensor(f, e, path) for e in entries}  # entries are in file order
    return {name: tensors[name].to(dev) for name in sorted(tensors)}


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The file's `__metadata__` ({} if it has none), after checking the header describes the file.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save({}, path, metadata={"step": "10"})
    >>> load_metadata(path)
    {'step': '10'}
    """
    path = os.fspath(path)
    with _open(path) as f:
        return _read_header(f, path)[1]


def _device(device: str | torch.device, path: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise SafetensorsError(f"{path}: cannot load onto device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SafetensorsError(f"{path}: cannot load onto {dev}: this machine has no CUDA GPU")
    return dev


def _open(path: str):
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise SafetensorsError(f"{path}: is a directory, not a safetensors file")
        if not stat.S_ISREG(st.st_mode):
            raise SafetensorsError(f"{path}: is not a regular file")
        return open(path, "rb")
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot open: {e.strerror or e}") from e


def _read_header(f, path: str) -> tuple[list[_Entry], dict[str, str]]:
    """The entries in file order and the metadata, after checking the header against the file's size."""
    size = os.fstat(f.fileno()).st_size
    prefix = f.read(8)
    if len(prefix) < 8:
        raise SafetensorsError(f"{path}: truncated: {len(prefix)} bytes, too short for the 8-byte "
                               "header length")
    (n,) = struct.unpack("<Q", prefix)
    if n > MAX_HEADER_BYTES:
        raise SafetensorsError(f"{path}: header length {n} is absurd (the limit is {MAX_HEADER_BYTES} "
                               "bytes); not a safetensors file, or a corrupt one")
    if n > size - 8:
        raise SafetensorsError(f"{path}: header length {n} is larger than the {size - 8} bytes after it "
                               "(truncated file?)")
    raw = f.read(n)
    if len(raw) < n:
        raise SafetensorsError(f"{path}: truncated: the file shrank while its header was read")
    header = _parse_json(raw, path)
    metadata = _check_metadata(header.pop(METADATA_KEY, {}), path, f"header {METADATA_KEY!r}")
    entries = [_parse_entry(name, info, path) for name, info in header.items()]
    return _check_layout(entries, size - 8 - n, path), metadata


def _parse_json(raw: bytes, path: str) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SafetensorsError(f"{path}: header is not UTF-8: {e}") from e
    if not text.startswith("{"):
        raise SafetensorsError(f"{path}: header is not a JSON object (it starts with {text[:20]!r})")
    try:
        header = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError; deep nesting recurses
        raise SafetensorsError(f"{path}: header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    return header


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        duplicate = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate key {duplicate!r}")
    return dict(pairs)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def _check_metadata(metadata: object, path: str, what: str) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise SafetensorsError(f"{path}: {what} must map strings to strings, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise SafetensorsError(f"{path}: {what} must map strings to strings, got {k!r}: {v!r}")
    return dict(sorted(metadata.items()))


def _is_count(x: object) -> bool:
    return type(x) is int and x >= 0  # JSON true/false become bool, which is an int to isinstance


def _parse_entry(name: str, info: object, path: str) -> _Entry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or set(info) != ENTRY_KEYS:
        got = sorted(info) if isinstance(info, dict) else type(info).__name__
        raise SafetensorsError(f"{where}: expected an object with keys {sorted(ENTRY_KEYS)}, got {got}")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in DTYPES:
        raise SafetensorsError(f"{where}: unknown dtype {code!r}", hint=f"known: {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise SafetensorsError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise SafetensorsError(f"{where}: data_offsets {offsets!r} is not a pair of non-negative integers")
    begin, end = offsets
    if begin > end:
        raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] end before they begin")
    dtype = DTYPES[code]
    nbytes = math.prod(shape) * dtype.itemsize
    if end - begin != nbytes:
        raise SafetensorsError(f"{where}: data_offsets [{begin}, {end}] hold {end - begin} bytes, but {code} "
                               f"{shape} needs {nbytes}")
    return _Entry(name, dtype, tuple(shape), begin, end)


def _check_layout(entries: list[_Entry], buffer_size: int, path: str) -> list[_Entry]:
    """The entries sorted by offset, after checking they tile the buffer exactly."""
    for e in entries:
        if e.end > buffer_size:
            raise SafetensorsError(f"{path}: tensor {e.name!r} data_offsets [{e.begin}, {e.end}] run past "
                                   f"the end of the {buffer_size}-byte data buffer (truncated file?)")
    entries = sorted(entries, key=lambda e: (e.begin, e.end, e.name))
    covered, last = 0, None
    for e in entries:
        if e.begin < covered:
            raise SafetensorsError(f"{path}: tensors {last!r} and {e.name!r} overlap: {e.name!r} starts at "
                                   f"byte {e.begin}, before {last!r} ends at {covered}")
        if e.begin > covered:
            after = f"after {last!r} " if last is not None else ""
            raise SafetensorsError(f"{path}: gap in the data buffer: bytes [{covered}, {e.begin}) {after}"
                                   f"belong to no tensor")
        covered, last = e.end, e.name
    if covered != buffer_size:
        raise SafetensorsError(f"{path}: {buffer_size - covered} trailing bytes after the last tensor "
                               f"(the tensors end at byte {covered} of a {buffer_size}-byte buffer)")
    return entries


def _read_tensor(f, e: _Entry, path: str) -> torch.Tensor:
    """Read the entry's bytes (the file is positioned at its start) straight into a new tensor."""
    flat = torch.empty(e.end - e.begin, dtype=torch.uint8)
    raw = flat.numpy()
    if f.readinto(memoryview(raw)) != len(raw):
        raise SafetensorsError(f"{path}: truncated: the file shrank while tensor {e.name!r} was read")
    raw[:] = _to_or_from_little(raw, e.dtype.itemsize)
    if e.dtype == torch.bool and raw.size and raw.max() > 1:
        raise SafetensorsError(f"{path}: tensor {e.name!r} is BOOL but holds bytes other than 0 and 1")
    return flat.view(e.dtype).reshape(e.shape)
