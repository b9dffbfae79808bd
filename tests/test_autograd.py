"""Compiled models inside torch.autograd, and the partition behind them.

Gradients from `loss.backward()` through generated kernels are checked against torch.autograd run over
the reference evaluator's own op rules (`torch_reference`: the same torch ops `ir.evaluate` uses, on
tensors that require grad), with respect to parameters and inputs, on irregular shapes. The partition
is checked for what it saves and recomputes, and for numbers: forward then backward on the reference
evaluator gives what the joint `vjp` graph gives.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import axon
from axon import autograd
from axon.driver import graph_of
from axon.ir import DType, GraphBuilder, OpKind, Sym, evaluate, init_params, verify
from axon.ir.evaluate import EvalContext, bind_symbols, run_op
from axon.passes.autodiff import DOUT_PREFIX, GRAD_PREFIX, vjp
from axon.runtime import RunError
from axon.passes.partition import MAX_RECOMPUTE_DEPTH, partition
from numerics import assert_close

K = OpKind
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
GRAD_TOL = 2e-5  # float32 kernels against float32 torch: relative error of whole gradients

SMALL_CONV = """
model SmallConv() {
    input image: f32[batch, 2, 7, 9]
    c = conv2d(image, 3, 3, padding = 1, stride = [2, 1])
    output y = tanh(c) * sigmoid(c)
}
"""

HEADS = """
model Heads(hidden = 11) {
    input x: f32[batch, 6]
    h = tanh(linear(x, hidden))
    output a = linear(h, 3)
    output b = sigmoid(linear(h, 4)) * x[:, :4]
    output c = h
    output best = argmax(a, axis = 1)
}
"""


def torch_reference(graph, inputs: dict, params: dict) -> dict:
    """The graph's outputs by the reference op rules on the given tensors, differentiable by torch."""
    ctx = EvalContext(bind_symbols(graph, inputs))
    values = {}
    for node in graph.nodes:
        if node.op == K.INPUT:
            values[node] = inputs[node.name]
        elif node.op == K.PARAM:
            values[node] = params[node.name]
        else:
            values[node] = run_op(node.op, node.attrs, node.type, [values[i] for i in node.inputs], ctx)
    return {name: values[node] for name, node in graph.outputs.items()}


def leaves(tensors: dict, grad: bool = True) -> dict:
    return {k: v.detach().clone().requires_grad_(grad and v.is_floating_point()) for k, v in tensors.items()}


def check_grads(model, inputs: dict, douts: dict, wrt_inputs=None, seed: int = 0):
    """`loss = sum_k <out_k, douts[k]>` through the compiled model and through `torch_reference`; the
    outputs and the gradients of every parameter and of the float inputs (or `wrt_inputs`) must agree."""
    for t in model.parameters():
        t.grad = None
    wrt_inputs = [n for n, t in inputs.items() if t.is_floating_point()] if wrt_inputs is None else wrt_inputs
    ours = {k: v.detach().clone().requires_grad_(k in wrt_inputs) for k, v in inputs.items()}
    out = model.run(ours)
    sum((out[k] * d).sum() for k, d in douts.items()).backward()
    theirs_in = {k: v.detach().clone().requires_grad_(k in wrt_inputs) for k, v in inputs.items()}
    theirs_p = leaves(model.params)
    ref = torch_reference(model.graph, theirs_in, theirs_p)
    sum((ref[k] * d).sum() for k, d in douts.items()).backward()
    for k in model.graph.outputs:
        assert_close(out[k], ref[k], what=f"output {k}")
    for k in wrt_inputs:
        assert_close(ours[k].grad, theirs_in[k].grad, tol=GRAD_TOL, what=f"grad of input {k}")
    for k, t in model.params.items():
        assert_close(_grad(t), _grad(theirs_p[k]), tol=GRAD_TOL, what=f"grad of parameter {k}")
    return out


def _grad(t: torch.Tensor) -> torch.Tensor:
    """A leaf's gradient; None (the loss does not reach it) reads as zeros."""
    return torch.zeros_like(t) if t.grad is None else t.grad


def douts_for(out: dict, names, gen) -> dict:
    return {k: torch.randn(out[k].shape, generator=gen) for k in names}


# ---------------------------------------------------------------------------------------------------
# Gradients through the compiled backward


def test_mlp_gradients_wrt_parameters_and_input(gen):
    model = axon.compile(EXAMPLES / "mlp.axon")
    x = torch.randn(13, 64, generator=gen)
    douts = {"logits": torch.randn(13, 10, generator=gen)}
    out = check_grads(model, {"x": x}, douts)
    assert out["logits"].grad_fn is not None


def test_conv_model_gradients(gen):
    model = axon.compile(SMALL_CONV)
    x = torch.randn(3, 2, 7, 9, generator=gen)
    check_grads(model, {"image": x}, {"y": torch.randn(3, 3, 4, 9, generator=gen)})


def test_several_outputs_only_some_get_a_gradient(gen):
    model = axon.compile(HEADS)
    x = torch.randn(5, 6, generator=gen)
    out = check_grads(model, {"x": x}, {"b": torch.randn(5, 4, generator=gen)})  # a and c get none
    assert out["best"].dtype == torch.int64 and not out["best"].requires_grad
    douts = {"a": torch.randn(5, 3, generator=gen), "c": torch.randn(5, 11, generator=gen)}
    check_grads(model, {"x": x}, douts)


def test_loss_output_with_integer_labels(gen):
    """The train block's loss compiled in, dropout on: labels and the dropout seed are i64 inputs (no
    gradient), the random mask is saved (as bools), never recomputed."""
    model = axon.compile(EXAMPLES / "mlp.axon", loss=True)
    x, label = torch.randn(9, 64, generator=gen), torch.randint(0, 10, (9,), generator=gen)
    check_grads(model, {"x": x, "label": label, "seed": torch.tensor(3)}, {"loss": torch.ones(())})
    p = autograd.differentiated(model, [*model.params, "x"]).partition
    assert "bool[batch, 128]" in [str(t) for t in p.saved_types]
    assert not any(r.startswith(("rand", "matmul")) for r in p.recomputed)


def test_mixes_with_torch_modules_before_and_after(gen):
    """nn.Linear -> Axon MLP -> torch cross-entropy, one backward, one Adam step: the same as the
    whole pipeline in torch over the reference rules."""
    torch.manual_seed(0)
    model = axon.compile(EXAMPLES / "mlp.axon")
    pre = torch.nn.Linear(7, 64)
    twin_pre = torch.nn.Linear(7, 64)
    twin_pre.load_state_dict(pre.state_dict())
    twin_params = leaves(model.params)
    x, labels = torch.randn(11, 7, generator=gen), torch.randint(0, 10, (11,), generator=gen)

    opt = torch.optim.Adam([*model.parameters(), *pre.parameters()], lr=1e-2)
    loss = F.cross_entropy(model(torch.tanh(pre(x))), labels)
    loss.backward()
    twin_opt = torch.optim.Adam([*twin_params.values(), *twin_pre.parameters()], lr=1e-2)
    twin_loss = F.cross_entropy(torch_reference(model.graph, {"x": torch.tanh(twin_pre(x))}, twin_params)
                                ["logits"], labels)
    twin_loss.backward()
    assert_close(loss, twin_loss, what="loss")
    assert_close(pre.weight.grad, twin_pre.weight.grad, tol=GRAD_TOL, what="grad of the torch layer")
    for k, t in model.params.items():
        assert_close(t.grad, twin_params[k].grad, tol=GRAD_TOL, what=f"grad of {k}")
    opt.step()
    twin_opt.step()
    for k, t in model.params.items():
        assert_close(t, twin_params[k], tol=1e-5, what=f"{k} after one Adam step")


def test_saliency_is_the_gradient_wrt_the_input_only(gen):
    model = axon.compile(EXAMPLES / "mlp.axon")
    x = torch.randn(6, 64, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 3, 9, 1, 1, 5])
    model(x).gather(1, labels[:, None]).sum().backward()
    ref_x = x.detach().clone().requires_grad_()
    ref = torch_reference(model.graph, {"x": ref_x}, model.params)["logits"]
    ref.gather(1, labels[:, None]).sum().backward()
    assert_close(x.grad, ref_x.grad, tol=GRAD_TOL, what="saliency")
    assert all(t.grad is None and not t.requires_grad for t in model.params.values())
    assert list(model._differentiated) == [frozenset({"x"})]  # the backward computes no weight gradient
    assert list(model._differentiated[frozenset({"x"})].partition.backward.outputs) == ["grad.x"]


def test_pairs_are_compiled_once_per_wrt_set(gen):
    model = axon.compile(HEADS)
    x = torch.randn(4, 6, generator=gen)
    model.parameters()
    for _ in range(2):
        model(x)["a"].sum().backward()
    x.requires_grad_()
    model(x)["a"].sum().backward()
    assert len(model._differentiated) == 2  # {params} and {params, x}
    first = autograd.differentiated(model, list(model.params))
    assert autograd.differentiated(model, reversed(list(model.params))) is first


def test_no_grad_and_frozen_calls_take_the_plain_path(gen, monkeypatch):
    model = axon.compile(EXAMPLES / "mlp.axon")
    x = torch.randn(5, 64, generator=gen)
    plain = model(x)  # nothing requires grad
    model.parameters()
    monkeypatch.setattr(autograd, "run", lambda *a, **k: pytest.fail("took the autograd path"))
    with torch.no_grad():
        out = model(x)
    assert out.grad_fn is None and not model.__dict__.get("_differentiated")
    assert_close(out, plain, tol=0.0)


def test_a_parameter_only_unused_outputs_need_gets_none_as_in_torch(gen):
    """Only `b` gets a gradient: the weights of output `a` alone get None (an optimizer with momentum
    or weight decay then leaves them alone), the shared ones get theirs."""
    model = axon.compile(HEADS)
    model.parameters()
    model(torch.randn(5, 6, generator=gen))["b"].sum().backward()
    assert model.params["a.w"].grad is None and model.params["a.b"].grad is None
    assert model.params["h.w"].grad is not None and model.params["b.w"].grad is not None


def test_second_order_gradients_are_refused_not_silently_dropped(gen):
    model = axon.compile("model D() {\n input x: f32[batch, 3]\n output y = sum(tanh(x * x), axis = -1)\n}")
    x = torch.randn(4, 3, generator=gen, requires_grad=True)
    (g,) = torch.autograd.grad(model(x).sum(), x)  # first order is fine
    assert_close(g, 2 * x.detach() / torch.cosh(x.detach() ** 2) ** 2)
    with pytest.raises(RunError, match="create_graph=True"):
        torch.autograd.grad(model(x).sum(), x, create_graph=True)


def test_running_statistics_move_with_each_training_call_and_stay_out_of_the_optimizer(gen):
    """A batchnorm model compiled with training=True, driven by torch.optim: each call moves the
    running statistics as F.batch_norm does; parameters() leaves them out; one output is a tensor."""
    model = axon.compile("model N() {\n input x: f32[batch, 4]\n output y = batchnorm(x, momentum = 0.3)\n}",
                         training=True)
    assert model.buffers == ["y.running_mean", "y.running_var"]
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    assert len(opt.param_groups[0]["params"]) == 2  # y.w, y.b
    mean, var = torch.zeros(4), torch.ones(4)
    for _ in range(2):
        x = torch.randn(7, 4, generator=gen) * 3 + 1
        y = model(x)
        assert isinstance(y, torch.Tensor)
        (y ** 3).mean().backward()
        opt.step()
        opt.zero_grad()
        F.batch_norm(x, mean, var, training=True, momentum=0.3)
    assert_close(model.params["y.running_mean"], mean, tol=1e-5)
    assert_close(model.params["y.running_var"], var, tol=1e-5)


def test_the_autograd_path_compiles_as_the_model_was(gen):
    model = axon.compile("model M() {\n input x: f32[batch, 5]\n output y = tanh(linear(x, 3)) * 2.0\n}",
                         fusion=False)
    model(torch.randn(4, 5, generator=gen, requires_grad=True)).sum().backward()
    (d,) = model._differentiated.values()
    from axon.driver import executable

    unfused, fused = (len(executable(d.partition.forward, fusion=f).kernels) for f in (False, True))
    assert len(d.forward.kernels) == unfused > fused


# ---------------------------------------------------------------------------------------------------
# The partition: what is saved, what is recomputed, and that the two halves compute the joint graph


def _affine_relu():
    b = GraphBuilder()
    x = b.input("x", DType.F32, (Sym.of("batch"), 5))
    w, bias = b.param("w", DType.F32, (5, 7)), b.param("b", DType.F32, (7,))
    b.output("y", b.relu(b.add(b.matmul(x, w), bias)))
    return verify(b.build())


def _chain(length: int):
    """`x @ w` then `length` rounds of tanh(1.5 * .), then a sigmoid."""
    b = GraphBuilder()
    x, w = b.input("x", DType.F32, (Sym.of("n"), 6)), b.param("w", DType.F32, (6, 4))
    h = b.matmul(x, w)
    for _ in range(length):
        h = b.tanh(b.mul(h, 1.5))
    b.output("y", b.sigmoid(h))
    return verify(b.build())


ATTENTION = """
model Attn() {
    input x: f32[batch, seq, 12]
    output y = attention(x, 3, causal = true)
}
"""


def test_attention_through_autograd_saves_no_scores_and_runs_the_flash_kernels(gen, monkeypatch):
    """The partition hands the backward q, k (as the projections), the output and each row's
    log-sum-exp, never an [.., seq, seq] value: the scores are recomputed, so the backward half is one
    attention backward kernel. Gradients of the input and every projection as torch's; 21 positions
    over blocks of 16."""
    from axon.codegen import attention

    monkeypatch.setattr(attention, "INTERPRETER_TILE", 16)
    model = axon.compile(ATTENTION)
    x = torch.randn(2, 21, 12, generator=gen)
    check_grads(model, {"x": x}, {"y": torch.randn(2, 21, 12, generator=gen)})
    d = autograd.differentiated(model, ["x", *model.params])
    seq = Sym.of("seq")
    assert not any(t.shape[-2:] == (seq, seq) for t in d.partition.saved_types), d.partition.saved_types
    assert [k.group.kind for k in d.forward.kernels].count("attention") == 1
    assert [k.group.kind for k in d.backward.kernels].count("attention_bwd") == 1


def test_relu_affine_saves_a_mask_not_the_intermediates():
    p = partition(_affine_relu(), ["x", "w", "b"])
    assert [str(t) for t in p.saved_types] == ["bool[batch, 7]"]  # relu's mask: 1 byte an element
    assert p.kept == ("x", "w")  # for grad w = x^T g and grad x = g w^T; b is not needed
    assert p.recomputed == ()
    assert p.saved_elements() == "7*batch" and p.saved_bytes({"batch": 10}) == 70
    assert sorted(p.backward.outputs) == ["grad.b", "grad.w", "grad.x"]
    assert set(p.forward.outputs) == {"y", "saved.0"}


def test_tanh_sigmoid_chain_saves_one_value_and_recomputes_the_rest():
    """sigmoid(tanh(1.5 * tanh(1.5 * (x @ w)))): the backward reads both tanh outputs and the sigmoid's;
    it gets the first tanh (which also feeds 1 - t*t) and recomputes the three ops after it."""
    p = partition(_chain(2), ["w"])
    assert [str(t) for t in p.saved_types] == ["f32[n, 4]"]
    saved = p.forward.outputs["saved.0"]
    assert saved.op == K.TANH and saved.inputs[0].inputs[0].op == K.MATMUL
    assert p.kept == ("x",)  # for grad w = x^T g
    assert [r.split(":")[0] for r in p.recomputed] == ["mul", "tanh", "sigmoid"]


def test_recomputation_is_bounded_and_deterministic():
    length = 20  # 40 elementwise ops: some values must be saved along the way
    p = partition(_chain(length), ["x", "w"])
    assert 2 <= len(p.saved) <= 2 * length * 2 // MAX_RECOMPUTE_DEPTH
    assert len(p.saved) < length  # not every tanh
    tangent, depth = set(), {}
    for n in p.backward.nodes:  # chains of elementwise ops on forward values: what is recomputed
        if n.op == K.INPUT and n.name.startswith(DOUT_PREFIX) or any(i in tangent for i in n.inputs):
            tangent.add(n)
        elif n.op not in (K.CONST, K.INPUT, K.PARAM):
            depth[n] = 1 + max((depth.get(i, 0) for i in n.inputs), default=0)
    assert 0 < max(depth.values()) <= MAX_RECOMPUTE_DEPTH + 2  # + what a gradient rule hangs on (1 - y*y)
    again = partition(_chain(length), ["x", "w"])
    assert str(again.forward) == str(p.forward) and str(again.backward) == str(p.backward)


@pytest.mark.parametrize("case", ["affine_relu", "chain", "mlp", "cnn", "gan", "heads"])
def test_forward_then_backward_equals_the_joint_graph(case, gen):
    graphs = {
        "affine_relu": _affine_relu, "chain": lambda: _chain(12),
        "mlp": lambda: graph_of(str(EXAMPLES / "mlp.axon")),
        "cnn": lambda: graph_of(str(EXAMPLES / "cnn.axon")),
        "gan": lambda: graph_of(str(EXAMPLES / "gan.axon"), hparams={"features": 2}),
        "heads": lambda: graph_of(HEADS),
    }
    graph = graphs[case]()
    wrt = [*graph.params, *(n for n, i in graph.inputs.items() if i.dtype.is_float)]
    p = partition(graph, wrt)
    inputs = {n: _random(i, gen) for n, i in graph.inputs.items()}
    params = init_params(graph, seed=1)
    fwd = evaluate(p.forward, inputs, params)
    douts = {DOUT_PREFIX + o: torch.randn(fwd[o].shape, generator=gen) for o in p.outputs}
    feeds = {**{s: fwd[s] for s in p.saved}, **douts}
    feeds.update({k: inputs[k] for k in p.kept if k in p.backward.inputs})
    got = evaluate(p.backward, feeds, {k: params[k] for k in p.backward.params})
    want = evaluate(vjp(graph, wrt), {**inputs, **douts}, params)
    for name in wrt:
        if name in p.zero_grads:
            assert not want[GRAD_PREFIX + name].any()
            continue
        assert_close(got[GRAD_PREFIX + name], want[GRAD_PREFIX + name], tol=1e-5, what=f"grad.{name}")
    for name in graph.outputs:
        assert_close(fwd[name], want[name], tol=0.0, what=name)


def _random(node, gen):
    shape = [d if isinstance(d, int) else 5 for d in node.shape]
    if node.dtype.is_float:
        return torch.randn(shape, generator=gen).to(node.dtype.torch)
    return torch.randint(0, 10, shape, generator=gen).to(node.dtype.torch)
