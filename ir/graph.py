"""Nodes, graphs and the builder that makes them.

A `Node` is immutable: op kind, input nodes, typed attributes and result type. Nodes are made only
through a `GraphBuilder`, which infers the result type (so a badly typed node never exists) and interns
structurally equal nodes (so common-subexpression elimination is free). A `Graph` is the builder's
nodes in definition order, with named inputs, parameters and outputs.

>>> b = GraphBuilder()
>>> x = b.input("x", DType.F32, (Sym.of("batch"), 3))
>>> y = b.add(b.relu(x), 1.0)
>>> b.add(b.relu(x), 1.0) is y
True
>>> b.output("y", y); print(b.build().nodes[-1].type)
f32[batch, 3]
"""
from __future__ import annotations

import functools
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .dtypes import DType, code_range, default_float, promote
from .errors import IRDTypeError, IRShapeError, IRTypeError
from .ops import (FLOAT_OPERANDS, AxisAttrs, Attrs, BlockAttrs, CastAttrs, ConstAttrs, Conv2dAttrs,
                  DequantizeAttrs,
                  ExpandAttrs, FakeQuantizeAttrs, Init, InputAttrs, check_reduce_dtype, IotaAttrs, NoAttrs,
                  OpKind, OPS, PadAttrs, ParamAttrs, PermuteAttrs, QuantizeAttrs, RandAttrs, ReduceAttrs,
                  ReshapeAttrs, SliceAttrs, TensorAttrs, UnpackAttrs)
from .shapes import (NAME, Dim, Shape, Sym, TensorType, format_shape, normalize_axes, normalize_axis,
                     numel)

K = OpKind


@dataclass(frozen=True, eq=False, slots=True)
class Node:
    """One value of the graph. Identity is equality: the builder interns equal nodes."""

    op: OpKind
    inputs: tuple[Node, ...]
    attrs: Attrs
    type: TensorType

    @property
    def dtype(self) -> DType:
        return self.type.dtype

    @property
    def shape(self) -> Shape:
        return self.type.shape

    @property
    def name(self) -> str | None:
        """The name of an input or parameter; None for computed values."""
        return getattr(self.attrs, "name", None) if self.op in (K.INPUT, K.PARAM) else None

    def __repr__(self) -> str:
        label = f" {self.name}" if self.name else ""
        return f"<{self.op}{label}: {self.type}>"


class Graph:
    """Nodes in definition order (each after its inputs), plus named inputs, parameters and outputs."""

    def __init__(self, nodes: Sequence[Node], outputs: dict[str, Node], name: str = "main"):
        self.name = name
        self.nodes: tuple[Node, ...] = tuple(nodes)
        self.inputs: dict[str, Node] = {n.name: n for n in self.nodes if n.op == K.INPUT}
        self.params: dict[str, Node] = {n.name: n for n in self.nodes if n.op == K.PARAM}
        self.outputs: dict[str, Node] = dict(outputs)

    def __len__(self) -> int:
        return len(self.nodes)

    def users(self) -> dict[Node, list[Node]]:
        out: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n)
        return out

    def index(self) -> dict[Node, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    def to_networkx(self):
        """A `networkx.DiGraph` over node positions, for graph algorithms and DOT export."""
        import networkx as nx

        g = nx.DiGraph()
        pos = self.index()
        for i, n in enumerate(self.nodes):
            g.add_node(i, op=n.op.value, type=str(n.type), label=n.name or f"%{i} {n.op}")
            for src in n.inputs:
                g.add_edge(pos[src], i)
        return g

    def __str__(self) -> str:
        from .text import print_graph

        return print_graph(self)


class GraphBuilder:
    """Makes typed, interned nodes and collects them into a `Graph`."""

    def __init__(self, name: str = "main"):
        self.name = name
        self._nodes: list[Node] = []
        self._interned: dict[tuple, Node] = {}
        self._members: set[int] = set()
        self._names: dict[str, Node] = {}
        self._outputs: dict[str, Node] = {}

    # --- the one way to make a node ---------------------------------------------------------------
    def node(self, op: OpKind, inputs: Sequence[Node] = (), attrs: Attrs | None = None) -> Node:
        d = OPS[op]
        attrs = NoAttrs() if attrs is None else attrs
        inputs = tuple(inputs)
        assert isinstance(attrs, d.attrs), f"{op} takes {d.attrs.__name__}, got {type(attrs).__name__}"
        for i in inputs:
            if not isinstance(i, Node):
                raise IRTypeError(f"an operand of '{op}' must be a tensor, got {type(i).__name__} {i!r}")
            if id(i) not in self._members:
                raise IRTypeError(f"an operand of '{op}' belongs to another graph")
        if d.arity is None and not inputs:
            raise IRTypeError(f"'{op}' needs at least one operand")
        if d.arity is not None and len(inputs) != d.arity:
            raise IRTypeError(f"'{op}' takes {d.arity} operand(s), got {len(inputs)}")
        if op in (K.INPUT, K.PARAM):  # before interning: a second declaration is an error, not a hit
            _check_name(attrs.name, str(op))
            if attrs.name in self._names:
                raise IRTypeError(f"'{attrs.name}' is declared twice")
        key = (op, tuple(id(i) for i in inputs), _intern_key(attrs))
        found = self._interned.get(key)
        if found is not None:
            return found
        node = Node(op, inputs, attrs, d.infer(attrs, [i.type for i in inputs]))
        if op in (K.INPUT, K.PARAM):
            self._names[attrs.name] = node
        self._interned[key] = node
        self._members.add(id(node))
        self._nodes.append(node)
        return node

    def output(self, name: str, node: Node) -> Node:
        _check_name(name, "output")
        if name in self._outputs:
            raise IRTypeError(f"output '{name}' is declared twice")
        assert id(node) in self._members, f"output {name}: node belongs to another graph"
        self._outputs[name] = node
        return node

    def has_output(self, name: str) -> bool:
        return name in self._outputs

    def build(self) -> Graph:
        return Graph(self._nodes, self._outputs, self.name)

    @classmethod
    def extending(cls, graph: Graph) -> tuple[GraphBuilder, dict[Node, Node]]:
        """A builder holding a copy of `graph` (outputs included), to add to; and old node -> new node."""
        b = cls(graph.name)
        mapping: dict[Node, Node] = {}
        for node in graph.nodes:
            mapping[node] = b.node(node.op, [mapping[i] for i in node.inputs], node.attrs)
        for name, node in graph.outputs.items():
            b.output(name, mapping[node])
        return b, mapping

    def __len__(self) -> int:
        return len(self._nodes)

    def lookup(self, name: str) -> Node | None:
        """The input or parameter of that name, if declared."""
        return self._names.get(name)

    # --- sources ----------------------------------------------------------------------------------
    def input(self, name: str, dtype: DType, shape: Iterable[Dim]) -> Node:
        return self.node(K.INPUT, (), InputAttrs(name, _dtype(dtype), tuple(_dims(shape, "input"))))

    def param(self, name: str, dtype: DType, shape: Iterable[Dim], init: Init = Init("zeros")) -> Node:
        return self.node(K.PARAM, (), ParamAttrs(name, _dtype(dtype), tuple(_dims(shape, "param")), init))

    def const(self, value, dtype: DType, shape: Iterable[Dim] = ()) -> Node:
        return self.node(K.CONST, (), ConstAttrs(_scalar(value, dtype), dtype, tuple(_dims(shape, "const"))))

    def tensor(self, data, dtype: DType, shape: Iterable[int] | None = None) -> Node:
        """A literal tensor from nested lists, a NumPy array or a torch tensor."""
        import numpy as np

        if hasattr(data, "detach"):  # torch: numpy has no bf16/fp8, and float64 holds them exactly
            t = data.detach().cpu()
            data = (t.double() if t.is_floating_point() else t).numpy()
        _dtype(dtype)
        try:
            arr = np.asarray(data)
        except ValueError as e:  # ragged nested lists
            raise IRShapeError(f"a literal tensor must be rectangular: {e}") from None
        if arr.dtype.kind not in "biuf":
            raise IRDTypeError(f"a literal tensor holds numbers or bools, got {arr.dtype} data")
        shape = tuple(arr.shape) if shape is None else tuple(_dims(shape, "tensor"))
        flat = tuple(_scalar(v, dtype) for v in arr.reshape(-1).tolist())
        return self.node(K.TENSOR, (), TensorAttrs(flat, dtype, shape))

    def iota(self, shape: Iterable[Dim], axis: int, dtype: DType = DType.I64) -> Node:
        shape = tuple(_dims(shape, "iota"))
        return self.node(K.IOTA, (), IotaAttrs(_axis(axis, len(shape), "iota"), _dtype(dtype), shape))

    def rand(self, seed: Node, shape: Iterable[Dim], dtype: DType = DType.F32, stream: int = 0,
             offset: Node | None = None) -> Node:
        attrs = RandAttrs(_int(stream, "'rand' stream"), _dtype(dtype), tuple(_dims(shape, "rand")))
        return self.node(K.RAND, (seed,) if offset is None else (seed, offset), attrs)

    # --- elementwise, with promotion and Python scalars ---------------------------------------------
    def lift(self, x, like: Node | None = None) -> Node:
        """A node for `x`: nodes pass through, Python scalars become constants typed after `like`."""
        if isinstance(x, Node):
            return x
        if isinstance(x, bool):
            return self.const(x, DType.BOOL)
        if not isinstance(x, (int, float)):
            raise IRTypeError(f"expected a tensor or a number, got {type(x).__name__} {x!r}")
        if like is None or like.dtype == DType.BOOL or (isinstance(x, float) and not like.dtype.is_float):
            return self.const(x, DType.I64 if isinstance(x, int) else default_float())
        return self.const(x, like.dtype)  # a Python number takes the tensor's type, as in PyTorch

    def cast(self, x: Node, dtype: DType) -> Node:
        if not isinstance(dtype, DType):
            raise IRTypeError(f"cast to {dtype!r}: expected a DType (e.g. DType.F16)")
        return x if x.dtype == dtype else self.node(K.CAST, (x,), CastAttrs(dtype))

    def unary(self, op: OpKind, x: Node) -> Node:
        if op in FLOAT_OPERANDS and not x.dtype.is_float:
            x = self.cast(x, default_float())
        if op == K.NOT:  # a number is true where it is nonzero (NaN too), as torch.logical_not
            x = self.cast(x, DType.BOOL)
        return self.node(op, (x,))

    def binary(self, op: OpKind, a, b) -> Node:
        if op in (K.AND, K.OR):  # each operand as a truth value first: nonzero is true
            return self.node(op, (self.cast(self.lift(a), DType.BOOL), self.cast(self.lift(b), DType.BOOL)))
        a, b = self._promoted(a, b, float_only=op in FLOAT_OPERANDS)
        return self.node(op, (a, b))

    def _promoted(self, a, b, float_only: bool = False) -> tuple[Node, Node]:
        """Both operands as nodes of one dtype. Python numbers take the tensor's type; two numbers
        make a 0-d tensor of their own Python types promoted (2 + 0.5 is f32, as torch.add(2, 0.5))."""
        if not isinstance(a, Node) and not isinstance(b, Node):
            a = self.lift(a)
        a = self.lift(a, b if isinstance(b, Node) else None)
        b = self.lift(b, a)
        t = promote(a.dtype, b.dtype)
        if float_only and not t.is_float:
            t = default_float()
        return self.cast(a, t), self.cast(b, t)

    def where(self, cond: Node, a, b) -> Node:
        a, b = self._promoted(a, b)
        return self.node(K.WHERE, (cond, a, b))

    # One method per op, for readable graph-building code (the frontend and the tests use these).
    def neg(self, x): return self.unary(K.NEG, x)
    def exp(self, x): return self.unary(K.EXP, x)
    def log(self, x): return self.unary(K.LOG, x)
    def sqrt(self, x): return self.unary(K.SQRT, x)
    def rsqrt(self, x): return self.unary(K.RSQRT, x)
    def tanh(self, x): return self.unary(K.TANH, x)
    def sigmoid(self, x): return self.unary(K.SIGMOID, x)
    def relu(self, x): return self.unary(K.RELU, x)
    def erf(self, x): return self.unary(K.ERF, x)
    def abs(self, x): return self.unary(K.ABS, x)
    def sin(self, x): return self.unary(K.SIN, x)
    def cos(self, x): return self.unary(K.COS, x)
    def recip(self, x): return self.unary(K.RECIP, x)
    def floor(self, x): return self.unary(K.FLOOR, x)
    def ceil(self, x): return self.unary(K.CEIL, x)
    def sign(self, x): return self.unary(K.SIGN, x)
    def logical_not(self, x): return self.unary(K.NOT, x)
    def add(self, a, b): return self.binary(K.ADD, a, b)
    def sub(self, a, b): return self.binary(K.SUB, a, b)
    def mul(self, a, b): return self.binary(K.MUL, a, b)
    def div(self, a, b): return self.binary(K.DIV, a, b)
    def pow(self, a, b): return self.binary(K.POW, a, b)
    def maximum(self, a, b): return self.binary(K.MAXIMUM, a, b)
    def minimum(self, a, b): return self.binary(K.MINIMUM, a, b)
    def eq(self, a, b): return self.binary(K.EQ, a, b)
    def ne(self, a, b): return self.binary(K.NE, a, b)
    def lt(self, a, b): return self.binary(K.LT, a, b)
    def le(self, a, b): return self.binary(K.LE, a, b)
    def gt(self, a, b): return self.binary(K.GT, a, b)
    def ge(self, a, b): return self.binary(K.GE, a, b)
    def logical_and(self, a, b): return self.binary(K.AND, a, b)
    def logical_or(self, a, b): return self.binary(K.OR, a, b)

    # --- reductions -------------------------------------------------------------------------------
    def reduce(self, op: OpKind, x: Node, axes: int | Iterable[int] | None = None,
               keepdim: bool = False) -> Node:
        """Reduce over `axes` (an int, several, or None for all); negative axes count from the end."""
        if axes is None:
            axes = range(len(x.shape))
        elif isinstance(axes, (int, float)) or hasattr(type(axes), "__index__"):
            axes = (axes,)
        axes = tuple(_int(a, f"'{op}' axis") for a in axes)
        if op in FLOAT_OPERANDS and not x.dtype.is_float:
            x = self.cast(x, default_float())
        if not x.shape:  # a scalar is its own reduction over its one "axis" (0 or -1, as in torch)
            normalize_axes(axes, 1)
            check_reduce_dtype(op, x.type)
            return self.const(0, DType.I64) if op in (K.ARGMAX, K.ARGMIN) else x
        axes = normalize_axes(axes, len(x.shape))
        if op in (K.SUM, K.MEAN) and any(x.shape[a] == 0 for a in axes):
            # a sum of no elements is 0 and their mean 0/0, as in torch (max, min and arg* of nothing
            # stay an error): the type the op would have if those axes had one element
            one = tuple(1 if i in axes and d == 0 else d for i, d in enumerate(x.shape))
            out = OPS[op].infer(ReduceAttrs(axes, keepdim), [TensorType(x.dtype, one)])
            return self.const(0 if op == K.SUM else float("nan"), out.dtype, out.shape)
        return self.node(op, (x,), ReduceAttrs(axes, keepdim))

    def sum(self, x, axes=None, keepdim=False): return self.reduce(K.SUM, x, axes, keepdim)
    def max(self, x, axes=None, keepdim=False): return self.reduce(K.MAX, x, axes, keepdim)
    def min(self, x, axes=None, keepdim=False): return self.reduce(K.MIN, x, axes, keepdim)
    def mean(self, x, axes=None, keepdim=False): return self.reduce(K.MEAN, x, axes, keepdim)
    def argmax(self, x, axis: int, keepdim=False): return self.reduce(K.ARGMAX, x, axis, keepdim)
    def argmin(self, x, axis: int, keepdim=False): return self.reduce(K.ARGMIN, x, axis, keepdim)

    # --- linear algebra ---------------------------------------------------------------------------
    def matmul(self, a: Node, b: Node) -> Node:
        a, b = self._promoted(a, b)
        return self.node(K.MATMUL, (a, b))

    def qmatmul(self, a: Node, b: Node) -> Node:
        """Codes times codes with a wide accumulator (op_qmatmul.py): i8 -> i32, fp8 -> f32."""
        return self.node(K.QMATMUL, (a, b))

    def bsmatmul(self, a: Node, b: Node, index: Node, index_t: Node, tiles: Node, block: int) -> Node:
        """a @ b over b's nonzero square blocks, counting the block products in `tiles` (op_bsmatmul.py)."""
        return self.node(K.BSMATMUL, (a, b, index, index_t, tiles), BlockAttrs(block))

    def conv2d(self, x: Node, w: Node, stride=1, padding=0, dilation=1, groups: int = 1) -> Node:
        x, w = self._promoted(x, w, float_only=True)
        attrs = Conv2dAttrs(_pair(stride), _pair(padding), _pair(dilation), _int(groups, "conv2d groups"))
        return self.node(K.CONV2D, (x, w), attrs)

    # --- movement ---------------------------------------------------------------------------------
    def reshape(self, x: Node, shape: Iterable[Dim]) -> Node:
        """Reshape; one entry may be -1 and is then inferred."""
        shape = _dims(shape, "reshape")
        holes = [i for i, d in enumerate(shape) if isinstance(d, int) and d == -1]
        if len(holes) > 1:
            raise IRShapeError(f"reshape to {shape}: only one dimension can be -1")
        if any(isinstance(d, int) and d < -1 for d in shape):
            raise IRShapeError(f"reshape to {shape}: sizes must be >= 0 (or one -1)")
        if holes:
            rest = numel(d for i, d in enumerate(shape) if i != holes[0])
            shape[holes[0]] = _dim_div(numel(x.shape), rest, x, shape)
        shape = tuple(shape)
        if shape == x.shape:
            return x
        return self.node(K.RESHAPE, (x,), ReshapeAttrs(shape))

    def permute(self, x: Node, perm: Iterable[int]) -> Node:
        perm = tuple(_axis(p, len(x.shape), "permute") for p in perm)
        if perm == tuple(range(len(x.shape))):
            return x
        return self.node(K.PERMUTE, (x,), PermuteAttrs(perm))

    def transpose(self, x: Node, a: int = -2, b: int = -1) -> Node:
        perm = list(range(len(x.shape)))
        a, b = _axis(a, len(perm), "transpose"), _axis(b, len(perm), "transpose")
        perm[a], perm[b] = perm[b], perm[a]
        return self.permute(x, perm)

    def expand(self, x: Node, shape: Iterable[Dim]) -> Node:
        shape = tuple(_dims(shape, "expand"))
        return x if shape == x.shape else self.node(K.EXPAND, (x,), ExpandAttrs(shape))

    def slice(self, x: Node, axis: int, start: int | None = None, stop: int | None = None,
              step: int = 1) -> Node:
        """`x[..., start:stop:step, ...]` on one axis, with Python's rules for negative and None bounds."""
        axis = _axis(axis, len(x.shape), "slice")
        start, stop = (None if v is None else _int(v, "a slice bound") for v in (start, stop))
        size = x.shape[axis]
        if _int(step, "a slice step") < 1:
            raise IRShapeError(f"slice step must be >= 1, got {step}")
        if not isinstance(size, int):
            if (start in (None, 0)) and stop is None and step == 1:
                return x
            raise IRShapeError(f"cannot slice the symbolic dimension {size} (axis {axis} of {x.type})")
        lo, hi, _ = slice(start, stop, step).indices(size)
        if (lo, hi, step) == (0, size, 1):
            return x
        if hi <= lo:  # nothing selected: an empty tensor, which reads no element of x
            return self.const(0, x.dtype, x.shape[:axis] + (0,) + x.shape[axis + 1:])
        return self.node(K.SLICE, (x,), SliceAttrs((axis,), (lo,), (hi,), (step,)))

    def pad(self, x: Node, pads: Sequence[tuple[int, int]], value: float = 0.0) -> Node:
        pads = list(pads)
        if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pads):
            raise IRTypeError(f"'pad' takes one (before, after) pair per axis, got {pads}")
        pads = tuple((_int(lo, "a pad amount"), _int(hi, "a pad amount")) for lo, hi in pads)
        if not isinstance(value, (int, float)):
            raise IRTypeError(f"the pad value must be a number, got {value!r}")
        if all(p == (0, 0) for p in pads) and len(pads) == len(x.shape):
            return x
        return self.node(K.PAD, (x,), PadAttrs(pads, float(value)))

    def concat(self, xs: Sequence[Node], axis: int) -> Node:
        """The tensors joined along `axis`, cast to the dtype they promote to (as torch.cat)."""
        xs = list(xs)
        if not xs or not all(isinstance(x, Node) for x in xs):
            raise IRTypeError(f"'concat' needs one or more tensors, got {xs!r}")
        dtype = functools.reduce(promote, (x.dtype for x in xs))
        xs = [self.cast(x, dtype) for x in xs]
        attrs = AxisAttrs(_axis(axis, len(xs[0].shape), "concat"))
        return xs[0] if len(xs) == 1 else self.node(K.CONCAT, tuple(xs), attrs)

    def gather(self, x: Node, axis: int, index: Node) -> Node:
        """`out[..., j, ...] = x[..., index[..., j, ...], ...]` along `axis`. A scalar `x` is a tensor of
        one element along its one axis (0 or -1), as in torch.gather: the result has the index's shape."""
        if not x.shape and isinstance(index, Node) and len(index.shape) <= 1:
            _axis(axis, 1, "gather")
            out = self.node(K.GATHER, (self.reshape(x, (1,)), self.reshape(index, (-1,))), AxisAttrs(0))
            return self.reshape(out, index.shape)
        return self.node(K.GATHER, (x, index), AxisAttrs(_axis(axis, len(x.shape), "gather")))

    def take(self, x: Node, index: Node, axis: int = 0) -> Node:
        """x[..., index, ...] on `axis` (the index's axes replace it). A scalar `x` is a tensor of one
        element on its one axis (0 or -1), as in torch.index_select: the result is a scalar again."""
        if not x.shape and isinstance(index, Node) and len(index.shape) <= 1:
            _axis(axis, 1, "take")
            return self.reshape(self.node(K.TAKE, (self.reshape(x, (1,)), index), AxisAttrs(0)), ())
        return self.node(K.TAKE, (x, index), AxisAttrs(_axis(axis, len(x.shape), "take")))

    # --- quantization (semantics, granularity and edge cases: op_quant.py's docstring) ---------------
    def quantize(self, x: Node, scale, zero_point=None, dtype: DType = DType.I8, *, axis: int | None = None,
                 group: int | None = None, bits: int | None = None, qmin: int | None = None,
                 qmax: int | None = None) -> Node:
        """Codes of `dtype` (i8, u8, i32, f8e4m3, f8e5m2): per tensor (axis None), per channel along
        `axis`, or per `group` elements along it; `bits=4` or `qmin`/`qmax` narrow the range."""
        ops, axes, group = self._quant_operands("quantize", x, scale, zero_point, axis, group)
        lo, hi = code_range("quantize", _dtype(dtype), bits, qmin, qmax)
        return self.node(K.QUANTIZE, ops, QuantizeAttrs(dtype, axes, group, lo, hi))

    def dequantize(self, q: Node, scale, zero_point=None, dtype: DType = DType.F32, *,
                   axis: int | None = None, group: int | None = None) -> Node:
        """(q - zero_point) * scale as `dtype` (f32, f16, bf16), with quantize's granularity."""
        ops, axes, group = self._quant_operands("dequantize", q, scale, zero_point, axis, group)
        return self.node(K.DEQUANTIZE, ops, DequantizeAttrs(_dtype(dtype), axes, group))

    def fake_quantize(self, x: Node, scale, zero_point=None, qdtype: DType = DType.I8, *,
                      axis: int | None = None, group: int | None = None, bits: int | None = None,
                      qmin: int | None = None, qmax: int | None = None) -> Node:
        """x quantized to `qdtype` codes and back (quantization-aware training; straight-through
        gradient to x, none to scale and zero point)."""
        ops, axes, group = self._quant_operands("fake_quantize", x, scale, zero_point, axis, group)
        lo, hi = code_range("fake_quantize", _dtype(qdtype), bits, qmin, qmax)
        return self.node(K.FAKE_QUANTIZE, ops, FakeQuantizeAttrs(qdtype, axes, group, lo, hi))

    def pack_int4(self, x: Node) -> Node:
        """int4 codes (i8 or u8) two to a byte along the last axis, the even element in the low nibble."""
        return self.node(K.PACK_INT4, (x,))

    def unpack_int4(self, p: Node, dtype: DType = DType.I8) -> Node:
        return self.node(K.UNPACK_INT4, (p,), UnpackAttrs(_dtype(dtype)))

    def _quant_operands(self, op: str, x: Node, scale, zero_point, axis, group):
        """(x, scale[, zero point]) in the IR's shapes, the `axes` attribute and the group size. A per
        channel scale of torch's shape (C,) becomes x's rank with 1 elsewhere; one value per tensor, 0-d;
        a Python number a constant of the scale's shape."""
        if not isinstance(x, Node):
            raise IRTypeError(f"'{op}' quantizes a tensor, got {type(x).__name__} {x!r}")
        scale = self.const(scale, DType.F32) if isinstance(scale, (int, float)) else scale
        number = isinstance(zero_point, int) and not isinstance(zero_point, bool)
        for p in (scale, None if number else zero_point):
            if p is not None and not isinstance(p, Node):
                raise IRTypeError(f"'{op}' scale and zero point must be tensors or numbers, got {p!r}")
        group = 1 if group is None else _int(group, f"'{op}' group")
        if axis is None:
            if group != 1:
                raise IRShapeError(f"'{op}' in groups of {group} needs the axis they run along")
            shaped = lambda p: self.reshape(p, ()) if numel(p.shape) == 1 else p  # noqa: E731
            axes = ()
        else:
            axes = (_axis(axis, len(x.shape), op),)
            keep = tuple(d if i == axes[0] else 1 for i, d in enumerate(x.shape))
            shaped = lambda p: self.reshape(p, keep) if (  # noqa: E731
                group == 1 and p.shape == (x.shape[axes[0]],)) else p
        scale = shaped(scale)
        if number:
            zero_point = self.const(zero_point, DType.I32, scale.shape)
        params = [scale] if zero_point is None else [scale, shaped(zero_point)]
        return (x, *params), axes, group


_FLOAT_VALUED = (ConstAttrs, TensorAttrs, PadAttrs)


def _check_name(name, what: str) -> None:
    """Names of inputs, parameters and outputs are what the text form can write: `fc1.w`, `x_0`."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise IRTypeError(f"{what} name {name!r} is not an identifier (letters, digits, '_' and '.', "
                          f"not starting with a digit or '.')")


def _intern_key(attrs: Attrs):
    """Attributes as an interning key. Floats compare by their exact text: -0.0 == 0.0 and nan != nan
    under `==`, but const(-0.0) is not const(0.0), and two const(nan) are the same value."""
    return repr(attrs) if isinstance(attrs, _FLOAT_VALUED) else attrs


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)) and len(v) == 2:
        return (_int(v[0], "a conv2d size"), _int(v[1], "a conv2d size"))
    return (_int(v, "a conv2d size"),) * 2


def _int(v, what: str) -> int:
    """An integer argument (an axis, a bound): floats and bools are refused rather than truncated."""
    if not isinstance(v, bool) and hasattr(type(v), "__index__"):  # int, numpy integers
        return operator.index(v)
    raise IRTypeError(f"{what} must be an integer, got {v!r}")


def _axis(axis, rank: int, op: str) -> int:
    return normalize_axis(_int(axis, f"'{op}' axis"), rank)


def _dtype(dtype) -> DType:
    if not isinstance(dtype, DType):
        raise IRTypeError(f"expected a DType (e.g. DType.F32), got {dtype!r}")
    return dtype


def _dims(shape, op: str) -> list[Dim]:
    dims = list(shape)
    if not all(isinstance(d, Sym) or (isinstance(d, int) and not isinstance(d, bool)) for d in dims):
        raise IRTypeError(f"'{op}' sizes must be integers or symbolic dimensions, got {dims}")
    return dims


def _scalar(value, dtype: DType):
    """Normalize a literal to the Python type that `dtype` stores (bool, int or float)."""
    _dtype(dtype)
    if not isinstance(value, (bool, int, float)):
        raise IRTypeError(f"a constant must be a number or a bool, got {type(value).__name__} {value!r}")
    if dtype == DType.BOOL:
        return bool(value)
    if dtype.is_int:
        if isinstance(value, float) and not value.is_integer():
            raise IRDTypeError(f"constant {value!r} is not an integer, so it cannot be {dtype}")
        return int(value)
    try:
        return float(value)
    except OverflowError:
        raise IRDTypeError(f"constant {value} is too large for any floating-point type") from None


def _dim_div(total: Dim, part: Dim, x: Node, shape) -> Dim:
    """`total / part` when it is exact, for reshape's -1."""
    if isinstance(total, int) and isinstance(part, int):
        if part and total % part == 0:
            return total // part
    elif isinstance(total, Sym):
        pf = part.factors if isinstance(part, Sym) else ()
        pc = part.coeff if isinstance(part, Sym) else part
        rest = list(total.factors)
        try:
            for f in pf:
                rest.remove(f)
        except ValueError:
            rest = None
        if rest is not None and pc and total.coeff % pc == 0:
            coeff = total.coeff // pc
            return Sym(tuple(rest), coeff) if rest else coeff
    if part == 0:  # 0 * anything is 0 (as torch: "the unspecified dimension size -1 can be any value")
        raise IRShapeError(f"cannot reshape {x.type} to {format_shape(tuple(shape))}: the other "
                           f"dimensions hold no elements, so any size fits the -1; give it explicitly")
    raise IRShapeError(f"cannot reshape {x.type} to {format_shape(tuple(shape))}: the -1 dimension "
                       f"is not a whole number")


