"""Compiling a group: its source written to an on-disk cache, loaded back, and a launcher around it.

Each kernel is one `.py` file named by sha256(code + target), where the code is the source without its
comments: kernels that differ only in the IR nodes their comments name (the same layer at another depth,
the same update for another parameter) share one file, one loaded function and so one Triton compile,
while a changed kernel or another target never reuses a stale file. Files are written to a temporary
name in the cache directory and renamed into place (atomic), so two processes compiling the same kernel
both see a whole file. The last line holds a
checksum of the rest: a truncated or damaged file is detected on load and rewritten.

The folder is `cachedir.ensure_cache_dir()`: private to this user (else a temporary one is used). A file
is loaded only when it is a regular file of this user's, not writable by group or others, intact, and
holds the code it is named for; anything else at its name (damaged, planted, a folder) is replaced, and
where it cannot be the kernel goes to the private temporary cache. Nothing here ends in a traceback.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import math
import os
import stat
import tokenize
from dataclasses import dataclass
from pathlib import Path

import torch

from axon.ir import Node
from axon.ir.shapes import concrete
from .cachedir import CacheError, ensure_cache_dir, fallback_dir, unsafe, warn
from .files import atomic_write
from .groups import KernelGroup
from .launch import Launch
from .pointwise import PointwiseKernel
from .reduce import ReduceKernel
from .target import Target, native

CHECKSUM = "# axon-checksum: sha256 "
_LOADED: dict[str, object] = {}  # cache key -> the loaded kernel function, per process


def cache_dir() -> Path:
    """The cache folder in use (`ensure_cache_dir()`: the configured one, or a private temporary one)."""
    return ensure_cache_dir()


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
    """The cache file for `source`: the one there when it may be loaded (`_holds`), else written anew
    (atomically); where the cache cannot take it, a file in the private temporary cache."""
    tgt = tgt or target()  # a Target's key()
    name = f"k_{cache_key(source, tgt)[:40]}.py"
    path = ensure_cache_dir() / name
    if _holds(path, source):
        return path
    try:
        _replace(path, _with_checksum(source))
        return path
    except OSError as e:
        why = f"cannot be replaced ({e.strerror or e})"  # a folder with files in it, a read-only file
    spare = fallback_dir() / name
    if spare == path:
        raise CacheError(f"kernel cache entry {path} {why}")
    warn(f"kernel cache entry {path} {why}; using a private temporary cache for this kernel")
    if not _holds(spare, source):
        try:
            _replace(spare, _with_checksum(source))
        except OSError as e:
            raise CacheError(f"kernel cache entry {spare} cannot be written ({e.strerror or e})") from e
    return spare


def _holds(path: Path, source: str) -> bool:
    """Whether the file at `path` may be loaded for `source`: a regular file (no link, folder or pipe) of
    this user's, not writable by group or others, intact, and with the same code as `source`."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False  # missing, a dangling link, unreadable
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or unsafe(info):
            return False
        with os.fdopen(os.dup(fd), "rb") as f:
            text = f.read().decode()
    except (OSError, UnicodeDecodeError):
        return False
    finally:
        os.close(fd)
    if not is_intact(text):
        return False
    body = text.rpartition(CHECKSUM)[0]
    try:
        return body == source or code_of(body) == code_of(source)
    except (tokenize.TokenError, SyntaxError):
        return False  # a valid checksum over something that is not Python: not ours


def _replace(path: Path, text: str) -> None:
    """Write `text` at `path` (mode 0600) over whatever is there; an empty folder in the way is removed."""
    if os.path.isdir(path) and not os.path.islink(path):
        os.rmdir(path)  # OSError (not empty) for the caller
    atomic_write(path, text, mode=0o600)


def load_kernel(path: Path, name: str):
    """Import the kernel module at `path` and return its function `name`; refused (CodegenError) when the
    file or its folder is another user's or writable by group or others."""
    from .groups import CodegenError

    path = Path(path)
    try:
        checks = [(f"kernel module {path}", os.stat(path)),
                  (f"its folder {path.parent}", os.stat(path.parent))]
    except OSError as e:
        raise CodegenError(f"kernel module {path} cannot be read ({e.strerror or e})") from e
    for what, info in checks:
        if unsafe(info):
            raise CodegenError(f"{what} {unsafe(info)}: not loaded, as whoever can write it could run "
                               f"code in this process")
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
