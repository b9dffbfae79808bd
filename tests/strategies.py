"""Random valid graphs for property tests, and random inputs to evaluate them on.

`graphs()` builds graphs through `GraphBuilder` from a random sequence of ops across every family,
keeping only type-correct steps (a step the builder refuses with `IRTypeError` is skipped). Values stay
finite when evaluated: `log`, `sqrt`, `rsqrt` and `recip` only see `abs(x) + 1`, `exp` only `tanh(x)`,
division only by `abs(y) + 1`, so the evaluations before and after a pass can be compared.

    @given(graphs())
    def test_evaluates(g):
        inputs, params = random_inputs(g, torch.Generator().manual_seed(0))
        evaluate(g, inputs, params)

Index inputs of `gather`/`take` are named `<name>.lt<N>`: `random_inputs` draws their values in [0, N),
so they stay valid even after a pass has rewritten the graph around them.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

from axon.ir import DType, Graph, GraphBuilder, Init, IRTypeError, Node, OpKind, Sym
from axon.ir.ops import COMPARE, LOGICAL, UNARY
from axon.ir.shapes import broadcast_shapes, dim_value, numel, symbols

K = OpKind
MAX_NODES = 25         # graphs stay small, so hypothesis and evaluation stay fast
MAX_ELEMENTS = 256     # per tensor, with every symbol at its largest test size
SYMBOL_SIZES = (3, 5)  # the sizes random_inputs gives symbolic dimensions
SYMBOLS = ("batch", "seq")
INPUT_NAMES = ("x", "y", "in.z")
INPUT_DTYPES = (DType.F32, DType.F32, DType.F32, DType.F64, DType.F16, DType.I64, DType.I32, DType.BOOL)
CAST_DTYPES = (DType.F32, DType.F64, DType.F16, DType.BF16, DType.I32, DType.I64, DType.BOOL)
INDEX_NAME = re.compile(r"\.lt(\d+)$")  # `idx3.lt5`: an index input with values in [0, 5)
SAFE_UNARY = sorted(UNARY - {K.LOG, K.SQRT, K.RSQRT, K.RECIP, K.EXP, K.NOT}, key=str)
POSITIVE_ONLY = (K.LOG, K.SQRT, K.RSQRT, K.RECIP)  # fed abs(x) + 1
PLAIN_BINARY = sorted({K.ADD, K.SUB, K.MUL, K.MAXIMUM, K.MINIMUM} | COMPARE, key=str)
INITS = (Init("zeros"), Init("normal", (("std", 0.02),)), Init("uniform", (("low", -0.1), ("high", 0.1))))


class Skip(Exception):
    """A step that does not apply to the operand drawn; the generator tries another."""


@dataclass
class _State:
    draw: object
    b: GraphBuilder
    pool: list[Node] = field(default_factory=list)  # values ops may consume
    n_params: int = 0
    n_index: int = 0

    def pick(self, cond=lambda n: True) -> Node:
        """A pool value meeting `cond`; more often one nothing uses yet, so little code ends up dead."""
        choices = [n for n in self.pool if cond(n)]
        if not choices:
            raise Skip
        used = {i for n in self.b.build().nodes for i in n.inputs}
        unused = [n for n in choices if n not in used]
        if unused and self.draw(st.integers(0, 3)):
            choices = unused
        return self.draw(st.sampled_from(choices))

    def small(self, shape) -> bool:
        return _max_elements(shape) <= MAX_ELEMENTS


def _max_elements(shape) -> int:
    return dim_value(numel(shape), {s: max(SYMBOL_SIZES) for s in symbols(tuple(shape))})


def _static_axes(x: Node, min_size: int = 1) -> list[int]:
    return [i for i, d in enumerate(x.shape) if isinstance(d, int) and d >= min_size]


def _as_bool(s: _State, x: Node) -> Node:
    return x if x.dtype == DType.BOOL else s.b.gt(x, 0.0 if x.dtype.is_float else 0)


def _positive(s: _State, x: Node) -> Node:
    """abs(x) + 1: a value log, sqrt, rsqrt, recip and division take safely."""
    if x.dtype == DType.BOOL:
        x = s.b.cast(x, DType.F32)
    return s.b.add(s.b.abs(x), 1.0)


def _partner(s: _State, x: Node) -> Node | float | int:
    """A second operand that broadcasts against x: a pool value, a scalar, a bias parameter, or x."""
    kind = s.draw(st.sampled_from(("pool", "pool", "scalar", "param", "self")))
    if kind == "param" and x.shape and isinstance(x.shape[-1], int) and x.dtype.is_float:
        return _new_param(s, x.dtype, x.shape[-1:])
    if kind == "scalar":
        return s.draw(st.sampled_from((0.5, -1.5, 2.0))) if x.dtype.is_float else s.draw(
            st.sampled_from((1, 2, -3)))
    if kind == "pool":
        return s.pick(lambda n: n.dtype.is_float == x.dtype.is_float and _broadcasts(n.shape, x.shape))
    return x


def _broadcasts(a, b) -> bool:
    try:
        broadcast_shapes(a, b)
    except IRTypeError:
        return False
    return True


# --- one function per family: each returns the new node or raises Skip / IRTypeError --------------------


def _unary(s: _State) -> Node:
    x = s.pick()
    op = s.draw(st.sampled_from(SAFE_UNARY + [*POSITIVE_ONLY, K.EXP, K.NOT]))
    if op in POSITIVE_ONLY:
        x = _positive(s, x)
    elif op == K.EXP:
        x = s.b.tanh(x)
    elif op == K.NOT:
        x = _as_bool(s, x)
    return s.b.unary(op, x)


def _binary(s: _State) -> Node:
    x = s.pick()
    op = s.draw(st.sampled_from(PLAIN_BINARY + [K.DIV, K.POW, *sorted(LOGICAL, key=str)]))
    y = _partner(s, x)
    if op == K.DIV:
        y = _positive(s, s.b.lift(y, x))
    elif op == K.POW:
        x, y = _positive(s, x), s.b.tanh(s.b.lift(y, x))
    elif op in LOGICAL:
        x, y = _as_bool(s, x), _as_bool(s, s.b.lift(y, x))
    return s.b.binary(op, x, y)


def _where(s: _State) -> Node:
    cond = s.pick()
    x = s.pick(lambda n: _broadcasts(n.shape, cond.shape))
    return s.b.where(_as_bool(s, cond), x, _partner(s, x))


def _cast(s: _State) -> Node:
    return s.b.cast(s.pick(), s.draw(st.sampled_from(CAST_DTYPES)))


def _reduce(s: _State) -> Node:
    x = s.pick(lambda n: len(n.shape) >= 1)
    op = s.draw(st.sampled_from((K.SUM, K.MAX, K.MIN, K.MEAN, K.ARGMAX, K.ARGMIN)))
    if op in (K.ARGMAX, K.ARGMIN):
        axes = [s.draw(st.integers(0, len(x.shape) - 1))]
    else:
        axes = s.draw(st.sets(st.integers(0, len(x.shape) - 1), min_size=1))
    return s.b.reduce(op, x, sorted(axes), s.draw(st.booleans()))


def _new_param(s: _State, dtype: DType, shape) -> Node:
    s.n_params += 1
    init = s.draw(st.sampled_from(INITS + (Init("kaiming", (("fan_in", int(shape[0])),)),)))
    return s.b.param(f"p{s.n_params}.w", dtype if dtype.is_float else DType.F32, shape, init)


def _matmul(s: _State) -> Node:
    a = s.pick(lambda n: len(n.shape) >= 2 and n.dtype != DType.BOOL)
    k = a.shape[-1]
    fits = [n for n in s.pool if len(n.shape) >= 2 and n.shape[-2] == k and n.dtype == a.dtype]
    if fits and s.draw(st.booleans()):
        b = s.draw(st.sampled_from(fits))
    elif isinstance(k, int):
        b = _new_param(s, a.dtype, (k, s.draw(st.integers(1, 5))))
    else:
        raise Skip
    return s.b.matmul(a, b)


def _conv2d(s: _State) -> Node:
    x = s.pick(lambda n: len(n.shape) == 4 and n.dtype != DType.BOOL and len(_static_axes(n)) >= 3)
    _, c, h, w = x.shape
    if not all(isinstance(d, int) for d in (c, h, w)):
        raise Skip
    groups = s.draw(st.sampled_from([g for g in (1, 2) if c % g == 0]))
    out = groups * s.draw(st.integers(1, 2))
    padding = s.draw(st.integers(0, 1))
    dilation = s.draw(st.integers(1, 2))
    kh = s.draw(st.integers(1, max(1, (h + 2 * padding - 1) // dilation + 1)))
    kw = s.draw(st.integers(1, max(1, (w + 2 * padding - 1) // dilation + 1)))
    weight = _new_param(s, x.dtype, (out, c // groups, kh, kw))
    return s.b.conv2d(x, weight, stride=s.draw(st.integers(1, 2)), padding=padding, dilation=dilation,
                      groups=groups)


def _reshape(s: _State) -> Node:
    x = s.pick(lambda n: len(n.shape) >= 1)
    shape = list(x.shape)
    how = s.draw(st.sampled_from(("flatten", "merge", "split", "unsqueeze", "squeeze")))
    if how == "flatten":
        shape = [numel(shape)]
    elif how == "merge" and len(shape) >= 2:
        i = s.draw(st.integers(0, len(shape) - 2))
        shape[i:i + 2] = [numel(shape[i:i + 2])]
    elif how == "split":
        i = s.draw(st.sampled_from(_static_axes(x) or [None]))
        if i is None:
            raise Skip
        divisors = [f for f in range(1, shape[i] + 1) if shape[i] % f == 0]
        f = s.draw(st.sampled_from(divisors))
        shape[i:i + 1] = [f, shape[i] // f]
    elif how == "unsqueeze":
        shape.insert(s.draw(st.integers(0, len(shape))), 1)
    elif 1 in shape:
        shape.remove(1)
    else:
        raise Skip
    return s.b.reshape(x, shape)


def _permute(s: _State) -> Node:
    x = s.pick(lambda n: len(n.shape) >= 2)
    return s.b.permute(x, s.draw(st.permutations(range(len(x.shape)))))


def _expand(s: _State) -> Node:
    x = s.pick()
    bound = [Sym.of(f) for f in sorted(_bound_symbols(s))]
    sizes = st.sampled_from([2, 3, 4, *bound])
    shape = [s.draw(sizes) if d == 1 and s.draw(st.booleans()) else d for d in x.shape]
    lead = s.draw(st.lists(sizes, max_size=2 if len(shape) < 3 else 0))
    shape = lead + shape
    if not s.small(shape):
        raise Skip
    return s.b.expand(x, shape)


def _bound_symbols(s: _State) -> set[str]:
    return {d.factors[0] for n in s.pool if n.op == K.INPUT for d in n.shape
            if isinstance(d, Sym) and len(d.factors) == 1}


def _slice(s: _State) -> Node:
    x = s.pick(lambda n: bool(_static_axes(n, 2)))
    axis = s.draw(st.sampled_from(_static_axes(x, 2)))
    size = x.shape[axis]
    start = s.draw(st.integers(0, size - 1))
    stop = s.draw(st.integers(start + 1, size))
    return s.b.slice(x, axis, start, stop, s.draw(st.integers(1, 2)))


def _pad(s: _State) -> Node:
    x = s.pick(lambda n: bool(_static_axes(n)))
    amount = st.tuples(st.integers(0, 2), st.integers(0, 2))
    pads = [s.draw(amount) if isinstance(d, int) else (0, 0) for d in x.shape]
    value = s.draw(st.sampled_from((0.0, 1.0, -2.5))) if x.dtype.is_float else 0.0
    if not s.small([d + lo + hi if isinstance(d, int) else d for d, (lo, hi) in zip(x.shape, pads)]):
        raise Skip
    return s.b.pad(x, pads, value)


def _concat(s: _State) -> Node:
    x = s.pick(lambda n: len(n.shape) >= 1)
    same = [n for n in s.pool if n.type == x.type]
    parts = [x] + s.draw(st.lists(st.sampled_from(same), min_size=1, max_size=2))
    axis = s.draw(st.integers(0, len(x.shape) - 1))
    shape = list(x.shape)
    shape[axis] = numel([len(parts), shape[axis]])
    if not s.small(shape):
        raise Skip
    return s.b.concat(parts, axis)


def _index_input(s: _State, shape, bound: int) -> Node:
    s.n_index += 1
    dtype = s.draw(st.sampled_from((DType.I64, DType.I32)))
    return s.b.input(f"idx{s.n_index}.lt{bound}", dtype, shape)


def _gather(s: _State) -> Node:
    x = s.pick(lambda n: bool(_static_axes(n)))
    axis = s.draw(st.sampled_from(_static_axes(x)))
    shape = list(x.shape)
    shape[axis] = s.draw(st.integers(1, 4))
    return s.b.gather(x, axis, _index_input(s, shape, x.shape[axis]))


def _take(s: _State) -> Node:
    x = s.pick(lambda n: bool(_static_axes(n)))
    axis = s.draw(st.sampled_from(_static_axes(x)))
    index_shape = s.draw(st.lists(st.integers(1, 3), max_size=2))
    if not s.small(x.shape[:axis] + tuple(index_shape) + x.shape[axis + 1:]):
        raise Skip
    return s.b.take(x, _index_input(s, index_shape, x.shape[axis]), axis)


def _iota(s: _State) -> Node:
    shape = s.pick(lambda n: len(n.shape) >= 1).shape
    dtype = s.draw(st.sampled_from((DType.I64, DType.I32, DType.F32)))
    return s.b.iota(shape, s.draw(st.integers(0, len(shape) - 1)), dtype)


def _rand(s: _State) -> Node:
    seed = s.b.lookup("seed") or s.b.input("seed", DType.I64, ())
    shape = s.pick().shape
    dtype = s.draw(st.sampled_from((DType.F32, DType.F32, DType.F64)))
    return s.b.rand(seed, shape, dtype, stream=s.draw(st.integers(0, 3)))


def _const(s: _State) -> Node:
    dtype = s.draw(st.sampled_from((DType.F32, DType.F64, DType.I64, DType.BOOL)))
    value = {DType.BOOL: True, DType.I64: s.draw(st.integers(-3, 3))}.get(
        dtype, s.draw(st.sampled_from((0.0, 0.5, -1.25, 3.0, 1e-3))))
    shape = s.pick().shape if s.draw(st.booleans()) else ()
    return s.b.const(value, dtype, shape)


def _tensor(s: _State) -> Node:
    shape = s.draw(st.lists(st.integers(1, 3), max_size=2))
    n = math.prod(shape)
    dtype = s.draw(st.sampled_from((DType.F32, DType.I32, DType.BOOL)))
    element = {DType.F32: st.floats(-4, 4, width=32), DType.I32: st.integers(-5, 5),
               DType.BOOL: st.booleans()}[dtype]
    return s.b.tensor(s.draw(st.lists(element, min_size=n, max_size=n)), dtype, shape)


FAMILIES = (_unary, _unary, _binary, _binary, _binary, _where, _cast, _reduce, _reduce, _matmul,
            _conv2d, _reshape, _permute, _expand, _slice, _pad, _concat, _gather, _take, _iota, _rand,
            _const, _tensor)
SOURCES = (K.INPUT, K.PARAM)


def _input_shape(draw) -> tuple:
    rank = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank))
    if rank and draw(st.booleans()):
        shape[0] = Sym.of(draw(st.sampled_from(SYMBOLS)))
    while _max_elements(shape) > MAX_ELEMENTS:
        shape = shape[1:]
    return tuple(shape)


@st.composite
def graphs(draw, max_steps: int = 14) -> Graph:
    """A random valid graph: 1-3 data inputs, then up to `max_steps` ops, then 1-3 outputs."""
    b = GraphBuilder(draw(st.sampled_from(("main", "g", "model.block0"))))
    s = _State(draw, b)
    for name in INPUT_NAMES[:draw(st.integers(1, 3))]:
        s.pool.append(b.input(name, draw(st.sampled_from(INPUT_DTYPES)), _input_shape(draw)))
    steps = draw(st.integers(1, max_steps))
    for _ in range(3 * steps):
        if steps == 0 or len(b) >= MAX_NODES:
            break
        try:
            node = draw(st.sampled_from(FAMILIES))(s)
        except (Skip, IRTypeError):
            continue
        if not s.small(node.shape):
            continue
        if node not in s.pool:
            s.pool.append(node)
        steps -= 1
    # Outputs: the last value, and up to two values nothing else uses (so little code is dead).
    computed = [n for n in s.pool if n.op not in SOURCES] or s.pool
    used = {i for n in b.build().nodes for i in n.inputs}
    sinks = [n for n in computed if n not in used and n is not computed[-1]]
    outs = [computed[-1]]
    if sinks:
        outs += draw(st.lists(st.sampled_from(sinks), max_size=2, unique=True))
    for i, node in enumerate(outs):
        b.output("out" if i == 0 else f"out{i}", node)
    return b.build()


# --- inputs -------------------------------------------------------------------------------------------


def index_bound(graph: Graph, node: Node, env: dict[str, int]) -> int | None:
    """The exclusive upper bound of an integer input's values, if it indexes a gather or take."""
    bounds = []
    m = INDEX_NAME.search(node.name)
    if m:
        bounds.append(int(m.group(1)))
    for user in graph.users()[node]:
        if user.op in (K.GATHER, K.TAKE) and user.inputs[1] is node:
            bounds.append(dim_value(user.inputs[0].shape[user.attrs.axis], env))
    return min(bounds) if bounds else None


def random_inputs(graph: Graph, gen: torch.Generator,
                  sizes: dict[str, int] | None = None) -> tuple[dict, dict]:
    """Inputs and parameters for `evaluate(graph, inputs, params)`, drawn from `gen`.

    Symbolic dimensions take `sizes[name]` or one of SYMBOL_SIZES; index inputs of gather/take stay in
    range; i64 scalar seeds of `rand` are large; other integers are small; floats are standard normal
    (parameters scaled by 0.5).
    """
    env = dict(sizes or {})
    for node in graph.inputs.values():
        for name in sorted(symbols(node.shape)):
            if name not in env:
                env[name] = SYMBOL_SIZES[int(torch.randint(len(SYMBOL_SIZES), (1,), generator=gen))]
    seeds = {n.inputs[0] for n in graph.nodes if n.op == K.RAND}
    inputs = {}
    for name, node in graph.inputs.items():
        bound = index_bound(graph, node, env) if node.dtype.is_int else None
        inputs[name] = _tensor_for(node, env, gen, 1.0, bound, node in seeds)
    params = {name: _tensor_for(node, env, gen, 0.5) for name, node in graph.params.items()}
    return inputs, params


def _tensor_for(node: Node, env, gen, scale: float, bound: int | None = None,
                seed: bool = False) -> torch.Tensor:
    shape = tuple(dim_value(d, env) for d in node.shape)
    dtype = node.dtype
    if dtype.is_float:
        return (torch.randn(shape, generator=gen) * scale).to(dtype.torch)
    if dtype == DType.BOOL:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if seed:
        low, high = 0, 2**40
    elif bound is not None:
        low, high = 0, max(bound, 1)
    else:
        low, high = (0, 10) if dtype == DType.U8 else (-4, 5)
    return torch.randint(low, high, shape, generator=gen, dtype=torch.int64).to(dtype.torch)
