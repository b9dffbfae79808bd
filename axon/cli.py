"""The `axon` command line.

    axon check FILE.axir                     parse and verify; exit 0, or 1 with the error
    axon show FILE.axir                      print the verified IR
    axon show FILE.axir --stage simplify     run the pipeline up to a stage and print the IR there
    axon show FILE.axir --print-after-all --time
    axon show FILE.axir --dot                the graph in Graphviz DOT
    axon passes                              the passes there are, with what each is for

User errors (bad syntax, bad types, unknown passes, missing files) print a located message and exit 1;
they never show a Python traceback.
"""
from __future__ import annotations

import argparse
import sys

from axon.ir import AxonError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axon", description="Axon, a deep-learning compiler.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="parse and verify a graph file")
    c.add_argument("file")

    s = sub.add_parser("show", help="print a graph after a compiler stage")
    s.add_argument("file")
    s.add_argument("--stage", default=None,
                   help="'parse' (as written), 'verify', or a pass name: stop after it (default: all)")
    s.add_argument("--pipeline", default=None, help="passes to run, e.g. 'fold,simplify,cse,dce'")
    s.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    s.add_argument("--time", action="store_true", help="print each pass's time and node counts")
    s.add_argument("--dot", action="store_true", help="print Graphviz DOT instead of IR text")

    sub.add_parser("passes", help="list the passes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except AxonError as e:
        print(str(e), file=sys.stderr)
        return 1
    except BrokenPipeError:  # `axon show big.axir | head`
        return 0


def _check(args) -> int:
    from axon.driver import load_graph

    g = load_graph(args.file)
    print(f"{args.file}: ok ({len(g)} nodes, {len(g.inputs)} inputs, {len(g.params)} params, "
          f"{len(g.outputs)} outputs)")
    return 0


def _show(args) -> int:
    from axon.driver import load_graph, optimize, read_source
    from axon.ir.text import parse_graph
    from axon.passes.manager import DEFAULT_PIPELINE

    if args.stage == "parse":  # as written, before the verifier
        g = parse_graph(read_source(args.file), file=args.file)
    else:
        g = load_graph(args.file)
        if args.stage != "verify":
            g, report = optimize(g, args.pipeline or DEFAULT_PIPELINE, verify=True,
                                 stop_after=args.stage, print_after_all=args.print_after_all,
                                 timing=args.time, out=print)
    print(to_dot(g) if args.dot else str(g))
    return 0


def _passes(args) -> int:
    from axon.passes.manager import DEFAULT_PIPELINE, registered_passes

    for name, cls in registered_passes().items():
        why = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:12s} {why}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    return 0


def to_dot(graph) -> str:
    """Graphviz DOT of the graph, from its networkx form (no pydot/pygraphviz needed)."""
    g = graph.to_networkx()
    name = graph.name.replace("\\", "\\\\").replace('"', '\\"')
    lines = [f'digraph "{name}" {{', "  node [shape=box, fontname=monospace];"]
    for i, data in g.nodes(data=True):
        label = f"{data['label']}\\n{data['type']}".replace('"', '\\"')
        lines.append(f'  n{i} [label="{label}"];')
    for a, b in g.edges():
        lines.append(f"  n{a} -> n{b};")
    lines.append("}")
    return "\n".join(lines)


_COMMANDS = {"check": _check, "show": _show, "passes": _passes}

if __name__ == "__main__":
    sys.exit(main())
