"""Running one OpInfo sample through Axon and comparing with torch: the forward value through the
reference evaluator and the generated kernels (one kernel per node), and the gradients (Axon's `vjp`
against torch.autograd on the same sample and the same incoming gradient) through the evaluator and
the fused executable. What to skip or expect to fail comes from the caller's table of `Rule`s.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from axon import driver
from axon.runtime import run_graph
from axon.ir import AxonError, DType, GraphBuilder, Node, OpKind, evaluate
from axon.ir.shapes import format_shape
from axon.passes.autodiff import vjp
from numerics import TOLERANCE, assert_close
from opinfo_map import MAP

SKIP, REFUSE, XFAIL, NO_GRAD, REF64, UNDEFINED = "skip", "refuse", "xfail", "no_grad", "ref64", "undefined"
LOW = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class Rule:
    """One line of the table: for `ops` (names as in op_db, `name.variant`) at `dtypes` (None: all),
    the samples `when` selects (None: all). `kind`: SKIP (Axon cannot express the sample), REFUSE
    (Axon refuses it on purpose: the error must name the op and the shapes), XFAIL (a known difference:
    the sample must fail, so the table cannot go stale), NO_GRAD (the forward is checked, the
    gradients are not compared), REF64 (torch's own result at this dtype is wrong: the reference is
    torch in float64, rounded to the dtype) or UNDEFINED (`where(sample)` masks the output elements
    torch leaves undefined; the rest are compared)."""

    ops: tuple[str, ...]
    kind: str
    reason: str
    dtypes: frozenset | None = None
    when: Callable | None = None
    where: Callable | None = None

    def matches(self, op: str, dtype: torch.dtype, sample) -> bool:
        return (op in self.ops and (self.dtypes is None or dtype in self.dtypes)
                and (self.when is None or bool(self.when(sample)))
                and (self.where is None or bool(self.where(sample).any())))


@dataclass
class Outcome:
    status: str  # pass, skip, refuse, xfail, fail
    reason: str = ""
    notes: tuple[str, ...] = ()  # the NO_GRAD / UNDEFINED / REF64 rules a passing sample matched


def op_name(info) -> str:
    return info.name + (f".{info.variant_test_name}" if info.variant_test_name else "")


def opinfos() -> dict:
    """The OpInfos with a translation, by name."""
    frozen = torch.backends.flags_frozen()
    from torch.testing._internal.common_methods_invocations import op_db

    if not frozen:  # importing torch's test utilities froze torch.backends' flags for the whole process
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    return {op_name(o): o for o in op_db if op_name(o) in MAP}


# --- a sample as an Axon graph --------------------------------------------------------------------

def _leaves(value, out: list):
    """`value` with each tensor replaced by its position in `out` (tensors appended in order)."""
    if isinstance(value, torch.Tensor):
        out.append(value)
        return _Leaf(len(out) - 1)
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return type(value)(_leaves(v, out) for v in value)
    return value


@dataclass(frozen=True)
class _Leaf:
    index: int


def _fill(value, f):
    if isinstance(value, _Leaf):
        return f(value.index)
    if isinstance(value, (list, tuple)) and not isinstance(value, torch.Size):
        return type(value)(_fill(v, f) for v in value)
    return value


@dataclass
class Case:
    """A sample of one op: its tensors, its structure with tensors as leaves, and torch's callable."""

    op: str
    fn: Callable
    tensors: list[torch.Tensor]
    structure: tuple  # (input, args, kwargs) with _Leaf in place of tensors
    sample: object = None

    @classmethod
    def of(cls, op: str, info, sample) -> Case:
        tensors: list[torch.Tensor] = []
        structure = _leaves((sample.input, tuple(sample.args), dict(sample.kwargs)), tensors)
        return cls(op, info.op, [t.detach() for t in tensors], structure, sample)

    def call_torch(self, tensors):
        x, args, kwargs = _fill(self.structure, lambda i: tensors[i])
        return self.fn(x, *args, **kwargs)

    def graph(self):
        """The sample as an Axon graph: inputs x0, x1, ... and outputs out0, out1, ..."""
        b = GraphBuilder(self.op.replace(".", "_"))
        nodes = [b.input(f"x{i}", DType.from_torch(t.dtype), tuple(t.shape))
                 for i, t in enumerate(self.tensors)]
        x, args, kwargs = _fill(self.structure, lambda i: nodes[i])
        result = MAP[self.op](b, x, *args, **kwargs)
        for i, node in enumerate(result if isinstance(result, tuple) else (result,)):
            b.output(f"out{i}", b.lift(node) if not isinstance(node, Node) else node)
        return b.build()

    def feeds(self) -> dict[str, torch.Tensor]:
        return {f"x{i}": t.contiguous() for i, t in enumerate(self.tensors)}


# --- checking --------------------------------------------------------------------------------------

def _outputs(value) -> list[torch.Tensor]:
    return list(value) if isinstance(value, (tuple, list)) else [value]


def _compare(got: dict, want: list[torch.Tensor], prefix: str, what: str, skip=None, scale=None) -> None:
    """Outputs `prefix`0, 1, ... against torch's, within the dtype's tolerance (numerics.py); `skip`
    masks elements torch leaves undefined. With `scale` (the operands' largest magnitude) every
    element is checked too, not only the norm: |out - ref| <= tol * (|ref| + scale)."""
    for i, w in enumerate(want):
        g = got[f"{prefix}{i}"].cpu()
        assert g.dtype == w.dtype, f"{what} {prefix}{i}: dtype {g.dtype}, torch gives {w.dtype}"
        if skip is not None and skip.shape == w.shape:
            g, w = torch.where(skip, 0, g).to(w.dtype), torch.where(skip, 0, w).to(w.dtype)
        assert_close(g, w, w.dtype if w.is_floating_point() else None, what=f"{what} {prefix}{i}")
        if scale is not None and w.is_floating_point():
            tol = TOLERANCE[w.dtype]
            g, w = g.double(), w.double()
            bad = w.isfinite() & ((g - w).abs() > tol * (w.abs() + scale))
            assert not bad.any(), (f"{what} {prefix}{i}: {int(bad.sum())} element(s) off, e.g. "
                                   f"{g[bad][0].item()!r} for {w[bad][0].item()!r}")


def _wide(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.double() if t.is_floating_point() else t for t in tensors]


def expected(case: Case, ref64: bool) -> list[torch.Tensor]:
    """torch's result on the sample, or with `ref64` its float64 result rounded to torch's dtype."""
    got = case.call_torch(case.tensors)
    if got is NotImplemented:  # a dunder method handing the operation back to Python: no result
        raise TypeError(f"torch's {case.op} returned NotImplemented")
    want = _outputs(got)
    if not ref64:
        return want
    return [w64.to(w.dtype) for w, w64 in zip(want, _outputs(case.call_torch(_wide(case.tensors))))]


def check_forward(case: Case, graph, want: list[torch.Tensor], skip=None) -> None:
    feeds = case.feeds()
    floats = [t.double().abs() for t in case.tensors if t.is_floating_point() and t.numel()]
    scale = max((float(t[t.isfinite()].max()) for t in floats if t.isfinite().any()), default=1.0)
    _compare(evaluate(graph, feeds), want, "out", "evaluator", skip, scale)
    _compare(run_graph(graph, feeds), want, "out", "kernels", skip, scale)


def _torch_grads(case: Case, wrt: list[int], douts: dict[int, torch.Tensor], wide: bool):
    """torch.autograd's gradients of the sample (computed in float64 when `wide`), in the inputs' dtypes."""
    tensors = _wide(case.tensors) if wide else case.tensors
    leaves = [t.clone().requires_grad_(i in wrt) for i, t in enumerate(tensors)]
    outs = _outputs(case.call_torch(leaves))
    got = torch.autograd.grad([outs[i] for i in douts], [leaves[i] for i in wrt],
                              [d.to(outs[i].dtype) for i, d in douts.items()], allow_unused=True)
    return [torch.zeros_like(case.tensors[i]) if g is None else g.to(case.tensors[i].dtype)
            for i, g in zip(wrt, got)]


def check_grads(case: Case, graph, gen: torch.Generator) -> None:
    """Axon's vjp against torch.autograd with the same incoming gradient, evaluator and fused kernels.
    At f16/bf16 a gradient may match torch's in the same dtype or torch's in float64 rounded: torch's
    low-precision backward rounds (and overflows) after each of its own steps, which are not Axon's."""
    wrt = [i for i, t in enumerate(case.tensors) if t.is_floating_point()]
    outs = _outputs(case.call_torch([t.clone().requires_grad_(i in wrt) for i, t in enumerate(case.tensors)]))
    diff = [i for i, o in enumerate(outs) if o.is_floating_point() and o.requires_grad]
    if not wrt or not diff:
        return
    douts = {i: torch.randn(outs[i].shape, generator=gen, dtype=torch.float64).to(outs[i].dtype)
             for i in diff}
    wants = [_torch_grads(case, wrt, douts, False)]
    if any(case.tensors[i].dtype in LOW for i in wrt):
        wants.append(_torch_grads(case, wrt, douts, True))
    bwd = vjp(graph, [f"x{i}" for i in wrt], [f"out{i}" for i in diff])
    feeds = {**case.feeds(), **{f"dout.out{i}": d for i, d in douts.items()}}
    for name, got in (("evaluator", evaluate(bwd, feeds)), ("fused kernels", driver.executable(bwd)(feeds))):
        got = {f"g{k}": got[f"grad.x{i}"] for k, i in enumerate(wrt)}
        try:
            _compare(got, wants[0], "g", f"{name} gradient of x")
        except AssertionError:
            if len(wants) == 1:
                raise
            _compare(got, wants[1], "g", f"{name} gradient of x (vs torch in float64)")


def names_op_and_shapes(message: str, case: Case) -> bool:
    """A refusal names the Axon op that refuses ('minimum') and the shape of an operand."""
    named = any(f"'{kind.value}'" in message for kind in OpKind)
    shapes = [format_shape(tuple(t.shape)) for t in case.tensors] or ["[]"]  # Python numbers: 0-d
    return named and any(s in message for s in shapes)


def run_sample(op: str, info, dtype, sample, rules, gen) -> Outcome:
    """One sample through Axon, judged by the first matching rule of each kind in `rules`."""
    first = lambda *kinds: next((r for r in rules if r.kind in kinds and r.matches(op, dtype, sample)),  # noqa
                                None)
    rule = first(SKIP, REFUSE, XFAIL)
    if rule is not None and rule.kind == SKIP:
        return Outcome(SKIP, rule.reason)
    no_grad, undefined, ref64 = first(NO_GRAD), first(UNDEFINED), first(REF64)
    case = Case.of(op, info, sample)
    try:
        want = expected(case, ref64 is not None)
    except (RuntimeError, ValueError, TypeError, IndexError) as e:  # torch refuses the sample
        if rule is not None and rule.kind == XFAIL:
            return Outcome(XFAIL, rule.reason)
        return Outcome("fail", f"torch raises {type(e).__name__}: {str(e).splitlines()[0]}")
    try:
        graph = case.graph()
        check_forward(case, graph, want, undefined.where(sample) if undefined else None)
        if no_grad is None and info.supports_autograd and dtype.is_floating_point:
            check_grads(case, graph, gen)
    except AxonError as e:
        if rule is not None and rule.kind == REFUSE:
            if names_op_and_shapes(e.message, case):
                return Outcome(REFUSE, rule.reason)
            return Outcome("fail", f"refused without naming the op and shapes: {e.message}")
        if rule is not None and rule.kind == XFAIL:
            return Outcome(XFAIL, rule.reason)
        return Outcome("fail", f"{type(e).__name__}: {e}")
    except AssertionError as e:
        if rule is not None and rule.kind == XFAIL:
            return Outcome(XFAIL, rule.reason)
        return Outcome("fail", str(e).splitlines()[0])
    if rule is not None:
        return Outcome("fail", f"expected to {rule.kind} ({rule.reason}) but passed")
    return Outcome("pass", notes=tuple(f"{r.kind}: {r.reason}" for r in (no_grad, undefined, ref64) if r))


# --- choosing samples and counting ---------------------------------------------------------------

def samples(info, dtype, cap: int | None) -> list:
    """The sample inputs, then the reference inputs beyond them (extremal values, more shapes). With a
    cap, the `cap` with the fewest elements of each, so the 0-d, empty and extremal cases stay."""
    # (the OpInfo's own functions: its sample_inputs() wraps them in a tracker that inspects the stack
    # at every sample, half the time of this module)
    with torch.random.fork_rng():  # the samples are random: the same ones on every run
        torch.manual_seed(0)
        found = list(info.sample_inputs_func(info, "cpu", dtype, False))
        refs = info.reference_inputs_func(info, "cpu", dtype, False) if info.reference_inputs_func else []
        refs = list(refs)
    if [_signature(s) for s in refs[:len(found)]] == [_signature(s) for s in found]:
        refs = refs[len(found):]  # reference inputs start with the sample inputs again
    if cap is None:
        return found + refs
    return sorted(found, key=_numel)[:cap] + sorted(refs, key=_numel)[:cap]


def _signature(sample) -> str:
    tensors: list[torch.Tensor] = []
    structure = _leaves((sample.input, tuple(sample.args), dict(sample.kwargs)), tensors)
    return repr(structure) + repr([(tuple(t.shape), t.dtype) for t in tensors])


def _numel(sample) -> int:
    tensors: list[torch.Tensor] = []
    _leaves((sample.input, tuple(sample.args), dict(sample.kwargs)), tensors)
    return sum(t.numel() for t in tensors)


@dataclass
class Counts:
    """Outcomes per op: pass, fail, and each skip/refuse/xfail reason (and gradients not compared)."""

    by_op: dict = field(default_factory=lambda: defaultdict(Counter))

    def add(self, op: str, outcome: Outcome) -> None:
        key = outcome.status if outcome.status in ("pass", "fail") else f"{outcome.status}: {outcome.reason}"
        self.by_op[op][key] += 1
        for note in outcome.notes:  # (passed, with these rules applied)
            self.by_op[op][f"passed with {note}"] += 1

    def table(self) -> str:
        lines, total = [], Counter()
        for op in sorted(self.by_op):
            c = self.by_op[op]
            total.update(c)
            rest = "; ".join(f"{k} x{n}" for k, n in sorted(c.items()) if k not in ("pass", "fail"))
            fail = f" fail {c['fail']}" if c["fail"] else ""
            lines.append(f"{op:28s} pass {c['pass']:5d}{fail}" + (f" | {rest}" if rest else ""))
        count = lambda prefix: sum(n for k, n in total.items() if k.startswith(prefix))  # noqa: E731
        kinds = {kind: count(f"{kind}:") for kind in (SKIP, REFUSE, XFAIL)}
        kinds.update({f"passed with {kind}": count(f"passed with {kind}:")
                      for kind in (NO_GRAD, UNDEFINED, REF64)})
        samples = sum(n for k, n in total.items() if not k.startswith("passed with"))
        lines.append(f"total: {samples} samples, pass {total['pass']}, fail {total['fail']}, "
                     + ", ".join(f"{k} {n}" for k, n in kinds.items()))
        return "\n".join(lines)
