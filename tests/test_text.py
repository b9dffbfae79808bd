"""The IR text form: print -> parse -> print round trips for every op, generated graphs, the exact format,
located errors for malformed text, and fuzzing that nothing but an AxonError ever escapes the parser."""
from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from axon.ir import (AxonError, DType, EvalError, Graph, GraphBuilder, Init, IRDTypeError, IRSyntaxError,
                     OpKind, Sym, evaluate, verify)
from axon.ir.text import parse_graph, print_graph, print_lines
from strategies import graphs, random_inputs

F32, F16, I64, I32, BOOL = DType.F32, DType.F16, DType.I64, DType.I32, DType.BOOL
BATCH = Sym.of("batch")


# --- hand-written graphs that together use every op kind ---------------------------------------------


def elementwise_graph():
    b = GraphBuilder("elementwise")
    x = b.input("x", F32, (BATCH, 3))
    y = b.input("y", F32, (3,))
    pos = b.add(b.abs(x), 1.0)
    outs = [b.neg(x), b.exp(x), b.log(pos), b.sqrt(pos), b.rsqrt(pos), b.tanh(x), b.sigmoid(x),
            b.relu(x), b.erf(x), b.sin(x), b.cos(x), b.recip(pos), b.floor(x), b.ceil(x), b.sign(x),
            b.sub(x, y), b.mul(x, y), b.div(x, pos), b.pow(pos, y), b.maximum(x, y), b.minimum(x, 0.5),
            b.eq(x, y), b.ne(x, y), b.le(x, y), b.ge(x, y),
            b.logical_or(b.logical_and(b.lt(x, y), b.logical_not(b.gt(x, 0.0))), b.gt(y, 1.0)),
            b.where(b.lt(x, y), x, -2.5), b.cast(x, F16), b.cast(x, I32), b.cast(x, BOOL)]
    for i, out in enumerate(outs):
        b.output(f"e{i}", out)
    return b.build()


def sources_graph():
    b = GraphBuilder("sources")
    x = b.input("x", F32, (BATCH, 4))
    seed = b.input("seed", I64, ())
    w = b.param("layer.0.w", F32, (4,), Init("kaiming", (("fan_in", 4),)))
    z = b.param("_zero", F32, (4,))
    n = b.param("n", F32, (4,), Init("normal", (("mean", 1), ("std", 0.02))))
    lit = b.tensor([[1.5, -2.0, 0.0, 1e-7]], F32)
    ints = b.tensor([3, -1, 2, 0], I32)
    flags = b.tensor([True, False, True, True], BOOL)
    r = b.rand(seed, (BATCH, 4), stream=3)
    r16 = b.rand(seed, (2, 4), F16, stream=0)
    big = b.const(float("inf"), F32)
    count = b.const(7, I64, (BATCH, 4))
    h = b.add(b.mul(b.add(b.add(x, w), z), n), lit)
    h = b.where(flags, b.minimum(h, big), b.cast(ints, F32))
    b.output("h", b.add(h, r))
    b.output("r16", r16)
    b.output("iota", b.add(b.iota((BATCH, 4), axis=1), count))
    b.output("iota_f", b.iota((3, 2), axis=0, dtype=F32))
    return b.build()


def reduce_graph():
    b = GraphBuilder("reduce")
    x = b.input("x", F32, (BATCH, 3, 4))
    i = b.input("i", I64, (5, 2))
    b.output("sum", b.sum(x, [0, 2]))
    b.output("max", b.max(x, 1, keepdim=True))
    b.output("min", b.min(i))
    b.output("mean", b.mean(x, -1))
    b.output("argmax", b.argmax(x, 2))
    b.output("argmin", b.argmin(i, 0, keepdim=True))
    return b.build()


def linalg_graph():
    b = GraphBuilder("linalg")
    x = b.input("x", F32, (BATCH, 5, 3))
    w = b.param("w", F32, (3, 2))
    img = b.input("img", F32, (BATCH, 4, 7, 6))
    k = b.param("k", F32, (6, 2, 3, 2), Init("uniform", (("low", -0.1), ("high", 0.1))))
    b.output("mm", b.matmul(x, w))
    b.output("conv", b.conv2d(img, k, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2))
    b.output("imm", b.matmul(b.input("a", I32, (2, 3)), b.input("c", I32, (3, 2))))
    bw = b.param("bw", F32, (3, 40))
    index = b.param("bw.blocks", DType.I32, (3, 2), Init("all_blocks"))
    index_t = b.param("bw.blocks_t", DType.I32, (1, 4), Init("all_blocks"))
    b.output("bsmm", b.bsmatmul(x, bw, index, index_t, b.param("bw.tiles", DType.I64, (1,)), 16))
    return b.build()


def movement_graph():
    b = GraphBuilder("movement")
    x = b.input("x", F32, (BATCH, 3, 4))
    flat = b.reshape(x, (-1, 4))
    b.output("flat", flat)
    b.output("back", b.reshape(flat, (BATCH, 12)))
    b.output("perm", b.permute(x, (2, 0, 1)))
    b.output("expand", b.expand(b.sum(x, 1, keepdim=True), (2, BATCH, 3, 4)))
    b.output("slice", b.slice(x, 2, 1, 4, 2))
    b.output("pad", b.pad(x, [(0, 0), (1, 0), (0, 2)], value=float("-inf")))
    b.output("padb", b.pad(b.gt(x, 0.0), [(0, 0), (0, 1), (0, 0)]))
    b.output("concat", b.concat([x, b.neg(x), x], axis=0))
    b.output("concat1", b.concat([x, b.slice(x, 1, 0, 1)], axis=1))
    return b.build()


def indexing_graph():
    b = GraphBuilder("indexing")
    x = b.input("x", F32, (BATCH, 6))
    index = b.input("index", I64, (BATCH, 3))      # range found from its gather user
    tokens = b.input("tokens.lt5", I32, (2, 2))    # range given by its name
    table = b.param("embed", F32, (5, 8))
    b.output("gather", b.gather(x, 1, index))
    b.output("take", b.take(table, tokens))
    b.output("take1", b.take(x, b.input("cols", I64, (4,)), axis=1))
    return b.build()


def quant_graph():
    b = GraphBuilder("quant")
    x = b.input("x", F32, (BATCH, 64))
    positive = lambda v: b.add(b.abs(v), 0.01)  # noqa: E731  (random inputs: scales must be > 0)
    s, z = positive(b.input("s", F32, ())), b.abs(b.input("z", I32, ()))
    gs = positive(b.param("gs", F32, (BATCH, 2)))
    q = b.quantize(x, s, z, DType.U8)
    b.output("q", q)
    b.output("d", b.dequantize(q, s, z, DType.BF16))
    cs = positive(b.param("cs", F32, (64,)))
    b.output("c", b.fake_quantize(x, cs, None, DType.I8, axis=1, qmin=-127))
    w4 = b.quantize(x, gs, None, DType.I8, axis=1, group=32, bits=4)
    b.output("p", b.unpack_int4(b.pack_int4(w4), DType.I8))
    f8 = b.quantize(x, 0.5, dtype=DType.F8E5M2)
    b.output("f8", f8)
    b.output("qmm", b.qmatmul(b.reshape(f8, (64, BATCH)), f8))  # fp8 codes -> f32
    return b.build()


CASES = {f.__name__: f for f in (elementwise_graph, sources_graph, reduce_graph, linalg_graph,
                                  movement_graph, indexing_graph, quant_graph)}


def test_cases_cover_every_op():
    used = {n.op for make in CASES.values() for n in make().nodes}
    assert set(OpKind) - used == set()


def _same_outputs(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, equal_nan=True, msg=name)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_every_op(name):
    g = CASES[name]()
    text = print_graph(g)
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    assert [(n.op, n.attrs, n.type) for n in g2.nodes] == [(n.op, n.attrs, n.type) for n in g.nodes]
    assert list(g2.outputs) == list(g.outputs) and g2.name == g.name
    verify(g2)
    inputs, params = random_inputs(g, torch.Generator().manual_seed(0))
    _same_outputs(evaluate(g2, inputs, params), evaluate(g, inputs, params))


def test_attribute_values_keep_their_python_types():
    g = parse_graph("""graph t {
      %0 = const(value=2) : i64[]
      %1 = const(value=2) : f32[]
      %2 = const(value=true) : bool[2]
      %3 = tensor(data=[1, 2.5]) : f64[2]
      %4 = pad(%3, pads=[[1, 0]], value=1) : f64[3]
    }""")
    values = [n.attrs for n in g.nodes]
    assert type(values[0].value) is int and type(values[1].value) is float
    assert values[2].value is True
    assert [type(v) for v in values[3].data] == [float, float]
    assert values[4].pads == ((1, 0),) and type(values[4].value) is float


def test_strings_and_special_floats_round_trip():
    b = GraphBuilder("strings")
    w = b.param("w", F32, (2,), Init("custom", (("path", 'a "b"\n\\ é'), ("scale", float("nan")))))
    b.output("y", b.pad(b.add(w, float("-inf")), [(1, 1)], float("nan")))
    text = print_graph(b.build())
    assert 'custom(path="a \\"b\\"\\n\\\\ \\u00e9", scale=nan)' in text
    assert "const(value=-inf)" in text and "value=nan" in text
    assert print_graph(parse_graph(text)) == text
    assert parse_graph(text).params["w"].attrs.init.arg("path") == 'a "b"\n\\ é'


def test_graph_names_that_are_not_identifiers_are_quoted():
    b = GraphBuilder("resnet-18 v2")
    b.output("y", b.neg(b.input("x", F32, ())))
    text = print_graph(b.build())
    assert text.startswith('graph "resnet-18 v2" {\n')
    assert parse_graph(text).name == "resnet-18 v2"


def test_broken_graph_still_prints():
    g = CASES["reduce_graph"]()
    lines, line_of = print_lines(Graph(g.nodes[1:], g.outputs, "broken"))  # %x is gone
    assert lines[line_of[g.nodes[2]]] == "  %0 = sum(%?, axes=[0, 2], keepdim=false) : f32[3]"


def test_defaults_and_comments():
    g = parse_graph("""# a comment line
    graph g {  # after the brace
      input %x: f32[2, 3]
      param %w: f32[3]          # no init: zeros()
      %0 = sum(%x, axes=[0]) : f32[3]   # keepdim defaults to false
      output %y = %0
    }""")
    assert g.params["w"].attrs.init == Init("zeros")
    assert print_lines(g)[0][3] == "  %0 = sum(%x, axes=[0], keepdim=false) : f32[3]"


def test_spec_example_parses_and_prints_canonically():
    text = """graph main {
      input %x: f32[batch, 64]
      param %fc1.w: f32[64, 128] = kaiming(fan_in=64)
      input %seed: i64[]
      %0 = matmul(%x, %fc1.w) : f32[batch, 128]
      %1 = const(value=0.0) : f32[]
      %2 = maximum(%0, %1) : f32[batch, 128]
      %3 = sum(%2, axes=[1], keepdim=false) : f32[batch]
      %4 = reshape(%2) : f32[batch*128]
      %5 = rand(%seed, stream=2) : f32[3, 4]
      output %logits = %2
      output %total = %3
    }"""
    g = parse_graph(text)
    assert g.nodes[7].shape == (Sym(("batch",), 128),)
    assert print_graph(g).splitlines()[8] == "  %4 = reshape(%2) : f32[128*batch]"  # coefficient first
    assert [line.strip() for line in print_graph(g).splitlines()] == [
        line.strip() for line in text.replace("batch*128", "128*batch").splitlines()]


def test_golden():
    b = GraphBuilder("mlp")
    x = b.input("x", F32, (BATCH, 4))
    w = b.param("fc.w", F32, (4, 2), Init("kaiming", (("fan_in", 4),)))
    h = b.relu(b.matmul(x, w))
    b.output("y", h)
    b.output("n", b.sum(b.pad(h, [(0, 0), (1, 0)], 0.5), 1))
    assert print_graph(b.build()) == """\
graph mlp {
  input %x: f32[batch, 4]
  param %fc.w: f32[4, 2] = kaiming(fan_in=4)
  %0 = matmul(%x, %fc.w) : f32[batch, 2]
  %1 = relu(%0) : f32[batch, 2]
  %2 = pad(%1, pads=[[0, 0], [1, 0]], value=0.5) : f32[batch, 3]
  %3 = sum(%2, axes=[1], keepdim=false) : f32[batch]
  output %y = %1
  output %n = %3
}"""


def test_print_lines_maps_nodes_to_their_lines():
    g = CASES["movement_graph"]()
    lines, line_of = print_lines(g)
    assert set(line_of) == set(g.nodes)
    for k, node in enumerate(n for n in g.nodes if n.op != OpKind.INPUT):
        assert lines[line_of[node]].startswith(f"  %{k} = {node.op}(")
    assert lines[line_of[g.inputs["x"]]] == "  input %x: f32[batch, 3, 4]"


# --- generated graphs --------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs())
def test_round_trip_generated(g):
    text = print_graph(g)
    g2 = parse_graph(text)
    assert print_graph(g2) == text
    assert [(n.op, n.type) for n in g2.nodes] == [(n.op, n.type) for n in g.nodes]
    verify(g2)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(graphs(), st.integers(0, 2**16))
def test_generated_graphs_evaluate_to_finite_values(g, seed):
    inputs, params = random_inputs(g, torch.Generator().manual_seed(seed))
    for name, out in evaluate(g, inputs, params).items():
        if out.is_floating_point():
            assert torch.isfinite(out).all(), f"{name} is not finite\n{g}"


def test_random_inputs_bind_sizes_and_index_ranges():
    g = CASES["indexing_graph"]()
    inputs, params = random_inputs(g, torch.Generator().manual_seed(1), sizes={"batch": 5})
    assert inputs["x"].shape == (5, 6) and inputs["index"].shape == (5, 3)
    assert 0 <= int(inputs["index"].min()) and int(inputs["index"].max()) < 6
    assert inputs["tokens.lt5"].dtype == torch.int32 and int(inputs["tokens.lt5"].max()) < 5
    assert int(inputs["cols"].max()) < 6 and params["embed"].shape == (5, 8)
    evaluate(g, inputs, params)
    inputs["index"][0, 0] = 6
    with pytest.raises(EvalError):
        evaluate(g, inputs, params)


# --- malformed text ------------------------------------------------------------------------------------

HEAD = "graph g {\n  input %x: f32[2, 3]\n  input %i: i64[2]\n"
MALFORMED = [
    # (text, line, column, message fragment)
    ("", 1, 1, "expected 'graph'"),
    ("graph g {", 1, 10, "unexpected end of the text"),
    ("graph g { input %x f32[3] }", 1, 20, "unexpected 'f32'; expected ':'"),
    ("graph g { } extra", 1, 13, "unexpected 'extra'; expected the end of the text"),
    ("graph g {\n  input %x: f32[3] $\n}", 2, 20, "unexpected character '$'"),
    (HEAD + "  %0 = ad(%x, %x) : f32[2, 3]\n}", 4, 8, "unknown op 'ad'"),
    (HEAD + "  %0 = neg(%y) : f32[2, 3]\n}", 4, 12, "'%y' is not defined"),
    (HEAD + "  %0 = neg(%x) : f32[2, 3]\n  %0 = abs(%x) : f32[2, 3]\n}", 5, 3, "'%0' is defined twice"),
    (HEAD + "  input %x: f32[3]\n}", 4, 9, "'%x' is defined twice"),
    (HEAD + "  %0 = sum(%x, axis=[0]) : f32[3]\n}", 4, 16, "'sum' has no attribute 'axis'"),
    (HEAD + "  %0 = sum(%x) : f32[3]\n}", 4, 8, "'sum' needs the attribute 'axes'"),
    (HEAD + "  %0 = sum(%x, axes=[0], axes=[1]) : f32[3]\n}", 4, 26, "attribute 'axes' is given twice"),
    (HEAD + "  %0 = sum(%x, axes=[0], keepdim=1) : f32[3]\n}", 4, 26, "must be true or false, got 1"),
    (HEAD + "  %0 = pad(%x, pads=[1, 2]) : f32[2, 3]\n}", 4, 16, "must be a list of lists of 2 integers"),
    (HEAD + "  %0 = neg(%x, %x) : f32[2, 3]\n}", 4, 3, "'neg' takes 1 operand(s), got 2"),
    (HEAD + "  %0 = neg(%x) : f32[3, 2]\n}", 4, 18,
     "annotated f32[3, 2] but neg of f32[2, 3] gives f32[2, 3]"),
    (HEAD + "  %0 = add(%x, %i) : f32[2, 3]\n}", 4, 3, "different dtypes f32 and i64"),
    (HEAD + "  output %y = %z\n}", 4, 15, "'%z' is not defined"),
    (HEAD + "  output %y = %x\n  output %y = %i\n}", 5, 10, "output 'y' is declared twice"),
    (HEAD + "  input %z: f33[2]\n}", 4, 13, "unknown dtype 'f33'"),
    (HEAD + "  input %z: f32[2, -1]\n}", 4, 20, "cannot be negative"),
    (HEAD + "  input %z: f32[4294967296*b*4294967296]\n}", 4, 30, "at most 9223372036854775807"),
    (HEAD + "  %0 = const(value=1.5) : i64[]\n}", 4, 14, "must be an integer, got 1.5"),
    (HEAD + "  %0 = cast(%x, dtype=f16) : f16[2, 3]\n}", 4, 17, "stated by the result type"),
    (HEAD + "  %0 = sum(axes=[0], %x) : f32[3]\n}", 4, 22, "operand %x after an attribute"),
    (HEAD + "  input %0: f32[]\n}", 4, 9, "'%0' is a number"),
    (HEAD + "  %0 = input(name=\"x\") : f32[]\n}", 4, 8, "'input' is not computed"),
    (HEAD + "  param %w: f32[2] = normal(mode=\"\\q\")\n}", 4, 34, "bad escape"),
    (HEAD + "  # a comment\n  %0 = sum(%x, axes=[0], keepdim=false) : f32[3, 3]\n}", 5, 43, "annotated"),
]


@pytest.mark.parametrize("text, line, col, fragment", MALFORMED)
def test_malformed_text_is_located(text, line, col, fragment):
    with pytest.raises(IRSyntaxError) as info:
        parse_graph(text, file="bad.ir")
    err = info.value
    assert fragment in err.message
    assert (err.span.line, err.span.col) == (line, col), str(err)
    shown = str(err)
    assert shown.startswith(f"bad.ir:{line}:{col}: error: ")
    assert shown.splitlines()[2] == " " * (4 + col - 1) + "^" * shown.splitlines()[2].count("^")


def test_errors_chain_the_type_error_and_give_hints():
    with pytest.raises(IRSyntaxError) as info:
        parse_graph(HEAD + "  %0 = add(%x, %i) : f32[2, 3]\n}")
    assert type(info.value.__cause__) is IRDTypeError  # an IRTypeError: the operands' dtypes differ
    with pytest.raises(IRSyntaxError) as info:
        parse_graph(HEAD + "  %0 = sum(%x, axis=[0]) : f32[3]\n}")
    assert info.value.hint == "did you mean 'axes'?"
    with pytest.raises(IRSyntaxError) as info:
        parse_graph(HEAD + "  %0 = neg(%x) : f32[2, 3]\n  %0 = abs(%x) : f32[2, 3]\n}")
    assert "first defined here" in str(info.value) and info.value.notes[0].span.line == 4


# --- fuzzing ----------------------------------------------------------------------------------------

CORPUS = [print_graph(make()) for make in CASES.values()]
PIECE = re.compile(r'\s+|"(?:[^"\\\n]|\\.)*"|%[\w.]+|-?\d[\w.+-]*|[A-Za-z_][\w.]*|\S')


@st.composite
def mutated_texts(draw):
    """Valid text with a few tokens deleted, duplicated, swapped or replaced, random text inserted,
    or cut short."""
    pieces = PIECE.findall(draw(st.sampled_from(CORPUS)))
    tokens = [i for i, p in enumerate(pieces) if not p.isspace()]
    for _ in range(draw(st.integers(1, 3))):
        i, j = draw(st.sampled_from(tokens)), draw(st.sampled_from(tokens))
        how = draw(st.sampled_from(("delete", "duplicate", "swap", "replace", "insert", "truncate")))
        if how == "delete":
            pieces[i] = ""
        elif how == "duplicate":
            pieces[i] += " " + pieces[i]
        elif how == "swap":
            pieces[i], pieces[j] = pieces[j], pieces[i]
        elif how == "replace":
            pieces[i] = draw(st.sampled_from(pieces))
        elif how == "insert":
            pieces[i] += draw(st.text(max_size=6) | st.binary(max_size=6).map(lambda b: b.decode("latin-1")))
        else:  # the last mutation: later indices would point past the end
            pieces = pieces[:i] + [pieces[i][:draw(st.integers(0, len(pieces[i])))]]
            break
    return "".join(pieces)


def _parses_or_reports(text: str) -> None:
    try:
        parse_graph(text)
    except AxonError as e:
        shown = str(e)  # rendering the message must not fail either
        assert e.span is None or 1 <= e.span.line <= text.count("\n") + 1, shown


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_texts())
def test_mutated_text_raises_only_axon_errors(text):
    _parses_or_reports(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | st.text(alphabet="graph{}%:=()[],.*0123456789 -abcfi\n\"#", max_size=80))
def test_garbage_raises_only_axon_errors(text):
    _parses_or_reports(text)


@pytest.mark.parametrize("text", ["graph g { %0 = f(a=[[[1]]]) : f32[] }", "graph g {" + " [" * 5000,
                                  "graph g { input %x: f32[" + "9" * 400 + "] }",
                                  "graph g { %0 = const(value=1e999999) : f16[] }", "\x00" * 3,
                                  "graph g { %0 = const(value=" + "9" * 400 + ") : f64[] }",
                                  "graph g { %0 = tensor(data=[" + "9" * 400 + "]) : i64[1] }",
                                  "graph g { %0 = iota(axis=" + "9" * 5000 + ") : i64[3] }",
                                  "graph g { input %x: f32[" + "9" * 5000 + "] }"])
def test_pathological_text(text):
    _parses_or_reports(text)
