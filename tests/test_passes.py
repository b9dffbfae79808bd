"""The clean-up passes, IR text in and IR text out: fold, simplify, cse, dce, and the default pipeline.

Each case counts the nodes added and removed by op, and `check_pass` verifies the result and compares
the reference evaluator's outputs before and after on random inputs.
"""
import pytest

from axon.ir.text import parse_graph
from axon.passes import PassManager
from passcheck import check_pass

# --- fold ------------------------------------------------------------------------------------------

FOLD = {
    "elementwise on symbolic-shaped consts stays a const": ("""
        graph g {
          input %x: f32[batch]
          %0 = const(value=2.0) : f32[batch]
          %1 = const(value=3.0) : f32[]
          %2 = mul(%0, %1) : f32[batch]
          %3 = add(%x, %2) : f32[batch]
          output %y = %3
        }""", """
        graph g {
          input %x: f32[batch]
          %0 = const(value=6.0) : f32[batch]
          %1 = add(%x, %0) : f32[batch]
          output %y = %1
        }""", {"const": -1, "mul": -1}),
    "movement of a const is the const in the new shape": ("""
        graph g {
          input %x: f32[batch, 3]
          %0 = const(value=0.5) : f32[3]
          %1 = expand(%0) : f32[batch, 3]
          %2 = mul(%x, %1) : f32[batch, 3]
          output %y = %2
        }""", """
        graph g {
          input %x: f32[batch, 3]
          %0 = const(value=0.5) : f32[batch, 3]
          %1 = mul(%x, %0) : f32[batch, 3]
          output %y = %1
        }""", {"expand": -1}),
    "non-uniform values become a tensor literal": ("""
        graph g {
          %0 = iota(axis=1) : i64[2, 3]
          %1 = tensor(data=[10, 20]) : i64[2, 1]
          %2 = add(%0, %1) : i64[2, 3]
          output %y = %2
        }""", """
        graph g {
          %0 = tensor(data=[10, 11, 12, 20, 21, 22]) : i64[2, 3]
          output %y = %0
        }""", {"add": -1, "iota": -1}),
    "reductions, matmul and casts of literals": ("""
        graph g {
          %0 = tensor(data=[1.0, 2.0, 3.0, 4.0]) : f32[2, 2]
          %1 = matmul(%0, %0) : f32[2, 2]
          %2 = sum(%1, axes=[0, 1], keepdim=false) : f32[]
          %3 = cast(%2) : i32[]
          output %y = %3
        }""", """
        graph g {
          %0 = const(value=54) : i32[]
          output %y = %0
        }""", {"cast": -1, "const": 1, "matmul": -1, "sum": -1, "tensor": -1}),
    "folding keeps the dtype's rounding and integer wrap-around": ("""
        graph g {
          %0 = const(value=0.1) : f16[]
          %1 = const(value=0.2) : f16[]
          %2 = add(%0, %1) : f16[]
          %3 = const(value=2147483647) : i32[]
          %4 = const(value=1) : i32[]
          %5 = add(%3, %4) : i32[]
          output %a = %2
          output %b = %5
        }""", """
        graph g {
          %0 = const(value=0.2998046875) : f16[]
          %1 = const(value=-2147483648) : i32[]
          output %a = %0
          output %b = %1
        }""", {"add": -2, "const": -2}),
    "-0.0 and 0.0 are different values; nan is one value": ("""
        graph g {
          %0 = tensor(data=[0.0, -0.0]) : f32[2]
          %1 = neg(%0) : f32[2]
          %2 = const(value=nan) : f32[3]
          %3 = const(value=0.0) : f32[]
          %4 = mul(%2, %3) : f32[3]
          output %a = %1
          output %b = %4
        }""", """
        graph g {
          %0 = tensor(data=[-0.0, 0.0]) : f32[2]
          %1 = const(value=nan) : f32[3]
          output %a = %0
          output %b = %1
        }""", {"const": -1, "mul": -1, "neg": -1}),
    "rand is never folded, nor what it feeds": ("""
        graph g {
          %0 = const(value=7) : i64[]
          %1 = rand(%0, stream=0) : f32[4]
          %2 = const(value=2.0) : f32[]
          %3 = mul(%1, %2) : f32[4]
          output %y = %3
        }""", """
        graph g {
          %0 = const(value=7) : i64[]
          %1 = rand(%0, stream=0) : f32[4]
          %2 = const(value=2.0) : f32[]
          %3 = mul(%1, %2) : f32[4]
          output %y = %3
        }""", {}),
    "a reduction over a symbolic dimension is left alone": ("""
        graph g {
          input %x: f32[n]
          %0 = const(value=1.0) : f32[n]
          %1 = sum(%0, axes=[0], keepdim=false) : f32[]
          output %y = %1
        }""", """
        graph g {
          input %x: f32[n]
          %0 = const(value=1.0) : f32[n]
          %1 = sum(%0, axes=[0], keepdim=false) : f32[]
          output %y = %1
        }""", {}),
}


@pytest.mark.parametrize("before, after, delta", FOLD.values(), ids=FOLD.keys())
def test_fold(before, after, delta):
    check_pass("fold", before, after, delta)


def test_fold_leaves_large_results_computed():
    before = """
        graph g {
          %0 = iota(axis=0) : f32[8]
          %1 = const(value=2.0) : f32[]
          %2 = mul(%0, %1) : f32[8]
          output %y = %2
        }"""
    check_pass("fold{max_elements=7}", before, before, {})
    check_pass("fold{max_elements=8}", before, """
        graph g {
          %0 = tensor(data=[0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0]) : f32[8]
          output %y = %0
        }""", {"const": -1, "iota": -1, "mul": -1, "tensor": 1})


def test_fold_leaves_what_the_evaluator_refuses():
    before = """
        graph g {
          %0 = tensor(data=[1.0, 2.0, 3.0]) : f32[3]
          %1 = tensor(data=[5]) : i64[1]
          %2 = take(%0, %1, axis=0) : f32[1]
          output %y = %2
        }"""
    check_pass("fold", before, before, {}, evaluates=False)  # index 5 of 3: run time reports it


# --- simplify ---------------------------------------------------------------------------------------


EXTRA_INPUTS = {"%z": "f32[2, 3, 4]", "%m": "f32[3, 3]"}  # declared when a case uses them


def _graph(body: str) -> str:
    """A graph with inputs %x, %y: f32[3] (and %z, %m if used) and the lines of `body`; its output %r is
    the last line if that is a bare value (`%x`), or else the last value `body` defines."""
    lines = [line.strip() for line in body.strip().splitlines() if line.strip()]
    out = lines.pop() if "=" not in lines[-1] else lines[-1].split("=")[0].strip()
    used = [f"input {v}: {t}" for v, t in EXTRA_INPUTS.items() if v in body]
    decls = ["input %x: f32[3]", "input %y: f32[3]", *used]
    return "\n".join(["graph g {", *(f"  {x}" for x in decls + lines), f"  output %r = {out}", "}"])


# before, after, nodes added/removed; %x, %y are f32[3], %z is f32[2, 3, 4]
SIMPLIFY = {
    "x + 0": ("""
        %0 = const(value=0.0) : f32[]
        %1 = add(%x, %0) : f32[3]""", "%x", {"add": -1, "const": -1}),
    "0 + x": ("""
        %0 = const(value=0.0) : f32[]
        %1 = add(%0, %x) : f32[3]""", "%x", {"add": -1, "const": -1}),
    "x - 0": ("""
        %0 = const(value=0.0) : f32[]
        %1 = sub(%x, %0) : f32[3]""", "%x", {"const": -1, "sub": -1}),
    "x * 1": ("""
        %0 = const(value=1.0) : f32[]
        %1 = mul(%x, %0) : f32[3]""", "%x", {"const": -1, "mul": -1}),
    "1 * x, the 1 a literal tensor": ("""
        %0 = tensor(data=[1.0, 1.0, 1.0]) : f32[3]
        %1 = mul(%0, %x) : f32[3]""", "%x", {"mul": -1, "tensor": -1}),
    "x / 1": ("""
        %0 = const(value=1.0) : f32[]
        %1 = div(%x, %0) : f32[3]""", "%x", {"const": -1, "div": -1}),
    "x ** 1": ("""
        %0 = const(value=1.0) : f32[]
        %1 = pow(%x, %0) : f32[3]""", "%x", {"const": -1, "pow": -1}),
    "x * -1 is neg(x)": ("""
        %0 = const(value=-1.0) : f32[]
        %1 = mul(%x, %0) : f32[3]""", """
        %0 = neg(%x) : f32[3]""", {"const": -1, "mul": -1, "neg": 1}),
    "x + 0 re-expands x when the 0 broadcasts it": ("""
        %0 = const(value=0.0) : f32[2, 3]
        %1 = add(%x, %0) : f32[2, 3]""", """
        %0 = expand(%x) : f32[2, 3]""", {"add": -1, "const": -1, "expand": 1}),
    "neg(neg(x))": ("""
        %0 = neg(%x) : f32[3]
        %1 = neg(%0) : f32[3]""", "%x", {"neg": -2}),
    "x - neg(y) is x + y": ("""
        %0 = neg(%y) : f32[3]
        %1 = sub(%x, %0) : f32[3]""", """
        %0 = add(%x, %y) : f32[3]""", {"add": 1, "neg": -1, "sub": -1}),
    "neg(x) + y is y - x": ("""
        %0 = neg(%x) : f32[3]
        %1 = add(%0, %y) : f32[3]""", """
        %0 = sub(%y, %x) : f32[3]""", {"add": -1, "neg": -1, "sub": 1}),
    "max(x, x)": ("""
        %0 = maximum(%x, %x) : f32[3]""", "%x", {"maximum": -1}),
    "relu(relu(x))": ("""
        %0 = relu(%x) : f32[3]
        %1 = relu(%0) : f32[3]""", """
        %0 = relu(%x) : f32[3]""", {"relu": -1}),
    "abs(neg(x))": ("""
        %0 = neg(%x) : f32[3]
        %1 = abs(%0) : f32[3]""", """
        %0 = abs(%x) : f32[3]""", {"neg": -1}),
    "where(c, x, x)": ("""
        %0 = gt(%x, %y) : bool[3]
        %1 = where(%0, %x, %x) : f32[3]""", "%x", {"gt": -1, "where": -1}),
    "cast to the same dtype": ("""
        %0 = cast(%x) : f32[3]""", "%x", {"cast": -1}),
    "f16 -> f32 -> f64 is one cast": ("""
        %0 = cast(%x) : f16[3]
        %1 = cast(%0) : f32[3]
        %2 = cast(%1) : f64[3]""", """
        %0 = cast(%x) : f16[3]
        %1 = cast(%0) : f64[3]""", {"cast": -1}),
    "permute of permute composes": ("""
        %0 = permute(%z, perm=[1, 2, 0]) : f32[3, 4, 2]
        %1 = permute(%0, perm=[1, 2, 0]) : f32[4, 2, 3]""", """
        %0 = permute(%z, perm=[2, 0, 1]) : f32[4, 2, 3]""", {"permute": -1}),
    "double transpose is nothing": ("""
        %0 = permute(%z, perm=[0, 2, 1]) : f32[2, 4, 3]
        %1 = permute(%0, perm=[0, 2, 1]) : f32[2, 3, 4]""", "%z", {"permute": -2}),
    "reshape of reshape is one reshape": ("""
        %0 = reshape(%z) : f32[6, 4]
        %1 = reshape(%0) : f32[2, 12]""", """
        %0 = reshape(%z) : f32[2, 12]""", {"reshape": -1}),
    "reshape back to the shape is nothing": ("""
        %0 = reshape(%z) : f32[24]
        %1 = reshape(%0) : f32[2, 3, 4]""", "%z", {"reshape": -2}),
    "expand of expand is one expand": ("""
        %0 = expand(%x) : f32[2, 3]
        %1 = expand(%0) : f32[5, 2, 3]""", """
        %0 = expand(%x) : f32[5, 2, 3]""", {"expand": -1}),
    "identity movements are nothing": ("""
        %0 = slice(%z, axes=[0, 2], starts=[0, 0], stops=[2, 4], steps=[1, 1]) : f32[2, 3, 4]
        %1 = pad(%0, pads=[[0, 0], [0, 0], [0, 0]], value=0.0) : f32[2, 3, 4]
        %2 = permute(%1, perm=[0, 1, 2]) : f32[2, 3, 4]
        %3 = reshape(%2) : f32[2, 3, 4]
        %4 = expand(%3) : f32[2, 3, 4]""", "%z",
        {"expand": -1, "pad": -1, "permute": -1, "reshape": -1, "slice": -1}),
    "adjacent zero pads summed are one concat (slices' gradients)": ("""
        %0 = pad(%x, pads=[[0, 3]], value=0.0) : f32[6]
        %1 = pad(%y, pads=[[3, 0]], value=0.0) : f32[6]
        %2 = add(%1, %0) : f32[6]""", """
        %0 = concat(%x, %y, axis=0) : f32[6]""", {"add": -1, "concat": 1, "pad": -2}),
    "three adjacent pads inside a larger one: one concat, one pad": ("""
        %0 = pad(%x, pads=[[1, 9]], value=0.0) : f32[13]
        %1 = pad(%y, pads=[[4, 6]], value=0.0) : f32[13]
        %2 = pad(%x, pads=[[7, 3]], value=0.0) : f32[13]
        %3 = add(%0, %1) : f32[13]
        %4 = add(%3, %2) : f32[13]""", """
        %0 = concat(%x, %y, %x, axis=0) : f32[9]
        %1 = pad(%0, pads=[[1, 3]], value=0.0) : f32[13]""", {"add": -2, "concat": 1, "pad": -2}),
}


@pytest.mark.parametrize("before, after, delta", SIMPLIFY.values(), ids=SIMPLIFY.keys())
def test_simplify(before, after, delta):
    check_pass("simplify", _graph(before), _graph(after), delta)


# Rewrites that would change IEEE results are not made: NaN and infinity break each of them.
NOT_SIMPLIFIED = {
    "x * 0": """
        %0 = const(value=0.0) : f32[]
        %1 = mul(%x, %0) : f32[3]""",
    "x - x": """
        %0 = sub(%x, %x) : f32[3]""",
    "x / x": """
        %0 = div(%x, %x) : f32[3]""",
    "f32 -> f16 -> f32 rounds": """
        %0 = cast(%x) : f16[3]
        %1 = cast(%0) : f32[3]""",
    "transpose of a square matrix": """
        %0 = permute(%m, perm=[1, 0]) : f32[3, 3]""",
    "x + 1": """
        %0 = const(value=1.0) : f32[]
        %1 = add(%x, %0) : f32[3]""",
    "pads with a gap or an overlap between them": """
        %0 = pad(%x, pads=[[0, 4]], value=0.0) : f32[7]
        %1 = pad(%y, pads=[[4, 0]], value=0.0) : f32[7]
        %2 = add(%0, %1) : f32[7]
        %3 = pad(%x, pads=[[0, 2]], value=0.0) : f32[5]
        %4 = pad(%y, pads=[[2, 0]], value=0.0) : f32[5]
        %5 = add(%3, %4) : f32[5]
        %6 = pad(%x, pads=[[0, 3]], value=1.0) : f32[6]
        %7 = pad(%y, pads=[[3, 0]], value=0.0) : f32[6]
        %8 = add(%6, %7) : f32[6]
        %9 = slice(%2, axes=[0], starts=[0], stops=[5], steps=[1]) : f32[5]
        %10 = add(%9, %5) : f32[5]
        %11 = slice(%8, axes=[0], starts=[0], stops=[5], steps=[1]) : f32[5]
        %12 = add(%10, %11) : f32[5]""",
}


@pytest.mark.parametrize("body", NOT_SIMPLIFIED.values(), ids=NOT_SIMPLIFIED.keys())
def test_simplify_leaves_ieee_semantics_alone(body):
    check_pass("simplify", _graph(body), _graph(body), {})


def test_signed_zeros_keeps_only_exact_zero_identities():
    body = """
        %0 = const(value=0.0) : f32[]
        %1 = add(%x, %0) : f32[3]
        %2 = const(value=-0.0) : f32[]
        %3 = add(%1, %2) : f32[3]
        %4 = sub(%3, %0) : f32[3]"""
    exact = """
        %0 = const(value=0.0) : f32[]
        %1 = add(%x, %0) : f32[3]"""  # x + -0.0 and x - 0.0 are exact; x + 0.0 turns -0.0 into 0.0
    check_pass("simplify{signed_zeros=true}", _graph(body), _graph(exact),
               {"add": -1, "const": -1, "sub": -1})
    check_pass("simplify", _graph(body), _graph("%x"), {"add": -2, "const": -2, "sub": -1})


def test_simplify_reports_rewrites_per_rule():
    g = parse_graph(_graph("""
        %0 = neg(%x) : f32[3]
        %1 = neg(%0) : f32[3]
        %2 = const(value=1.0) : f32[]
        %3 = mul(%1, %2) : f32[3]
        %4 = neg(%3) : f32[3]
        %5 = neg(%4) : f32[3]"""))
    pm = PassManager("simplify")
    pm.run(g)
    assert pm.report[0].stats == {"involution": 2, "mul_one": 1}


# --- cse ---------------------------------------------------------------------------------------------


def test_cse_merges_commutative_operands_in_either_order():
    check_pass("cse", _graph("""
        %0 = add(%x, %y) : f32[3]
        %1 = add(%y, %x) : f32[3]
        %2 = sub(%x, %y) : f32[3]
        %3 = sub(%y, %x) : f32[3]
        %4 = mul(%0, %1) : f32[3]
        %5 = eq(%2, %3) : bool[3]
        %6 = eq(%3, %2) : bool[3]
        %7 = and(%5, %6) : bool[3]
        %8 = where(%7, %4, %2) : f32[3]"""), _graph("""
        %0 = add(%y, %x) : f32[3]
        %1 = sub(%x, %y) : f32[3]
        %2 = sub(%y, %x) : f32[3]
        %3 = mul(%0, %0) : f32[3]
        %4 = eq(%2, %1) : bool[3]
        %5 = and(%4, %4) : bool[3]
        %6 = where(%5, %3, %1) : f32[3]"""), {"add": -1, "eq": -1})


def test_cse_puts_literals_last():
    check_pass("cse", _graph("""
        %0 = const(value=2.0) : f32[]
        %1 = mul(%0, %x) : f32[3]"""), _graph("""
        %0 = const(value=2.0) : f32[]
        %1 = mul(%x, %0) : f32[3]"""), {})


# --- dce ---------------------------------------------------------------------------------------------


def test_dce_keeps_inputs_and_drops_dead_values_and_unused_params():
    check_pass("dce", """
        graph g {
          input %x: f32[3]
          input %unused: f32[3]
          param %w: f32[3]
          param %dead.w: f32[3]
          %0 = mul(%x, %dead.w) : f32[3]
          %1 = exp(%0) : f32[3]
          %2 = add(%x, %w) : f32[3]
          output %y = %2
        }""", """
        graph g {
          input %x: f32[3]
          input %unused: f32[3]
          param %w: f32[3]
          %0 = add(%x, %w) : f32[3]
          output %y = %0
        }""", {"exp": -1, "mul": -1, "param": -1})


def test_fold_and_simplify_drop_only_what_they_orphan():
    """Dead values already there stay (rewritten) for dce to drop and report; so do parameters."""
    check_pass("fold,simplify", """
        graph g {
          input %x: f32[3]
          param %w: f32[3]
          %0 = const(value=2.0) : f32[]
          %1 = const(value=0.5) : f32[]
          %2 = mul(%0, %1) : f32[]
          %3 = mul(%x, %2) : f32[3]
          %4 = neg(%3) : f32[3]
          %5 = neg(%4) : f32[3]
          %6 = exp(%5) : f32[3]
          output %y = %3
        }""", """
        graph g {
          input %x: f32[3]
          param %w: f32[3]
          %0 = exp(%x) : f32[3]
          output %y = %x
        }""", {"const": -2, "mul": -2, "neg": -2})
