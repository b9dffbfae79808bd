"""What `axon run` needs around a compiled model: inputs (read from .npz or made at random), a summary
of each output, and the comparison with the reference evaluator (`--check`)."""
from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np
import torch

from axon.driver import InputError
from axon.ir import Graph, OpKind, Sym
from axon.ir.shapes import concrete

K = OpKind
# ‖out − ref‖ / ‖ref‖ a generated kernel may differ from the reference by, per output dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def symbols(graph: Graph) -> list[str]:
    """The symbolic dimensions the inputs bind, in order of first appearance."""
    out: list[str] = []
    for node in graph.inputs.values():
        for d in node.shape:
            if isinstance(d, Sym):
                out += [f for f in d.factors if f not in out]
    return out


def bind_dims(graph: Graph, given: dict[str, int], default: int = 4) -> dict[str, int]:
    """Values for every symbolic dimension: those `given` (e.g. --batch), the rest `default`."""
    unknown = sorted(set(given) - set(symbols(graph)))
    if unknown:
        raise InputError(f"--dim {unknown[0]}: {graph.name} has no symbolic dimension '{unknown[0]}' "
                         f"(it has: {', '.join(symbols(graph)) or 'none'})")
    bad = [k for k, v in given.items() if v < 1]
    if bad:
        raise InputError(f"--dim {bad[0]}={given[bad[0]]}: a dimension must be at least 1")
    return {s: given.get(s, default) for s in symbols(graph)}


def index_bounds(graph: Graph) -> dict[str, int]:
    """For inputs used as the index of a gather or take (directly or through reshapes and the like),
    the size of the axis they index: random values must stay below it."""
    bounds: dict[str, int] = {}
    for node in graph.nodes:
        if node.op in (K.GATHER, K.TAKE):
            idx = node.inputs[1]
            while idx.op not in (K.INPUT,) and len(idx.inputs) == 1:
                idx = idx.inputs[0]
            size = node.inputs[0].shape[node.attrs.axis]
            if idx.op == K.INPUT and isinstance(size, int):
                bounds[idx.name] = min(bounds.get(idx.name, size), size)
    return bounds


def check_fits(exe, env: dict[str, int]) -> None:
    """Refuse sizes whose inputs, intermediate buffers (the arena) and outputs alone need more memory
    than the executable's device has (a --batch typed with zeros too many), before allocating any."""
    from axon.runtime.memory import nbytes

    graph = exe.graph
    written = {n for k in exe.kernels for n in k.group.outputs}
    outputs = [n for n in dict.fromkeys(graph.outputs.values()) if n in written]
    need = (sum(nbytes(n, env) for n in graph.inputs.values()) + exe.memory_plan(env).size
            + sum(nbytes(n, env) for n in outputs))
    total = device_memory(exe.device)
    if total is not None and need > total:
        sizes = ", ".join(f"{k}={v:,}" for k, v in env.items())
        owner = "this machine" if exe.device.type == "cpu" else str(exe.device)
        raise InputError(f"{graph.name} at {sizes} needs at least {_bytes(need)} for its inputs, "
                         f"intermediate buffers and outputs, more than the {_bytes(total)} of memory "
                         f"{owner} has", hint="is --batch or a --dim too large?")


def device_memory(device: torch.device) -> int | None:
    """The bytes of memory `device` has (a CUDA GPU's, or this machine's), or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _bytes(n: int) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


def random_inputs(graph: Graph, env: dict[str, int], seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes and dtypes: floats ~ N(0, 1); indices in range; other ints in [0, 10)."""
    gen = torch.Generator().manual_seed(seed)
    bounds = index_bounds(graph)
    out = {}
    for name, node in graph.inputs.items():
        shape = concrete(node.shape, env)
        dt = node.dtype.torch
        if node.dtype.is_float:
            out[name] = torch.randn(shape, generator=gen, dtype=torch.float32).to(dt)
        elif dt == torch.bool:
            out[name] = torch.rand(shape, generator=gen) < 0.5
        else:
            out[name] = torch.randint(0, bounds.get(name, 10), shape, generator=gen).to(dt)
    return out


NPY_MAGIC, ZIP_MAGIC = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")  # .npy; a zip (.npz), or an empty one


def read_npz(path: str | Path, graph: Graph | None = None) -> dict[str, torch.Tensor]:
    """Arrays of an .npz file by name (never unpickled); with `graph`, they must be its inputs."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
        if magic.startswith(NPY_MAGIC):
            raise InputError(f"{p}: a single .npy array, not an .npz archive of arrays by input name",
                             hint="save the inputs with numpy.savez(path, x=...)")
        if not magic.startswith(ZIP_MAGIC):
            raise InputError(f"{p}: not an .npz file (an .npz is a zip archive of .npy arrays)",
                             hint="save the inputs with numpy.savez(path, x=...)")
        with np.load(p, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, not an .npz file") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as e:
        raise InputError(f"{p}: not a readable .npz file of arrays ({e})") from None
    out = {}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):  # a member that is not .npy data comes back as its bytes
            raise InputError(f"{p}: '{name}' in the archive is not a .npy array")
        try:
            out[name] = torch.from_numpy(np.ascontiguousarray(a))
        except TypeError:  # strings, bytes, dates: nothing a tensor holds
            raise InputError(f"{p}: array '{name}' holds {a.dtype} values, not numbers") from None
    if graph is not None:
        missing = [n for n in graph.inputs if n not in out]
        extra = [n for n in out if n not in graph.inputs]
        if missing or extra:
            what = "; ".join(filter(None, [missing and f"no array {_quoted(missing)}",
                                           extra and f"unexpected {_quoted(extra)}"]))
            raise InputError(f"{p}: the arrays do not fit the inputs of {graph.name}: {what}",
                             hint=f"{graph.name} takes {', '.join(graph.inputs) or 'no inputs'}; the file "
                                  f"has {', '.join(out) or 'no arrays'}")
    return out


def _quoted(names: list[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def summary(name: str, t: torch.Tensor) -> str:
    """One line: name, dtype, shape and statistics (NaN/inf counted apart)."""
    dtype = str(t.dtype).removeprefix("torch.")
    head = f"{name}: {dtype}{list(t.shape)}"
    if t.numel() == 0:
        return head + " (empty)"
    x = t.detach().cpu().double()
    finite = x[x.isfinite()]
    stats = (f" min {finite.min():.4g} max {finite.max():.4g} mean {finite.mean():.4g} "
             f"std {finite.std(unbiased=False):.4g}") if finite.numel() else ""
    bad = x.numel() - finite.numel()
    return head + stats + (f"  ({bad} NaN/inf)" if bad else "")


def compare(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float, bool]:
    """(max |error|, relative error, within tolerance) of an output against the reference.
    NaN must sit where the reference has NaN; integer outputs must be equal."""
    got, want = got.detach().cpu(), want.detach().cpu()
    if not want.is_floating_point():
        diff = (got.long() - want.long()).abs()
        worst = float(diff.max()) if diff.numel() else 0.0
        return worst, worst, worst == 0
    g, w = got.double(), want.double()
    nan_ok = torch.equal(g.isnan(), w.isnan())
    fin = w.isfinite() & g.isfinite()
    inf_ok = torch.equal(g[~w.isfinite() & ~w.isnan()], w[~w.isfinite() & ~w.isnan()])
    d = (g[fin] - w[fin])
    worst = float(d.abs().max()) if d.numel() else 0.0
    norm = float(w[fin].norm())
    rel = float(d.norm()) / norm if norm > 0 else float(d.norm())
    ok = nan_ok and inf_ok and rel <= TOLERANCE.get(want.dtype, 1e-4)
    if not nan_ok:
        rel = math.nan
    return worst, rel, ok
