"""Elaboration: the AST of a model, with its functions expanded, to a typed `axon.ir.Graph`.

A model body runs once, at compile time: statements bind names to values (tensors are IR nodes,
sizes and hyper-parameters are Python ints), function calls are expanded inline, loops are unrolled,
and every op goes through `GraphBuilder`, which infers and checks shapes and dtypes. What the builder
rejects comes back as a `ShapeError` or `AxonTypeError` at the line that caused it; a mistake inside
a prelude layer is reported at the user's call, with the layer's line as a note.

Expressions are evaluated with an explicit stack (a 10,000-term sum does not recurse); function calls
nest on the Python stack, at most `MAX_CALL_DEPTH` deep.

>>> from axon.frontend import compile_source
>>> g = compile_source("model M { input x: f32[b, 4]  output y = linear(x, 3) }", "m.axon")
>>> sorted(g.params), str(g.outputs["y"].type)
(['y.b', 'y.w'], 'f32[b, 3]')
"""
from __future__ import annotations

import math
import re

from axon.ir import AxonError, DType, Graph, GraphBuilder, Node, Span, Sym
from axon.ir.errors import Note, did_you_mean

from . import ast as A
from . import typecheck as T
from .builtins import BUILTINS, Builtin
from .errors import (ArityError, AxonNameError, AxonSyntaxError, AxonTypeError, AxonValueError,
                     ShapeError)
from .operators import apply_binary, apply_index, apply_unary
from .program import PRELUDE_PATH, Program
from .report import is_placed, place
from .values import INT_LIMIT, Scope, describe, format_dims, kind_of, show

# Nesting bounds that keep elaboration (which recurses once per call and per block) far from Python's
# recursion limit: about 6 frames per call and 3 per block.
MAX_CALL_DEPTH = 64
MAX_BLOCK_DEPTH = 100  # blocks (loop and if bodies, function bodies) open at once
# Guards against runaway unrolling (a loop bound typed with three zeros too many): the statements
# executed and calls made, and the nodes made. A 1,000-step LSTM takes about 19,000 of each.
MAX_STEPS = 250_000
MAX_NODES = 100_000
# The elements of all compile-time lists made (by `+`, `*`, slicing, list literals, `range`, ...): a
# loop that rebuilds a long list (`repeat 100000 { s = s + [1] }`) is quadratic work in few steps.
MAX_LIST_WORK = 20_000_000
# Elements of one parameter (8 GiB of f32): a size typed with a few zeros too many is caught at the
# call that makes the parameter, not when memory runs out.
MAX_PARAM_ELEMENTS = 2**31
_PRELUDE = str(PRELUDE_PATH)

_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # `{name}` in an assert message
CONSTANTS = {"inf": math.inf, "nan": math.nan, "pi": math.pi, **{d.value: d for d in DType}}

class _Returned:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Frame:
    """One function (or model) being expanded: its variables, parameter scope and call site."""

    __slots__ = ("name", "call_span", "scope", "vars", "is_model", "prelude", "stmt_scope", "declared")

    def __init__(self, name: str, call_span: Span | None, scope: Scope, is_model: bool, prelude: bool):
        self.name = name
        self.call_span = call_span
        self.scope = scope
        self.vars: dict[str, object] = {}
        self.is_model = is_model
        self.prelude = prelude
        # (name, explicit, where it was chosen) for the calls in this statement
        self.stmt_scope: tuple[str, bool, Span] | None = None
        self.declared: dict[str, A.ParamDecl] = {}  # parameter declarations run in this frame


class Elaborator:
    """Expands one model of a `Program` into a graph (see `elaborate`)."""

    def __init__(self, program: Program, *, training: bool = False):
        self.program = program
        self.training = training
        self.frames: list[Frame] = []
        self.b: GraphBuilder | None = None
        self.steps = 0
        self.list_work = 0
        self.depth = 0
        self._stream = 0
        self._outputs: set[str] = set()
        prelude_view = {**BUILTINS, **program.prelude.fns}
        self._visible = {True: prelude_view, False: {**prelude_view, **program.user.fns}}

    # --- the model ---------------------------------------------------------------------------------
    def model(self, name: str, hparams: dict | None = None) -> Graph:
        model = self.program.user.models[name]
        self.b = GraphBuilder(model.name)
        frame = Frame(model.name, None, Scope(None), True, False)
        self.frames.append(frame)
        given = dict(hparams or {})
        known = [p.name for p in model.params]
        for key in given:
            if key not in known:
                raise AxonNameError(f"model '{name}' has no hyper-parameter '{key}'", model.span,
                                    hint=did_you_mean(key, known))
        for p in model.params:
            if p.name in given:
                value = given[p.name]
                if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
                    shown = value if value.bit_length() < 200 else f"a {value.bit_length()}-bit integer"
                    raise AxonValueError(f"hyper-parameter '{p.name}' is set to {shown}, which does "
                                         f"not fit in 64 bits", p.span)
            elif p.default is not None:
                value = self.eval(p.default)
            else:
                raise ArityError(f"model '{name}' needs a value for hyper-parameter '{p.name}'", p.span)
            if p.type is not None:
                where = f"hyper-parameter '{p.name}'"
                value = self._checked(lambda v=value, p=p, w=where: T.match(self, v, p.type, w), p.span)
            elif p.name in given and p.default is not None:
                value = self._like_default(p, value)
            frame.vars[p.name] = value
        self.run(model.body)
        graph = self.b.build()
        if not graph.outputs:
            raise AxonValueError(f"model '{name}' has no output", model.span,
                                 hint="declare one with 'output name = ...'")
        return graph

    def _like_default(self, p: A.Param, value):
        """An override of an untyped hyper-parameter must be of its default's kind (an int for 128)."""
        default = self.eval(p.default)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not type(default):
            shown = T.source_text(p.default.span) or repr(default)
            raise AxonTypeError(f"hyper-parameter '{p.name}' is {kind_of(default)} (default {shown}), "
                                f"got {describe(value)}", p.span)
        return value

    # --- state used by builtins ---------------------------------------------------------------------
    def seed(self) -> Node:
        """The model's `seed: i64[]` input, made on first use (by `rand`, e.g. in dropout)."""
        node = self.b.lookup("seed")
        if node is None:
            return self.b.input("seed", DType.I64, ())
        if node.type.dtype != DType.I64 or node.shape != ():
            raise AxonTypeError(f"'rand' needs the model's input 'seed' to be i64[], but it is {node.type}")
        return node

    def next_stream(self) -> int:
        self._stream += 1
        return self._stream - 1

    # --- statements ---------------------------------------------------------------------------------
    def run(self, stmts) -> _Returned | None:
        frame = self.frames[-1]
        self.depth += 1
        try:
            return self._run(stmts, frame)
        finally:
            self.depth -= 1

    def _run(self, stmts, frame: Frame) -> _Returned | None:
        if self.depth > MAX_BLOCK_DEPTH and stmts:
            raise self.locate(AxonValueError(f"blocks and calls nested more than {MAX_BLOCK_DEPTH} "
                                             f"deep"), stmts[0].span)
        for st in stmts:
            self._tick(st.span)
            frame.stmt_scope = None
            try:
                out = getattr(self, "stmt_" + type(st).__name__)(st, frame)
            except AxonError as err:
                if is_placed(err):
                    raise
                raise self.locate(err, err.span or st.span) from err
            self._check_nodes(st.span)  # a declaration or an output's constant makes nodes, too
            if out is not None:
                return out
        return None

    def stmt_Assign(self, st: A.Assign, frame: Frame):
        frame.stmt_scope = self._scope_name(st.scope, st.targets[0], st.span)
        value = self.eval(st.value)
        if len(st.targets) == 1:
            frame.vars[st.targets[0]] = value
            return None
        if not isinstance(value, tuple) or len(value) != len(st.targets):
            raise AxonTypeError(f"cannot unpack {describe(value)} into {len(st.targets)} names", st.span)
        frame.vars.update(zip(st.targets, value))
        return None

    def stmt_Return(self, st: A.Return, frame: Frame):
        if frame.is_model:
            raise AxonSyntaxError("a model has outputs, not a return value; use 'output name = ...'",
                                  st.span)
        frame.stmt_scope = self._scope_name(st.scope, None, st.span)
        return _Returned(self.eval(st.value))

    def stmt_Output(self, st: A.Output, frame: Frame):
        if not frame.is_model:
            raise AxonSyntaxError("'output' belongs in a model; a function returns its result", st.span)
        frame.stmt_scope = self._scope_name(st.scope, st.name, st.span)
        if st.value is None:
            value = self._lookup(st.name, st.span, frame)
        else:
            value = self.eval(st.value)
        if isinstance(value, (bool, int, float)):
            value = self.b.lift(value)
        if not isinstance(value, Node):
            raise AxonTypeError(f"an output must be a tensor, got {describe(value)}", st.span)
        if st.name in self._outputs:
            raise AxonNameError(f"output '{st.name}' is declared twice", st.span)
        self._outputs.add(st.name)
        self.b.output(st.name, value)
        frame.vars[st.name] = value
        return None

    def stmt_InputDecl(self, st: A.InputDecl, frame: Frame):
        if not frame.is_model:
            raise AxonSyntaxError("'input' belongs in a model; a function takes parameters", st.span)
        dtype = T.dtype_of(st.type)
        dims = tuple(self._checked(lambda d=d: T.input_dim(self, d, frame), d.span)
                     for d in st.type.dims or ())
        if self.b.lookup(st.name) is not None or st.name in frame.vars:
            raise AxonNameError(f"'{st.name}' is already defined", st.span)
        node = self._checked(lambda: self.b.input(st.name, dtype, dims), st.span)
        frame.vars[st.name] = node
        return None

    def stmt_ParamDecl(self, st: A.ParamDecl, frame: Frame):
        first = frame.declared.setdefault(st.name, st)
        if first is not st:  # the same declaration run again (in a loop) is the same parameter
            raise AxonNameError(f"parameter '{st.name}' is declared twice in '{frame.name}'", st.span,
                                notes=[Note("first declared here", first.span)])
        dtype = T.dtype_of(st.type)
        dims = [self._checked(lambda d=d: T.param_dim(self, d), d.span) for d in st.type.dims or ()]
        init = self._checked(lambda: T.initializer(self, st.init), st.init.span)
        self._claim_scopes()
        name = frame.scope.qualify(st.name)
        if math.prod(dims) > MAX_PARAM_ELEMENTS:
            raise AxonValueError(f"parameter '{name}' would hold {math.prod(dims):,} elements "
                                 f"({dtype}{format_dims(dims)}); at most {MAX_PARAM_ELEMENTS:,} are "
                                 f"allowed", st.span, hint="is a size too large?")
        existing = self.b.lookup(name)
        if existing is not None:
            if existing.type.dtype != dtype or existing.shape != tuple(dims):
                raise ShapeError(f"parameter '{name}' is shared (the same 'as' name) but declared here "
                                 f"as {dtype}{format_dims(dims)}, and before as {existing.type}")
            node = existing
        else:
            node = self._checked(lambda: self.b.param(name, dtype, dims, init), st.span)
        frame.vars[st.name] = node
        return None

    def stmt_For(self, st: A.For, frame: Frame):
        start, stop = self._bound(st.start), self._bound(st.stop)
        for i in range(start, stop):
            if st.var is not None:
                frame.vars[st.var] = i
            out = self.run(st.body)
            if out is not None:
                return out
        return None

    def stmt_If(self, st: A.If, frame: Frame):
        while True:  # along an `else if` chain without recursion
            cond = self.eval(st.cond)
            if not isinstance(cond, bool):
                raise self.locate(AxonTypeError(
                    f"an 'if' condition must be a bool known at compile time, got {describe(cond)}",
                    hint="for a condition on tensor values use where(cond, a, b)"), st.cond.span)
            if cond:
                return self.run(st.then)
            if len(st.orelse) == 1 and isinstance(st.orelse[0], A.If):
                st = st.orelse[0]
                continue
            return self.run(st.orelse)

    def stmt_Assert(self, st: A.Assert, frame: Frame):
        cond = self.eval(st.cond)
        if not isinstance(cond, bool):
            raise self.locate(AxonTypeError(f"an assert needs a bool known at compile time, got "
                                            f"{describe(cond)}"), st.cond.span)
        if not cond:
            message = _FIELD.sub(lambda m: self._field(m, frame), st.message or "assertion failed")
            raise self.locate(AxonValueError(message), st.span)
        return None

    def _field(self, m: re.Match, frame: Frame) -> str:
        """`{name}` in an assert message: the variable's value (`got {k}` reads `got 0`)."""
        name = m.group(1)
        return show(frame.vars[name]) if name in frame.vars else m.group(0)

    # --- expressions: post-order with an explicit stack ----------------------------------------------
    def eval(self, expr):
        todo: list[tuple[object, bool]] = [(expr, False)]
        done: list = []
        while todo:
            e, ready = todo.pop()
            kids = _children(e)
            if kids and not ready:
                todo.append((e, True))
                todo.extend((k, False) for k in reversed(kids))
                continue
            args = done[len(done) - len(kids):] if kids else []
            if kids:
                del done[len(done) - len(kids):]
            try:
                done.append(self._apply(e, args))
            except AxonError as err:
                if is_placed(err):
                    raise
                raise self.locate(err, err.span or e.span) from err
            self._check_nodes(e.span)
        (value,) = done
        return value

    def _apply(self, e, args):
        frame = self.frames[-1]
        if isinstance(e, A.Name):
            return self._lookup(e.name, e.span, frame)
        if isinstance(e, (A.Num, A.Bool, A.Str)):
            return e.value
        if isinstance(e, A.Binary):
            out = apply_binary(self.b, e.op, args[0], args[1])
        elif isinstance(e, A.Unary):
            out = apply_unary(self.b, e.op, args[0])
        elif isinstance(e, A.ListLit):
            out = tuple(args)
        elif isinstance(e, A.Index):
            out = apply_index(self.b, args[0], e.items, args[1:])
        elif isinstance(e, A.Call):
            out = self.call(e, args[:len(e.args)], args[len(e.args):])
        else:
            raise AssertionError(f"unknown expression {type(e).__name__}")
        if isinstance(out, tuple):  # a new list: its length is work done
            self.list_work += len(out)
            if self.list_work > MAX_LIST_WORK:
                raise self.locate(AxonValueError(f"the program builds more than {MAX_LIST_WORK:,} "
                                                 f"list elements; is a loop rebuilding a long list?"),
                                  e.span)
        return out

    def _lookup(self, name: str, span: Span, frame: Frame):
        if name in frame.vars:
            return frame.vars[name]
        if name == "training":
            return self.training
        if name in CONSTANTS:
            return CONSTANTS[name]
        if name in self.visible(frame):
            raise AxonTypeError(f"'{name}' is a function; call it as {name}(...)", span)
        raise self.locate(AxonNameError(f"unknown name '{name}'",
                                        hint=did_you_mean(name, list(frame.vars) + list(CONSTANTS))),
                          span)

    # --- calls --------------------------------------------------------------------------------------
    def visible(self, frame: Frame) -> dict:
        """What a call in this frame can reach: the prelude sees itself and the built-ins; user code
        sees its own functions first, then the prelude's, then the built-ins."""
        return self._visible[frame.prelude]

    @property
    def output_names(self) -> set[str]:
        return set(self._outputs)

    def call(self, e: A.Call, args: list, kwvalues: list):
        frame = self.frames[-1]
        target = self.visible(frame).get(e.func)
        if target is None:
            if e.func in self.program.user.models:
                raise AxonTypeError(f"'{e.func}' is a model; only functions can be called", e.func_span)
            raise self.locate(AxonNameError(f"unknown function '{e.func}'",
                                            hint=did_you_mean(e.func, self.visible(frame))),
                              e.func_span)
        self._tick(e.span)  # after the name: a call that cannot be made does no work to count
        kwargs = [(k.name, v, k.span) for k, v in zip(e.kwargs, kwvalues)]
        if isinstance(target, Builtin):
            bound = self.bind(e, target.name, target.params, target.defaults, args, kwargs)
            try:
                return target.fn(self, *(bound[p][0] for p in target.params))
            except AxonError as err:
                if is_placed(err):
                    raise
                raise self.locate(err, err.span or e.span) from err
        return self.call_fn(target, e, args, kwargs)

    def bind(self, e: A.Call, fname: str, params, defaults: dict, args: list, kwargs: list) -> dict:
        """Match positional and keyword arguments to parameters: name -> (value, span)."""
        if len(args) > len(params):
            extra = e.args[len(params)]
            raise self.locate(ArityError(f"'{fname}' takes {len(params)} argument"
                                         f"{'s' if len(params) != 1 else ''} ({', '.join(params)}), "
                                         f"got {len(args) + len(kwargs)}"), extra.span)
        bound = {p: (v, a.span) for p, v, a in zip(params, args, e.args)}
        for name, value, span in kwargs:
            if name not in params:
                raise self.locate(ArityError(f"'{fname}' has no parameter '{name}'",
                                             hint=did_you_mean(name, params)), span)
            if name in bound:
                raise self.locate(ArityError(f"argument '{name}' of '{fname}' is given twice"), span)
            bound[name] = (value, span)
        for p in params:
            if p not in bound:
                if p not in defaults:
                    raise self.locate(ArityError(f"'{fname}' is missing argument '{p}'"), e.span)
                bound[p] = (defaults[p], e.span)
        return bound

    def call_fn(self, fn: A.FnDef, e: A.Call, args: list, kwargs: list):
        """Expand a call of an Axon function: a new frame, its arguments checked against the declared
        types (a mismatch is the caller's mistake, reported at the argument), then the body."""
        caller = self.frames[-1]
        if len(self.frames) > MAX_CALL_DEPTH:
            raise self.locate(AxonValueError(f"calls nested more than {MAX_CALL_DEPTH} deep "
                                             f"(does '{fn.name}' call itself?)"), e.span)
        names = [p.name for p in fn.params]
        defaults = {p.name: None for p in fn.params if p.default is not None}
        bound = self.bind(e, fn.name, names, defaults, args, kwargs)
        given = {name for name, _v, _s in kwargs} | set(names[:len(args)])
        base, explicit, where = caller.stmt_scope or (fn.name, False, e.span)
        frame = Frame(fn.name, e.span, Scope(caller.scope, base or fn.name, explicit, where), False,
                      fn.span.file == _PRELUDE)
        self.frames.append(frame)
        try:
            for p in fn.params:
                value, span = bound[p.name]
                if p.name in given:
                    value = self._argument(fn, p, value, span, frame)
                else:
                    value = self.eval(p.default)
                    if p.type is not None:
                        where = f"the default of '{p.name}'"
                        value = self._checked(lambda v=value, p=p, w=where: T.match(self, v, p.type, w),
                                              p.span)
                frame.vars[p.name] = value
            result = self.run(fn.body)
        finally:
            self.frames.pop()
        if result is None or result.value is None:
            raise self.locate(AxonTypeError(f"'{fn.name}' returns no value"), e.span)
        return result.value

    def _argument(self, fn: A.FnDef, p: A.Param, value, span: Span, frame: Frame):
        try:
            if p.type is not None:
                value = T.match(self, value, p.type, f"argument '{p.name}' of '{fn.name}'")
            if p.name in frame.vars and frame.vars[p.name] != value:  # also a size in a type
                raise ShapeError(f"argument '{p.name}' of '{fn.name}' is {show(value)}, but the shapes "
                                 f"of the other arguments make it {show(frame.vars[p.name])}")
        except AxonError as err:
            if is_placed(err):
                raise
            declared = T.type_text(p.type) if p.type is not None else "?"
            note = Note(f"'{fn.name}' declares {p.name}: {declared} here", p.span)
            raise self.locate(err, span, [note], depth=-1) from err
        return value

    # --- helpers ------------------------------------------------------------------------------------
    def _scope_name(self, scope: A.ScopeName | None, default: str | None, span: Span):
        if scope is None:
            return (default, False, span) if default else None
        parts = [scope.name]
        for ix in scope.indices:
            v = self.eval(ix)
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise AxonTypeError(f"a name index must be an int, got {describe(v)}", ix.span)
            parts.append(str(v))
        return (".".join(parts), True, scope.span)

    def _claim_scopes(self) -> None:
        """Claim the scope names of the active calls, outermost first, so that a clash of names (see
        `Scope`) is reported in the code that chose the name, seen from its callers."""
        for i, f in enumerate(self.frames):
            try:
                f.scope.path()
            except AxonNameError as err:
                raise place(err, err.span, self.frames[:i]) from None

    def _bound(self, expr) -> int:
        v = self.eval(expr)
        if isinstance(v, bool) or not isinstance(v, int):
            hint = "a loop is unrolled, so its bounds must be known" if isinstance(v, Sym) else None
            raise self.locate(AxonTypeError(f"a loop bound must be a known int, got {describe(v)}",
                                            hint=hint), expr.span)
        return v

    def _tick(self, span: Span) -> None:
        """Count a statement or call about to run at `span`; past MAX_STEPS, stop there."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise self.locate(AxonValueError(f"the program unrolls to more than {MAX_STEPS:,} statements "
                                             f"and calls; is a loop bound too large?"), span)

    def _check_nodes(self, span: Span) -> None:
        """Past MAX_NODES right after the expression or statement at `span` made the nodes: the error
        is reported there, not at whatever statement or call happens to run next."""
        if self.b is not None and len(self.b) > MAX_NODES:
            raise self.locate(AxonValueError(f"the program unrolls to more than {MAX_NODES:,} graph "
                                             f"nodes; is a loop bound too large?"), span)

    def locate(self, err: AxonError, span: Span, extra: list[Note] | None = None,
               depth: int | None = None) -> AxonError:
        """`err` placed at `span`, seen from the active calls (all, or `frames[:depth]`)."""
        return place(err, span, self.frames[:depth], extra)

    def is_constant(self, name: str) -> bool:
        return name in CONSTANTS or name == "training"

    def _checked(self, make, span: Span):
        try:
            return make()
        except AxonError as err:
            if is_placed(err):
                raise
            raise self.locate(err, err.span or span) from err

def _children(e) -> tuple:
    if isinstance(e, A.Binary):
        return (e.left, e.right)
    if isinstance(e, A.Unary):
        return (e.operand,)
    if isinstance(e, A.ListLit):
        return e.items
    if isinstance(e, A.Call):
        return e.args + tuple(k.value for k in e.kwargs)
    if isinstance(e, A.Index):
        kids = [e.target]
        for it in e.items:
            if isinstance(it, A.Slice):
                kids.extend(p for p in (it.start, it.stop, it.step) if p is not None)
            elif not isinstance(it, A.Ellipsis_):
                kids.append(it)
        return tuple(kids)
    return ()
