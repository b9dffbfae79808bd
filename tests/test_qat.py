"""Quantization-aware training (`passes/qat.py`, `axon train --qat`): gradients equal torch's straight-
through fake quantization with the same scales; the QAT model's forward is the forward of the model
`axon quantize` makes of its weights, in every mode; the trainer records QAT and a resumed run keeps it;
QAT weights converted give exactly the QAT model's validation loss."""
from __future__ import annotations

import json

import pytest
import torch

from axon.ir import DType, GraphBuilder, evaluate
from axon.passes.autodiff import grad
from axon.passes.qat import QAT
from axon.passes.quant_weights import convert
from axon.passes.quantize import Quantize


def layer(k=64, n=32, rows=6):
    b = GraphBuilder("m")
    x = b.input("x", DType.F32, (rows, k))
    w = b.param("w", DType.F32, (k, n))
    y = b.matmul(x, w)
    b.output("y", y)
    b.output("loss", b.sum(b.mul(y, y)))
    return b.build()


@pytest.mark.parametrize("mode,group", [("int8-weight", 64), ("int4-weight", 32)])
def test_weight_gradients_are_torchs_straight_through_estimator(mode, group, gen):
    g = layer()
    w = torch.randn(64, 32, generator=gen)
    w[3, 5] = 0.0
    x = torch.randn(6, 64, generator=gen)
    got = evaluate(grad(QAT(mode, group=group, min_size=0).run(g), "loss", ["w"]), {"x": x}, {"w": w})
    qmax = 127 if mode == "int8-weight" else 7
    tw = w.clone().requires_grad_()
    if mode == "int8-weight":  # a scale per output channel (axis 1 of [K, N])
        scale = (w.abs().amax(0) / qmax).clamp_min(2.0**-126)
        fq = torch.fake_quantize_per_channel_affine(tw, scale, torch.zeros(32, dtype=torch.int32), 1,
                                                    -qmax, qmax)
    else:  # a scale per group of 32 along K: torch's per-channel function over the [K/32, 32, N] view
        scale = (w.reshape(2, 32, 32).abs().amax(1) / qmax).clamp_min(2.0**-126)       # [2, N]
        v = tw.reshape(2, 32, 32).permute(1, 0, 2).reshape(32, 64)                    # [32, 2*N]
        fq = torch.fake_quantize_per_channel_affine(v, scale.reshape(64), torch.zeros(64, dtype=torch.int32),
                                                    1, -qmax, qmax)
        fq = fq.reshape(32, 2, 32).permute(1, 0, 2).reshape(64, 32)
    y = x @ fq
    (y * y).sum().backward()
    torch.testing.assert_close(got["y"], y.detach(), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got["grad.w"], tw.grad, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["int8-weight", "int4-weight", "int8-dynamic", "fp8"])
def test_the_qat_forward_is_the_quantized_models_forward(mode, gen):
    g = layer()
    params = {"w": torch.randn(64, 32, generator=gen)}
    x = torch.randn(6, 64, generator=gen)
    fake = evaluate(QAT(mode, group=32, min_size=0).run(g), {"x": x}, params)["y"]
    p = Quantize(mode, group=32, min_size=0)
    real = evaluate(p.run(g), {"x": x}, convert(p.plan(g), params))["y"]
    # weight-only: the same dequantized weight, bit for bit; codes x codes: the same products, summed in
    # another order
    tol = 0 if mode.endswith("-weight") else 1e-5
    torch.testing.assert_close(fake, real, rtol=tol, atol=tol * float(real.abs().max()))


def test_train_with_qat_then_quantize_gives_the_qat_models_loss(tmp_path, capsys):
    from test_quantize_pass import TINY

    from axon.cli import main
    from axon.trainer import Trainer

    src = tmp_path / "tiny.axon"
    src.write_text(TINY)
    logs = []
    t = Trainer(src, out_dir=tmp_path / "run", qat={"mode": "int8-weight", "group": 64}, log=logs.append)
    assert t.run["qat"] == {"mode": "int8-weight", "group": 64}
    t.fit()
    qat_loss = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"][-1]["val_loss"]
    assert main(["quantize", str(src), "--mode", "int8-weight", "--weights",
                 str(tmp_path / "run" / "best.safetensors"), "--out", str(tmp_path / "q"),
                 "--target", "none"]) == 0
    ledger = json.loads((tmp_path / "q" / "ledger.json").read_text())
    assert ledger["validation"]["after"]["loss"] == pytest.approx(qat_loss, rel=1e-4)
    # resuming with another (or no) QAT breaks the run, and says so
    capsys.readouterr()
    assert main(["train", str(src), "--out", str(tmp_path / "run"), "--resume", "--epochs", "2", "--qat",
                 "int4-weight"]) == 1
    assert "qat" in capsys.readouterr().err
