"""Named tensors in a safetensors file, read and written by the `safetensors` package, with a sha256 of
every tensor's bytes kept in the file so that a damaged checkpoint is refused rather than trained on.

The format (Hugging Face's): an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, an optional `__metadata__` object (str -> str), then the tensors' raw bytes,
little-endian and row-major. No pickle, no code.

The checksums live in `__metadata__`, under the reserved prefix `axon/` (user metadata may not use it):

    "axon/checksums": "sha256"        the marker: this file carries checksums, made with sha256
    "axon/sha256/<name>": hex digest  of tensor <name>'s bytes as stored (the data_offsets range)
    "axon/header-sha256": hex digest  of the rest of the header: the JSON text of
                                      {"metadata": <user metadata>, "tensors": {<name>: [<dtype>, <shape>]}}
                                      written by json.dumps(..., sort_keys=True, separators=(",", ":"))

`load` verifies all of them; a tensor whose bytes do not match, a tensor without its checksum, a checksum
of no tensor, or a header whose dtypes, shapes or metadata changed raise `SafetensorsError` naming the
file (and the tensor). A file from another tool (no `axon/` key) loads unverified. Anything else wrong
with a file (missing, truncated, a header that is not JSON, overlapping or gapped offsets, bytes after
the last tensor, an unknown dtype) is a `SafetensorsError` naming the file and the cause. Writing is
atomic: the file appears whole or the old one stays. (The library writes the metadata's keys in no fixed
order, so two saves of the same tensors may differ in their header's bytes, never in what it says.)

>>> import torch, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
>>> save({"w": torch.ones(2, 3), "b": torch.zeros(3)}, path, metadata={"step": "10"})
>>> load(path)["w"].shape, load_metadata(path)
(torch.Size([2, 3]), {'step': '10'})
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from collections.abc import Mapping

import numpy as np
import safetensors
import safetensors.torch
import torch

from axon.codegen.files import atomic_write
from axon.ir.errors import AxonError

METADATA_KEY = "__metadata__"
RESERVED = "axon/"                      # the metadata prefix of the checksums; refused in user metadata
MARKER, SCHEME = "axon/checksums", "sha256"
HEADER_SUM = "axon/header-sha256"
TENSOR_SUM = "axon/sha256/"             # + the tensor's name

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

# What the library's terse header errors mean, for the message a user reads.
_HINTS = {
    "header too small": " (the file is shorter than its 8-byte header length: truncated)",
    "invalid header length": " (the header length is larger than the file: truncated?)",
    "header too large": " (the header length is absurd: not a safetensors file, or a corrupt one)",
    "not fully covered": " (the tensors do not fill the data exactly: truncated, or trailing bytes)",
    "invalid offset": " (its data_offsets overlap another tensor, leave a gap, or end before they begin)",
    "HashMetadata": " (the header must be a JSON object)",
    "TensorInfo": " (a tensor's entry must be an object with dtype, shape and data_offsets)",
    "invalid shape, data type, or offset": " (data_offsets hold a different number of bytes than the "
                                           "dtype and shape need)",
}


class SafetensorsError(AxonError):
    """A safetensors file that cannot be read (missing, truncated, malformed, damaged), or tensors it
    cannot hold."""


# --- writing ---------------------------------------------------------------------------------------

def save(tensors: Mapping[str, torch.Tensor], path: str | os.PathLike,
         metadata: Mapping[str, str] | None = None) -> None:
    """Write `tensors` (any device, any strides) and their checksums to `path`, replacing it atomically.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "x.safetensors")
    >>> save({"x": torch.arange(6).reshape(2, 3).t()}, path)   # saved as the 3x2 it shows, not its storage
    >>> load(path)["x"].tolist()
    [[0, 3], [1, 4], [2, 5]]
    """
    path = os.fspath(path)
    user = _check_metadata({} if metadata is None else metadata, path)
    cpu = _on_cpu(tensors, _check_tensors(tensors, path))
    described = {name: [_CODES[t.dtype], list(t.shape)] for name, t in cpu.items()}
    header = {**user, MARKER: SCHEME, HEADER_SUM: _header_sum(user, described)}
    header.update({TENSOR_SUM + name: _sha256(t) for name, t in cpu.items()})
    try:
        atomic_write(path, writer=lambda tmp: safetensors.torch.save_file(cpu, tmp, metadata=header))
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot write: {e.strerror or e}") from e
    except Exception as e:  # the library's own errors (it is given only what it accepts, so unexpected)
        raise SafetensorsError(f"{path}: cannot write: {e}") from e


def _check_tensors(tensors: Mapping[str, torch.Tensor], path: str) -> list[str]:
    """The names, sorted, after refusing anything the format cannot hold."""
    if not isinstance(tensors, Mapping):
        raise SafetensorsError(f"{path}: expected a mapping of names to tensors, "
                               f"got {type(tensors).__name__}")
    for name, t in tensors.items():
        if not isinstance(name, str) or name == METADATA_KEY:
            raise SafetensorsError(f"{path}: {name!r} cannot name a tensor "
                                   f"(names are strings, not {METADATA_KEY!r})")
        _check_unicode(name, path)
        if not isinstance(t, torch.Tensor):
            raise SafetensorsError(f"{path}: tensor {name!r} is a {type(t).__name__}, not a torch.Tensor")
        if t.dtype not in _CODES:
            raise SafetensorsError(f"{path}: tensor {name!r} has dtype {t.dtype}, not one safetensors holds",
                                   hint=f"supported: {', '.join(str(d) for d in _CODES)}")
        if t.layout != torch.strided or t.device.type == "meta":
            raise SafetensorsError(f"{path}: tensor {name!r} has no dense data to save "
                                   f"(layout {t.layout}, device {t.device})")
    return sorted(tensors)


def _check_metadata(metadata: object, path: str) -> dict[str, str]:
    if not isinstance(metadata, Mapping):
        raise SafetensorsError(f"{path}: metadata must map strings to strings, got {type(metadata).__name__}")
    for k, v in metadata.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise SafetensorsError(f"{path}: metadata must map strings to strings, got {k!r}: {v!r}")
        if k.startswith(RESERVED):
            raise SafetensorsError(f"{path}: metadata key {k!r} is reserved: keys starting with {RESERVED!r} "
                                   "hold the file's checksums")
        _check_unicode(k, path)
        _check_unicode(v, path)
    return dict(sorted(metadata.items()))


def _check_unicode(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise SafetensorsError(f"{path}: a name or metadata string is not valid Unicode: {e}") from e


def _on_cpu(tensors: Mapping[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Each tensor detached, on the CPU, contiguous (saved as it looks, not as its storage lies) and
    sharing memory with no other (which the library refuses to save)."""
    out, storages = {}, set()
    for name in names:
        t = tensors[name].detach().to("cpu").contiguous()
        if t.numel() and t.untyped_storage().data_ptr() in storages:
            t = t.clone()
        storages.add(t.untyped_storage().data_ptr())
        out[name] = t
    return out


def _sha256(t: torch.Tensor) -> str:
    """The hex sha256 of a contiguous CPU tensor's bytes as the file stores them (little-endian), read
    in place on a little-endian host."""
    raw = t.reshape(-1).view(torch.uint8).numpy()
    if sys.byteorder == "big" and t.element_size() > 1:
        raw = np.ascontiguousarray(raw.reshape(-1, t.element_size())[:, ::-1])
    return hashlib.sha256(memoryview(raw)).hexdigest()


def _header_sum(metadata: Mapping[str, str], described: Mapping[str, list]) -> str:
    text = json.dumps({"metadata": metadata, "tensors": described}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()


# --- reading ---------------------------------------------------------------------------------------

def load(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor in the file, by name (sorted), on `device`, after verifying its checksum.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "b.safetensors")
    >>> save({"b": torch.zeros(3)}, path)
    >>> load(path, device="cpu")["b"]
    tensor([0., 0., 0.])
    """
    path = os.fspath(path)
    dev = _device(device, path)
    metadata, described, tensors = _read(path, with_data=True)
    sums = _verify_header(path, metadata, described)[1]
    for name, t in tensors.items():
        if name in sums and _sha256(t) != sums[name]:
            raise SafetensorsError(f"{path}: tensor {name!r} is damaged: its sha256 does not match the one "
                                   "saved with it")
        if t.dtype == torch.bool and t.numel() and t.view(torch.uint8).max() > 1:
            raise SafetensorsError(f"{path}: tensor {name!r} is BOOL but holds bytes other than 0 and 1")
    return {name: t.to(dev) for name, t in tensors.items()}


def load_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The file's metadata without the checksums ({} if none), after checking the header describes the
    file and matches its checksum; the tensors' data is not read.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> save({}, path, metadata={"step": "10"})
    >>> load_metadata(path)
    {'step': '10'}
    """
    path = os.fspath(path)
    return _verify_header(path, *_read(path, with_data=False)[:2])[0]


def _device(device: str | torch.device, path: str) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise SafetensorsError(f"{path}: cannot load onto device {device!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SafetensorsError(f"{path}: cannot load onto {dev}: this machine has no CUDA GPU")
    return dev


def _read(path: str, with_data: bool) -> tuple[dict[str, str], dict[str, list], dict[str, torch.Tensor]]:
    """The metadata, each tensor's [dtype code, shape] and (`with_data`) the tensors on the CPU, by name
    sorted; every failure of the file or the library is a SafetensorsError saying what is wrong."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot open: {e.strerror or e}") from e
    if stat.S_ISDIR(mode):
        raise SafetensorsError(f"{path}: is a directory, not a safetensors file")
    if not stat.S_ISREG(mode):
        raise SafetensorsError(f"{path}: is not a regular file")
    try:
        with safetensors.safe_open(path, framework="pt") as f:
            names = sorted(f.keys())
            described = {}
            for name in names:
                info = f.get_slice(name)
                described[name] = [info.get_dtype(), list(info.get_shape())]
            tensors = {name: f.get_tensor(name) for name in names} if with_data else {}
            return f.metadata() or {}, described, tensors
    except OSError as e:
        raise SafetensorsError(f"{path}: cannot read: {e.strerror or e}") from e
    except Exception as e:  # the library's SafetensorError and whatever else it raises on a bad file
        cause = str(e).removeprefix("Error while deserializing header: ")
        hint = next((h for words, h in _HINTS.items() if words in cause), "")
        raise SafetensorsError(f"{path}: not a valid safetensors file: {cause}{hint}") from e


def _verify_header(path: str, metadata: dict[str, str],
                   described: dict[str, list]) -> tuple[dict[str, str], dict[str, str]]:
    """The user's metadata and each tensor's saved sha256 ({} for a file without checksums), after
    checking the checksum entries are complete and the header's own checksum matches."""
    user = {k: v for k, v in sorted(metadata.items()) if not k.startswith(RESERVED)}
    reserved = {k: v for k, v in metadata.items() if k.startswith(RESERVED)}
    if not reserved:
        return user, {}
    damaged = f"{path}: the header is damaged:"
    if MARKER not in reserved:
        raise SafetensorsError(f"{damaged} it has checksum entries ({min(reserved)!r}) but not {MARKER!r}")
    if reserved[MARKER] != SCHEME:
        raise SafetensorsError(f"{path}: unknown checksum scheme {MARKER!r}: {reserved[MARKER]!r} "
                               f"(this version of axon writes and reads {SCHEME!r})")
    sums = {k[len(TENSOR_SUM):]: v for k, v in reserved.items() if k.startswith(TENSOR_SUM)}
    unknown = sorted(set(reserved) - {MARKER, HEADER_SUM} - {TENSOR_SUM + name for name in sums})
    if unknown:
        raise SafetensorsError(f"{damaged} unknown key {unknown[0]!r} among the checksums")
    for name in described:
        if name not in sums:
            raise SafetensorsError(f"{path}: tensor {name!r} has no checksum ({TENSOR_SUM + name!r}), "
                                   f"though the file carries them: the header is damaged")
    for name in sums:
        if name not in described:
            raise SafetensorsError(f"{damaged} checksum {TENSOR_SUM + name!r} is of a tensor the file "
                                   "does not have")
    if reserved.get(HEADER_SUM) != _header_sum(user, described):
        missing = f"{HEADER_SUM!r} is missing" if HEADER_SUM not in reserved else \
            "its sha256 (of the metadata and every tensor's dtype and shape) does not match the one saved"
        raise SafetensorsError(f"{damaged} {missing}")
    return user, sums
