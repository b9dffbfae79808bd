"""Split a differentiated graph into a forward graph and a backward graph, choosing what crosses over.

`vjp` gives one joint graph: the forward, then the backward reading forward values wherever its rules
want them. To run the two halves at different times (a `torch.autograd.Function`'s forward and
backward), the forward must hand the backward every value it reads. `partition` decides which:

    forward    the model's inputs -> its outputs, plus outputs `saved.<k>` (the values handed over)
    backward   `saved.<k>`, `dout.<output>` and the inputs/parameters it reads directly
               -> `grad.<name>` for every differentiated input or parameter

>>> from axon.ir import DType, GraphBuilder, Sym
>>> b = GraphBuilder(); x = b.input("x", DType.F32, (Sym.of("batch"), 5))
>>> w = b.param("w", DType.F32, (5, 7)); bias = b.param("b", DType.F32, (7,))
>>> _ = b.output("y", b.relu(b.add(b.matmul(x, w), bias)))
>>> p = partition(b.build(), ["x", "w", "b"])
>>> [str(t) for t in p.saved_types], p.kept
(['bool[batch, 7]'], ('x', 'w'))

Design note.

- What the backward needs is fixed by the joint graph: every forward value (one that does not depend
  on a `dout`) read by a backward node. Each such value is either *saved* (the forward outputs it) or
  *recomputed* by the backward from its own operands, which are saved or recomputed in turn. The
  choice is a minimum cut, as in functorch's rematerializing partitioner: each forward value is an edge
  whose capacity is its size in bytes; inputs, parameters and the ops too costly to run twice are tied
  to the source, the values the backward reads to the sink; the cheapest cut is the cheapest set of
  values to save. So `relu(x @ w + b)` saves a bool mask (1 byte an element) rather than the f32
  product, and a chain `sigmoid(tanh(2 * exp(x)))` saves one tensor, not four.
- Recomputable: elementwise, movement and literal ops (`RECOMPUTABLE`). Never recomputed: matmul,
  conv2d, reductions, gather/take, rand (costly, or random), and inputs/parameters (they are handed to
  the backward as they are). Parameters cost nothing to keep (the model holds them anyway).
- Attention's scores (q @ k and the scale and mask on them) are never saved when the gradient is in
  flash attention's form (`passes/attention.py`): the backward recomputes them block by block in one
  kernel, so the forward hands over q, k, v, the output and one log-sum-exp per row, not [.., M, N].
- Ties between values of one size go to an input (saving it allocates nothing), then to the later
  value (less to recompute): costs are bytes scaled by `TIE`, minus a small bonus.
- Bounded: every `MAX_RECOMPUTE_DEPTH`-th elementwise value down a chain of cheap ops is a checkpoint
  the backward may not recompute, so no recomputation runs longer than that past what was stored (a
  40-op elementwise chain saves about one value in eight, not one and not forty).
- Deterministic: the flow network is built in graph order, and every set is read back in graph order.
- A gradient that is identically zero (the differentiated outputs do not depend on that input) gets no
  output; `zero_grads` names it, and the caller supplies zeros or None.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import networkx as nx

from axon.ir import Graph, GraphBuilder, Node, OpKind, PassError, TensorType
from axon.ir.ops import ELEMENTWISE, MOVEMENT
from axon.ir.rewrite import cone
from axon.ir.shapes import Sym, dim_value, format_dim, numel, symbols

from . import attention
from .autodiff import DOUT_PREFIX, GRAD_PREFIX, vjp
from .manager import DEFAULT_PIPELINE, PassManager

K = OpKind
SAVED_PREFIX = "saved."    # output saved.<k> of the forward = input saved.<k> of the backward
RECOMPUTABLE = ELEMENTWISE | MOVEMENT | {K.CONST, K.TENSOR, K.IOTA}
LITERALS = frozenset({K.CONST, K.TENSOR, K.IOTA})  # free to make: no link of a recompute chain
MAX_RECOMPUTE_DEPTH = 8    # a chain of cheap ops gets a value never recomputed (a checkpoint) this often
NOMINAL_DIM = 256          # the size assumed for a symbolic dimension when weighing what to save
TIE = 1 << 16              # bytes are scaled by this; the depth below it breaks ties (later wins)


@dataclass(frozen=True)
class Partition:
    """The two graphs and what crosses between them.

    saved       names of the forward's extra outputs (= the backward's inputs) `saved.<k>`
    kept        inputs and parameters of the model the backward reads directly
    outputs     the differentiated outputs (each a `dout.<name>` input of the backward)
    wrt         the differentiated inputs and parameters
    zero_grads  those of `wrt` whose gradient is identically zero (no `grad.<name>` output)
    recomputed  forward values the backward computes again instead of saving, as `op: type`
    """

    forward: Graph
    backward: Graph
    saved: tuple[str, ...]
    kept: tuple[str, ...]
    outputs: tuple[str, ...]
    wrt: tuple[str, ...]
    zero_grads: tuple[str, ...]
    recomputed: tuple[str, ...]

    @property
    def saved_types(self) -> list[TensorType]:
        return [self.backward.inputs[name].type for name in self.saved]

    def saved_elements(self, env: Mapping[str, int] | None = None) -> int | str:
        """Elements of the saved tensors (not counting `kept`): a number for `env`, else a formula."""
        shapes = [t.shape for t in self.saved_types]
        if env is not None:
            return sum(_numel(s, env) for s in shapes)
        return " + ".join(_format_numel(s) for s in shapes) or "0"

    def saved_bytes(self, env: Mapping[str, int]) -> int:
        return sum(_numel(t.shape, env) * t.dtype.itemsize for t in self.saved_types)

    def summary(self) -> str:
        """One line each: saved, kept, recomputed, zero gradients."""
        saved = ", ".join(f"{n}: {t}" for n, t in zip(self.saved, self.saved_types)) or "nothing"
        lines = [f"saved {len(self.saved)} tensor(s): {saved} ({self.saved_elements()} elements)",
                 f"kept {len(self.kept)} input(s)/parameter(s): {', '.join(self.kept) or 'none'}",
                 f"recomputed {len(self.recomputed)} value(s): {', '.join(self.recomputed) or 'none'}"]
        if self.zero_grads:
            lines.append(f"zero gradients: {', '.join(self.zero_grads)}")
        return "\n".join(lines)


def partition(graph: Graph, wrt: Sequence[str], outputs: Sequence[str] | None = None, *,
              env: Mapping[str, int] | None = None, max_depth: int = MAX_RECOMPUTE_DEPTH,
              pipeline: str = DEFAULT_PIPELINE) -> Partition:
    """Forward and backward graphs for the gradients of `outputs` (default: every floating-point
    output) with respect to `wrt` (names of inputs and parameters). `env` gives symbol sizes to weigh
    what to save (default `NOMINAL_DIM` each); `pipeline` cleans up the joint graph and both halves."""
    clash = [n for n in [*graph.inputs, *graph.outputs] if n.startswith(SAVED_PREFIX)]
    if clash:
        raise PassError(f"'{clash[0]}' is a name the partition gives the values it saves; rename it")
    joint = PassManager(pipeline, verify=True).run(vjp(graph, wrt, outputs))
    wrt = tuple(dict.fromkeys([wrt] if isinstance(wrt, str) else wrt))
    diff = tuple(n[len(DOUT_PREFIX):] for n in joint.inputs if n.startswith(DOUT_PREFIX)
                 and n not in graph.inputs)
    tangent = _tangent(joint, {joint.inputs[DOUT_PREFIX + o] for o in diff})
    grads = {name: joint.outputs[GRAD_PREFIX + name] for name in wrt}
    zero = tuple(name for name, g in grads.items() if _is_zero(g) and g not in tangent)
    needs = _needs(joint, tangent, [g for name, g in grads.items() if name not in zero])
    stored, recomputed = choose(joint, list(graph.outputs), tangent, needs, env, max_depth)

    saved = [n for n in stored if n.op not in (K.INPUT, K.PARAM)]
    fwd_outputs = {name: joint.outputs[name] for name in graph.outputs}
    fwd_outputs.update({f"{SAVED_PREFIX}{k}": n for k, n in enumerate(saved)})
    forward = Graph([n for n in joint.nodes if n not in tangent], fwd_outputs, graph.name)
    backward = _backward(joint, graph, stored, saved, tangent | set(recomputed),
                         {name: g for name, g in grads.items() if name not in zero})
    forward = PassManager(pipeline, verify=True).run(forward)
    backward = PassManager(pipeline, verify=True).run(backward)
    kept = tuple(n for n in [*backward.inputs, *backward.params]
                 if not n.startswith((SAVED_PREFIX, DOUT_PREFIX)))
    again = _forward_cone(joint, graph.outputs)
    return Partition(forward, backward, tuple(f"{SAVED_PREFIX}{k}" for k in range(len(saved))), kept,
                     diff, wrt, zero, tuple(f"{n.op}: {n.type}" for n in recomputed
                           if n in again and n.op not in LITERALS))


def choose(joint: Graph, outputs: Sequence[str], tangent: set[Node], needs: list[Node],
           env: Mapping[str, int] | None,
           max_depth: int = MAX_RECOMPUTE_DEPTH) -> tuple[list[Node], list[Node]]:
    """(stored, recomputed): the forward values the backward reads, split into those the forward hands
    over (inputs and parameters among them) and those the backward computes again; both in graph order."""
    order = joint.index()
    forward = [n for n in joint.nodes if n not in tangent]
    reached = _forward_cone(joint, outputs)
    banned = {n for n in forward if n.op not in RECOMPUTABLE} | _checkpoints(forward, reached, max_depth)
    scores = _attention_scores(joint)
    banned -= scores
    side = _min_cut(forward, needs, banned, env, order, scores)
    return _walk(needs, side, banned, order)


def _attention_scores(joint: Graph) -> set[Node]:
    """The scores (q @ k and f's ops on them) of each attention whose gradient is in the flash form
    (`passes/attention.py`): never saved, always recomputed, so the backward half holds the whole
    pattern that one attention backward kernel computes (saving them would keep an [.., M, N] matrix
    from the forward to the backward, the very thing that kernel avoids)."""
    users, outputs = joint.users(), set(joint.outputs.values())
    out: set[Node] = set()
    for n in joint.nodes:
        if attention.head_of(n):
            back = attention.find_backward(n, users, outputs)
            if isinstance(back, attention.Backward):
                out |= back.recomputed
    return out


# ---------------------------------------------------------------------------------------------------
# What the backward reads


def _tangent(joint: Graph, douts: set[Node]) -> set[Node]:
    """The nodes that depend on a `dout` input: the backward proper."""
    out = set(douts)
    for n in joint.nodes:
        if any(i in out for i in n.inputs):
            out.add(n)
    return out


def _is_zero(g: Node) -> bool:
    return g.op == K.CONST and g.attrs.value == 0


def _needs(joint: Graph, tangent: set[Node], grads: list[Node]) -> list[Node]:
    """Forward values read by backward nodes, and gradients that are forward values: graph order."""
    need = {i for n in joint.nodes if n in tangent for i in n.inputs if i not in tangent}
    need |= {g for g in grads if g not in tangent}
    return [n for n in joint.nodes if n in need]


def _forward_cone(joint: Graph, outputs) -> set[Node]:
    """What the model's own outputs reach: values the forward computes whatever is saved."""
    return cone(joint.outputs[name] for name in outputs)


# ---------------------------------------------------------------------------------------------------
# The cut


def _min_cut(forward: list[Node], needs: list[Node], banned: set[Node], env, order,
             never: set[Node] = frozenset()) -> set[Node]:
    """The values whose `in` end is on the source side of a minimum cut: those the backward needs are
    saved, not recomputed. Values in `never` cannot be cut (saved)."""
    if not needs:
        return set()
    within = cone(needs)
    bonus = _tie_bonus([n for n in forward if n in within])
    g = nx.DiGraph()
    g.add_node("source")
    for n in sorted(within, key=order.__getitem__):
        i = order[n]
        if n in never:
            g.add_edge((i, "in"), (i, "out"))  # no capacity: infinite
        else:
            g.add_edge((i, "in"), (i, "out"), capacity=_cost(n, env, bonus[n]))
        if n in banned:
            g.add_edge("source", (i, "in"))  # no capacity: infinite
        for src in n.inputs:
            g.add_edge((order[src], "out"), (i, "in"))
    for n in needs:
        g.add_edge((order[n], "out"), "sink")
    _, (source_side, _) = nx.minimum_cut(g, "source", "sink")
    return {n for n in within if (order[n], "in") in source_side}


def _walk(needs: list[Node], side: set[Node], banned: set[Node], order) -> tuple[list[Node], list[Node]]:
    """From what the backward reads, back through the values it recomputes, to what is stored."""
    stored, again = set(), set()
    stack = list(needs)
    while stack:
        n = stack.pop()
        if n in stored or n in again:
            continue
        if n in side or n in banned:
            stored.add(n)
        else:
            again.add(n)
            stack.extend(n.inputs)
    return sorted(stored, key=order.__getitem__), sorted(again, key=order.__getitem__)


def _checkpoints(forward: list[Node], cone: set[Node], max_depth: int) -> set[Node]:
    """Every `max_depth`-th elementwise value down a chain of recomputable ops, among the values the
    model's outputs need: the backward may not recompute them, so no recomputation runs longer than
    that past what was stored (plus the few ops a gradient rule hangs off a value, such as 1 - y*y).
    Movement ops do not count: they are views or copies, never worth saving on their own."""
    depth: dict[Node, int] = {}
    marks = set()
    for n in forward:
        if n.op not in RECOMPUTABLE:
            depth[n] = 0
            continue
        depth[n] = max((depth[i] for i in n.inputs), default=0) + (n.op in ELEMENTWISE)
        if depth[n] >= max_depth and n in cone:
            marks.add(n)
            depth[n] = 0  # stored if needed: the chain starts again after it
    return marks


def _tie_bonus(nodes: list[Node]) -> dict[Node, int]:
    """Among values of one size, which to prefer saving: the one further down its chain of elementwise
    ops (less to recompute), and a value over a movement of it (saving a transpose costs a copy)."""
    depth: dict[Node, int] = {}
    bonus: dict[Node, int] = {}
    for n in nodes:
        below = max((depth[i] for i in n.inputs), default=0)
        depth[n] = below + 1 if n.op in ELEMENTWISE else below if n.op in MOVEMENT else 0
        bonus[n] = min(2 * depth[n] - (n.op in MOVEMENT), TIE // 2)
    return bonus


def _cost(n: Node, env, bonus: int) -> int:
    """The capacity of a value's edge: its bytes, scaled, less a tie-breaking bonus (inputs first:
    saving one allocates nothing)."""
    if n.op == K.PARAM:
        return 0  # the model holds its parameters anyway
    bonus = TIE - 1 if n.op == K.INPUT else bonus
    return max(_numel(n.shape, env, NOMINAL_DIM) * n.dtype.itemsize * TIE - bonus, 0)


# ---------------------------------------------------------------------------------------------------
# The backward graph


def _backward(joint: Graph, graph: Graph, stored: list[Node], saved: list[Node], computed: set[Node],
              grads: dict[str, Node]) -> Graph:
    """Inputs saved.<k> (and the stored inputs/parameters by name), then the backward's nodes in joint
    order, then outputs grad.<name>."""
    b = GraphBuilder(f"{graph.name}.backward")
    mapping: dict[Node, Node] = {}
    for k, n in enumerate(saved):
        mapping[n] = b.input(f"{SAVED_PREFIX}{k}", n.dtype, n.shape)
    for n in stored:
        if n.op in (K.INPUT, K.PARAM):
            mapping[n] = b.node(n.op, (), n.attrs)
    for n in joint.nodes:
        if n in computed and n not in mapping:
            mapping[n] = b.node(n.op, [mapping[i] for i in n.inputs], n.attrs)
    _bind_symbols(b, graph)
    for name, g in grads.items():
        b.output(GRAD_PREFIX + name, mapping[g])
    return b.build()


def _bind_symbols(b: GraphBuilder, graph: Graph) -> None:
    """Symbols the backward's values use must be bound by its inputs' shapes: where one is not, the
    model's input that binds it joins the backward's inputs (its shape is all that is read)."""
    nodes = b.build().nodes
    used = set().union(*(symbols(n.shape) for n in nodes)) if nodes else set()
    missing = used - _bound(n for n in nodes if n.op == K.INPUT)
    for node in graph.inputs.values():
        if missing & _bound([node]) and b.lookup(node.name) is None:
            b.node(K.INPUT, (), node.attrs)
            missing -= _bound([node])


def _bound(inputs) -> set[str]:
    return {d.factors[0] for n in inputs for d in n.shape if isinstance(d, Sym) and len(d.factors) == 1}


def _numel(shape, env, default: int | None = None) -> int:
    """Elements of `shape` for `env`; symbols `env` lacks count as `default` (None: an error)."""
    out = 1
    for d in shape:
        if isinstance(d, Sym) and default is not None and not all(f in (env or {}) for f in d.factors):
            d = d.coeff * default ** len(d.factors)
        out *= dim_value(d, env or {})
    return out


def _format_numel(shape) -> str:
    return format_dim(numel(shape))
