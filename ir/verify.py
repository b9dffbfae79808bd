"""The verifier: checks every invariant a graph must keep, and names the node that breaks one,
showing the IR text around it. Passes run it after each step in tests (`PassManager(verify=True)`).
"""
from __future__ import annotations

from .errors import AxonError, VerifyError
from .graph import Graph, Node
from .ops import OPS, OpKind
from .shapes import NAME, Sym, is_dim, symbols

K = OpKind
CONTEXT_LINES = 3  # lines of IR shown on each side of a broken node


def verify(graph: Graph) -> Graph:
    """Raise `VerifyError` if the graph is malformed; return it unchanged otherwise.

    Checks: each node defined once and after its inputs (so no cycles), attributes of the op's kind,
    arity, a result type equal to what the op's rule infers, input/parameter names unique, outputs
    defined, and symbolic dimensions introduced only by inputs.
    """
    position: dict[Node, int] = {}
    names: dict[str, Node] = {}
    for i, node in enumerate(graph.nodes):
        if node in position:
            _fail(graph, node, f"{node.op} is listed twice in the node list (at positions "
                               f"{position[node]} and {i})", index=i)
        for src in node.inputs:
            if src not in position:
                _fail(graph, node, f"an operand of {node.op} is used before it is defined (or never is)")
        _check_node(graph, node)
        if node.op in (K.INPUT, K.PARAM):
            if node.name in names:
                _fail(graph, node, f"'{node.name}' is declared twice")
            names[node.name] = node
        position[node] = i
    for k, (name, out) in enumerate(graph.outputs.items()):
        if out not in position:  # output lines follow the nodes' lines, before the closing brace
            line = len(graph.nodes) + 1 + k
            raise VerifyError(f"output '{name}' is not a node of the graph\n{excerpt(graph, out, line)}")
        if not NAME.fullmatch(name):
            raise VerifyError(f"output name {name!r} is not an identifier the text form can write")
    _check_symbols(graph)
    return graph


def _check_node(graph: Graph, node: Node) -> None:
    """The node against its op's declaration: attributes, arity and the type its rule infers."""
    if node.op not in OPS:
        _fail(graph, node, f"{node.op!r} is not an op kind")
    op = OPS[node.op]
    if not isinstance(node.attrs, op.attrs):
        _fail(graph, node, f"{node.op} carries {type(node.attrs).__name__}, not {op.attrs.__name__}")
    # arity None: variadic, and its type rule reads the first operand, so it needs one
    if (len(node.inputs) != op.arity) if op.arity is not None else not node.inputs:
        wants = "at least 1" if op.arity is None else op.arity
        _fail(graph, node, f"{node.op} has {len(node.inputs)} operands, wants {wants}")
    try:
        want = op.infer(node.attrs, [src.type for src in node.inputs])
    except AxonError as e:
        _fail(graph, node, f"{node.op} is ill-typed: {e.message}")
    except (TypeError, ValueError, IndexError, AttributeError) as e:  # attributes of the wrong kind
        _fail(graph, node, f"{node.op} has malformed attributes {node.attrs}: {e}")
    if want != node.type:
        _fail(graph, node, f"{node.op} is typed {node.type} but its operands give {want}")
    if not all(is_dim(dim) for dim in node.type.shape):
        _fail(graph, node, f"{node.op} has an invalid shape {node.type.shape} (sizes are ints >= 0 "
                           f"or symbols)")


def _check_symbols(graph: Graph) -> None:
    # An input binds a symbol where it appears alone (`batch`, `2*batch`); products such as
    # `batch*seq` are computed from symbols bound elsewhere (as evaluate.bind_symbols reads them).
    bound = {d.factors[0] for node in graph.inputs.values() for d in node.shape
             if isinstance(d, Sym) and len(d.factors) == 1}
    for node in graph.nodes:
        free = symbols(node.shape) - bound
        if free:
            _fail(graph, node, f"symbolic dimension(s) {', '.join(sorted(free))} appear in {node.type} "
                               f"but no input's shape binds them")


def _fail(graph: Graph, node: Node, message: str, index: int | None = None):
    line = None if index is None else index + 1  # line 0 is `graph NAME {`, then one line per node
    raise VerifyError(f"{message}\n{excerpt(graph, node, line)}")


def excerpt(graph: Graph, node: Node, line: int | None = None) -> str:
    """The IR text around `node` (or around `line`, if given), the marked line starting with '>'.
    Never raises: it runs on graphs broken in any way, while another error is being reported."""
    from .text import print_lines

    try:
        lines, line_of = print_lines(graph)
        at = line_of.get(node) if line is None else line
        if at is None or not 0 <= at < len(lines):
            return f"  {node!r} (not in the node list)"
        lo, hi = max(0, at - CONTEXT_LINES), min(len(lines), at + CONTEXT_LINES + 1)
        return "\n".join(("> " if i == at else "  ") + lines[i] for i in range(lo, hi))
    except Exception:  # the graph may be too broken to print; say so rather than hide the real error
        try:
            return f"  (graph cannot be printed) {node!r}"
        except Exception:
            return f"  (graph cannot be printed) {object.__repr__(node)}"
