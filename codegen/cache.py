"""Compiling a group: its source written to an on-disk cache, loaded back, and a launcher around it.

Each kernel is one `.py` file named by sha256(code + target), where the code is the source without its
comments: kernels that differ only in the IR nodes their comments name (the same layer at another depth,
the same update for another parameter) share one file, one loaded function and so one Triton compile,
while a changed kernel or another target never reuses a stale file. Files are written to a temporary
name in the cache directory and renamed into place (atomic), so two processes compiling the same kernel
both see a whole file. The last line holds a
checksum of the rest: a truncated or damaged file is detected on load and rewritten.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import math
import os
import tokenize
from dataclasses import dataclass
from pathlib import Path

import torch

from axon.ir import Node
from axon.ir.shapes import concrete
from .files import atomic_write
from .groups import KernelGroup
from .launch import Launch
from .pointwise import PointwiseKernel
from .reduce import ReduceKernel
from .target import Target, native

CHECKSUM = "# axon-checksum: sha256 "
_LOADED: dict[str, object] = {}  # cache key -> the loaded kernel function, per process


def cache_dir() -> Path:
    return Path(os.environ.get("AXON_CACHE_DIR") or Path.home() / ".cache" / "axon")


def target() -> str:
    """What this machine's kernels are compiled for (the native target's cache key)."""
    return native().key()


def code_of(source: str) -> str:
    """The source without comments and blank lines: what the kernel computes."""
    kept = []
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in (tokenize.COMMENT, tokenize.NL):
            kept.append(tok.string if tok.type != tokenize.NEWLINE else "\n")
    return " ".join(kept)


def cache_key(source: str, tgt: str) -> str:
    return hashlib.sha256(f"{code_of(source)}\n{tgt}".encode()).hexdigest()


def _with_checksum(source: str) -> str:
    return f"{source}{CHECKSUM}{hashlib.sha256(source.encode()).hexdigest()}\n"


def is_intact(text: str) -> bool:
    body, sep, tail = text.rpartition(CHECKSUM)
    return bool(sep) and tail == hashlib.sha256(body.encode()).hexdigest() + "\n"


def write_cached(source: str, tgt: str | None = None) -> Path:
    """The cache file for `source` (written atomically when absent or damaged)."""
    tgt = tgt or target()  # a Target's key()
    directory = cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"k_{cache_key(source, tgt)[:40]}.py"
    try:
        if is_intact(path.read_text()):
            return path
    except (OSError, UnicodeDecodeError):
        pass  # missing or unreadable: (re)write it
    atomic_write(path, _with_checksum(source))
    return path


def load_kernel(path: Path, name: str):
    """Import the kernel module at `path` and return its function `name`."""
    spec = importlib.util.spec_from_file_location(f"axon_kernel_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    check_globals(module, path)
    return getattr(module, name)


def check_globals(module, path) -> None:
    """A kernel module holds imports and jitted functions only. Triton compares every other global a
    kernel reads with `!=` at each launch (a NaN constant is never equal to itself, so such a kernel
    compiles and then fails every launch); the interpreter does not, so the rule is checked here."""
    import types

    for name, value in vars(module).items():
        if name.startswith("__") or isinstance(value, types.ModuleType):
            continue
        if type(value).__name__ not in ("JITFunction", "InterpretedFunction", "Autotuner"):
            from .groups import CodegenError

            raise CodegenError(f"{path}: generated kernel module defines global '{name}' "
                               f"({type(value).__name__}); kernels may read only their arguments, "
                               f"locals and jitted helpers")


WIDE = 2**31 - 1  # tensors with more elements than this need int64 index arithmetic


def needs_wide(group: KernelGroup, env) -> bool:
    """Whether a kernel of `group` at sizes `env` touches a tensor of 2**31+ elements (int64 indexing)."""
    nodes = [a.buffer for a in group.inputs] + list(group.outputs) + [a.node for a in group.inputs]
    return any(math.prod(concrete(n.shape, env)) > WIDE for n in nodes)


def allocate(node: Node, env, device, poison: bool = False) -> torch.Tensor:
    """A contiguous buffer for `node`; `poison` fills it with NaN (or the largest integer) so an element
    no kernel writes shows up in a comparison."""
    out = torch.empty(concrete(node.shape, env), dtype=node.dtype.torch, device=device)
    if poison and node.dtype.is_float:
        out.fill_(float("nan"))
    elif poison and node.dtype.is_int:
        out.fill_(torch.iinfo(node.dtype.torch).max)
    return out


@dataclass
class CompiledKernel:
    """A group's generated kernel, loaded from its cache file, with the spec that prepares its launches.

    `source` is this group's own text (its comments name its IR nodes); `path` is the cache file, which
    holds the first text written with the same code; `fn` is None for a kernel compiled for another
    target (ahead of time: `codegen.aot`), which this process never loads."""

    group: KernelGroup
    source: str
    path: Path
    fn: object
    spec: object  # a kernel spec (PointwiseKernel, ReduceKernel, ...): knows the kernel's arguments
    target: Target = Target()

    def prepare(self, env: dict[str, int] | None = None) -> Launch:
        return self.spec.prepare(env or {})

    def run(self, values: dict[Node, torch.Tensor], env: dict[str, int] | None = None,
            poison: bool = False) -> dict[Node, torch.Tensor]:
        """Launch on the tensors of the group's input buffers; returns its outputs (new tensors)."""
        launch = self.prepare(env)
        device = next((v.device for v in values.values()), torch.device("cpu"))
        outs = {o: allocate(o, env or {}, device, poison) for o in launch.outputs}
        launch.run(self.fn, {**values, **outs})
        return outs


def spec_for(group: KernelGroup, wide: bool = False, target: Target | None = None):
    """The kernel spec for a group of its kind, for `target` (default: this machine's); `wide` indexes
    with int64 (tensors of 2**31+ elements)."""
    from .attention import AttentionBackwardKernel, AttentionKernel
    from .conv import Conv2dKernel
    from .indexing import IndexKernel
    from .matmul import MatmulKernel

    from .rowwise import RowKernel

    kinds = {"pointwise": PointwiseKernel, "reduce": ReduceKernel, "matmul": MatmulKernel,
             "conv2d": Conv2dKernel, "index": IndexKernel, "attention": AttentionKernel,
             "attention_bwd": AttentionBackwardKernel}
    target = target or native()
    if group.kind == "reduce" and group.space and not any(n.op.value in ("argmax", "argmin")
                                                          for n in group.nodes):
        return RowKernel(group, wide=wide, target=target)  # a fused reduction
    return kinds[group.kind](group, wide=wide, target=target)


def compile_group(group: KernelGroup, wide: bool = False, target: Target | None = None) -> CompiledKernel:
    """Generate and cache the kernel of `group` for `target` (default: this machine's), and load it when
    the target is this machine's."""
    tgt = target or native()
    spec = spec_for(group, wide, tgt)
    source = spec.source()
    key = cache_key(source, tgt.key())
    path = write_cached(source, tgt.key())
    fn = None
    if tgt == native(tgt.tf32):
        if key not in _LOADED:
            _LOADED[key] = load_kernel(path, spec.name)
        fn = _LOADED[key]
    return CompiledKernel(group, source, path, fn, spec, tgt)
