"""The compiler driver: the named stages from source text to optimized graph, in one straight line.

    parse     text (.axir IR text, or .axon once the language lands) -> ir.Graph
    verify    check every invariant of the parsed graph
    passes    the pass pipeline (default: fold, simplify, cse, dce), each pass a stage of its own

>>> g = load_graph("examples/mlp.axir")                              # doctest: +SKIP
>>> g, report = optimize(g, "fold,simplify,cse,dce", verify=True)    # doctest: +SKIP
"""
from __future__ import annotations

from pathlib import Path

from axon.ir import AxonError, Graph, verify
from axon.ir.text import parse_graph
from axon.passes.manager import DEFAULT_PIPELINE, PassManager, parse_pipeline

STAGES = ("parse", "verify", "passes")
IR_SUFFIX = ".axir"


class InputError(AxonError):
    """A file that cannot be read or is of an unknown kind."""


def read_source(path: str | Path) -> str:
    p = Path(path)
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


def load_graph(path: str | Path) -> Graph:
    """Parse and verify a graph from a file (`.axir` IR text)."""
    p = Path(path)
    if p.suffix != IR_SUFFIX:
        raise InputError(f"{p}: expected an IR text file ({IR_SUFFIX}); the .axon language is not "
                         f"supported by this command yet")
    return verify(parse_graph(read_source(p), file=str(p)))


def optimize(graph: Graph, pipeline: str = DEFAULT_PIPELINE, *, verify: bool = True,
             stop_after: str | None = None, print_after_all: bool = False, timing: bool = False,
             out=print):
    """Run a pass pipeline over `graph`; returns the new graph and the per-pass report."""
    pm = PassManager(parse_pipeline(pipeline), verify=verify, stop_after=stop_after,
                     print_after_all=print_after_all, timing=timing, out=out)
    result = pm.run(graph)
    return result, pm.report
