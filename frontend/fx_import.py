"""FX graphs of core ATen ops (what `make_fx` with `core_aten_decompositions()` gives for a Dynamo graph)
turned into Axon IR, so `torch.compile(model, backend="axon")` compiles them (`axon/dynamo.py`).

Every placeholder holding a tensor becomes a graph input `in<i>` (parameters too: Dynamo lifts them, and
Axon's autodiff differentiates with respect to any input), a SymInt placeholder binds nothing (its value
is a size of some tensor). Sizes Dynamo marks dynamic stay symbolic: a SymInt `s0` becomes the symbolic
dimension `s0`, `5*s0` the product. Outputs become `out<i>`; an output that is an input, or None, is
recorded in the signature instead (the caller hands the tensor back as it is).

Each ATen op's translation is one function in `ATEN` (its arguments as the op schema names them). An op
not in the table, or one whose arguments the translation does not take (a non-default memory format, an
unsupported approximation), raises `Unsupported` naming the op: the backend then runs that node eagerly
and compiles the regions around it (`supported` answers per node, so regions can be formed first).
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field

import torch

from axon.ir import AxonError, DType, Graph, GraphBuilder, Node
from axon.ir.shapes import Sym, dim_mul

aten = torch.ops.aten
prims = torch.ops.prims


class Unsupported(AxonError):
    """An FX node Axon cannot compile (the backend leaves it to eager PyTorch)."""


@dataclass
class Imported:
    """An FX graph as Axon IR: which placeholder feeds which input, and where each output comes from."""

    graph: Graph
    inputs: list[str | None]            # per placeholder: the Axon input name, or None (a SymInt)
    outputs: list[tuple[str, object]]   # per FX output: ("out", name) | ("input", index) | ("none", None)
    ops: dict[str, int] = field(default_factory=dict)  # ATen ops translated, with counts
    mutations: list[tuple[int, str]] = field(default_factory=list)  # (placeholder, output) copied back


# --- sizes and dtypes ------------------------------------------------------------------------------
def dim(d) -> int | Sym:
    """An int, or a SymInt as Axon's symbolic dimension (a symbol or a product of symbols)."""
    if isinstance(d, int):
        return d
    if isinstance(d, torch.SymInt):
        expr = d.node.expr
        if expr.is_Integer:
            return int(expr)
        if expr.is_Symbol:
            return Sym.of(str(expr))
        if expr.is_Mul and all(a.is_Symbol or a.is_Integer for a in expr.args):
            out: int | Sym = 1
            for a in expr.args:
                out = dim_mul(out, int(a) if a.is_Integer else Sym.of(str(a)))
            return out
        raise Unsupported(f"a dynamic size Axon cannot express: {expr}")
    raise Unsupported(f"a size that is not an int: {d!r}")


def dims(shape) -> tuple:
    return tuple(dim(d) for d in shape)


def dtype_of(t: torch.dtype) -> DType:
    try:
        return DType.from_torch(t)
    except Exception:
        raise Unsupported(f"dtype {t}") from None


def meta_val(node: torch.fx.Node):
    v = node.meta.get("val")
    if v is None:
        raise Unsupported(f"'{node.name}' has no recorded value (trace it with make_fx)")
    return v


# --- the importer ----------------------------------------------------------------------------------
class Importer:
    def __init__(self, gm: torch.fx.GraphModule, name: str = "fx"):
        self.gm = gm
        self.b = GraphBuilder(name)
        self.env: dict[torch.fx.Node, object] = {}
        self.ops: dict[str, int] = {}
        self.mutations: list[tuple[int, str]] = []
        self.placeholders: dict[torch.fx.Node, int] = {}

    def run(self) -> Imported:
        inputs: list[str | None] = []
        placeholders = self.placeholders
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                v = meta_val(node)
                if isinstance(v, torch.Tensor):
                    name = f"in{len(inputs)}"
                    self.env[node] = self.b.input(name, dtype_of(v.dtype), dims(v.shape))
                    inputs.append(name)
                    placeholders[node] = len(inputs) - 1
                else:  # a SymInt (its value is some tensor's size) or a constant
                    self.env[node] = dim(v) if isinstance(v, (int, torch.SymInt)) else v
                    inputs.append(None)
                    placeholders[node] = len(inputs) - 1
            elif node.op == "call_function":
                self.env[node] = self.call(node)
            elif node.op == "output":
                outs = []
                for i, a in enumerate(_flat(node.args[0])):
                    if a is None:
                        outs.append(("none", None))
                    elif a in placeholders:
                        outs.append(("input", placeholders[a]))
                    else:
                        v = self.env[a]
                        if not isinstance(v, Node):
                            raise Unsupported(f"output {i} is not a tensor ({type(v).__name__})")
                        name = f"out{i}"
                        self.b.output(name, v)
                        outs.append(("out", name))
                return Imported(self.b.build(), inputs, outs, self.ops, self.mutations)
            else:
                raise Unsupported(f"FX node kind '{node.op}' ({node.target})")
        raise Unsupported("the FX graph has no output")

    def call(self, node: torch.fx.Node):
        if node.target is operator.getitem:
            seq, i = self.env[node.args[0]], node.args[1]
            return seq[i]
        if node.target is aten.copy_.default and node.args[0] in self.placeholders:
            # functionalization's write-back of an updated buffer (batch norm's running statistics)
            name = f"mutated{len(self.mutations)}"
            value = self.b.cast(self.env[node.args[1]], self.env[node.args[0]].dtype)
            self.b.output(name, value)
            self.mutations.append((self.placeholders[node.args[0]], name))
            return self.env[node.args[0]]
        if node.target in SYM_OPS:  # size arithmetic of dynamic shapes
            return SYM_OPS[node.target](*[self.value(a) for a in node.args])
        if node.target is aten.native_batch_norm.default:
            return self.batch_norm(node)
        functional = in_place(node.target)
        if functional is not None:  # x.op_(...): the op's value, bound to x from here on
            out = self.translate(node, ATEN[functional])
            dst = node.args[0]
            self.env[dst] = out
            if dst in self.placeholders:
                name = f"mutated{len(self.mutations)}"
                self.b.output(name, out)
                self.mutations.append((self.placeholders[dst], name))
            return out
        return self.translate(node, ATEN.get(node.target))

    def translate(self, node: torch.fx.Node, fn):
        if fn is None:
            raise Unsupported(f"{op_name(node.target)} has no Axon translation")
        args = [self.value(a) for a in node.args]
        kwargs = {k: self.value(v) for k, v in node.kwargs.items()}
        try:
            out = fn(self.b, *args, **kwargs)
        except Unsupported:
            raise
        except (AxonError, TypeError, ValueError) as e:
            raise Unsupported(f"{op_name(node.target)}: {e}") from None
        key = op_name(node.target)
        self.ops[key] = self.ops.get(key, 0) + 1
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and isinstance(out, Node):
            want = dtype_of(val.dtype)
            if out.dtype != want:  # torch's type promotion where Axon's differs (int / float scalars)
                out = self.b.cast(out, want)
        return out

    def batch_norm(self, node: torch.fx.Node):
        """native_batch_norm: in eval mode by the running statistics; in training mode by the batch's,
        its in-place update of the running ones (placeholders) copied back after the call."""
        x, w, bias, rm, rv, training, momentum, eps = [self.value(a) for a in node.args]
        if not training:
            return _batch_norm_eval(self.b, x, w, bias, rm, rv, momentum, eps)
        out, mean, rstd, new_mean, new_var = _batch_norm_train(self.b, x, w, bias, rm, rv, True, momentum,
                                                               eps)
        for src, value in ((node.args[3], new_mean), (node.args[4], new_var)):
            if src is not None:
                if src not in self.placeholders:
                    raise Unsupported("native_batch_norm updating running statistics that are not inputs")
                name = f"mutated{len(self.mutations)}"
                self.b.output(name, value)
                self.mutations.append((self.placeholders[src], name))
        self.ops["aten.native_batch_norm"] = self.ops.get("aten.native_batch_norm", 0) + 1
        return out, mean, rstd

    def value(self, a):
        if isinstance(a, torch.fx.Node):
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return type(a)(self.value(x) for x in a)
        if isinstance(a, torch.SymInt):
            return dim(a)
        return a


def _flat(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def op_name(target) -> str:
    """aten.add.Tensor as people write it."""
    name = getattr(target, "_name", None) or getattr(target, "__name__", target)
    return str(name).replace("aten::", "aten.")


def import_fx(gm: torch.fx.GraphModule, name: str = "fx") -> Imported:
    """The ATen FX graph `gm` (nodes carrying `meta['val']`) as an Axon graph; Unsupported if any node
    has no translation."""
    return Importer(gm, name).run()


def in_place(target):
    """The functional op with a translation that in-place ATen op `target` (add_.Tensor) updates its
    first argument with, or None."""
    packet = getattr(target, "overloadpacket", None)
    name = getattr(packet, "__name__", "")
    if not name.endswith("_") or name.startswith("_"):
        return None
    base = getattr(aten, name[:-1], None)
    for overload in (target._overloadname, "Tensor", "int", "default"):
        fn = getattr(base, overload, None) if base is not None else None
        if fn is not None and fn in ATEN:
            return fn
    return None


def supported(node: torch.fx.Node) -> bool:
    """Whether Axon has a translation for this node's op (arguments are checked when it is imported)."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem or node.target in SYM_OPS:
        return True
    values = [v for v in _flat(node.meta.get("val")) if v is not None]
    return (node.target in ATEN or in_place(node.target) is not None) and all(
        isinstance(v, torch.Tensor) and not v.is_complex() for v in values)


# --- the translations ------------------------------------------------------------------------------
def _axis(d: int, rank: int) -> int:
    return d % rank if rank else 0


def _axes(dim_arg, rank: int) -> tuple[int, ...]:
    if dim_arg is None or dim_arg == []:
        return tuple(range(rank))
    if isinstance(dim_arg, int):
        dim_arg = [dim_arg]
    return tuple(sorted(_axis(d, rank) for d in dim_arg))


def _binary(op):
    def f(b, x, y, alpha=1):
        if alpha != 1:
            y = b.mul(y, alpha)
        return getattr(b, op)(x, y)
    return f


def _unary(op):
    return lambda b, x: getattr(b, op)(x)


def _view(b, x, shape):
    return b.reshape(x, tuple(dim(s) if not isinstance(s, (int, Sym)) else s for s in shape))


def _expand(b, x, shape, implicit=False):
    shape = list(shape)
    rank = len(shape)
    src = (1,) * (rank - len(x.shape)) + tuple(x.shape)
    target = tuple(src[i] if s == -1 else s for i, s in enumerate(shape))
    if len(x.shape) < rank:
        x = b.reshape(x, src)
    return b.expand(x, target)


def _addmm(b, bias, a, m, beta=1, alpha=1):
    out = b.matmul(a, m)
    if alpha != 1:
        out = b.mul(out, alpha)
    if beta == 0:
        return out
    return b.add(out, bias if beta == 1 else b.mul(bias, beta))


def _reduce(op):
    def f(b, x, dim_arg=None, keepdim=False, dtype=None):
        if dtype is not None:
            x = b.cast(x, dtype_of(dtype))
        return b.reduce(op, x, _axes(dim_arg, len(x.shape)), keepdim)
    return f


def _sum(b, x, dim_arg=None, keepdim=False, dtype=None):
    from axon.ir import OpKind

    if dtype is None and not x.dtype.is_float and x.dtype != DType.I64:
        x = b.cast(x, DType.I64)  # torch sums integers and bools in int64
    return _reduce(OpKind.SUM)(b, x, dim_arg, keepdim, dtype)


def _softmax(b, x, d, half_to_float=False, log=False):
    axis = _axis(d, len(x.shape))
    m = b.max(x, axis, keepdim=True)
    shifted = b.sub(x, m)
    e = b.exp(shifted)
    s = b.sum(e, axis, keepdim=True)
    return b.sub(shifted, b.log(s)) if log else b.div(e, s)


def _gelu(b, x, approximate="none"):
    if approximate == "tanh":
        inner = b.mul(b.add(x, b.mul(b.mul(b.mul(x, x), x), 0.044715)), math.sqrt(2 / math.pi))
        return b.mul(b.mul(x, 0.5), b.add(b.tanh(inner), 1.0))
    if approximate != "none":
        raise Unsupported(f"gelu(approximate={approximate!r})")
    return b.mul(b.mul(x, 0.5), b.add(b.erf(b.mul(x, 1 / math.sqrt(2))), 1.0))


def _normalized(b, x, axes, eps, weight=None, bias=None, shape=None):
    """(x - mean) * rsqrt(var + eps) over `axes` (biased variance), then weight and bias (reshaped to
    `shape` when given); with the mean, the variance and rstd."""
    mean = b.mean(x, axes, keepdim=True)
    centered = b.sub(x, mean)
    var = b.mean(b.mul(centered, centered), axes, keepdim=True)
    rstd = b.rsqrt(b.add(var, eps))
    out = b.mul(centered, rstd)
    if weight is not None:
        out = b.mul(out, weight if shape is None else b.reshape(weight, shape))
    if bias is not None:
        out = b.add(out, bias if shape is None else b.reshape(bias, shape))
    return out, mean, var, rstd


def _layer_norm(b, x, normalized_shape, weight, bias, eps):
    axes = tuple(range(len(x.shape) - len(normalized_shape), len(x.shape)))
    out, mean, _, rstd = _normalized(b, x, axes, eps, weight, bias)
    return out, mean, rstd


def _batch_norm_eval(b, x, weight, bias, running_mean, running_var, momentum, eps):
    """_native_batch_norm_legit_no_training: normalize by the running statistics (channels on axis 1)."""
    shape = (1, x.shape[1]) + (1,) * (len(x.shape) - 2)
    inv = b.rsqrt(b.add(b.reshape(running_var, shape), eps))
    out = b.mul(b.sub(x, b.reshape(running_mean, shape)), inv)
    if weight is not None:
        out = b.mul(out, b.reshape(weight, shape))
    if bias is not None:
        out = b.add(out, b.reshape(bias, shape))
    empty = b.const(0.0, x.dtype, (0,))
    return out, empty, empty


def _batch_norm_train(b, x, weight, bias, running_mean, running_var, training, momentum, eps):
    """_native_batch_norm_legit_functional (training): batch statistics; the new running ones as extra
    results (the functionalized graph copies them back)."""
    axes = (0,) + tuple(range(2, len(x.shape)))
    shape = (1, x.shape[1]) + (1,) * (len(x.shape) - 2)
    out, mean, var, rstd = _normalized(b, x, axes, eps, weight, bias, shape)
    n = 1
    for a in axes:
        n = dim_mul(n, x.shape[a])
    if not isinstance(n, int):
        raise Unsupported("batch norm's running variance over a dynamic batch")
    unbiased = b.mul(b.reshape(var, (x.shape[1],)), n / max(n - 1, 1))
    new_mean = b.add(b.mul(running_mean, 1 - momentum), b.mul(b.reshape(mean, (x.shape[1],)), momentum))
    new_var = b.add(b.mul(running_var, 1 - momentum), b.mul(unbiased, momentum))
    return out, b.reshape(mean, (x.shape[1],)), b.reshape(rstd, (x.shape[1],)), new_mean, new_var


def _convolution(b, x, w, bias, stride, padding, dilation, transposed, output_padding, groups):
    if transposed or len(x.shape) != 4:
        raise Unsupported("convolution: only 2-D, not transposed")
    out = b.conv2d(x, w, stride=tuple(stride), padding=tuple(padding), dilation=tuple(dilation),
                   groups=groups)
    return out if bias is None else b.add(out, b.reshape(bias, (w.shape[0], 1, 1)))


def _full(b, size, value, dtype=None, layout=None, device=None, pin_memory=None):
    dt = dtype_of(dtype) if dtype is not None else (DType.F32 if isinstance(value, float) else
                                                      DType.BOOL if isinstance(value, bool) else DType.I64)
    return b.const(value, dt, tuple(dim(s) if not isinstance(s, (int, Sym)) else s for s in size))


def _scalar_tensor(b, value, dtype=None, layout=None, device=None, pin_memory=None):
    return _full(b, (), value, dtype)


def _like(value):
    def f(b, x, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
        return b.const(value, dtype_of(dtype) if dtype is not None else x.dtype, x.shape)
    return f


def _full_like(b, x, value, dtype=None, layout=None, device=None, pin_memory=None, memory_format=None):
    return b.const(value, dtype_of(dtype) if dtype is not None else x.dtype, x.shape)


def _to_copy(b, x, dtype=None, layout=None, device=None, pin_memory=None, non_blocking=False,
             memory_format=None):
    return b.cast(x, dtype_of(dtype)) if dtype is not None else x


def _slice(b, x, d=0, start=None, end=None, step=1):
    axis = _axis(d, len(x.shape))
    size = x.shape[axis]
    if isinstance(size, int):
        start = 0 if start is None else max(min(start + size if start < 0 else start, size), 0)
        end = size if end is None else max(min(end + size if end < 0 else end, size), 0)
        if start == 0 and end == size and step == 1:
            return x
    elif start not in (None, 0) or end not in (None, 2**63 - 1):
        raise Unsupported("slice of a dynamic axis")
    return b.slice(x, axis, start, end, step)


def _unsqueeze(b, x, d):
    axis = d % (len(x.shape) + 1)
    return b.reshape(x, tuple(x.shape[:axis]) + (1,) + tuple(x.shape[axis:]))


def _squeeze(b, x, d=None):
    axes = _axes(d, len(x.shape)) if d is not None else tuple(range(len(x.shape)))
    return b.reshape(x, tuple(s for i, s in enumerate(x.shape) if not (i in axes and s == 1)))


def _arange(b, start, end=None, step=1, dtype=None, layout=None, device=None, pin_memory=None):
    if end is None:
        start, end = 0, start
    if not all(isinstance(v, int) for v in (start, end, step)):
        raise Unsupported("arange with non-integer or dynamic bounds")
    n = max(0, -(-(end - start) // step))
    dt = dtype_of(dtype) if dtype is not None else DType.I64
    out = b.iota((n,), 0, dt)
    if step != 1:
        out = b.mul(out, step)
    return out if start == 0 else b.add(out, start)


def _where(b, c, x, y):
    if not isinstance(x, Node) and not isinstance(y, Node):
        raise Unsupported("where of two scalars")
    return b.where(c, x, y)


def _clamp(b, x, lo=None, hi=None):
    if lo is not None:
        x = b.maximum(x, lo)
    if hi is not None:
        x = b.minimum(x, hi)
    return x


def _embedding(b, weight, indices, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return b.take(weight, indices, 0)


def _index_select(b, x, d, index):
    return b.take(x, index, _axis(d, len(x.shape)))


def _cat(b, tensors, d=0):
    tensors = [t for t in tensors if not (len(t.shape) == 1 and t.shape[0] == 0)]
    return b.concat(tensors, _axis(d, len(tensors[0].shape)))


def _pad(b, x, pad, value=0.0):
    pairs = [(0, 0)] * len(x.shape)
    for i in range(len(pad) // 2):
        before, after = pad[2 * i], pad[2 * i + 1]
        if before < 0 or after < 0:
            raise Unsupported("negative padding")
        pairs[len(x.shape) - 1 - i] = (before, after)
    return b.pad(x, pairs, value)


def _select(b, x, d, index):
    axis = _axis(d, len(x.shape))
    size = x.shape[axis]
    if not isinstance(size, int):
        raise Unsupported("select on a dynamic axis")
    i = index + size if index < 0 else index
    return b.reshape(b.slice(x, axis, i, i + 1), tuple(s for j, s in enumerate(x.shape) if j != axis))


def _split_with_sizes(b, x, sizes, d=0):
    axis = _axis(d, len(x.shape))
    out, at = [], 0
    for s in sizes:
        out.append(b.slice(x, axis, at, at + s))
        at += s
    return out


def _var(b, x, dim_arg=None, correction=None, keepdim=False):
    axes = _axes(dim_arg, len(x.shape))
    mean = b.mean(x, axes, keepdim=True)
    c = b.sub(x, mean)
    n = 1
    for a in axes:
        n = dim_mul(n, x.shape[a])
    if not isinstance(n, int):
        raise Unsupported("var over a dynamic axis")
    corr = 1 if correction is None else correction
    return b.div(b.sum(b.mul(c, c), axes, keepdim=keepdim), max(n - corr, 0))


def _nll_loss(b, logp, target, weight=None, reduction=1, ignore_index=-100):
    if weight is not None or len(logp.shape) != 2:
        raise Unsupported("nll_loss with class weights or extra dims")
    picked = b.gather(logp, 1, b.reshape(target, (target.shape[0], 1)))
    picked = b.reshape(picked, (target.shape[0],))
    valid = b.ne(target, ignore_index)
    loss = b.where(valid, b.neg(picked), 0.0)
    count = b.sum(b.cast(valid, logp.dtype))
    total = b.sum(loss) if reduction else loss
    if reduction == 1:
        return b.div(total, count), count
    return total, count


def _max_pool2d(b, x, kernel, stride=(), padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    kernel = tuple(kernel) * (2 // len(kernel))
    stride = tuple(stride) * (2 // len(stride)) if stride else kernel
    n, c, h, w = x.shape
    if tuple(padding) not in ((0, 0), (0,)) or tuple(dilation) not in ((1, 1), (1,)) or kernel != stride \
            or not isinstance(h, int) or h % kernel[0] or w % kernel[1]:
        raise Unsupported("max_pool2d other than non-overlapping windows that tile the image")
    r = b.reshape(x, (n, c, h // kernel[0], kernel[0], w // kernel[1], kernel[1]))
    return b.max(r, (3, 5))


def _avg_pool2d(b, x, kernel, stride=(), padding=(0, 0), ceil_mode=False, count_include_pad=True,
                divisor_override=None):
    kernel = tuple(kernel) * (2 // len(kernel))
    stride = tuple(stride) * (2 // len(stride)) if stride else kernel
    n, c, h, w = x.shape
    if tuple(padding) not in ((0, 0), (0,)) or kernel != stride or divisor_override is not None \
            or not isinstance(h, int) or h % kernel[0] or w % kernel[1]:
        raise Unsupported("avg_pool2d other than non-overlapping windows that tile the image")
    r = b.reshape(x, (n, c, h // kernel[0], kernel[0], w // kernel[1], kernel[1]))
    return b.mean(r, (3, 5))


def _mm(b, a, m):
    return b.matmul(a, m)


def _copy(b, x, *rest, **kw):
    return x


def _pow(b, x, e):
    if isinstance(x, Node):
        return b.pow(x, e)
    return b.pow(b.const(x, e.dtype), e)


def _rsub(b, x, y, alpha=1):
    return b.sub(y, x if alpha == 1 else b.mul(x, alpha))


def _permute(b, x, perm):
    return b.permute(x, [_axis(p, len(x.shape)) for p in perm])


def _transpose(b, x, d0, d1):
    return b.transpose(x, _axis(d0, len(x.shape)), _axis(d1, len(x.shape)))


def _logical(op):
    def f(b, x, y):
        cast = lambda v: v if not isinstance(v, Node) or v.dtype == DType.BOOL else b.ne(v, 0)  # noqa: E731
        return getattr(b, op)(cast(x), cast(y))
    return f


def _not(b, x):
    return b.logical_not(x if x.dtype == DType.BOOL else b.ne(x, 0))


def _silu(b, x):
    return b.mul(x, b.sigmoid(x))


def _any(b, x, d, keepdim):
    from axon.ir import OpKind

    as_int = b.cast(x if x.dtype == DType.BOOL else b.ne(x, 0), DType.I32)
    return b.ne(_reduce(OpKind.MAX)(b, as_int, d, keepdim), 0)


def _reduce_kind(name):
    from axon.ir import OpKind

    return _reduce(getattr(OpKind, name))


def _sym_add(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    raise Unsupported("a sum of dynamic sizes")


def _sym_floordiv(a, b):
    if isinstance(a, int) and isinstance(b, int):
        return a // b
    if isinstance(a, Sym) and isinstance(b, int) and a.coeff % b == 0:
        return Sym(a.factors, a.coeff // b)
    raise Unsupported("a quotient of dynamic sizes")


SYM_OPS = {operator.mul: dim_mul, operator.add: _sym_add, operator.floordiv: _sym_floordiv,
           aten.sym_size.int: lambda x, d: x.shape[_axis(d, len(x.shape))]}


def _max_pool2d_with_indices(b, x, kernel, stride=(), padding=(0, 0), dilation=(1, 1), ceil_mode=False):
    """The pooled values and, as torch gives them, each maximum's flat index in its image (h * W + w;
    the first of equal values, in the window's row-major order)."""
    out = _max_pool2d(b, x, kernel, stride, padding, dilation, ceil_mode)
    from axon.ir import OpKind

    kh, kw = tuple(kernel) * (2 // len(kernel))
    n, c, h, w = x.shape
    windows = b.reshape(b.permute(b.reshape(x, (n, c, h // kh, kh, w // kw, kw)), (0, 1, 2, 4, 3, 5)),
                        (n, c, h // kh, w // kw, kh * kw))
    at = b.reduce(OpKind.ARGMAX, windows, 4)                               # [n, c, oh, ow], i64
    row_in = b.cast(b.floor(b.div(b.cast(at, DType.F64), float(kw))), DType.I64)
    col_in = b.sub(at, b.mul(row_in, kw))
    grid = (n, c, h // kh, w // kw)
    rows = b.add(b.mul(b.iota(grid, 2, DType.I64), kh), row_in)
    cols = b.add(b.mul(b.iota(grid, 3, DType.I64), kw), col_in)
    return out, b.add(b.mul(rows, w), cols)


ATEN = {
    # movement
    aten.view.default: _view, aten._unsafe_view.default: _view, aten.reshape.default: _view,
    aten.permute.default: _permute, aten.transpose.int: _transpose,
    aten.t.default: lambda b, x: b.transpose(x) if len(x.shape) == 2 else x,
    aten.expand.default: _expand, aten.unsqueeze.default: _unsqueeze, aten.squeeze.dim: _squeeze,
    aten.squeeze.dims: _squeeze, aten.squeeze.default: _squeeze,
    aten.clone.default: _copy, aten.alias.default: _copy, aten.detach.default: _copy,
    aten.lift_fresh_copy.default: _copy, aten._to_copy.default: _to_copy,
    aten.slice.Tensor: _slice, aten.select.int: _select, aten.cat.default: _cat,
    aten.constant_pad_nd.default: _pad, aten.split_with_sizes.default: _split_with_sizes,
    aten.index_select.default: _index_select, aten.embedding.default: _embedding,
    aten.gather.default: lambda b, x, d, index, sparse_grad=False: b.gather(x, _axis(d, len(x.shape)), index),
    # linear algebra
    aten.mm.default: _mm, aten.bmm.default: _mm, aten.matmul.default: _mm, aten.addmm.default: _addmm,
    aten.convolution.default: _convolution,
    # elementwise
    aten.add.Tensor: _binary("add"), aten.sub.Tensor: _binary("sub"), aten.mul.Tensor: _binary("mul"),
    aten.div.Tensor: _binary("div"), aten.add.Scalar: _binary("add"), aten.mul.Scalar: _binary("mul"),
    aten.sub.Scalar: _binary("sub"), aten.div.Scalar: _binary("div"), aten.rsub.Scalar: _rsub,
    aten.maximum.default: _binary("maximum"), aten.minimum.default: _binary("minimum"),
    aten.pow.Tensor_Scalar: _pow, aten.pow.Tensor_Tensor: _pow, aten.pow.Scalar: _pow,
    aten.neg.default: _unary("neg"), aten.exp.default: _unary("exp"), aten.log.default: _unary("log"),
    aten.sqrt.default: _unary("sqrt"), aten.rsqrt.default: _unary("rsqrt"), aten.tanh.default: _unary("tanh"),
    aten.sigmoid.default: _unary("sigmoid"), aten.relu.default: _unary("relu"),
    aten.abs.default: _unary("abs"),
    aten.erf.default: _unary("erf"), aten.sin.default: _unary("sin"), aten.cos.default: _unary("cos"),
    aten.reciprocal.default: _unary("recip"), aten.floor.default: _unary("floor"),
    aten.ceil.default: _unary("ceil"), aten.sign.default: _unary("sign"),
    aten.logical_not.default: _not, aten.bitwise_not.default: _not,
    aten.logical_and.default: _logical("logical_and"), aten.logical_or.default: _logical("logical_or"),
    aten.bitwise_and.Tensor: _logical("logical_and"), aten.bitwise_or.Tensor: _logical("logical_or"),
    aten.eq.Tensor: _binary("eq"), aten.eq.Scalar: _binary("eq"), aten.ne.Tensor: _binary("ne"),
    aten.ne.Scalar: _binary("ne"), aten.lt.Tensor: _binary("lt"), aten.lt.Scalar: _binary("lt"),
    aten.le.Tensor: _binary("le"), aten.le.Scalar: _binary("le"), aten.gt.Tensor: _binary("gt"),
    aten.gt.Scalar: _binary("gt"), aten.ge.Tensor: _binary("ge"), aten.ge.Scalar: _binary("ge"),
    aten.where.self: _where, aten.clamp.default: _clamp, aten.clamp_min.default: _clamp,
    aten.clamp_max.default: lambda b, x, hi: _clamp(b, x, None, hi),
    aten.gelu.default: _gelu, aten.silu.default: _silu,
    # reductions and normalizations
    aten.sum.dim_IntList: _sum, aten.sum.default: lambda b, x, dtype=None: _sum(b, x, None, False, dtype),
    aten.mean.dim: _reduce_kind("MEAN"),
    aten.mean.default: lambda b, x, dtype=None: _reduce_kind("MEAN")(b, x),
    aten.amax.default: _reduce_kind("MAX"), aten.amin.default: _reduce_kind("MIN"),
    aten.var.correction: _var, aten._softmax.default: _softmax,
    aten._log_softmax.default: lambda b, x, d, half_to_float=False: _softmax(b, x, d, log=True),
    aten.native_layer_norm.default: _layer_norm, aten.native_batch_norm.default: None,  # Importer.batch_norm
    aten._native_batch_norm_legit_no_training.default: _batch_norm_eval,
    aten._native_batch_norm_legit_functional.default: _batch_norm_train,
    aten.nll_loss_forward.default: _nll_loss,
    aten.max_pool2d.default: _max_pool2d, aten.avg_pool2d.default: _avg_pool2d,
    aten.any.dim: lambda b, x, d, keepdim=False: _any(b, x, d, keepdim),
    aten.any.default: lambda b, x: _any(b, x, None, False),
    aten.max_pool2d_with_indices.default: _max_pool2d_with_indices,
    aten.empty.memory_format: lambda b, size, dtype=None, **kw: _full(b, size, 0, dtype),
    # sources
    aten.full.default: _full, aten.scalar_tensor.default: _scalar_tensor, aten.arange.start_step: _arange,
    aten.arange.default: _arange, aten.arange.start: _arange,
    aten.zeros_like.default: _like(0), aten.ones_like.default: _like(1), aten.full_like.default: _full_like,
}
