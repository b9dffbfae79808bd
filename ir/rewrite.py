"""Rebuilding graphs: the one mechanism every pass uses.

`rebuild` copies a graph node by node into a fresh builder, letting a visitor replace nodes as it goes;
the builder re-infers types and interns, so a rebuilt graph is verified-by-construction and CSE'd.
`apply_rules` runs a table of local rewrite rules bottom-up to a fixed point.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from .graph import Graph, GraphBuilder, Node
from .ops import OpKind

Visit = Callable[[GraphBuilder, Node, tuple[Node, ...]], "Node | None"]
Rule = Callable[[GraphBuilder, Node], "Node | None"]
MAX_RULE_STEPS = 64  # rewrites of one node before we call the rule set non-terminating


def rebuild(graph: Graph, visit: Visit | None = None,
            keep: Iterable[Node] | None = None) -> tuple[Graph, dict[Node, Node]]:
    """Copy `graph` (only the nodes in `keep`, if given), mapping each old node to its new one.

    `visit(builder, old_node, new_inputs)` returns a replacement built in `builder`, or None to copy the
    node as it is. A replacement must have the old node's type. Nodes the rewrite leaves unused are
    dropped; values that were already dead are kept (with what they use) for dce to remove and report.
    """
    b = GraphBuilder(graph.name)
    keep_set = None if keep is None else set(keep)
    mapping: dict[Node, Node] = {}
    for node in graph.nodes:
        if keep_set is not None and node not in keep_set:
            continue
        new_inputs = tuple(mapping[i] for i in node.inputs)
        new = visit(b, node, new_inputs) if visit else None
        if new is None:
            new = b.node(node.op, new_inputs, node.attrs)
        assert new.type == node.type, f"rewrite of {node!r} changed its type to {new.type}"
        mapping[node] = new
    outputs = {name: mapping[out] for name, out in graph.outputs.items()}
    # Drop what the rewrite orphaned (an `x * 1` that became `x`, a folded node's literal operands);
    # values that were already dead stay, so removing them is dce's decision and dce's report.
    old_live = reachable(graph)
    used = {i for n in graph.nodes for i in n.inputs}
    dead_ends = [mapping[n] for n in graph.nodes if n in mapping and n not in old_live and n not in used]
    live = cone(list(outputs.values()) + dead_ends)
    nodes = [n for n in b.build().nodes if n in live or n.op in (OpKind.INPUT, OpKind.PARAM)]
    return Graph(nodes, outputs, graph.name), mapping


def apply_rules(graph: Graph, rules: Sequence[Rule]) -> tuple[Graph, int]:
    """Rewrite bottom-up: each node is rebuilt on rewritten operands, then every rule is tried on it
    until none fires. Returns the new graph and the number of rewrites made."""
    count = 0

    def visit(b: GraphBuilder, old: Node, inputs: tuple[Node, ...]) -> Node:
        nonlocal count
        node = b.node(old.op, inputs, old.attrs)
        for _ in range(MAX_RULE_STEPS):
            for rule in rules:
                new = rule(b, node)
                if new is not None and new is not node:
                    # getattr: a rule may be any callable (a rule object has no __name__)
                    assert new.type == node.type, \
                        f"rule {getattr(rule, '__name__', rule)!r} changed {node!r} to {new!r}"
                    node = new
                    count += 1
                    break
            else:
                return node
        raise AssertionError(f"rewrite rules did not reach a fixed point on {old!r}")

    new, _ = rebuild(graph, visit)
    return new, count


def reachable(graph: Graph) -> set[Node]:
    """The nodes the outputs depend on (iteratively, no recursion), plus every input."""
    return cone(graph.outputs.values()) | {n for n in graph.nodes if n.op == OpKind.INPUT}


def cone(roots: Iterable[Node]) -> set[Node]:
    """`roots` and everything they depend on (iteratively: deep graphs are fine)."""
    seen: set[Node] = set()
    stack = list(roots)
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(n.inputs)
    return seen
