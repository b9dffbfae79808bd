"""Elaboration: parameter names, hyper-parameters, symbolic sizes, loops, indexing, compile-time
arithmetic, model selection, and programs too deep or too long for recursion."""
import sys

import pytest
import torch

from axon.frontend import AxonNameError, AxonTypeError, compile_source
from axon.ir import evaluate, verify
from numerics import assert_close


def graph(body: str, **options):
    return compile_source(f"model M {{\n{body}\n}}", "m.axon", **options)


def test_parameter_names_follow_bindings_and_dedupe():
    g = graph("input x: f32[b, 4]\nh = linear(x, 4)\nh = relu(h)\nh = linear(h, 4)\n"
              "y = linear(x, 4) + linear(x, 4)\nz = linear(x, 4) as fc\noutput o = h + y + z")
    assert list(g.params) == ["h.w", "h.b", "h_1.w", "h_1.b", "y.w", "y.b", "y_1.w", "y_1.b",
                              "fc.w", "fc.b"]


def test_nested_calls_and_returns_name_by_function():
    g = compile_source("""
fn block(x: f32[b, n]) {
    a = linear(x, n)
    return relu(linear(a, n))
}
model M {
    input x: f32[b, 3]
    param scale: f32[3] = ones()
    for i in 0..2 { x = block(x) as layer[i] }
    output y = x * scale
}""", "m.axon")
    assert list(g.params) == ["scale", "layer.0.a.w", "layer.0.a.b", "layer.0.linear.w", "layer.0.linear.b",
                              "layer.1.a.w", "layer.1.a.b", "layer.1.linear.w", "layer.1.linear.b"]


def test_explicit_name_shares_weights():
    g = graph("input x: f32[b, 4]\nh = x\nrepeat 3 { h = linear(h, 4) as shared }\noutput y = h")
    assert list(g.params) == ["shared.w", "shared.b"]
    x, p = torch.randn(2, 4), {"shared.w": torch.randn(4, 4), "shared.b": torch.randn(4)}
    ref = x
    for _ in range(3):
        ref = ref @ p["shared.w"] + p["shared.b"]
    assert_close(evaluate(g, {"x": x}, p)["y"], ref)


def test_hyperparameters_and_overrides():
    src = ("model M(hidden = 8, scale: float = 2) {\n"
           " input x: f32[b, 3]\n output y = linear(x, hidden) * scale\n}")
    g = compile_source(src, "m.axon")
    assert str(g.params["y.w"].type) == "f32[3, 8]"
    g = compile_source(src, "m.axon", hparams={"hidden": 5})
    assert str(g.params["y.w"].type) == "f32[3, 5]"
    with pytest.raises(AxonNameError) as info:
        compile_source(src, "m.axon", hparams={"hiden": 5})
    assert info.value.hint == "did you mean 'hidden'?"
    with pytest.raises(AxonTypeError, match="hyper-parameter 'hidden' is an int"):
        compile_source(src, "m.axon", hparams={"hidden": 2.5})
    with pytest.raises(AxonTypeError, match="hyper-parameter 'scale' must be a float"):
        compile_source(src, "m.axon", hparams={"scale": "big"})
    chained = "model M(d = 4, hidden = 3 * d) { input x: f32[b, d]  output y = linear(x, hidden) }"
    assert str(compile_source(chained, "m.axon", hparams={"d": 5}).params["y.w"].type) == "f32[5, 15]"


def test_symbolic_sizes_flow_through_reshape_and_shape():
    g = graph("input x: f32[batch, seq, 6]\nh = reshape(x, [batch * seq, 6])\ns = shape(x)\n"
              "output y = reshape(h, [s[0], s[1], 2, 3])\noutput n = full([batch], float(prod(s[2:])))")
    assert str(g.outputs["y"].type) == "f32[batch, seq, 2, 3]"
    out = evaluate(g, {"x": torch.randn(2, 5, 6)})
    assert tuple(out["y"].shape) == (2, 5, 2, 3) and out["n"].tolist() == [6.0, 6.0]


def test_indexing_and_slicing_match_torch():
    x = torch.randn(4, 5, 6)
    idx = torch.tensor([2, 0, 3])
    g = graph("input x: f32[4, 5, 6]\ninput i: i64[3]\noutput a = x[1]\noutput b = x[:, -1, 1:5:2]\n"
              "output c = x[..., 0]\noutput d = x[i]\noutput e = x[1:, ::3]\noutput f = x[:, i, -2]")
    out = evaluate(g, {"x": x, "i": idx})
    for name, ref in {"a": x[1], "b": x[:, -1, 1:5:2], "c": x[..., 0], "d": x[idx], "e": x[1:, ::3],
                      "f": x[:, idx, -2]}.items():
        assert_close(out[name], ref, what=name)


def test_compile_time_arithmetic_and_control_flow():
    g = graph("input x: f32[2]\nk = 0\nfor i in 1..5 { if i % 2 == 0 { k = k + i } else { k = k - 1 } }\n"
              "n = 7 // 2 * 3 + 2 ** 3\nflag = not (k > 100) and true\noutput y = x * float(k * 100 + n)\n"
              "output z = x * sqrt(16.0)")
    assert_close(evaluate(g, {"x": torch.ones(2)})["y"], torch.full((2,), 417.0))
    assert_close(evaluate(g, {"x": torch.ones(2)})["z"], torch.full((2,), 4.0))


def test_broadcasting_comparisons_and_where():
    g = graph("input x: f32[b, 3]\ninput m: f32[3]\noutput y = where(x > m, x * 2.0, -x) / 2.0\n"
              "output s = sum(x, axis = 1, keep = true)\noutput am = argmax(x)")
    x, m = torch.randn(4, 3), torch.randn(3)
    out = evaluate(g, {"x": x, "m": m})
    assert_close(out["y"], torch.where(x > m, x * 2, -x) / 2)
    assert_close(out["s"], x.sum(1, keepdim=True))
    assert torch.equal(out["am"], x.argmax(-1))


def test_model_selection():
    src = "model A { input x: f32[2]  output y = x }\nmodel B { input x: f32[2]  output y = -x }"
    assert compile_source(src, "m.axon", model="B").name == "B"
    with pytest.raises(AxonNameError, match="several models"):
        compile_source(src, "m.axon")
    with pytest.raises(AxonNameError, match="no model named 'C'"):
        compile_source(src, "m.axon", model="C")


def test_user_function_replaces_a_prelude_layer_for_the_user_only():
    g = compile_source("""
fn relu6(x) { return minimum(relu(x), 6.0) }
fn softmax(x: f32[...], axis: int = -1) { return x }
model M { input x: f32[b, 3]  output y = softmax(relu6(x))  output z = log_softmax(x) }""", "m.axon")
    x = torch.randn(2, 3) * 10
    out = evaluate(g, {"x": x})
    assert_close(out["y"], x.clamp(0, 6))
    assert_close(out["z"], torch.log_softmax(x, -1))  # the prelude's log_softmax is unaffected


def test_thousand_step_unroll_compiles_and_runs():
    assert sys.getrecursionlimit() <= 10_000
    g = graph("input x: f32[2, 1000, 3]\noutput y = rnn(x, 4)")
    verify(g)
    assert len(g) > 5000
    p = {k: torch.randn(tuple(v.shape)) * 0.3 for k, v in g.params.items()}
    out = evaluate(g, {"x": torch.randn(2, 1000, 3)}, p)["y"]
    assert tuple(out.shape) == (2, 1000, 4) and torch.isfinite(out).all()


def test_long_expressions_compile_without_recursion():
    g = graph("input x: f32[2]\noutput y = " + " + ".join(["x"] * 3000))
    assert_close(evaluate(g, {"x": torch.ones(2)})["y"], torch.full((2,), 3000.0))
    g = graph("input x: f32[2]\noutput y = " + "-" * 3001 + "x")
    assert_close(evaluate(g, {"x": torch.ones(2)})["y"], -torch.ones(2))


def test_long_else_if_chains_run_without_recursion():
    chain = " ".join(f"else if k == {i} {{ x = x * 2.0 }}" for i in range(1, 1500))
    g = graph(f"input x: f32[2]\nk = 1400\nif k == 0 {{ x = -x }} {chain}\noutput y = x")
    assert_close(evaluate(g, {"x": torch.ones(2)})["y"], torch.full((2,), 2.0))


@pytest.mark.parametrize("nested", [
    "if true { " * 300 + "x = x" + " }" * 300,
    "repeat 1 { " * 300 + "x = x" + " }" * 300,
])
def test_deeply_nested_blocks_are_a_located_error_not_a_crash(nested):
    from axon.frontend import AxonValueError

    with pytest.raises(AxonValueError, match="nested more than"):
        graph(f"input x: f32[2]\n{nested}\noutput y = x")


def test_initializers_take_positional_arguments_and_are_checked():
    from axon.frontend import AxonValueError
    from axon.ir.init import init_params

    g = graph("input x: f32[b, 3]\nparam a: f32[3, 4] = normal(0.02, 0.5)\nparam c: f32[3, 4] = kaiming()\n"
              "param d: f32[4] = const(2)\nparam e: f32[3, 4] = uniform(high = 2.0)\noutput y = x @ a")
    inits = {n: (v.attrs.init.kind, v.attrs.init.args) for n, v in g.params.items()}
    assert inits == {"a": ("normal", (("std", 0.02), ("mean", 0.5))), "c": ("kaiming", ()),
                     "d": ("const", (("value", 2),)), "e": ("uniform", (("low", -1.0), ("high", 2.0)))}
    values = init_params(g, seed=0)
    assert values["d"].tolist() == [2.0] * 4 and abs(values["a"].mean().item() - 0.5) < 0.05
    with pytest.raises(AxonValueError, match="is not a distribution"):
        graph("input x: f32[3]\nparam a: f32[3] = uniform(2.0, 1.0)\noutput y = x + a")


def test_a_declaration_run_again_in_a_loop_is_one_parameter():
    g = compile_source("fn scale(x: f32[n]) {\n  for i in 0..3 {\n    param w: f32[n] = ones()\n"
                       "    x = x * w\n  }\n  return x\n}\n"
                       "model M { input x: f32[4]  output y = scale(x) }", "m.axon")
    assert list(g.params) == ["y.w"]
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert_close(evaluate(g, {"x": torch.ones(4)}, {"y.w": w})["y"], w ** 3)
