"""The grammar and the AST: precedence, spans, comments, every statement form, and the design brief's
sketch parsing to what it says."""
import sys

import pytest

from axon.frontend import ast as A
from axon.frontend import compile_source, parse, train_spec

DESIGN_SKETCH = """
fn linear(x: f32[..., n], out: int) {
    param w: f32[n, out] = kaiming(n)
    param b: f32[out] = zeros()
    return x @ w + b
}

model MLP(hidden = 128, classes = 10) {
    input x: f32[batch, 64]
    h = dropout(relu(linear(x, hidden)), p = 0.1)
    output logits = linear(h, classes)
}

train MLP {
    data   = digits(val = 0.2)
    loss   = cross_entropy(logits, label)
    optim  = adam(lr = 1e-3, weight_decay = 1e-4)
    epochs = 30   batch = 64   early_stop(patience = 5)
}
"""


def expr(text: str):
    return parse(f"fn f() {{ return {text} }}", "e.axon").items[0].body[0].value


def shape_of(e) -> str:
    """A fully parenthesized rendering, to check precedence."""
    if isinstance(e, A.Binary):
        return f"({shape_of(e.left)} {e.op} {shape_of(e.right)})"
    if isinstance(e, A.Unary):
        return f"({e.op} {shape_of(e.operand)})"
    if isinstance(e, A.Name):
        return e.name
    if isinstance(e, A.Num):
        return str(e.value)
    if isinstance(e, A.Call):
        return f"{e.func}(" + ", ".join(shape_of(a) for a in e.args) + ")"
    if isinstance(e, A.Index):
        return f"{shape_of(e.target)}[...]"
    return type(e).__name__


@pytest.mark.parametrize("text, tree", [
    ("a + b * c", "(a + (b * c))"),
    ("a - b - c", "((a - b) - c)"),
    ("x @ w + b", "((x @ w) + b)"),
    ("-x ** 2", "(- (x ** 2))"),
    ("a ** b ** c", "(a ** (b ** c))"),
    ("a < b and not c or d", "(((a < b) and (not c)) or d)"),
    ("a // 2 % 3", "((a // 2) % 3)"),
    ("f(a, b)[0] * 2", "(f(a, b)[...] * 2)"),
    ("(a + b) * c", "((a + b) * c)"),
    ("1e-3 * 2.5", "(0.001 * 2.5)"),
])
def test_precedence(text, tree):
    assert shape_of(expr(text)) == tree


def test_spans_point_at_the_source():
    m = parse("# comment\nmodel M {\n  input x: f32[b, 3]   # trailing comment\n"
              "  output y = relu(x) * 2\n}\n", "s.axon")
    out = m.items[0].body[1]
    assert (out.span.line, out.span.col) == (4, 3)
    call = out.value.left
    assert (call.func_span.line, call.func_span.col, call.func_span.end_col) == (4, 14, 18)
    assert call.span.source_line == "  output y = relu(x) * 2"


def test_statement_forms():
    m = parse("""
    fn f(x: f32[..., n], k: int = 2, flag = true) {
        param w: f32[n, k] = normal(0.02)
        a, b = g(x) as cell
        for i in 0..k { a = h(a) as block[i] }
        repeat 3 { a = a }
        if flag { a = a } else if k > 1 { a = -a } else { a = a }
        assert k > 0, "k must be positive"
        return a[:, 1:, ::2, ...] as out
    }""", "f.axon")
    body = m.items[0].body
    kinds = [type(s).__name__ for s in body]
    assert kinds == ["ParamDecl", "Assign", "For", "For", "If", "Assert", "Return"]
    assert body[1].targets == ("a", "b") and body[1].scope.name == "cell"
    assert body[2].var == "i" and body[2].body[0].scope.indices[0].name == "i"
    assert body[3].var is None
    assert isinstance(body[4].orelse[0], A.If)
    assert body[5].message == "k must be positive"
    items = body[6].value.items
    assert [type(i).__name__ for i in items] == ["Slice", "Slice", "Slice", "Ellipsis_"]
    params = m.items[0].params
    assert [p.name for p in params] == ["x", "k", "flag"]
    assert isinstance(params[0].type.dims[0], A.DimRest) and params[1].type.dims is None


def test_design_sketch_parses_and_means_what_it_says():
    g = compile_source(DESIGN_SKETCH, "sketch.axon")
    assert g.name == "MLP"
    assert {k: str(v.type) for k, v in g.params.items()} == {
        "h.w": "f32[64, 128]", "h.b": "f32[128]", "logits.w": "f32[128, 10]", "logits.b": "f32[10]"}
    assert g.params["h.w"].attrs.init.kind == "kaiming"
    assert str(g.outputs["logits"].type) == "f32[batch, 10]"
    spec = train_spec(parse(DESIGN_SKETCH, "sketch.axon"))
    assert spec.optimizer.name == "adam" and spec.optimizer.get("lr") == 1e-3
    assert (spec.epochs, spec.batch, spec.early_stop.get("patience")) == (30, 64, 5)
    assert spec.loss.fn == "cross_entropy" and spec.loss.labels == ("label",)
    assert spec.data.name == "digits" and spec.data.get("val") == 0.2


def test_deep_nesting_parses_without_recursion():
    assert sys.getrecursionlimit() <= 10_000
    deep = "(" * 5000 + "x" + ")" * 5000
    assert isinstance(expr(deep), A.Name)
    long = " + ".join(["x"] * 5000)
    assert isinstance(expr(long), A.Binary)


def test_the_language_reference_example_compiles():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "frontend" / "LANGUAGE.md").read_text()
    source = doc.split("```")[1]
    g = compile_source(source, "LANGUAGE.md")
    assert list(g.params) == ["block.0.h.w", "block.0.h.b", "block.1.h.w", "block.1.h.b",
                              "logits.w", "logits.b"]
    assert train_spec(parse(source, "LANGUAGE.md")).early_stop.get("patience") == 5
