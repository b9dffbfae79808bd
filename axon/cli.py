"""The `axon` command line.

    axon check FILE                          parse, elaborate and verify; exit 0, or 1 with the error
    axon show FILE                           the IR after the clean-up pipeline
    axon show FILE --stage ast|ir|PASS       the AST, the graph as written/elaborated, or after a pass
    axon show FILE --params                  parameters with shapes, initializers and counts
    axon show FILE --print-after-all --time  every pass's output and a timing table
    axon show FILE --dot                     the graph in Graphviz DOT
    axon passes                              the passes there are, with what each is for

FILE is an `.axon` model or `.axir` IR text. User errors (bad syntax, bad shapes, unknown names or
passes, missing files) print a located message and exit 1; they never show a Python traceback.
"""
from __future__ import annotations

import argparse
import math
import sys

from axon.ir import AxonError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="axon", description="Axon, a deep-learning compiler.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    c = sub.add_parser("check", help="parse, elaborate and verify a model or graph file")
    _source_args(c)

    s = sub.add_parser("show", help="print a model's AST, IR or parameters after a compiler stage")
    _source_args(s)
    s.add_argument("--stage", default=None,
                   help="'ast', 'ir' (before any pass), or a pass name to stop after (default: all)")
    s.add_argument("--pipeline", default=None, help="passes to run, e.g. 'fold,simplify,cse,dce'")
    s.add_argument("--print-after-all", action="store_true", help="print the IR after every pass")
    s.add_argument("--time", action="store_true", help="print each pass's time and node counts")
    s.add_argument("--dot", action="store_true", help="print Graphviz DOT instead of IR text")
    s.add_argument("--params", action="store_true", help="list the parameters with shapes and counts")

    sub.add_parser("passes", help="list the passes")
    return p


def _source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="an .axon model or .axir IR text")
    p.add_argument("--model", default=None, help="the model to compile (default: the file's only one)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a hyper-parameter (an int, a float, true or false)")
    p.add_argument("--training", action="store_true", help="compile for training (dropout on)")
    p.add_argument("--loss", action="store_true",
                   help="add the train block's loss as output 'loss' (labels become inputs)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except AxonError as e:
        print(str(e), file=sys.stderr)
        return 1
    except BrokenPipeError:  # `axon show big.axon | head`
        return 0


def _load(args):
    from axon.driver import load_graph

    hparams = dict(_override(s) for s in args.set)
    return load_graph(args.file, args.model, hparams=hparams or None, training=args.training,
                      loss=args.loss)


def _check(args) -> int:
    g = _load(args)
    print(f"{args.file}: ok ({len(g)} nodes, {len(g.inputs)} inputs, {len(g.params)} params, "
          f"{len(g.outputs)} outputs)")
    return 0


def _show(args) -> int:
    from axon.driver import load_ast, optimize
    from axon.passes.manager import DEFAULT_PIPELINE

    if args.stage == "ast":
        from axon.frontend.ast import dump

        print(dump(load_ast(args.file)))
        return 0
    g = _load(args)
    if args.stage != "ir":
        g, _report = optimize(g, args.pipeline or DEFAULT_PIPELINE, verify=True, stop_after=args.stage,
                              print_after_all=args.print_after_all, timing=args.time, out=print)
    if args.params:
        print(format_params(g))
    else:
        print(to_dot(g) if args.dot else str(g))
    return 0


def _passes(args) -> int:
    from axon.passes.manager import DEFAULT_PIPELINE, registered_passes

    for name, cls in registered_passes().items():
        why = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:12s} {why}")
    print(f"\ndefault pipeline: {DEFAULT_PIPELINE}")
    return 0


def format_params(graph) -> str:
    """One line per parameter (name, type, element count, initializer), then the total."""
    rows = [(name, str(n.type), math.prod(n.shape), str(n.attrs.init)) for name, n in graph.params.items()]
    widths = [max((len(str(r[i])) for r in rows), default=0) for i in range(3)]
    lines = [f"{name:<{widths[0]}}  {t:<{widths[1]}}  {count:>{widths[2]},}  {init}"
             for name, t, count, init in rows]
    lines.append(f"{len(rows)} parameters, {sum(r[2] for r in rows):,} values")
    return "\n".join(lines)


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


def _override(text: str) -> tuple[str, object]:
    """`--set NAME=VALUE`: an int, a float, true or false (never evaluated as code)."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise AxonError(f"--set takes NAME=VALUE, got '{text}'")
    if value in ("true", "false"):
        return name, value == "true"
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    raise AxonError(f"--set {name}: '{value}' is not an int, a float, true or false")


_COMMANDS = {"check": _check, "show": _show, "passes": _passes}

if __name__ == "__main__":
    sys.exit(main())
