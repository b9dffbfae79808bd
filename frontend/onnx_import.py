"""ONNX models (opset 13 onwards) imported into Axon IR: `axon.import_onnx(path)`, and `axon run/show/
compile/bench model.onnx`. Needs the `onnx` package (`pip install axon[onnx]`).

Graph inputs become Axon inputs (a `dim_param` a symbolic size), initializers become parameters with
their values (`Imported.params`); an initializer or Constant read where the op wants a static value (a
shape, axes, slice bounds, a pad amount) is read as that value. Shapes come from ONNX's shape
inference and the Axon builder's own checks. Each op type is one function in `ONNX`; an op type not
there, or an attribute a translation does not take, is refused with the node's name and op type.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from axon.ir import AxonError, DType, Graph, GraphBuilder, Node, OpKind
from axon.ir.shapes import Sym

K = OpKind
MIN_OPSET = 13


class OnnxError(AxonError):
    """An ONNX model Axon cannot import: the file, the node and why."""


@dataclass
class Imported:
    graph: Graph
    params: dict[str, torch.Tensor]
    inputs: dict[str, str]          # ONNX input name -> Axon input name


# ONNX TensorProto element types -> Axon dtypes (those Axon has)
_DTYPES = {1: DType.F32, 2: DType.U8, 3: DType.I8, 6: DType.I32, 7: DType.I64, 9: DType.BOOL, 10: DType.F16,
           11: DType.F64, 16: DType.BF16}


def dtype_of(elem: int, where: str) -> DType:
    if elem not in _DTYPES:
        import onnx

        name = onnx.TensorProto.DataType.Name(elem) if elem in onnx.TensorProto.DataType.values() else elem
        raise OnnxError(f"{where}: element type {name} has no Axon dtype")
    return _DTYPES[elem]


def load(path: str | Path):
    try:
        import onnx
    except ImportError:
        raise OnnxError("importing ONNX needs the onnx package", hint="pip install 'axon[onnx]'") from None
    p = Path(path)
    try:
        model = onnx.load(str(p))
    except Exception as e:  # a damaged protobuf
        raise OnnxError(f"{p}: not a readable ONNX model ({type(e).__name__}: {e})") from None
    return model


def import_onnx(path_or_model, name: str | None = None, static: dict | None = None) -> Imported:
    """The Axon graph and parameter values of an ONNX model (a path or a loaded ModelProto). Graph inputs
    named in `static` are fixed to those values (arrays): a shape or axes input becomes a constant."""
    import onnx

    model = load(path_or_model) if isinstance(path_or_model, (str, Path)) else path_or_model
    where = str(path_or_model) if isinstance(path_or_model, (str, Path)) else "<model>"
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise OnnxError(f"{where}: opset {opset}; Axon imports opset {MIN_OPSET} onwards",
                        hint="convert it with onnx.version_converter.convert_version(model, 13)")
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a help, not a requirement: the builder checks shapes anyway
        pass
    return _Importer(model, where, opset, name, static or {}).run()


class _Importer:
    def __init__(self, model, where: str, opset: int, name: str | None, static: dict):
        import onnx.numpy_helper as nh

        self.model, self.where, self.opset = model, where, opset
        g = model.graph
        self.b = GraphBuilder(_ident(name or g.name or "onnx"))
        self.consts: dict[str, np.ndarray] = {init.name: nh.to_array(init) for init in g.initializer}
        self.consts.update({k: np.asarray(v) for k, v in static.items()})
        self.inputs: dict[str, str] = {}
        self.env: dict[str, Node | None] = {}
        self.params: dict[str, torch.Tensor] = {}
        self.names: dict[str, str] = {}

    def run(self) -> Imported:
        g = self.model.graph
        for vi in g.input:
            if vi.name in self.consts:
                continue
            t = vi.type.tensor_type
            shape = tuple(_dim(d, vi.name) for d in t.shape.dim)
            self.env[vi.name] = self.b.input(self._name(vi.name), dtype_of(t.elem_type, vi.name), shape)
            self.inputs[vi.name] = self._name(vi.name)
        for node in g.node:
            self.node(node)
        for vi in g.output:
            v = self.tensor(vi.name, f"output '{vi.name}'")
            self.b.output(self._name(vi.name), v)
        return Imported(self.b.build(), self.params, self.inputs)

    def _name(self, onnx_name: str) -> str:
        if onnx_name not in self.names:
            base = _ident(onnx_name)
            name, i = base, 1
            while name in self.names.values():
                i += 1
                name = f"{base}_{i}"
            self.names[onnx_name] = name
        return self.names[onnx_name]

    def tensor(self, name: str, what: str) -> Node:
        """The value named `name` as a graph node (an initializer becomes a parameter on first use)."""
        if name in self.env and self.env[name] is not None:
            return self.env[name]
        if name in self.consts:
            arr = self.consts[name]
            dt = _np_dtype(arr.dtype, what)
            if arr.ndim == 0 or arr.dtype.kind in "iub" and arr.size <= 64:  # indices, flags: literals
                node = self.b.tensor(arr.reshape(-1).tolist(), dt, tuple(arr.shape)) if arr.ndim else \
                    self.b.const(arr.item(), dt)
            else:
                node = self.b.param(self._name(name), dt, tuple(arr.shape))
                self.params[node.attrs.name] = torch.from_numpy(np.array(arr))
            self.env[name] = node
            return node
        raise OnnxError(f"{self.where}: {what} reads '{name}', which nothing defines")

    def foldable(self, node) -> bool:
        """A node whose inputs are all known at import (shape arithmetic): computed now, by ONNX's own
        reference evaluator, instead of compiled."""
        ins = [i for i in node.input if i]
        return node.op_type not in ("Constant", "RandomNormal", "RandomUniform", "Dropout") and bool(ins) \
            and all(i in self.consts and self.consts[i].size <= 4096 for i in ins)

    def fold(self, node) -> None:
        import onnx
        from onnx import helper as oh
        from onnx.reference import ReferenceEvaluator

        ins = [i for i in node.input if i]
        graph = oh.make_graph([node], "fold", [oh.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None)
                                               for i in ins],
                              [oh.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                               for o in node.output if o])
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", self.opset)])
        try:
            outs = ReferenceEvaluator(model).run(None, {i: self.consts[i] for i in ins})
        except Exception as e:
            raise OnnxError(f"{self.where}: node '{node.name or node.output[0]}' ({node.op_type}): its "
                            f"constant inputs could not be folded ({type(e).__name__}: {e})") from None
        for name, v in zip([o for o in node.output if o], outs):
            self.consts[name] = np.asarray(v)

    def node_const(self, name: str) -> bool:
        return name in self.consts

    def const(self, name: str, what: str) -> np.ndarray:
        if name in self.consts:
            return self.consts[name]
        raise OnnxError(f"{self.where}: {what} needs '{name}' to be a constant (an initializer or a "
                        f"Constant node), not a value computed at run time")

    def node(self, node) -> None:
        what = f"node '{node.name or node.output[0]}' ({node.op_type})"
        if node.domain not in ("", "ai.onnx"):
            raise OnnxError(f"{self.where}: {what}: domain '{node.domain}' is not supported")
        fn = ONNX.get(node.op_type)
        if fn is None:
            raise OnnxError(f"{self.where}: {what}: op type {node.op_type} has no Axon translation",
                            hint="supported: " + ", ".join(sorted(ONNX)))
        import onnx.helper as oh

        attrs = {a.name: oh.get_attribute_value(a) for a in node.attribute}
        attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
        if self.foldable(node):
            return self.fold(node)
        ctx = _Ctx(self, node, what)
        try:
            outs = fn(ctx, attrs)
        except OnnxError:
            raise
        except (AxonError, ValueError, TypeError, IndexError, KeyError) as e:
            raise OnnxError(f"{self.where}: {what}: {e}") from None
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        for name, v in zip(node.output, outs):
            if not name:
                continue
            if isinstance(v, np.ndarray):  # a value known at import time (a Constant, a folded Shape)
                self.consts[name] = v
            else:
                self.env[name] = v


class _Ctx:
    """What a translation sees: the builder, the node's inputs as nodes or constants, its name."""

    def __init__(self, imp: _Importer, node, what: str):
        self.imp, self.node, self.what, self.b = imp, node, what, imp.b

    def n(self) -> int:
        return len(self.node.input)

    def has(self, i: int) -> bool:
        return i < len(self.node.input) and bool(self.node.input[i])

    def x(self, i: int) -> Node:
        return self.imp.tensor(self.node.input[i], self.what)

    def c(self, i: int) -> np.ndarray:
        return self.imp.const(self.node.input[i], self.what)

    def refuse(self, why: str):
        raise OnnxError(f"{self.imp.where}: {self.what}: {why}")


def _ident(s: str) -> str:
    out = "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in s) or "v"
    return out if out[0].isalpha() or out[0] == "_" else "v" + out


def _dim(d, name: str):
    if d.HasField("dim_value"):
        return int(d.dim_value)
    if d.HasField("dim_param"):
        return Sym.of(_ident(d.dim_param).replace(".", "_"))
    raise OnnxError(f"input '{name}' has a dimension with neither a size nor a name")


def _np_dtype(dt: np.dtype, what: str) -> DType:
    try:
        return DType.from_torch(torch.from_numpy(np.zeros(0, dtype=dt)).dtype)
    except Exception:
        raise OnnxError(f"{what}: constant of numpy dtype {dt} has no Axon dtype") from None


# --- translations ---------------------------------------------------------------------------------
def _unary(op):
    return lambda c, a: getattr(c.b, op)(c.x(0))


def _binary(op):
    return lambda c, a: getattr(c.b, op)(c.x(0), c.x(1))


def _variadic(op):
    def f(c, a):
        out = c.x(0)
        for i in range(1, c.n()):
            out = getattr(c.b, op)(out, c.x(i))
        return out
    return f


def _axes(c: _Ctx, a: dict, rank: int, input_index: int = 1):
    if "axes" in a:
        axes = list(a["axes"])
    elif c.has(input_index):
        axes = [int(v) for v in c.c(input_index).reshape(-1)]
    else:
        return None
    return tuple(sorted(ax % rank for ax in axes)) if rank else ()


def _reduce(op):
    def f(c, a):
        x = c.x(0)
        axes = _axes(c, a, len(x.shape))
        if axes is None:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = tuple(range(len(x.shape)))
        if axes == () and a.get("noop_with_empty_axes", 0):
            return x
        axes = axes or tuple(range(len(x.shape)))
        keep = bool(a.get("keepdims", 1))
        if op in (K.MAX, K.MIN) and any(x.shape[ax] == 0 for ax in axes):  # ONNX: -inf / +inf (or bool)
            shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keep or i not in axes)
            if x.dtype == DType.BOOL:
                empty = op == K.MIN
            else:
                empty = float("-inf") if op == K.MAX else float("inf")
            if not x.dtype.is_float and x.dtype != DType.BOOL:
                c.refuse("an integer max/min over an empty axis")
            return c.b.const(empty, x.dtype, shape)
        if x.dtype == DType.BOOL and op in (K.MAX, K.MIN):  # any / all
            return c.b.ne(c.b.reduce(op, c.b.cast(x, DType.I32), axes, keep), 0)
        return c.b.reduce(op, x, axes, keep)
    return f


def _softmax(log=False):
    def f(c, a):
        x = c.x(0)
        axis = a.get("axis", -1) % len(x.shape)
        m = c.b.max(x, axis, keepdim=True)
        s = c.b.sub(x, m)
        e = c.b.exp(s)
        t = c.b.sum(e, axis, keepdim=True)
        return c.b.sub(s, c.b.log(t)) if log else c.b.div(e, t)
    return f


def _matmul(c, a):
    x, y = c.x(0), c.x(1)
    if len(x.shape) == 1 or len(y.shape) == 1:
        x1 = c.b.reshape(x, (1, x.shape[0])) if len(x.shape) == 1 else x
        y1 = c.b.reshape(y, (y.shape[0], 1)) if len(y.shape) == 1 else y
        out = c.b.matmul(x1, y1)
        shape = tuple(out.shape[:-2]) + (() if len(x.shape) == 1 else (out.shape[-2],)) + \
            (() if len(y.shape) == 1 else (out.shape[-1],))
        return c.b.reshape(out, shape)
    return c.b.matmul(x, y)


def _gemm(c, a):
    x, y = c.x(0), c.x(1)
    if a.get("transA", 0):
        x = c.b.transpose(x)
    if a.get("transB", 0):
        y = c.b.transpose(y)
    out = c.b.matmul(x, y)
    if a.get("alpha", 1.0) != 1.0:
        out = c.b.mul(out, float(a["alpha"]))
    if c.has(2):
        bias = c.x(2)
        out = c.b.add(out, bias if a.get("beta", 1.0) == 1.0 else c.b.mul(bias, float(a["beta"])))
    return out


def _reshape(c, a):
    x = c.x(0)
    shape = [int(v) for v in c.c(1)]
    if a.get("allowzero", 0) and 0 in shape:
        return c.b.reshape(x, shape)
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return c.b.reshape(x, shape)


def _transpose(c, a):
    x = c.x(0)
    perm = a.get("perm", list(range(len(x.shape)))[::-1])
    return c.b.permute(x, perm)


def _flatten(c, a):
    x = c.x(0)
    axis = a.get("axis", 1)
    axis = axis + len(x.shape) if axis < 0 else axis
    lead = math.prod(x.shape[:axis]) if all(isinstance(d, int) for d in x.shape[:axis]) else None
    rest = math.prod(x.shape[axis:]) if all(isinstance(d, int) for d in x.shape[axis:]) else None
    if lead is None and rest is None:
        c.refuse("Flatten with symbolic sizes on both sides")
    return c.b.reshape(x, (lead if lead is not None else -1, rest if rest is not None else -1))


def _squeeze(c, a):
    x = c.x(0)
    axes = _axes(c, a, len(x.shape))
    axes = axes if axes is not None else tuple(i for i, d in enumerate(x.shape) if d == 1)
    return c.b.reshape(x, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def _unsqueeze(c, a):
    x = c.x(0)
    rank = len(x.shape) + len(a["axes"] if "axes" in a else c.c(1).reshape(-1))
    axes = sorted(ax % rank for ax in (a["axes"] if "axes" in a else c.c(1).reshape(-1)))
    shape, it = [], iter(x.shape)
    for i in range(rank):
        shape.append(1 if i in axes else next(it))
    return c.b.reshape(x, shape)


def _concat(c, a):
    xs = [c.x(i) for i in range(c.n())]
    return c.b.concat(xs, a["axis"] % len(xs[0].shape))


def _gather(c, a):
    x, index = c.x(0), c.x(1)
    return c.b.take(x, index, a.get("axis", 0) % len(x.shape))


def _gather_elements(c, a):
    x, index = c.x(0), c.x(1)
    axis = a.get("axis", 0) % len(x.shape)
    return c.b.gather(x, axis, _index(c, index, x.shape[axis]))


def _slice(c, a):
    x = c.x(0)
    starts, ends = c.c(1).reshape(-1), c.c(2).reshape(-1)
    axes = c.c(3).reshape(-1) if c.has(3) else np.arange(len(starts))
    steps = c.c(4).reshape(-1) if c.has(4) else np.ones(len(starts), dtype=np.int64)
    out = x
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax = int(ax) % len(x.shape)
        size = x.shape[ax]
        if not isinstance(size, int):
            c.refuse("Slice of a symbolic axis")
        s, e, st = int(s), int(e), int(st)
        idx = list(range(size))[slice(s, e, st)]  # Python's slice rules are ONNX's (clamping, negatives)
        if not idx:
            shape = tuple(0 if i == ax else d for i, d in enumerate(out.shape))
            return c.b.const(0, out.dtype, shape)
        if st > 0:
            out = c.b.slice(out, ax, idx[0], idx[-1] + 1, st)
        else:
            out = c.b.take(out, c.b.tensor(idx, DType.I64), ax)
    return out


def _cast(c, a):
    return c.b.cast(c.x(0), dtype_of(a["to"], c.what))


def _where(c, a):
    return c.b.where(c.x(0), c.x(1), c.x(2))


def _clip(c, a):
    x = c.x(0)
    if c.has(1):
        x = c.b.maximum(x, c.x(1))
    if c.has(2):
        x = c.b.minimum(x, c.x(2))
    return x


def _leaky(c, a):
    x = c.x(0)
    return c.b.where(c.b.lt(x, 0.0), c.b.mul(x, float(a.get("alpha", 0.01))), x)


def _elu(c, a):
    x = c.x(0)
    return c.b.where(c.b.lt(x, 0.0), c.b.mul(c.b.sub(c.b.exp(x), 1.0), float(a.get("alpha", 1.0))), x)


def _selu(c, a):
    x = c.x(0)
    alpha = float(a.get("alpha", 1.67326319217681884765625))
    gamma = float(a.get("gamma", 1.05070102214813232421875))
    neg = c.b.mul(c.b.sub(c.b.exp(x), 1.0), alpha)
    return c.b.mul(c.b.where(c.b.le(x, 0.0), neg, x), gamma)


def _hard_sigmoid(c, a):
    x = c.x(0)
    y = c.b.add(c.b.mul(x, float(a.get("alpha", 0.2))), float(a.get("beta", 0.5)))
    return c.b.minimum(c.b.maximum(y, 0.0), 1.0)


def _softplus(c, a):
    x = c.x(0)
    return c.b.log(c.b.add(c.b.exp(x), 1.0))


def _gelu(c, a):
    x = c.x(0)
    if a.get("approximate", "none") == "tanh":
        inner = c.b.mul(c.b.add(x, c.b.mul(c.b.mul(c.b.mul(x, x), x), 0.044715)), math.sqrt(2 / math.pi))
        return c.b.mul(c.b.mul(x, 0.5), c.b.add(c.b.tanh(inner), 1.0))
    return c.b.mul(c.b.mul(x, 0.5), c.b.add(c.b.erf(c.b.mul(x, 1 / math.sqrt(2))), 1.0))


def _identity(c, a):
    return c.x(0)


def _dropout(c, a):
    x = c.x(0)
    training = bool(c.c(2).reshape(-1)[0]) if c.has(2) else False
    ratio = float(c.c(1).reshape(-1)[0]) if c.has(1) and c.imp.node_const(c.node.input[1]) else 0.5
    if training and ratio > 0:
        c.refuse("Dropout in training mode (its random mask cannot match another runtime's)")
    return [x, c.b.const(True, DType.BOOL, x.shape)]


def _constant(c, a):
    import onnx.numpy_helper as nh

    if "value" in a:
        return nh.to_array(a["value"])
    for key, kind in (("value_float", np.float32), ("value_int", np.int64)):
        if key in a:
            return np.array(a[key], dtype=kind)
    for key, kind in (("value_floats", np.float32), ("value_ints", np.int64)):
        if key in a:
            return np.array(list(a[key]), dtype=kind)
    c.refuse("a Constant of a kind Axon does not read (sparse or string)")


def _shape(c, a):
    x = c.x(0)
    if not all(isinstance(d, int) for d in x.shape):
        c.refuse("Shape of a tensor with symbolic sizes")
    shape = np.array(x.shape, dtype=np.int64)
    return shape[a.get("start", 0):a.get("end", len(shape))]


def _expand(c, a):
    x = c.x(0)
    shape = [int(v) for v in c.c(1)]
    rank = max(len(shape), len(x.shape))
    src = (1,) * (rank - len(x.shape)) + tuple(x.shape)
    want = (1,) * (rank - len(shape)) + tuple(shape)
    out = tuple(s if w == 1 else w for s, w in zip(src, want))
    if len(x.shape) < rank:
        x = c.b.reshape(x, src)
    return c.b.expand(x, out)


def _layer_norm(c, a):
    x = c.x(0)
    axis = a.get("axis", -1) % len(x.shape)
    axes = tuple(range(axis, len(x.shape)))
    mean = c.b.mean(x, axes, keepdim=True)
    d = c.b.sub(x, mean)
    rstd = c.b.rsqrt(c.b.add(c.b.mean(c.b.mul(d, d), axes, keepdim=True), float(a.get("epsilon", 1e-5))))
    out = c.b.mul(c.b.mul(d, rstd), c.x(1))
    if c.has(2):
        out = c.b.add(out, c.x(2))
    return [out, mean, rstd]


def _batch_norm(c, a):
    x = c.x(0)
    shape = (1, x.shape[1]) + (1,) * (len(x.shape) - 2)
    scale, bias, mean, var = (c.b.reshape(c.x(i), shape) for i in range(1, 5))
    eps = float(a.get("epsilon", 1e-5))
    if not a.get("training_mode", 0):
        inv = c.b.rsqrt(c.b.add(var, eps))
        return c.b.add(c.b.mul(c.b.mul(c.b.sub(x, mean), inv), scale), bias)
    axes = (0,) + tuple(range(2, len(x.shape)))  # training: the batch's statistics, running ones updated
    m = c.b.mean(x, axes, keepdim=True)
    d = c.b.sub(x, m)
    v = c.b.mean(c.b.mul(d, d), axes, keepdim=True)
    y = c.b.add(c.b.mul(c.b.mul(d, c.b.rsqrt(c.b.add(v, eps))), scale), bias)
    momentum = float(a.get("momentum", 0.9))
    flat = (x.shape[1],)
    run_mean = c.b.add(c.b.mul(c.x(3), momentum), c.b.mul(c.b.reshape(m, flat), 1 - momentum))
    run_var = c.b.add(c.b.mul(c.x(4), momentum), c.b.mul(c.b.reshape(v, flat), 1 - momentum))
    return [y, run_mean, run_var]


def _conv(c, a):
    x, w = c.x(0), c.x(1)
    if len(x.shape) == 3:  # 1-D: a 2-D conv over a height of 1
        a = {**a, **{k: [1] * (1 if k != "pads" else 2) + list(a[k]) if k != "pads" else
                     [0, a[k][0], 0, a[k][1]] for k in ("strides", "dilations", "pads", "kernel_shape")
                     if k in a}}
        x2 = c.b.reshape(x, (x.shape[0], x.shape[1], 1, x.shape[2]))
        w2 = c.b.reshape(w, (w.shape[0], w.shape[1], 1, w.shape[2]))
        out = _conv2d(c, a, x2, w2)
        return c.b.reshape(out, (out.shape[0], out.shape[1], out.shape[3]))
    if len(x.shape) != 4:
        c.refuse("Conv other than 1-D or 2-D")
    return _conv2d(c, a, x, w)


def _conv2d(c, a, x, w):
    auto = a.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    strides, dil = tuple(a.get("strides", (1, 1))), tuple(a.get("dilations", (1, 1)))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0, 0, 0, 0]
        for i in range(2):
            size, k = x.shape[2 + i], w.shape[2 + i]
            total = max((-(-size // strides[i]) - 1) * strides[i] + (k - 1) * dil[i] + 1 - size, 0)
            small = total // 2
            pads[i], pads[i + 2] = (total - small, small) if auto == "SAME_LOWER" else (small, total - small)
    elif auto == "VALID":
        pads = [0, 0, 0, 0]
    if pads[0] != pads[2] or pads[1] != pads[3]:  # uneven: a padded copy, then an unpadded conv
        x = c.b.pad(x, [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
        pads = [0, 0, 0, 0]
    out = c.b.conv2d(x, w, stride=strides, padding=(pads[0], pads[1]), dilation=dil,
                     groups=int(a.get("group", 1)))
    if c.has(2):
        out = c.b.add(out, c.b.reshape(c.x(2), (w.shape[0], 1, 1)))
    return out


def _pad(c, a):
    mode = a.get("mode", "constant")
    if mode not in ("constant", "edge", "reflect", "wrap"):
        c.refuse(f"Pad mode {mode}")
    x = c.x(0)
    pads = [int(v) for v in c.c(1)]
    value = float(c.c(2).reshape(-1)[0]) if c.has(2) else 0.0
    rank = len(x.shape)
    axes = [int(v) % rank for v in c.c(3)] if c.has(3) else list(range(rank))
    pairs = [(0, 0)] * rank
    for i, ax in enumerate(axes):
        before, after = pads[i], pads[i + len(axes)]
        if before < 0 or after < 0:
            c.refuse("negative padding")
        pairs[ax] = (before, after)
    if mode == "constant":
        return c.b.pad(x, pairs, value)
    for ax, (before, after) in enumerate(pairs):  # the other modes: a gather of existing indices
        size = x.shape[ax]
        if before == after == 0:
            continue
        if not isinstance(size, int):
            c.refuse(f"Pad mode {mode} on a symbolic axis")
        idx = [_pad_index(i, size, mode) for i in range(-before, size + after)]
        x = c.b.take(x, c.b.tensor(idx, DType.I64), ax)
    return x


def _pad_index(i: int, size: int, mode: str) -> int:
    if mode == "edge":
        return min(max(i, 0), size - 1)
    if mode == "wrap":
        return i % size
    period = 2 * (size - 1) or 1  # reflect: mirror without repeating the edge
    j = i % period
    return j if j < size else period - j


def _arg(op):
    def f(c, a):
        x = c.x(0)
        axis = a.get("axis", 0) % len(x.shape)
        keep = bool(a.get("keepdims", 1))
        if not a.get("select_last_index", 0):
            return c.b.reduce(op, x, axis, keep)
        size = x.shape[axis]  # the last of equal values: the first of the reversed axis, counted back
        flipped = c.b.take(x, c.b.tensor(list(range(size - 1, -1, -1)), DType.I64), axis)
        return c.b.sub(size - 1, c.b.reduce(op, flipped, axis, keep))
    return f


def _sum(c, a):
    return _variadic("add")(c, a)


def _mean(c, a):
    return c.b.div(_variadic("add")(c, a), float(c.n()))


def _div(c, a):
    x, y = c.x(0), c.x(1)
    if x.dtype.is_float:
        return c.b.div(x, y)
    q = c.b.div(c.b.cast(x, DType.F64), c.b.cast(y, DType.F64))  # integers: truncated toward zero
    return c.b.cast(c.b.mul(c.b.sign(q), c.b.floor(c.b.abs(q))), x.dtype)


def _index(c, index: Node, size: int) -> Node:
    """Negative indices counted from the end, as ONNX's Gather/GatherElements take them."""
    return c.b.where(c.b.lt(index, 0), c.b.add(index, size), index)


def _not(c, a):
    return c.b.logical_not(c.x(0))


def _pow(c, a):
    x, y = c.x(0), c.x(1)
    return c.b.pow(x, c.b.cast(y, x.dtype) if y.dtype != x.dtype else y)


ONNX = {
    "Abs": _unary("abs"), "Neg": _unary("neg"), "Exp": _unary("exp"), "Log": _unary("log"),
    "Sqrt": _unary("sqrt"), "Reciprocal": _unary("recip"), "Relu": _unary("relu"),
    "Sigmoid": _unary("sigmoid"), "Tanh": _unary("tanh"), "Erf": _unary("erf"), "Sin": _unary("sin"),
    "Cos": _unary("cos"), "Floor": _unary("floor"), "Ceil": _unary("ceil"), "Sign": _unary("sign"),
    "Not": _not, "Add": _binary("add"), "Sub": _binary("sub"), "Mul": _binary("mul"), "Div": _div,
    "Pow": _pow, "Equal": _binary("eq"), "Less": _binary("lt"), "LessOrEqual": _binary("le"),
    "Greater": _binary("gt"), "GreaterOrEqual": _binary("ge"), "And": _binary("logical_and"),
    "Or": _binary("logical_or"), "Max": _variadic("maximum"), "Min": _variadic("minimum"), "Sum": _sum,
    "Mean": _mean, "Where": _where, "Cast": _cast, "Clip": _clip, "LeakyRelu": _leaky, "Elu": _elu,
    "Selu": _selu, "HardSigmoid": _hard_sigmoid, "Softplus": _softplus, "Gelu": _gelu,
    "MatMul": _matmul, "Gemm": _gemm, "Conv": _conv, "Reshape": _reshape, "Transpose": _transpose,
    "Flatten": _flatten, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Concat": _concat,
    "Gather": _gather, "GatherElements": _gather_elements, "Slice": _slice, "Expand": _expand,
    "Identity": _identity, "Dropout": _dropout, "Constant": _constant, "Shape": _shape, "Pad": _pad,
    "Softmax": _softmax(), "LogSoftmax": _softmax(log=True), "ReduceSum": _reduce(K.SUM),
    "ReduceMean": _reduce(K.MEAN), "ReduceMax": _reduce(K.MAX), "ReduceMin": _reduce(K.MIN),
    "ArgMax": _arg(K.ARGMAX), "ArgMin": _arg(K.ARGMIN), "LayerNormalization": _layer_norm,
    "BatchNormalization": _batch_norm,
}
