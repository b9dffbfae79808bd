"""Reverse-mode automatic differentiation on the IR: the backward graph is a graph like any other.

>>> from axon.ir import DType, GraphBuilder
>>> b = GraphBuilder(); x = b.input("x", DType.F32, (3,)); w = b.param("w", DType.F32, (3,))
>>> _ = b.output("loss", b.sum(b.mul(b.tanh(x), w)))
>>> sorted(grad(b.build(), "loss").outputs)
['grad.w', 'loss']

Design note.

- One rule per primitive op, registered next to the op's shape rule and reference evaluation
  (`register_grad` in `ir/op_*.py`, signature in `ir/ops.py`). `grad`/`vjp` rebuild the forward graph
  into a fresh builder, seed the gradient of the loss (1) or of each output (a `dout.<name>` input),
  then sweep the nodes in reverse definition order. Definition order is topological, so when the sweep
  reaches a node every use of it has already been visited and its gradient is complete: the
  contributions it collected from all its uses are added up, its rule is called once, and what the rule
  returns for each operand is added to that operand's list. No recursion, so a 20k-node unrolled RNN is
  fine; the order is deterministic, so the same graph always yields the same backward text.
- Saved versus recomputed: nothing is saved in the autograd sense. Forward and backward are one graph,
  so a rule reads the forward values it needs directly: operands, or the result itself where that is
  cheaper (exp, sqrt, tanh, sigmoid, recip reuse `out`; max reductions compare against it). Keeping
  those values alive until the backward reads them is the memory planner's business, and fusion may
  choose to recompute cheap ones instead. Because the builder interns nodes, a backward node equal to a
  forward one (the same transpose, the same `x > 0`) is that node: CSE comes free.
- Only what matters is differentiated. A node gets a gradient only if it is floating point and lies on
  a path from a `wrt` entry; integer and bool values (indices, masks, argmax) get none, and values that
  do not reach the loss are never seeded. A rule returns a gradient for every operand it can (pow's
  exponent, a where branch); those nobody needs are dropped at the end with everything else the outputs
  do not reach. The forward part is kept exactly as it was (its dead values are dce's to remove).
- One pattern is differentiated as a whole: attention, `softmax(f(q @ k)) @ v`, gets flash attention's
  backward (`passes/attention.py`: the probabilities recomputed from the scores and a saved row
  log-sum-exp) instead of the primitive rules, which read the probabilities and so would keep an
  [.., M, N] matrix alive from the forward to the backward.
- A `wrt` entry the loss does not depend on gets zeros (a const), not an error: a frozen embedding or
  an unused head is normal in training code.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import reduce

from axon.ir import Graph, GraphBuilder, Node, OpKind, PassError
from axon.ir.errors import did_you_mean
from axon.ir.ops import OPS
from . import attention

K = OpKind
GRAD_PREFIX = "grad."  # output grad.<name>: the gradient of input or parameter <name>
DOUT_PREFIX = "dout."  # input dout.<name> (vjp): the incoming gradient of output <name>


def grad(graph: Graph, loss: str, wrt: Sequence[str] | None = None) -> Graph:
    """The forward graph plus outputs `grad.<name>`: d loss / d name, for each name in `wrt` (inputs and
    parameters; default: every floating-point parameter). `loss` names a floating-point scalar output.
    """
    node = _output(graph, loss, "loss")
    if not node.dtype.is_float:
        raise PassError(f"the loss '{loss}' is {node.type}: it must be a floating-point scalar")
    if node.shape != ():
        raise PassError(f"the loss '{loss}' is {node.type}, not a scalar",
                        hint="reduce it (sum or mean) first, or use vjp for a non-scalar output")
    targets = _targets(graph, wrt)
    b, mapping = _forward(graph)
    return _backward(graph, b, mapping, {node: b.const(1.0, node.dtype)}, targets)


def vjp(graph: Graph, wrt: Sequence[str], outputs: Sequence[str] | None = None) -> Graph:
    """The forward graph plus, for each differentiated output `y` (default: every floating-point
    output), an input `dout.y` of y's type (the gradient arriving from outside, as torch.autograd
    passes it to a Function's backward), and outputs `grad.<name>` = sum over y of dout.y * dy/dname,
    for each name in `wrt`.
    """
    if outputs is None:
        outputs = [name for name, n in graph.outputs.items() if n.dtype.is_float]
    targets = _targets(graph, wrt)
    b, mapping = _forward(graph)
    seeds: dict[Node, Node] = {}
    for name in _names(outputs, "outputs"):
        node = _output(graph, name, "output")
        if not node.dtype.is_float:
            raise PassError(f"output '{name}' is {node.type}: only floating-point outputs have gradients")
        if DOUT_PREFIX + name in graph.inputs or DOUT_PREFIX + name in graph.params:
            raise PassError(f"the graph already has a value named '{DOUT_PREFIX}{name}', which vjp "
                            f"would add as the gradient of output '{name}'")
        dout = b.input(DOUT_PREFIX + name, node.dtype, node.shape)
        seeds[node] = b.add(seeds[node], dout) if node in seeds else dout  # two names, one value
    return _backward(graph, b, mapping, seeds, targets)


def _names(names, what: str) -> list[str]:
    if isinstance(names, str):  # one name where a list was meant: not its characters
        names = [names]
    names = list(dict.fromkeys(names))
    if not all(isinstance(n, str) for n in names):
        raise PassError(f"{what} must be names (strings), got {names!r}")
    return names


def _output(graph: Graph, name: str, what: str) -> Node:
    if name not in graph.outputs:
        known = ", ".join(graph.outputs) or "none"
        raise PassError(f"no output named '{name}' to use as the {what}; the graph's outputs: {known}",
                        hint=did_you_mean(name, graph.outputs))
    return graph.outputs[name]


def _targets(graph: Graph, wrt: Sequence[str] | None) -> dict[str, Node]:
    """The inputs and parameters to differentiate with respect to, by name."""
    if wrt is None:
        names = [name for name, p in graph.params.items() if p.dtype.is_float]
        if not names:
            raise PassError("nothing to differentiate: the graph has no floating-point parameters",
                            hint="name the inputs to differentiate with respect to in `wrt`")
    else:
        names = _names(wrt, "wrt")
    targets = {}
    for name in names:
        node = graph.params.get(name) or graph.inputs.get(name)
        if node is None:
            raise PassError(f"cannot differentiate with respect to '{name}': the graph has no input or "
                            f"parameter of that name",
                            hint=did_you_mean(name, [*graph.params, *graph.inputs]))
        if not node.dtype.is_float:
            raise PassError(f"cannot differentiate with respect to '{name}': it is {node.type}, not "
                            f"floating-point")
        if GRAD_PREFIX + name in graph.outputs:
            raise PassError(f"the graph already has an output '{GRAD_PREFIX}{name}', where the gradient "
                            f"of '{name}' would go")
        targets[name] = node
    return targets


def _forward(graph: Graph) -> tuple[GraphBuilder, dict[Node, Node]]:
    """The forward graph rebuilt in a fresh builder (outputs included), and old node -> new node."""
    return GraphBuilder.extending(graph)


def _backward(graph: Graph, b: GraphBuilder, mapping: dict[Node, Node], seeds: dict[Node, Node],
              targets: dict[str, Node]) -> Graph:
    """Sweep `graph` backwards from `seeds` (old node -> its incoming gradient, a node of `b`) and add
    the outputs grad.<name> for `targets`; returns the finished graph."""
    active = set(targets.values())  # float values that depend on a target: the only ones to differentiate
    for node in graph.nodes:
        if node.dtype.is_float and any(i in active for i in node.inputs):
            active.add(node)
    pending: dict[Node, list[Node]] = {old: [g] for old, g in seeds.items() if old in active}
    done: dict[Node, Node] = {}
    patterns = _attention(graph, active, seeds)
    for node in reversed(graph.nodes):
        parts = pending.pop(node, None)
        if parts is None:
            continue
        g = reduce(b.add, parts)  # every use has been visited: the gradient is complete
        if node.op in (K.INPUT, K.PARAM):
            done[node] = g
            continue
        if node in patterns:
            for src, dg in attention.backward(b, patterns[node], mapping, g).items():
                if src in active:
                    pending.setdefault(src, []).append(dg)
            continue
        rule = OPS[node.op].grad
        if rule is None:
            raise PassError(f"op '{node.op}' has no gradient rule",
                            hint="register one with register_grad next to the op's shape rule")
        ins = [mapping[i] for i in node.inputs]
        grads = rule(b, node, ins, mapping[node], g)
        assert len(grads) == len(ins), f"the gradient rule of {node.op} returned {len(grads)} gradients"
        for src, new, dg in zip(node.inputs, ins, grads):
            if dg is None or src not in active:
                continue
            assert dg.type == new.type, f"the gradient rule of {node.op} gave {dg.type} for {new.type}"
            pending.setdefault(src, []).append(dg)
    for name, node in targets.items():
        g = done.get(node)
        b.output(GRAD_PREFIX + name, g if g is not None else b.const(0.0, node.dtype, node.shape))
    return _pruned(b, set(mapping.values()))


def _attention(graph: Graph, active: set[Node], seeds) -> dict[Node, attention.Attention]:
    """The attention patterns to differentiate as a whole (`passes/attention.py`), by their output:
    those whose inner values nothing else reads and whose side values (a mask, a scale) need no
    gradient. Others get the primitive rules."""
    users = graph.users()
    found = {}
    for node in graph.nodes:
        a = attention.match(node) if node in active else None
        if a is None or any(n in active for n in a.side) or any(n in seeds for n in a.inner):
            continue
        if all(u in a.inner or u is node for n in a.inner for u in users[n]):
            found[node] = a
    return found


def _pruned(b: GraphBuilder, forward: set[Node]) -> Graph:
    """The builder's graph without the backward nodes no output reaches (gradients of operands nobody
    needed); forward nodes and every input stay."""
    full = b.build()
    keep = set(forward)
    stack = list(full.outputs.values())
    while stack:
        n = stack.pop()
        if n not in keep:
            keep.add(n)
            stack.extend(n.inputs)
    nodes = [n for n in full.nodes if n in keep or n.op == K.INPUT]
    return Graph(nodes, full.outputs, full.name)
