"""The sha256 checksums `axon.runtime.safetensors` keeps in a file's metadata: a damaged byte in a tensor's
data is refused naming the tensor, one in the header naming the file; every dtype and shape round-trips
with its checksum; incomplete checksum entries are refused; files from other tools load unverified.

Files are damaged here by rewriting their bytes (the header and data region found by hand from the
8-byte length) or by writing them with `safetensors.torch.save_file` directly.
"""
import json
import struct

import pytest
import safetensors.torch
import torch

from axon.ir.errors import AxonError
from axon.runtime import safetensors as st
from axon.runtime.safetensors import SafetensorsError, load, load_metadata, save

SHAPES = [(), (0,), (3, 0, 2), (1,), (7,), (2, 3, 5)]


def layout(path) -> tuple[int, dict, dict]:
    """Where the data starts (8 + the header length), the tensor entries, and the metadata, read by hand."""
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    return 8 + n, header, header.pop("__metadata__", {})


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def flip(path, at: int, mask: int = 0xFF):
    data = bytearray(path.read_bytes())
    data[at] ^= mask
    path.write_bytes(bytes(data))


def checkpoint(path, gen):
    tensors = {"param/fc1.w": torch.randn(4, 5, generator=gen), "param/fc1.b": torch.randn(5, generator=gen),
               "state/step": torch.tensor(12), "state/mask": torch.tensor([True, False, True]),
               "param/emb": torch.randn(3, 2, generator=gen).to(torch.bfloat16)}
    save(tensors, path, metadata={"model": "MLP", "progress": '{"epoch": 3}'})
    return tensors


def test_a_flipped_byte_in_any_tensor_is_refused_naming_that_tensor(tmp_path, gen):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint(path, gen)
    good = path.read_bytes()
    start, header, _ = layout(path)
    assert len(good) > start
    for at in range(start, len(good)):  # every byte of the data region, each flipped in turn
        name = next(n for n, e in header.items() if e["data_offsets"][0] <= at - start < e["data_offsets"][1])
        path.write_bytes(good[:at] + bytes([good[at] ^ 0xFF]) + good[at + 1:])
        with pytest.raises(SafetensorsError) as info:
            load(path)
        assert str(info.value) == (f"error: {path}: tensor {name!r} is damaged: its sha256 does not match "
                                   "the one saved with it")
        assert load_metadata(path) == {"model": "MLP", "progress": '{"epoch": 3}'}  # reads no data


def test_every_bit_flip_in_the_length_or_header_is_refused(tmp_path, gen):
    path = tmp_path / "checkpoint.safetensors"
    checkpoint(path, gen)
    good = path.read_bytes()
    start, _, _ = layout(path)
    for at in range(start):
        for bit in range(8):
            path.write_bytes(good[:at] + bytes([good[at] ^ 1 << bit]) + good[at + 1:])
            with pytest.raises(SafetensorsError) as info:
                load(path)
            assert str(path) in str(info.value) and isinstance(info.value, AxonError)


@pytest.mark.parametrize("code", list(st.DTYPES))
def test_checksums_round_trip_every_dtype_and_shape(tmp_path, gen, code):
    dtype = st.DTYPES[code]
    tensors = {}
    for i, shape in enumerate(SHAPES):
        numel = torch.Size(shape).numel()
        raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8, generator=gen)
        tensors[f"t{i}"] = ((raw % 2).bool() if dtype == torch.bool else raw.view(dtype)).reshape(shape)
    path = tmp_path / "x.safetensors"
    save(tensors, path)
    back = load(path)
    assert all(torch.equal(bits(back[k]), bits(t)) for k, t in tensors.items())
    good = path.read_bytes()
    start, header, meta = layout(path)
    # The checksums are of the bytes: a second save has the same header and data (though the library
    # writes the metadata in no fixed order).
    save(back, tmp_path / "again.safetensors")
    again = layout(tmp_path / "again.safetensors")
    assert again[1:] == (header, meta)
    assert (tmp_path / "again.safetensors").read_bytes()[again[0]:] == good[start:]
    assert {k for k in meta if k.startswith("axon/sha256/")} == {f"axon/sha256/{k}" for k in tensors}
    for name, entry in header.items():  # a damaged byte of each non-empty tensor, 0-d included, is caught
        begin, end = entry["data_offsets"]
        if begin < end:
            path.write_bytes(good)
            flip(path, start + end - 1, 0x01)
            with pytest.raises(SafetensorsError, match=f"tensor '{name}' is damaged"):
                load(path)


def test_tensors_sharing_memory_are_each_saved_whole(tmp_path):
    base = torch.arange(12.0)
    tensors = {"all": base, "head": base[:4], "tail": base[4:], "again": base, "one": base[5]}
    save(tensors, tmp_path / "s.safetensors")
    back = load(tmp_path / "s.safetensors")
    assert all(torch.equal(back[k], t) for k, t in tensors.items())


@pytest.mark.parametrize("key", ["axon/checksums", "axon/sha256/w", "axon/header-sha256", "axon/mine"])
def test_metadata_keys_in_the_checksum_namespace_are_refused(tmp_path, key):
    path = tmp_path / "w.safetensors"
    save({"w": torch.ones(2)}, path, metadata={"note": "first"})
    before = path.read_bytes()
    with pytest.raises(SafetensorsError, match=f"{path}: metadata key '{key}' is reserved"):
        save({"w": torch.zeros(2)}, path, metadata={key: "x"})
    assert path.read_bytes() == before


def test_a_file_without_checksums_loads_unverified(tmp_path):
    path = tmp_path / "other.safetensors"
    w = torch.arange(6.0).reshape(2, 3)
    safetensors.torch.save_file({"w": w, "n": torch.tensor([1, 2])}, str(path), metadata={"source": "hub"})
    assert load_metadata(path) == {"source": "hub"}
    assert torch.equal(load(path)["w"], w)
    start, header, _ = layout(path)
    flip(path, start + header["w"]["data_offsets"][0] + 3, 0x80)  # w[0, 0]'s sign: nothing checks it
    assert load(path)["w"][0, 0].item() == -0.0
    safetensors.torch.save_file({"w": w}, str(path))  # no metadata at all
    assert load_metadata(path) == {} and torch.equal(load(path)["w"], w)


def rewrite(path, change):
    """The file written again by the library with its tensors and `change(metadata, tensors)` applied."""
    _, _, meta = layout(path)
    tensors = safetensors.torch.load_file(str(path))
    change(meta, tensors)
    safetensors.torch.save_file(tensors, str(path), metadata=meta)


def _swap_sums(meta, tensors):
    meta["axon/sha256/a"], meta["axon/sha256/b"] = meta["axon/sha256/b"], meta["axon/sha256/a"]


DAMAGED = {  # name: (change, reader, the message)
    "a tensor without its checksum": (lambda m, t: m.pop("axon/sha256/b"), load_metadata,
                                      "tensor 'b' has no checksum \\('axon/sha256/b'\\), though the file "
                                      "carries them"),
    "a checksum of no tensor": (lambda m, t: t.pop("b"), load_metadata,
                                "checksum 'axon/sha256/b' is of a tensor the file does not have"),
    "checksums without the marker": (lambda m, t: m.pop("axon/checksums"), load_metadata,
                                     "has checksum entries .* but not 'axon/checksums'"),
    "an unknown scheme": (lambda m, t: m.update({"axon/checksums": "md5"}), load_metadata,
                          "unknown checksum scheme 'axon/checksums': 'md5'"),
    "an unknown reserved key": (lambda m, t: m.update({"axon/extra": "1"}), load_metadata,
                                "unknown key 'axon/extra' among the checksums"),
    "no header checksum": (lambda m, t: m.pop("axon/header-sha256"), load_metadata,
                           "'axon/header-sha256' is missing"),
    "metadata changed": (lambda m, t: m.update({"step": "11"}), load_metadata,
                         "header is damaged: its sha256 .* does not match"),
    "metadata added": (lambda m, t: m.update({"extra": ""}), load_metadata,
                       "header is damaged: its sha256 .* does not match"),
    # Same bytes, so the tensor's own checksum holds: the header's catches the new dtype and shape.
    "a tensor reinterpreted": (lambda m, t: t.update(a=t["a"].view(torch.int32)), load_metadata,
                               "header is damaged: its sha256 .* does not match"),
    "a tensor reshaped": (lambda m, t: t.update(a=t["a"].reshape(2, 2)), load_metadata,
                          "header is damaged: its sha256 .* does not match"),
    "two tensors' checksums swapped": (_swap_sums, load, "tensor 'a' is damaged"),
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_checksum_entries_are_refused(tmp_path, case):
    change, reader, message = DAMAGED[case]
    path = tmp_path / "d.safetensors"
    save({"a": torch.arange(4.0), "b": torch.ones(3)}, path, metadata={"step": "10"})
    rewrite(path, change)
    with pytest.raises(SafetensorsError, match=message) as info:
        reader(path)
    assert str(info.value).startswith(f"error: {path}: ")
    if reader is load_metadata:
        with pytest.raises(SafetensorsError, match=message):
            load(path)
