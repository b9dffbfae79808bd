"""The compiler driver: the named stages from a source file to an optimized graph, in one straight line.

    ast       an `.axon` file parsed into the typed AST (frontend)
    ir        the graph: elaborated from `.axon`, or parsed from `.axir` IR text; verified
    <pass>    each pass of the pipeline (default: fold, simplify, cse, dce) is a stage of its own
    triton    the kernel groups lowered to generated Triton source (codegen)
    runtime   the kernels loaded and run as a launch list on tensors (`axon.compile`)

>>> g = load_graph("examples/mlp.axon")                              # doctest: +SKIP
>>> g, report = optimize(g, "fold,simplify,cse,dce", verify=True)    # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

from axon.ir import AxonError, Graph, verify
from axon.ir.text import parse_graph
from axon.passes.manager import DEFAULT_PIPELINE, PassManager, parse_pipeline

STAGES = ("ast", "ir")  # then the passes, by name
IR_SUFFIX, AXON_SUFFIX, ONNX_SUFFIX = ".axir", ".axon", ".onnx"


class InputError(AxonError):
    """A file that cannot be read, or is of a kind the command does not take."""


def read_source(path: str | Path) -> str:
    from axon.frontend.program import MAX_SOURCE_BYTES

    p = Path(path)
    if p.exists() and not p.is_file():  # a FIFO or a device could block forever
        raise InputError(f"{p}: not a regular file")
    if p.exists() and p.stat().st_size > MAX_SOURCE_BYTES:
        raise InputError(f"{p}: {p.stat().st_size:,} bytes, more than the {MAX_SOURCE_BYTES:,} a "
                         f"source file may have")
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{p}: is a directory, not a source file") from None
    except OSError as e:
        raise InputError(f"{p}: cannot read ({e.strerror})") from e
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{p}: not UTF-8 text (byte {e.start} is 0x{raw[e.start]:02x})") from e


def _kind(path: Path) -> str:
    if path.suffix not in (IR_SUFFIX, AXON_SUFFIX, ONNX_SUFFIX):
        raise InputError(f"{path}: expected an Axon model ({AXON_SUFFIX}), IR text ({IR_SUFFIX}) or an ONNX "
                         f"model ({ONNX_SUFFIX})")
    return path.suffix


def onnx_params(path) -> dict | None:
    """The initializer values of an ONNX file (None for any other source): its parameters."""
    if not isinstance(path, (str, Path)) or not str(path).endswith(ONNX_SUFFIX):
        return None
    from axon.frontend.onnx_import import import_onnx

    return import_onnx(path).params


def load_ast(path: str | Path):
    """The typed AST of an `.axon` file."""
    from axon.frontend import parse

    p = Path(path)
    if _kind(p) != AXON_SUFFIX:
        raise InputError(f"{p}: only .axon files have an AST")
    return parse(read_source(p), str(p))


def load_graph(path: str | Path, model: str | None = None, *, hparams: dict | None = None,
               training: bool = False, loss: bool = False) -> Graph:
    """The verified graph of a file: an `.axon` model (elaborated; `loss` adds the train block's loss as
    output `loss`, with labels as inputs) or `.axir` IR text."""
    p = Path(path)
    if _kind(p) == ONNX_SUFFIX:
        if model or hparams or training or loss:
            raise InputError(f"{p}: --model, --set, --training and --loss apply to .axon files")
        if not p.is_file():
            raise InputError(f"{p}: no such file")
        from axon.frontend.onnx_import import import_onnx

        return verify(import_onnx(p).graph)
    if _kind(p) == IR_SUFFIX:
        if model or hparams or training or loss:
            raise InputError(f"{p}: --model, --set, --training and --loss apply to .axon files")
        return verify(parse_graph(read_source(p), file=str(p)))
    from axon.frontend import elaborate, training_graph

    module = load_ast(p)
    if loss:
        graph, _spec = training_graph(module, model, hparams=hparams)
    else:
        graph = elaborate(module, model, hparams=hparams, training=training)
    return verify(graph)


def graph_of(source_or_path, model: str | None = None, *, hparams: dict | None = None,
             training: bool = False, loss: bool = False) -> Graph:
    """The verified graph of a file path (`.axon` or `.axir`) or of `.axon` source text."""
    if isinstance(source_or_path, Graph):
        return verify(source_or_path)
    if isinstance(source_or_path, Path) or (
            isinstance(source_or_path, str) and "\n" not in source_or_path
            and (source_or_path.endswith((AXON_SUFFIX, IR_SUFFIX, ONNX_SUFFIX))
                 or _names_a_file(source_or_path))):
        # a file of another kind (`model.txt`) is refused by its name, not parsed as source text
        return load_graph(source_or_path, model, hparams=hparams, training=training, loss=loss)
    if not isinstance(source_or_path, str):
        raise InputError(f"expected a path, .axon source text or a Graph, got "
                         f"{type(source_or_path).__name__}")
    from axon.frontend import elaborate, parse, training_graph

    module = parse(source_or_path, "<string>")
    if loss:
        return verify(training_graph(module, model, hparams=hparams)[0])
    return verify(elaborate(module, model, hparams=hparams, training=training))


def _names_a_file(text: str) -> bool:
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # a name too long, a NUL byte: source text, not a path
        return False


def optimize(graph: Graph, pipeline: str = DEFAULT_PIPELINE, *, verify: bool = True,
             stop_after: str | None = None, print_after_all: bool = False, timing: bool = False,
             out=print):
    """Run a pass pipeline over `graph`; returns the new graph and the per-pass report."""
    pm = PassManager(parse_pipeline(pipeline), verify=verify, stop_after=stop_after,
                     print_after_all=print_after_all, timing=timing, out=out)
    result = pm.run(graph)
    return result, pm.report


def kernel_groups(graph: Graph, fusion: bool = True):
    """The kernel groups `graph` compiles to: the fusion pass's plan, or one kernel per node."""
    from axon.codegen import fused_groups, groups
    from axon.passes.fusion import fuse

    return fused_groups(graph, fuse(graph).groups) if fusion else groups(graph)


def executable(graph: Graph, device=None, *, fusion: bool = True, **options):
    """`graph` compiled to kernels (fused unless `fusion` is False) for `device`."""
    from axon.runtime import Executable

    return Executable(graph, device, kernel_groups=kernel_groups(graph, fusion), **options)
