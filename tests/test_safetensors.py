"""safetensors files: bit-exact round trips of every dtype, files built by hand from the spec, metadata,
one test per kind of corruption (each a `SafetensorsError` naming the file), and atomic writes.

The reading "by hand" here (struct + json + numpy) is independent of `axon.runtime.safetensors`, so a
mistake shared by `save` and `load` would still show.
"""
import hashlib
import json
import os
import struct

import numpy as np
import pytest
import safetensors.torch
import torch

from axon.ir.errors import AxonError
from axon.runtime import safetensors as st
from axon.runtime.safetensors import SafetensorsError, load, load_metadata, save

SHAPES = [(), (0,), (3, 0, 2), (7,), (2, 3, 5)]
FLOATS = ["F64", "F32", "F16", "BF16"]
# What numpy calls each code, for reading the bytes without torch (BF16 and fp8 have no numpy dtype).
HEADER_CAP = 100_000_000  # the safetensors library's cap on the header length: a longer one is corrupt
NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
         "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes in row-major order: equal bits means equal tensors, NaN payloads and -0.0 too."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def assert_same(got: torch.Tensor, want: torch.Tensor):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(bits(got), bits(want))


def random_tensor(code: str, shape, gen) -> torch.Tensor:
    """Random bytes as `code`: for floats these include NaNs with odd payloads, infinities, subnormals."""
    dtype = st.DTYPES[code]
    numel = int(np.prod(shape, dtype=np.int64))
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)


def read_by_hand(path) -> tuple[dict, bytes]:
    """The header (as parsed JSON) and the data buffer, read straight from the spec."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_file(path, header: dict | str | bytes, buffer: bytes = b"", length: int | None = None):
    """A file with this header (JSON-encoded if a dict) and buffer; `length` overrides the true prefix."""
    if isinstance(header, dict):
        header = json.dumps(header)
    if isinstance(header, str):
        header = header.encode()
    prefix = struct.pack("<Q", len(header) if length is None else length)
    path.write_bytes(prefix + header + buffer)
    return path


# --- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("code", list(st.DTYPES))
def test_round_trip_every_dtype_and_shape(tmp_path, gen, code):
    tensors = {f"t{i}": random_tensor(code, shape, gen) for i, shape in enumerate(SHAPES)}
    save(tensors, tmp_path / "x.safetensors")
    back = load(tmp_path / "x.safetensors")
    assert list(back) == sorted(tensors)
    for name, t in tensors.items():
        assert_same(back[name], t)


@pytest.mark.parametrize("code", FLOATS)
def test_special_floats_are_bit_exact(tmp_path, code):
    dtype = st.DTYPES[code]
    plain = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -3.5], dtype=dtype)
    # Signalling NaNs with a payload of 1, which any trip through float arithmetic would quiet.
    snan = {"F64": 0x7FF0000000000001, "F32": 0x7F800001, "F16": 0x7C01, "BF16": 0x7F81}[code]
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16}[dtype.itemsize]
    values = torch.cat([plain, torch.tensor([snan], dtype=ints).view(dtype)])
    assert values[-1].isnan()
    save({"v": values}, tmp_path / "v.safetensors")
    assert_same(load(tmp_path / "v.safetensors")["v"], values)


def test_non_contiguous_inputs_are_saved_as_they_look(tmp_path, gen):
    base = torch.randn(6, 8, generator=gen)
    views = {
        "transposed": base.t(),
        "strided": base[::2, 1::3],
        "offset": base[2:, 3:5],
        "expanded": torch.arange(4.0).reshape(4, 1).expand(4, 5),  # stride 0
        "permuted": torch.randn(2, 3, 4, generator=gen).permute(2, 0, 1),
    }
    assert not any(v.is_contiguous() for v in views.values())
    save(views, tmp_path / "v.safetensors")
    back = load(tmp_path / "v.safetensors")
    for name, v in views.items():
        assert_same(back[name], v.contiguous())


def test_requires_grad_tensors_are_saved_detached(tmp_path):
    w = torch.randn(3, requires_grad=True)
    save({"w": w * 2}, tmp_path / "w.safetensors")
    back = load(tmp_path / "w.safetensors")["w"]
    assert not back.requires_grad and torch.equal(back, (w * 2).detach())


def test_no_tensors_at_all(tmp_path):
    save({}, tmp_path / "e.safetensors")
    assert load(tmp_path / "e.safetensors") == {} and load_metadata(tmp_path / "e.safetensors") == {}


def test_metadata_round_trip(tmp_path):
    meta = {"step": "1200", "format": "pt", "note": "naïve 模型 \"quoted\" \\ {json}", "": ""}
    save({"w": torch.ones(2)}, tmp_path / "m.safetensors", metadata=meta)
    assert load_metadata(tmp_path / "m.safetensors") == meta
    save({"w": torch.ones(2)}, tmp_path / "n.safetensors")
    assert load_metadata(tmp_path / "n.safetensors") == {}


@pytest.mark.gpu
def test_cuda_tensors_round_trip(tmp_path, gen):
    t = torch.randn(5, 7, generator=gen).cuda().t()
    save({"t": t}, tmp_path / "c.safetensors")
    back = load(tmp_path / "c.safetensors", device="cuda")["t"]
    assert back.is_cuda and torch.equal(back, t)
    assert_same(load(tmp_path / "c.safetensors")["t"], t.cpu())


# --- interoperability: the spec read and written by hand --------------------------------------------

def test_saved_bytes_follow_the_spec(tmp_path, gen):
    tensors = {"b.bias": torch.randn(3, generator=gen).half(), "steps": torch.tensor(7),
               "a.weight": torch.randn(2, 4, generator=gen).t(), "mask": torch.tensor([[True, False, True]])}
    save(tensors, tmp_path / "x.safetensors", metadata={"k": "v"})
    data = (tmp_path / "x.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    assert n % 8 == 0 and len(data) >= 8 + n
    text = data[8:8 + n].decode()
    unpadded = text.rstrip(" ")
    assert text.startswith("{") and unpadded.endswith("}") and len(text) - len(unpadded) < 8
    header, buffer = read_by_hand(tmp_path / "x.safetensors")
    meta = header.pop("__metadata__")
    assert sorted(header) == sorted(tensors)
    # The checksums, recomputed from the bytes as the module docstring specifies them.
    assert meta.pop("axon/checksums") == "sha256" and meta.pop("k") == "v"
    described = {name: [info["dtype"], info["shape"]] for name, info in header.items()}
    text = json.dumps({"metadata": {"k": "v"}, "tensors": described}, sort_keys=True, separators=(",", ":"))
    assert meta.pop("axon/header-sha256") == hashlib.sha256(text.encode()).hexdigest()
    for name, info in header.items():
        begin, end = info["data_offsets"]
        assert meta.pop(f"axon/sha256/{name}") == hashlib.sha256(buffer[begin:end]).hexdigest()
    assert meta == {}
    spans = sorted(tuple(info["data_offsets"]) for info in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(buffer)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # packed, no gaps
    for name, info in header.items():
        t = tensors[name].contiguous()
        begin, end = info["data_offsets"]
        assert begin % t.element_size() == 0  # every tensor aligned to its element size
        assert info["shape"] == list(t.shape)
        want = t.numpy().astype(NUMPY[info["dtype"]])
        got = np.frombuffer(buffer[begin:end], dtype=NUMPY[info["dtype"]]).reshape(info["shape"])
        assert got.tobytes() == want.tobytes()


def test_hand_built_file_loads(tmp_path):
    # Written per the spec with no help from `save`: names unsorted, tensors not in name order, the header
    # neither padded nor aligned, metadata last, a BF16 built from its bit pattern.
    x = struct.pack("<3f", 1.5, -0.0, 2.0 ** -149)
    n = struct.pack("<2q", -1, 2 ** 40)
    h = struct.pack("<2H", 0x3FC0, 0x7FC1)  # bf16 1.5 and a NaN with a payload
    flags = bytes([1, 0])
    empty = b""
    header = ('{"zeta":{"dtype":"I64","shape":[2],"data_offsets":[12,28]},'
              '"alpha":{"shape":[3,1],"data_offsets":[0,12],"dtype":"F32"},'
              '"mid":{"dtype":"BF16","shape":[1,2],"data_offsets":[28,32]},'
              '"flag":{"dtype":"BOOL","shape":[2],"data_offsets":[32,34]},'
              '"none":{"dtype":"F16","shape":[0,4],"data_offsets":[34,34]},'
              '"__metadata__":{"source":"by hand"}}')
    write_file(tmp_path / "h.safetensors", header, x + n + h + flags + empty)
    back = load(tmp_path / "h.safetensors")
    assert list(back) == ["alpha", "flag", "mid", "none", "zeta"]
    assert torch.equal(back["alpha"], torch.tensor([[1.5], [-0.0], [2.0 ** -149]]))
    assert torch.signbit(back["alpha"][1, 0])
    assert back["zeta"].tolist() == [-1, 2 ** 40]
    assert back["mid"].dtype == torch.bfloat16
    assert back["mid"].view(torch.int16).tolist() == [[0x3FC0, 0x7FC1]]
    assert back["flag"].tolist() == [True, False]
    assert back["none"].shape == (0, 4) and back["none"].dtype == torch.float16
    assert load_metadata(tmp_path / "h.safetensors") == {"source": "by hand"}


def test_unknown_keys_in_a_tensor_entry_are_ignored(tmp_path):
    # As the safetensors library reads the format: an entry's extra keys change no tensor. (A damaged byte
    # cannot add a well-formed key; one that renames dtype, shape or data_offsets removes it: refused.)
    header = {"w": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2], "note": "extra"}}
    assert load(write_file(tmp_path / "x.safetensors", header, bytes([3, 4])))["w"].tolist() == [3, 4]


# --- corrupt files ---------------------------------------------------------------------------------

def f32(shape, offsets):
    return {"dtype": "F32", "shape": shape, "data_offsets": offsets}


# name: (header, buffer, the length prefix if not the header's true length, a regex the message must match),
# or (the whole file, regex). The messages carry the safetensors library's own words, and for its terse
# ones a plain explanation.
CORRUPT = {
    "empty file": (b"", "header too small .*truncated"),
    "short length prefix": (b"\x05\x00\x00", "header too small .*truncated"),
    "header longer than the file": ({"w": f32([1], [0, 4])}, bytes(4), 10_000,
                                    "invalid header length .*larger than the file"),
    "absurd header length": ({}, b"", 2 ** 63, "header too large .*absurd"),
    "header just over the cap": ({}, b"", HEADER_CAP + 1, "header too large .*absurd"),
    "header not UTF-8": (b'{"\xff\xfe": 1}', b"", None, "invalid UTF-8 in header"),
    "invalid JSON": ('{"w": {"dtype": "F32",', b"", None, "invalid JSON in header: EOF"),
    "NaN in JSON": ('{"__metadata__": {"a": NaN}}', b"", None, "invalid JSON in header"),
    "deeply nested JSON": ('{"w": ' + "[" * 200_000 + "]" * 200_000 + "}", b"", None,
                           "invalid JSON in header: recursion limit"),
    "header an array": ("[1, 2]", b"", None, "header must be a JSON object"),
    "header a string": ('"{}"', b"", None, "header must be a JSON object"),
    "trailing garbage after the object": ('{} x', b"", None, "invalid JSON in header: trailing characters"),
    # The library keeps one of two entries of a name; this pair is refused as the other's bytes are then
    # a gap. (A checksummed file also names every tensor in its checksums, so a lost entry is caught.)
    "duplicate tensor name": ('{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, '
                              '"w": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}}',
                              bytes(2), None, "invalid offset for tensor `w`"),
    "entry not an object": ({"w": 3}, b"", None, "entry must be an object with dtype, shape"),
    "entry missing a key": ({"w": {"dtype": "F32", "shape": [0]}}, b"", None,
                            "missing field `data_offsets`"),
    "unknown dtype": ({"w": {"dtype": "F17", "shape": [1], "data_offsets": [0, 4]}}, bytes(4), None,
                      "unknown variant `F17`"),
    "dtype not a string": ({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}}, bytes(4), None,
                           "integer `4`, expected string"),
    "shape not a list": ({"w": f32(4, [0, 16])}, bytes(16), None, "integer `4`, expected a sequence"),
    "negative dimension": ({"w": f32([-1], [0, 0])}, b"", None, "integer `-1`, expected usize"),
    "float dimension": ({"w": f32([2.0], [0, 8])}, bytes(8), None, "`2.0`, expected usize"),
    "bool dimension": ({"w": f32([True], [0, 4])}, bytes(4), None, "boolean `true`, expected usize"),
    "offsets not a pair": ({"w": f32([1], [0])}, bytes(4), None, "expected a tuple of size 2"),
    "negative offset": ({"w": f32([1], [-4, 0])}, bytes(4), None, "integer `-4`, expected usize"),
    "offsets reversed": ({"w": f32([1], [4, 0])}, bytes(4), None, "invalid offset for tensor `w`"),
    "offsets wrong size": ({"w": f32([2, 3], [0, 20])}, bytes(20), None,
                           "invalid shape, data type, or offset .*different number of bytes"),
    "overlapping tensors": ({"a": f32([2], [0, 8]), "b": f32([2], [4, 12])}, bytes(12), None,
                            "invalid offset for tensor `b` .*overlap"),
    "empty tensor inside another": ({"a": f32([2], [0, 8]), "e": f32([0], [4, 4])}, bytes(8), None,
                                    "invalid offset for tensor `e`"),
    "gap between tensors": ({"a": f32([2], [0, 8]), "b": f32([2], [12, 20])}, bytes(20), None,
                            "invalid offset for tensor `b` .*gap"),
    "gap at the start": ({"a": f32([1], [4, 8])}, bytes(8), None, "invalid offset for tensor `a`"),
    "tensor past the buffer": ({"a": f32([4], [0, 16])}, bytes(8), None, "not fully covered .*truncated"),
    "trailing bytes": ({"a": f32([2], [0, 8])}, bytes(12), None, "not fully covered .*trailing bytes"),
    "metadata not an object": ({"__metadata__": ["a"]}, b"", None, "sequence, expected a map"),
    "metadata value not a string": ({"__metadata__": {"step": 3}}, b"", None,
                                    "integer `3`, expected a string"),
}


@pytest.mark.parametrize("case", list(CORRUPT))
@pytest.mark.parametrize("reader", [load, load_metadata])
def test_corrupt_file_is_refused_with_a_reason(tmp_path, case, reader):
    *contents, message = CORRUPT[case]
    path = tmp_path / "bad.safetensors"
    if len(contents) == 1:
        path.write_bytes(contents[0])
    else:
        write_file(path, *contents)
    with pytest.raises(SafetensorsError, match=message) as info:
        reader(path)
    assert str(path) in str(info.value) and isinstance(info.value, AxonError)


def test_bool_bytes_other_than_0_and_1_are_refused(tmp_path):
    header = {"m": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}
    path = write_file(tmp_path / "b.safetensors", header, bytes([1, 7]))
    with pytest.raises(SafetensorsError, match="'m' is BOOL but holds bytes other than 0 and 1"):
        load(path)


@pytest.mark.parametrize("reader", [load, load_metadata])
def test_missing_file_and_directory_are_refused(tmp_path, reader):
    with pytest.raises(SafetensorsError, match="nothing.safetensors: cannot open: No such file"):
        reader(tmp_path / "nothing.safetensors")
    with pytest.raises(SafetensorsError, match="is a directory"):
        reader(tmp_path)


def test_every_truncation_and_byte_flip_is_an_error_not_a_crash(tmp_path, gen):
    good = tmp_path / "good.safetensors"
    save({"w": torch.randn(2, 3, generator=gen), "n": torch.arange(3), "m": torch.tensor([True])}, good,
         metadata={"k": "v"})
    data = good.read_bytes()
    bad = tmp_path / "bad.safetensors"
    for cut in range(len(data)):
        bad.write_bytes(data[:cut])
        with pytest.raises(SafetensorsError):
            load(bad)
    (n,) = struct.unpack("<Q", data[:8])
    for i in range(8 + n):  # a flipped bit in the prefix or header loads or is refused, never crashes
        bad.write_bytes(data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1:])
        try:
            load(bad)
        except SafetensorsError:
            pass


def test_bad_device_is_refused(tmp_path):
    save({"w": torch.ones(1)}, tmp_path / "w.safetensors")
    with pytest.raises(SafetensorsError, match="cannot load onto device 'gpu0'"):
        load(tmp_path / "w.safetensors", device="gpu0")


# --- what save refuses -----------------------------------------------------------------------------

REFUSED = {
    "non-string name": ({1: torch.ones(1)}, None, "1 cannot name a tensor"),
    "reserved name": ({"__metadata__": torch.ones(1)}, None, "'__metadata__' cannot name a tensor"),
    "not a tensor": ({"w": [1.0, 2.0]}, None, "'w' is a list, not a torch.Tensor"),
    "unsupported dtype": ({"z": torch.ones(2, dtype=torch.complex64)}, None, "'z' has dtype torch.complex64"),
    "sparse tensor": ({"s": torch.eye(2).to_sparse()}, None, "'s' has no dense data"),
    "meta tensor": ({"m": torch.empty(2, device="meta")}, None, "'m' has no dense data"),
    "not a mapping": ([torch.ones(1)], None, "expected a mapping"),
    "lone surrogate in a name": ({"w\ud800": torch.ones(1)}, None, "not valid Unicode"),
    "metadata value not a string": ({}, {"step": 3}, "metadata must map strings to strings"),
    "metadata not a mapping": ({}, ["a"], "metadata must map strings to strings"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_save_refuses_what_the_format_cannot_hold(tmp_path, case):
    tensors, metadata, message = REFUSED[case]
    with pytest.raises(SafetensorsError, match=message):
        save(tensors, tmp_path / "x.safetensors", metadata=metadata)
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_directory_or_onto_a_directory(tmp_path):
    with pytest.raises(SafetensorsError, match="cannot write: No such file"):
        save({"w": torch.ones(1)}, tmp_path / "no" / "such" / "w.safetensors")
    (tmp_path / "d").mkdir()
    with pytest.raises(SafetensorsError, match="(?i)is a directory"):
        save({"w": torch.ones(1)}, tmp_path / "d")
    assert os.listdir(tmp_path / "d") == []


# --- atomic writes ---------------------------------------------------------------------------------

def fail_replace(monkeypatch):
    def replace(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "replace", replace)
    return SafetensorsError


def fail_fsync(monkeypatch):
    def fsync(fd):
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(os, "fsync", fsync)
    return SafetensorsError


def interrupt_mid_data(monkeypatch):
    real = safetensors.torch.save_file

    def save_file(tensors, filename, metadata=None):  # half the file is written, then Ctrl-C
        real(tensors, filename, metadata=metadata)
        os.truncate(filename, os.path.getsize(filename) // 2)
        raise KeyboardInterrupt
    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    return KeyboardInterrupt


@pytest.mark.parametrize("failure", [fail_replace, fail_fsync, interrupt_mid_data])
def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch, failure):
    path = tmp_path / "model.safetensors"
    save({"w": torch.ones(3)}, path, metadata={"version": "1"})
    before = path.read_bytes()
    raised = failure(monkeypatch)
    with pytest.raises(raised):
        save({"w": torch.zeros(1000), "x": torch.zeros(1000)}, path, metadata={"version": "2"})
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["model.safetensors"]
    assert load_metadata(path) == {"version": "1"}


def test_successful_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.safetensors"
    save({"w": torch.ones(3)}, path)
    save({"v": torch.zeros(2, dtype=torch.int8)}, str(path))
    assert list(load(path)) == ["v"] and os.listdir(tmp_path) == ["model.safetensors"]
