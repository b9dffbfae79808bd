"""Weight-only quantization (`passes/quantize.py`, `passes/quant_weights.py`, `axon quantize`): the pass's
graph against a PyTorch twin (x @ (q.float() * s)), the converter against torch's quantization bit for
bit, the int4 packing through the whole path (file, pass, kernels), the per-layer record of what was done
and why not, the CLI end to end on a tiny model (ledger, run and eval --quantized), and bad inputs."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

import axon
from axon.cli import main
from axon.driver import graph_of, optimize
from axon.ir import DType, GraphBuilder, OpKind, PassError, Sym, evaluate, init_params
from axon.passes.manager import DEFAULT_PIPELINE
from axon.passes.quant_weights import convert, dequantize
from axon.passes.quantize import Quantize, QuantizeError, plan
from axon.runtime.safetensors import load, load_metadata, save

pytestmark = pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
D, K = DType, OpKind

TINY = """
model Tiny(hidden = 64, classes = 4) {
    input x: f32[batch, 32]
    h = relu(linear(x, hidden))          # h.w [32, 64]: quantized
    output logits = linear(h, classes)   # logits.w [64, 4]: 256 elements, below min_size: float
}

train Tiny {
    data   = blobs(classes = 4, features = 32, n = 160, val = 0.25)
    loss   = cross_entropy(logits, label)
    optim  = adam(lr = 1e-2)
    epochs = 1   batch = 40
}
"""

MLP = """
model M {
    input x: f32[batch, 128]
    h = relu(linear(x, 128))
    output y = linear(h, 64)
}
"""


def torch_unpack(p: torch.Tensor) -> torch.Tensor:
    """The twin of unpack_int4: byte i of a row holds codes 2i (low nibble) and 2i + 1, signed."""
    lo, hi = (p.to(torch.int16) & 15), (p.to(torch.int16) >> 4)
    codes = torch.stack([lo, hi], dim=-1).reshape(*p.shape[:-1], 2 * p.shape[-1])
    return torch.where(codes >= 8, codes - 16, codes).to(torch.int8)


def torch_weight(q: torch.Tensor, s: torch.Tensor, group: int) -> torch.Tensor:
    """The dequantized [K, N] weight, in torch: q.float() * s (a per-group scale repeated along K)."""
    if q.dtype == torch.uint8:
        q = torch_unpack(q)
    return q.float() * (s.repeat_interleave(group, dim=0) if group > 1 else s)


def _mlp(mode: str, group: int = 64):
    g, _ = optimize(graph_of(MLP), out=lambda *a: None)
    params = init_params(g, seed=3)
    params = {k: v + 0.01 * torch.randn(v.shape, generator=torch.Generator().manual_seed(1)) for k, v in
              params.items()}  # biases nonzero too
    qg = Quantize(mode, group, min_size=0).run(g)
    layers = plan(g, mode, group, min_size=0)
    return g, params, qg, layers


@pytest.mark.parametrize("mode, group", [("int8-weight", 64), ("int4-weight", 32), ("int4-weight", 64),
                                         ("int4-weight", 128)])
def test_pass_graph_equals_the_torch_twin(mode, group):
    g, params, qg, layers = _mlp(mode, group)
    qparams = {**params, **convert(layers, params)}
    assert sorted(qg.params) == ["h.b", "h.w.q", "h.w.scale", "y.b", "y.w.q", "y.w.scale"]
    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(0))
    got = evaluate(qg, {"x": x}, qparams)["y"]
    p = qparams
    w1 = torch_weight(p["h.w.q"], p["h.w.scale"], group if mode == "int4-weight" else 1)
    w2 = torch_weight(p["y.w.q"], p["y.w.scale"], group if mode == "int4-weight" else 1)
    want = torch.relu(x @ w1 + p["h.b"]) @ w2 + p["y.b"]
    assert torch.equal(got, want)
    floats = evaluate(g, {"x": x}, params)["y"]
    rel = float((got - floats).norm() / floats.norm())
    assert 1e-5 < rel < (0.02 if mode == "int8-weight" else 0.2)  # quantized: close, not equal
    # and the generated kernels compute the pass's graph
    model = axon.compile(qg, device="cpu")
    model.params = qparams
    torch.testing.assert_close(model(x), got, rtol=1e-5, atol=1e-5)


def _torch_codes(w: torch.Tensor, s: torch.Tensor, qmax: int) -> torch.Tensor:
    inv = torch.ones_like(s) / s
    return torch.clamp(torch.round(w * inv), -qmax, qmax).to(torch.int8)


def test_converter_agrees_with_torch_and_the_evaluator_bit_for_bit():
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(256, 96, generator=gen) * torch.rand(1, 96, generator=gen) * 3
    w[5, 7] = 0.0
    w[:, 3] = 0.0                              # an all-zero channel: the smallest scale, codes 0
    w[9, 10] = w[:, 10].abs().max() / 127 * 40.5  # a half-integer code before rounding (ties to even)
    b = GraphBuilder()
    b.param("w", D.F32, (256, 96))
    b.output("y", b.matmul(b.input("x", D.F32, (Sym.of("batch"), 256)), b.lookup("w")))
    g = b.build()
    for mode, group in (("int8-weight", 1), ("int4-weight", 32), ("int4-weight", 128)):
        (layer,) = plan(g, mode, group if group > 1 else 64, min_size=0)
        out = convert([layer], {"w": w})
        q, s = out["w.q"], out["w.scale"]
        qmax = 127 if mode == "int8-weight" else 7
        # the scale: amax / qmax in f32, per channel or per group along K
        amax = w.abs().amax(0, keepdim=True) if group == 1 else w.abs().reshape(-1, group, 96).amax(1)
        assert torch.equal(s, (amax / qmax).clamp_min(2.0**-126))
        codes = q if group == 1 else torch_unpack(q)
        wide = s if group == 1 else s.repeat_interleave(group, 0)
        assert torch.equal(codes, _torch_codes(w, wide, qmax))  # the op's formula, in torch
        # torch's own quantization: per channel, and per group as channels of a reshaped weight
        chans, flat = (w, s.reshape(-1)) if group == 1 else (
            w.reshape(-1, group, 96).transpose(0, 1).reshape(group, -1), s.reshape(-1))
        zp = torch.zeros(flat.numel(), dtype=torch.int32)
        fake = torch.fake_quantize_per_channel_affine(chans, flat, zp, 1, -qmax, qmax)
        deq = dequantize(layer, q, s)
        if group > 1:
            deq = deq.reshape(-1, group, 96).transpose(0, 1).reshape(group, -1)
        assert torch.equal(deq, fake)
        if group == 1:
            ref = torch.quantize_per_channel(w, s.reshape(-1).double(), torch.zeros(96, dtype=torch.long),
                                             1, torch.qint8).int_repr()
            assert torch.equal(q, ref)
        # the IR's fake_quantize through the evaluator: the same weight the graph dequantizes
        fb = GraphBuilder()
        fq = fb.fake_quantize(fb.param("w", D.F32, (256, 96)), fb.param("s", D.F32, tuple(s.shape)),
                              axis=1 if group == 1 else 0, group=None if group == 1 else group,
                              qmin=-qmax, qmax=qmax)
        fb.output("w", fq)
        assert torch.equal(evaluate(fb.build(), {}, {"w": w, "s": s})["w"], dequantize(layer, q, s))


def test_int4_pack_layout_round_trips_through_file_pass_and_kernels(tmp_path):
    # codes chosen per element, so each byte's nibbles are known: code(k, n) = (k + 3n) % 15 - 7
    k, n, group = 64, 6, 32
    kk, nn = torch.meshgrid(torch.arange(k), torch.arange(n), indexing="ij")
    codes = ((kk + 3 * nn) % 15 - 7).to(torch.int8)
    codes[0, :] = 7  # every group's amax is 7 codes: scale = amax / 7 recovers the chosen scale
    codes[group, :] = -7
    scale = torch.tensor([[0.5, 0.25, 1.0, 2.0, 0.125, 4.0], [1.5, 0.75, 3.0, 0.5, 1.0, 2.0]])
    w = codes.float() * scale.repeat_interleave(group, 0)  # exactly representable
    b = GraphBuilder("P")
    x = b.input("x", D.F32, (Sym.of("batch"), k))
    b.output("y", b.matmul(x, b.param("w", D.F32, (k, n))))
    g = b.build()
    (layer,) = plan(g, "int4-weight", group, min_size=0)
    out = convert([layer], {"w": w})
    q = out["w.q"]
    assert q.dtype == torch.uint8 and tuple(q.shape) == (k, n // 2)
    lo, hi = codes[:, 0::2].to(torch.int16) & 15, codes[:, 1::2].to(torch.int16) & 15
    assert torch.equal(q, (lo | hi << 4).to(torch.uint8))  # even element in the low nibble
    assert torch.equal(out["w.scale"], scale)
    save(out, tmp_path / "q.safetensors")
    back = load(tmp_path / "q.safetensors")
    qg = Quantize("int4-weight", group, min_size=0).run(g)
    xv = torch.randn(3, k, generator=torch.Generator().manual_seed(2))
    got = evaluate(qg, {"x": xv}, back)["y"]
    assert torch.equal(dequantize(layer, back["w.q"], back["w.scale"]), w)
    torch.testing.assert_close(got, xv @ w, rtol=0, atol=1e-5)
    model = axon.compile(qg, device="cpu")
    model.params = back
    torch.testing.assert_close(model(xv), got, rtol=1e-6, atol=1e-5)


def _zoo():
    """A graph with one weight of every case the plan distinguishes."""
    b = GraphBuilder("Zoo")
    x = b.input("x", D.F32, (Sym.of("batch"), 64))
    idx = b.input("idx", D.I64, (Sym.of("batch"),))
    img = b.input("img", D.F32, (Sym.of("batch"), 8, 6, 6))
    h = b.matmul(x, b.param("fc.w", D.F32, (64, 64)))
    h = b.matmul(h, b.transpose(b.param("torchy.w", D.F32, (32, 64))))   # torch's [N, K]: a view
    h2 = b.matmul(b.take(b.param("emb.w", D.F32, (100, 64)), idx), b.param("odd.w", D.F32, (64, 33)))
    tied = b.param("tied.w", D.F32, (64, 64))
    h3 = b.add(b.matmul(x, tied), b.take(tied, idx))
    h4 = b.matmul(b.slice(x, 1, 0, 8), b.param("small.w", D.F32, (8, 8)))
    c = b.conv2d(img, b.param("conv.w", D.F32, (16, 8, 3, 3)), padding=1)
    b.output("a", h)
    b.output("b", h2)
    b.output("c", h3)
    b.output("d", h4)
    b.output("e", c)
    return b.build()


def test_plan_records_every_layer_and_why_not():
    g = _zoo()
    int8 = {layer.name: layer for layer in plan(g, "int8-weight", skip=("small",))}
    int4 = {layer.name: layer for layer in plan(g, "int4-weight", 64, skip=("fc.w",))}
    assert sorted(int8) == sorted(["fc.w", "torchy.w", "emb.w", "odd.w", "tied.w", "small.w", "conv.w"])
    assert int8["fc.w"].kind == "int8" and int8["fc.w"].scale_shape == (1, 64)
    assert int8["torchy.w"].perm == (1, 0) and int8["torchy.w"].q_shape == (64, 32)  # stored as read
    assert int8["conv.w"].kind == "int8" and int8["conv.w"].scale_shape == (16, 1, 1, 1)
    assert int8["odd.w"].kind == "int8"
    assert "read by take" in int8["emb.w"].reason and int8["emb.w"].kind == "float"
    assert "tied" in int8["tied.w"].reason and int8["tied.w"].kind == "float"
    assert int8["small.w"].reason == "skipped by name"
    assert int4["fc.w"].reason == "skipped by name" and int4["fc.w"].kind == "float"
    assert "fewer than min_size=1024" in int4["small.w"].reason
    assert "N=33 is odd" in int4["odd.w"].reason
    assert "conv2d stays float" in int4["conv.w"].reason
    assert int4["torchy.w"].kind == "int4" and int4["torchy.w"].q_shape == (64, 16)
    assert int4["torchy.w"].group == 64 and int4["torchy.w"].scale_shape == (1, 32)
    # the pass applies the plan; its stats count weights and fallbacks
    from collections import Counter

    stats = Counter()
    qg = Quantize("int8-weight", skip="small").run(g, stats)
    assert stats == {"int8 weights": 4, "float fallbacks": 2}
    assert {"fc.w.q", "torchy.w.q", "conv.w.q", "odd.w.q", "tied.w", "emb.w", "small.w"} <= set(qg.params)
    assert not {"fc.w", "torchy.w", "conv.w"} & set(qg.params)


def test_plan_numerics_for_views_and_conv2d_equal_torch():
    g = _zoo()
    layers = plan(g, "int8-weight")
    params = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(len(k))) for k, v in
              init_params(g).items()}
    qparams = {**params, **convert(layers, params)}
    qg = Quantize("int8-weight").run(g)
    gen = torch.Generator().manual_seed(4)
    inputs = {"x": torch.randn(3, 64, generator=gen), "idx": torch.tensor([1, 5, 63]),
              "img": torch.randn(3, 8, 6, 6, generator=gen)}
    out = evaluate(qg, inputs, qparams)
    p = qparams
    h = inputs["x"] @ torch_weight(p["fc.w.q"], p["fc.w.scale"], 1)
    want_a = h @ torch_weight(p["torchy.w.q"], p["torchy.w.scale"], 1)
    assert torch.equal(out["a"], want_a)
    wc = p["conv.w.q"].float() * p["conv.w.scale"]
    assert torch.equal(out["e"], torch.nn.functional.conv2d(inputs["img"], wc, padding=1))
    # the transposed weight is stored [K, N]: its codes quantize params["torchy.w"].T
    assert torch.equal(p["torchy.w.q"], _torch_codes(params["torchy.w"].T, p["torchy.w.scale"], 127))


def test_pass_options_are_checked():
    with pytest.raises(PassError, match="the modes are int8-weight, int4-weight"):
        optimize(graph_of(MLP), "quantize{mode=int3-weight}", out=lambda *a: None)
    with pytest.raises(PassError, match="int4 groups are 32, 64, 128"):
        optimize(graph_of(MLP), "quantize{mode=int4-weight,group=48}", out=lambda *a: None)
    g, _ = optimize(graph_of(MLP), f"{DEFAULT_PIPELINE},quantize{{mode=int4-weight,skip=h|y.*}}",
                    out=lambda *a: None)
    assert sorted(g.params) == ["h.b", "h.w", "y.b", "y.w"]  # both skipped: by layer name, by glob
    b = GraphBuilder()
    b.output("y", b.matmul(b.input("x", D.F32, (2, 64)), b.param("w", D.F32, (64, 64))))
    (layer,) = plan(b.build(), "int8-weight")
    with pytest.raises(QuantizeError, match="'w' holds 1 NaN or infinite"):
        convert([layer], {"w": torch.full((64, 64), 1.0).index_put_((torch.tensor(3), torch.tensor(4)),
                                                                    torch.tensor(math.inf))})


# --- the command line --------------------------------------------------------------------------------
def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiny(tmp_path):
    src = tmp_path / "tiny.axon"
    src.write_text(TINY)
    g, _ = optimize(graph_of(src, loss=True), out=lambda *a: None)
    gen = torch.Generator().manual_seed(5)
    params = {k: torch.randn(v.shape, generator=gen) * 0.3 for k, v in init_params(g).items()}
    save(params, tmp_path / "w.safetensors")
    return src, params


def _stats(line: str) -> list[float]:
    return [float(v) for v in re.findall(r"(?:min|max|mean|std) (\S+)", line)]


def test_cli_quantize_writes_a_ledger_and_run_eval_use_it(capsys, tmp_path, tiny):
    src, params = tiny
    out = tmp_path / "q8"
    code, text, err = cli(capsys, "quantize", src, "--mode", "int8-weight", "--weights",
                          tmp_path / "w.safetensors", "--out", out, "--device", "cpu")
    assert code == 0, text + err
    assert {p.name for p in out.iterdir()} == {"quantized.safetensors", "ledger.json", "ledger.png"}
    assert (out / "ledger.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ledger = json.loads((out / "ledger.json").read_text())
    rows = {r["layer"]: r for r in ledger["layers"]}
    assert rows["h.w"]["kind"] == "int8" and rows["h.w"]["bytes_before"] == 32 * 64 * 4
    assert rows["h.w"]["bytes_after"] == 32 * 64 + 64 * 4
    assert 1e-4 < rows["h.w"]["rel_error"] < 0.02
    assert "dequantize" in rows["h.w"]["runs"] and "matmul" in rows["h.w"]["runs"]
    assert rows["logits.w"]["kind"] == "float" and "min_size=1024" in rows["logits.w"]["runs"]
    assert rows["logits.w"]["rel_error"] is None
    v = ledger["validation"]
    assert v["examples"] == 40 and math.isfinite(v["before"]["loss"]) and math.isfinite(v["after"]["loss"])
    assert v["before"]["loss"] != v["after"]["loss"] and abs(v["loss_increase"]) < 0.05
    assert "h.w" in text and "validation (40 examples): loss" in text
    assert load_metadata(out / "quantized.safetensors")["format"] == "axon-weight-quantization/1"

    # the layer error is the matmul's on the float model's activations: recompute it in torch
    q = load(out / "quantized.safetensors")
    data_x = _val_inputs(src)
    y = data_x @ params["h.w"]
    yq = data_x @ (q["h.w.q"].float() * q["h.w.scale"])
    assert rows["h.w"]["rel_error"] == pytest.approx(float((yq - y).norm() / y.norm()), rel=1e-4)

    # `axon run --quantized` computes the pass's graph with the file's parameters
    xs = torch.randn(6, 32, generator=torch.Generator().manual_seed(9))
    np.savez(tmp_path / "x.npz", x=xs.numpy())
    code, text, err = cli(capsys, "run", src, "--quantized", out, "--inputs", tmp_path / "x.npz",
                          "--device", "cpu", "--check")
    assert code == 0, text + err
    g, _ = optimize(graph_of(src), f"{DEFAULT_PIPELINE},quantize{{mode=int8-weight}},dce",
                    out=lambda *a: None)
    want = evaluate(g, {"x": xs}, q)["logits"]
    line = next(ln for ln in text.splitlines() if ln.startswith("logits:"))
    expect = [float(want.min()), float(want.max()), float(want.mean()), float(want.std(unbiased=False))]
    assert _stats(line) == pytest.approx(expect, rel=1e-3, abs=1e-4)
    floats = evaluate(optimize(graph_of(src), out=lambda *a: None)[0], {"x": xs}, params)["logits"]
    assert not torch.equal(floats, want)

    # `axon eval --quantized` reports the ledger's after-metrics
    code, text, err = cli(capsys, "eval", src, "--quantized", out, "--device", "cpu")
    assert code == 0, text + err
    assert f"val loss {v['after']['loss']:.4f}" in text and f"val acc {v['after']['acc']:.4f}" in text


def _val_inputs(src) -> torch.Tensor:
    from axon import ledger

    setup = ledger.Setup.make(src)
    return setup.sample()[0]["x"]


def test_cli_int4_with_skip_and_no_train_block(capsys, tmp_path):
    src = tmp_path / "m.axon"
    src.write_text(MLP)
    code, text, err = cli(capsys, "quantize", src, "--mode", "int4-weight", "--group", "32", "--skip", "y",
                          "--out", tmp_path / "q4", "--device", "cpu")
    assert code == 0, text + err
    ledger = json.loads((tmp_path / "q4" / "ledger.json").read_text())
    rows = {r["layer"]: r for r in ledger["layers"]}
    assert rows["h.w"]["kind"] == "int4 g32" and rows["h.w"]["bytes_after"] == 128 * 64 + 4 * 4 * 128
    assert rows["y.w"]["kind"] == "float" and "skipped by name" in rows["y.w"]["runs"]
    assert 0 < rows["h.w"]["rel_error"] < 0.2 and ledger["validation"] is None
    assert "random inputs" in ledger["error_batch"] and "no train block" in text
    q = load(tmp_path / "q4" / "quantized.safetensors")
    assert q["h.w.q"].dtype == torch.uint8 and q["y.w"].dtype == torch.float32


def test_cli_bad_quantized_inputs_are_clear_errors(capsys, tmp_path, tiny):
    src, _ = tiny
    out = tmp_path / "q"
    assert cli(capsys, "quantize", src, "--mode", "int8-weight", "--weights", tmp_path / "w.safetensors",
               "--out", out, "--device", "cpu")[0] == 0
    good = (out / "quantized.safetensors").read_bytes()

    def fails(expect: str, *extra, cmd="run"):
        code, text, err = cli(capsys, cmd, src, "--quantized", out, "--device", "cpu", *extra)
        assert code == 1, text + err
        assert "Traceback" not in err and re.search(expect, err), err
        return err

    path = out / "quantized.safetensors"
    data = bytearray(good)
    data[-3] ^= 0x40  # a flipped bit in the last tensor's bytes
    path.write_bytes(bytes(data))
    fails(r"quantized\.safetensors.*(checksum|sha256|damaged)")
    path.write_bytes(good[:len(good) // 2])  # truncated
    fails(r"quantized\.safetensors")
    fails(r"quantized\.safetensors", cmd="eval")

    tensors = load_from(good, tmp_path)
    meta = load_metadata(tmp_path / "good.safetensors")
    wrong = dict(tensors, **{"h.w.scale": torch.ones(1, 32)})  # another shape
    save(wrong, path, meta)
    fails(r"'h\.w\.scale' is f32\[1, 32\], the model under int8-weight wants f32\[1, 64\]")
    int4 = dict(meta, quantize=json.dumps({"mode": "int4-weight", "group": 64, "skip": [], "min_size": 1024}))
    save(tensors, path, int4)  # metadata says int4, the tensors are int8's
    err = fails(r"quantized with mode int4-weight, group 64")
    assert "'h.w.q' is i8[32, 64], the model under int4-weight wants u8[32, 32]" in err
    save(tensors, path, dict(meta, quantize=json.dumps({"mode": "int3-weight", "group": 64, "skip": [],
                                                        "min_size": 1024})))
    fails(r"names mode 'int3-weight'; the modes are int8-weight, int4-weight")
    save(tensors, path, {k: v for k, v in meta.items() if k != "format"})
    fails(r"not a file written by `axon quantize`")
    save(tensors, path, dict(meta, model="Other"))
    fails(r"quantized weights of model 'Other', not 'Tiny'")
    code, text, err = cli(capsys, "run", src, "--quantized", tmp_path / "nowhere", "--device", "cpu")
    assert code == 1 and "nowhere/quantized.safetensors: no such file" in err
    path.write_bytes(good)
    fails(r"--weights and --quantized", "--weights", tmp_path / "w.safetensors")
    code, text, err = cli(capsys, "eval", src, "--device", "cpu")
    assert code == 1 and "--checkpoint CK" in err and "--quantized DIR" in err
    # weights that do not fit the model: the trainer's message, before anything is written
    save({"h.w": torch.zeros(3, 3)}, tmp_path / "bad.safetensors")
    code, text, err = cli(capsys, "quantize", src, "--mode", "int8-weight", "--weights",
                          tmp_path / "bad.safetensors", "--out", tmp_path / "q2", "--device", "cpu")
    assert code == 1 and "weights do not fit Tiny" in err and not (tmp_path / "q2").exists()


def load_from(raw: bytes, tmp_path):
    p = tmp_path / "good.safetensors"
    p.write_bytes(raw)
    return load(p)
