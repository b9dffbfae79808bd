"""Mixed precision (`axon train --precision bf16|f16`): the compiled step against PyTorch's own
torch.autocast (CPU) and, for f16, torch.amp.GradScaler; an overflow skips the step and halves the scale
exactly as GradScaler; the host's scale update against torch's `_amp_update_scale_`; a resumed f16 run
keeps its scale; a resume cannot switch precision; the mixed step's kernels compile for sm_90 on tensor
cores."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from axon.cli import main
from axon.frontend import parse, training_graph
from axon.ir import DType, OpKind, init_params
from axon.optim import LR_INPUT, STEP_INPUT
from axon.passes.attention import match
from axon.passes.autocast import autocast
from axon.passes.loss_scale import FOUND_INF, LOSS_SCALE
from axon.runtime import Executable
from axon.runtime.safetensors import load, load_metadata, save
from axon.runtime.scaler import LossScaler
from axon.trainer import NEW, Trainer, step_graph
from numerics import assert_close, rel_err
from twins import gpt_twin

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
K = OpKind
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

MLP = """
model MLP(hidden = 13) {
    input x: f32[batch, 9]
    h = relu(linear(x, hidden))
    output logits = linear(h, 5)
}
train MLP {
    data = digits()   loss = cross_entropy(logits, label)
    optim = OPTIM
    epochs = 1   batch = 7
}
"""


def _mlp_twin(p, feed):
    """The MLP as torch modules compute it: F.linear (its bias cast with the dot under autocast)."""
    h = torch.relu(F.linear(feed["x"], p["h.w"].T, p["h.b"]))
    return F.cross_entropy(F.linear(h, p["logits.w"].T, p["logits.b"]), feed["label"])


def _feeds(gen, n: int, scale: float = 1.0):
    return [{"x": torch.randn(7, 9, generator=gen) * scale, "label": torch.randint(0, 5, (7,), generator=gen)}
            for _ in range(n)]


def _compiled(source: str, optim: str, precision: str):
    loss_graph, spec = training_graph(parse(source.replace("OPTIM", optim)))
    step = step_graph(loss_graph, {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}, precision)
    states = {n: torch.zeros(tuple(i.shape), dtype=i.dtype.torch) for n, i in step.inputs.items()
              if n.startswith("state.")}
    return step, Executable(step), init_params(step, 0), states, spec.optimizer.get("lr")


def _axon_steps(source, optim, precision, feeds, scaler: LossScaler | None = None):
    """The compiled step run once per feed, as the trainer runs it (the optimizer's step count skips
    skipped steps). Returns the losses, found_inf flags, scales fed, the start and final parameters."""
    step, exe, params, states, lr = _compiled(source, optim, precision)
    start = {k: v.clone() for k, v in params.items()}
    losses, found, scales = [], [], []
    for t, feed in enumerate(feeds, 1):
        taken = t - (scaler.skipped if scaler else 0)
        scalars = {STEP_INPUT: torch.tensor(float(taken), dtype=torch.float64),
                   LR_INPUT: torch.tensor(lr, dtype=torch.float64)}
        if scaler:
            scales.append(scaler.scale)
            scalars[LOSS_SCALE] = torch.tensor(scaler.scale, dtype=torch.float32)
        out = exe({**feed, **scalars, **states}, params, poison=True)
        losses.append(out["loss"])
        params = {k: out[NEW + k] for k in params}
        states = {k: out[NEW + k] for k in states}
        if scaler:
            found.append(bool(out[FOUND_INF]))
            scaler.update(found[-1])
    return losses, found, scales, start, params, states


def _torch_steps(start, make_opt, loss_fn, feeds, dtype=None, scaler=None):
    """PyTorch's loop: under torch.autocast(cpu, dtype) when given, through a GradScaler when given."""
    p = {k: v.clone().requires_grad_(True) for k, v in start.items()}
    opt = make_opt(list(p.values()))
    losses, scales = [], []
    for feed in feeds:
        opt.zero_grad()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = loss_fn(p, feed)
        assert loss.dtype == torch.float32
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scales.append(scaler.get_scale())
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        losses.append(loss.detach())
    return losses, {k: v.detach() for k, v in p.items()}, scales


def _updates(params, start):
    return torch.cat([(params[k] - start[k]).flatten() for k in sorted(start)])


# --- the pass ----------------------------------------------------------------------------------------
def test_autocast_runs_dots_in_16_bits_and_softmax_norms_and_the_loss_in_f32():
    loss_graph, _ = training_graph(parse((EXAMPLES / "gpt.axon").read_text()))
    g = autocast(loss_graph, "bf16")
    attention = set()
    for n in g.nodes:
        if n.op == K.MATMUL and match(n) is not None:
            attention |= {*match(n).inner, n}
    assert len(attention) == 2 * 9  # each block's attention, found as the attention kernels see it
    dots = [n for n in g.nodes if n.op == K.MATMUL]
    assert len(dots) == 8 * 2 + 1 and all(n.dtype == DType.BF16 for n in dots)
    assert all(n.dtype == DType.BF16 for n in attention)  # its softmax runs inside the 16-bit kernel
    # softmax/log-softmax, layernorm and the loss: exp, log, sum, mean, rsqrt in f32
    wide = [n for n in g.nodes if n.op in (K.EXP, K.LOG, K.SUM, K.MEAN, K.RSQRT) and n not in attention]
    assert len(wide) == 4 + 5 * 3 and all(n.dtype == DType.F32 for n in wide)
    assert g.outputs["loss"].type == loss_graph.outputs["loss"].type  # f32[]
    assert all(p.dtype == DType.F32 for p in g.params.values())  # master weights
    # every 16-bit value is made by a dot, by the attention, from 16-bit operands, or by a cast
    for n in g.nodes:
        if n.dtype == DType.BF16 and n.op not in (K.CAST, K.CONST) and n not in attention:
            assert n.op == K.MATMUL or any(i.dtype == DType.BF16 for i in n.inputs), n
    # the x - max(x) of the loss's log-softmax is computed from the logits widened first, as torch's
    sub = next(n for n in g.nodes if n.op == K.SUB and n.inputs[1].op == K.MAX and n not in attention)
    assert sub.dtype == DType.F32 and sub.inputs[0].op == K.CAST and sub.inputs[0].inputs[0].op == K.MATMUL
    assert autocast(loss_graph, "f32") is loss_graph


def test_the_f16_step_takes_a_scale_and_says_whether_it_skipped():
    loss_graph, spec = training_graph(parse(MLP.replace("OPTIM", "adam(lr = 0.01)")))
    opt = {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}
    f16, bf16 = step_graph(loss_graph, opt, "f16"), step_graph(loss_graph, opt, "bf16")
    assert f16.inputs[LOSS_SCALE].type.dtype == DType.F32 and f16.outputs[FOUND_INF].dtype == DType.BOOL
    assert LOSS_SCALE not in bf16.inputs and FOUND_INF not in bf16.outputs  # bf16 needs no scaling
    for g in (f16, bf16):
        assert all(g.outputs[NEW + name].dtype == DType.F32 for name in g.params)  # updated in f32
        assert all(g.inputs[name].dtype == DType.F32 for name in g.inputs if name.startswith("state."))


# --- against PyTorch ---------------------------------------------------------------------------------
BF16_OPTIMIZERS = [
    ("sgd(lr = 0.5)", lambda p: torch.optim.SGD(p, lr=0.5)),
    ("adam(lr = 0.01)", lambda p: torch.optim.Adam(p, lr=0.01)),
]


@pytest.mark.parametrize("optim, make_opt", BF16_OPTIMIZERS, ids=["sgd", "adam"])
def test_bf16_steps_match_torch_autocast(optim, make_opt, gen):
    feeds = _feeds(gen, 3)
    losses, _, _, start, params, _ = _axon_steps(MLP, optim, "bf16", feeds)
    want_losses, want, _ = _torch_steps(start, make_opt, _mlp_twin, feeds, torch.bfloat16)
    f32_losses, _, _ = _torch_steps(start, make_opt, _mlp_twin, feeds[:1])
    # the first loss, before any update: autocast's to f32 rounding, and the f32 model's it is not
    assert_close(losses[0], want_losses[0], tol=1e-6, what="first loss")
    assert rel_err(f32_losses[0], want_losses[0]) > 1e-4
    for got, ref in zip(losses, want_losses):
        assert_close(got, ref, tol=5e-3, what="loss")
    for name in want:
        assert params[name].dtype == torch.float32
        assert_close(params[name], want[name], tol=1e-2, what=name)
    assert rel_err(_updates(params, start), _updates(want, start)) < 2e-2


def test_f16_steps_match_autocast_and_grad_scaler(gen):
    """Six Adam steps from GradScaler's initial scale 2**16, grown after every 2 good steps, which
    overflows: the skipped steps, the scales and the parameters follow torch.autocast(float16) +
    GradScaler."""
    feeds = _feeds(gen, 6)
    scaler = LossScaler(growth_interval=2)
    losses, found, scales, start, params, _ = _axon_steps(MLP, "adam(lr = 0.01)", "f16", feeds, scaler)
    torch_scaler = torch.amp.GradScaler("cpu", growth_interval=2)
    want_losses, want, want_scales = _torch_steps(start, lambda p: torch.optim.Adam(p, lr=0.01), _mlp_twin,
                                                  feeds, torch.float16, torch_scaler)
    assert scales == want_scales and scaler.scale == torch_scaler.get_scale()
    assert found == [False, False, True, False, False, True]  # 2**17 overflows, 2**16 does not
    assert scaler.skipped == sum(found)
    for got, ref in zip(losses, want_losses):
        assert_close(got, ref, tol=2e-3, what="loss")
    for name in want:
        assert_close(params[name], want[name], tol=1e-3, what=name)
    assert rel_err(_updates(params, start), _updates(want, start)) < 5e-3


def test_an_overflow_skips_the_step_and_halves_the_scale(gen):
    """A scale of 2**100 makes the f16 backward overflow: the step is skipped in the graph (parameters
    and Adam's moments unchanged, bit for bit) and the scale halves, as GradScaler does."""
    feeds = _feeds(gen, 2)
    scaler = LossScaler()
    _, _, _, start, before, states = _axon_steps(MLP, "adam(lr = 0.01)", "f16", feeds[:1], scaler)
    assert scaler.skipped == 0
    step, exe, _, _, _ = _compiled(MLP, "adam(lr = 0.01)", "f16")
    scalars = {STEP_INPUT: torch.tensor(2.0, dtype=torch.float64),
               LR_INPUT: torch.tensor(0.01, dtype=torch.float64), LOSS_SCALE: torch.tensor(2.0 ** 100)}
    out = exe({**feeds[1], **scalars, **states}, before, poison=True)
    assert bool(out[FOUND_INF]) and torch.isfinite(out["loss"])
    for name in [*before, *states]:
        assert torch.equal(out[NEW + name], (before | states)[name]), name
    scaler.scale = 2.0 ** 100
    scaler.update(bool(out[FOUND_INF]))
    assert (scaler.scale, scaler.growth_tracker, scaler.skipped) == (2.0 ** 99, 0, 1)

    p = {k: v.clone().requires_grad_(True) for k, v in before.items()}
    opt = torch.optim.Adam(list(p.values()), lr=0.01)
    torch_scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 100)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = _mlp_twin(p, feeds[1])
    torch_scaler.scale(loss).backward()
    torch_scaler.step(opt)
    torch_scaler.update()
    assert torch_scaler.get_scale() == scaler.scale
    assert all(torch.equal(p[k].detach(), before[k]) for k in p) and not opt.state  # torch skipped it too


def test_the_scale_follows_torch_amp_update_scale():
    """Halve on an overflow, double after growth_interval good steps in a row, never past f32's range:
    the host's update against torch's own kernel, step by step."""
    cases = [(2.0 ** 16, [False, False, False, True, False, False, True, True, False, False, False, False]),
             (2.0 ** 126, [False] * 7)]  # 2**128 is no f32: the scale stays at 2**127
    for init, flags in cases:
        ours = LossScaler(scale=init, growth_interval=3)
        scale, tracker = torch.tensor([init]), torch.zeros(1, dtype=torch.int32)
        for flag in flags:
            ours.update(flag)
            torch._amp_update_scale_(scale, tracker, torch.tensor([float(flag)]), 2.0, 0.5, 3)
            assert (ours.scale, ours.growth_tracker) == (scale.item(), tracker.item())
        assert ours.skipped == sum(flags)
    assert ours.scale == 2.0 ** 127


def test_gpt_bf16_step_matches_torch_autocast(gen):
    source = (EXAMPLES / "gpt.axon").read_text()
    source = source[:source.index("train GPT")] + """
train GPT {
    data = text(ctx = 7)   loss = cross_entropy(logits, next_tokens)
    optim = OPTIM   epochs = 1   batch = 3
}"""
    feeds = [{"tokens": torch.randint(0, 65, (3, 7), generator=gen),
              "next_tokens": torch.randint(0, 65, (3, 7), generator=gen)} for _ in range(2)]
    losses, _, _, start, params, _ = _axon_steps(source, "sgd(lr = 0.1)", "bf16", feeds)

    def loss_fn(p, feed):
        return F.cross_entropy(gpt_twin(feed["tokens"], p).reshape(-1, 65).float(),
                               feed["next_tokens"].reshape(-1))

    def make_opt(p):  # SGD: updates proportional to the gradients
        return torch.optim.SGD(p, lr=0.1)

    want_losses, want, _ = _torch_steps(start, make_opt, loss_fn, feeds, torch.bfloat16)
    for got, ref in zip(losses, want_losses):
        assert_close(got, ref, tol=2e-3, what="loss")
    for name in want:  # each parameter's update within bf16's tolerance (about 1% here)
        assert_close(params[name] - start[name], want[name] - start[name], torch.bfloat16, what=name)


# --- runs: checkpoints, resume, the command line ---------------------------------------------------
SMALL = """
model Small(hidden = 16) {
    input x: f32[batch, 64]
    output logits = linear(relu(linear(x, hidden)), 10)
}
train Small {
    data = digits(val = 0.2)   loss = cross_entropy(logits, label)
    optim = adam(lr = 0.01)
    epochs = 2   batch = 256
}
"""


def _trainer(tmp_path, out, **kw):
    path = tmp_path / "small.axon"
    path.write_text(SMALL)
    return Trainer(path, out_dir=tmp_path / out, log=lambda *a, **k: None, **kw)


def test_a_resumed_f16_run_keeps_its_loss_scale(tmp_path):
    """From a scale too large (2**26), the first steps overflow and are skipped; a run stopped after an
    epoch and resumed continues with the saved scale, good-step count and skipped count, and ends with
    the parameters, optimizer state and scale of a run never stopped."""
    whole = _trainer(tmp_path, "whole", precision="f16")
    whole.scaler = LossScaler(scale=2.0 ** 26)
    whole.fit()
    assert 0 < whole.scaler.skipped < whole.progress.step and whole.scaler.scale < 2.0 ** 26

    first = _trainer(tmp_path, "parts", precision="f16", epochs=1)
    first.scaler = LossScaler(scale=2.0 ** 26)
    first.fit()
    saved = json.loads(load_metadata(tmp_path / "parts" / "checkpoint.safetensors")["scaler"])
    assert saved == first.scaler.state() and saved["scale"] != 2.0 ** 16
    resumed = _trainer(tmp_path, "parts", epochs=2, resume=True)  # the precision comes from the run
    assert resumed.precision == "f16"
    resumed.fit()
    assert resumed.scaler.state() == whole.scaler.state()
    a, b = (load(tmp_path / run / "checkpoint.safetensors") for run in ("whole", "parts"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    metrics = json.loads((tmp_path / "parts" / "metrics.json").read_text())
    assert metrics["precision"] == "f16" and metrics["loss_scaler"] == whole.scaler.state()


def test_a_resume_cannot_switch_precision(tmp_path, capsys):
    path = tmp_path / "small.axon"
    path.write_text(SMALL)
    run = tmp_path / "run"
    assert main(["train", str(path), "--epochs", "1", "--out", str(run), "--precision", "bf16"]) == 0
    out = capsys.readouterr().out
    assert "mixed precision (bf16 dots" in out
    checkpoint = run / "checkpoint.safetensors"
    before = checkpoint.read_bytes()
    resume = ["train", str(path), "--epochs", "2", "--out", str(run), "--resume"]
    for other in ("f32", "f16"):
        assert main([*resume, "--precision", other]) == 1
        err = capsys.readouterr().err
        assert "cannot continue" in err and f"precision: bf16 in the checkpoint, {other} now" in err, err
        assert checkpoint.read_bytes() == before
    # validation runs in the run's precision: `axon eval` of its checkpoint says what training said
    val = json.loads((run / "metrics.json").read_text())["history"][-1]["val_loss"]
    assert main(["eval", str(path), "--checkpoint", str(checkpoint)]) == 0
    assert f"val loss {val:.4f}" in capsys.readouterr().out


def test_a_checkpoint_from_before_precision_resumes_as_f32(tmp_path, capsys):
    path = tmp_path / "small.axon"
    path.write_text(SMALL)
    run = tmp_path / "run"
    assert main(["train", str(path), "--epochs", "1", "--out", str(run)]) == 0
    checkpoint = run / "checkpoint.safetensors"
    meta = load_metadata(checkpoint)
    record = json.loads(meta["run"])
    assert record.pop("precision") == "f32" and "scaler" not in meta
    save(load(checkpoint), checkpoint, {**meta, "run": json.dumps(record)})  # as written before
    resume = ["train", str(path), "--epochs", "2", "--out", str(run), "--resume"]
    assert main([*resume, "--precision", "bf16"]) == 1
    assert "precision: f32 in the checkpoint, bf16 now" in capsys.readouterr().err
    assert main(resume) == 0
    capsys.readouterr()


# --- ahead of time, for an H100 ----------------------------------------------------------------------
def test_the_mixed_precision_step_compiles_for_sm90_on_tensor_cores():
    from test_aot import assert_clean, sweep

    from axon.driver import load_ast
    from axon.run import bind_dims

    loss_graph, spec = training_graph(load_ast(EXAMPLES / "mlp.axon"))
    step = step_graph(loss_graph, {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)}, "bf16")
    rows = sweep(step, bind_dims(step, {"batch": spec.batch}))
    assert_clean(rows)
    dots = [r for r in rows if r.kind == "matmul"]
    assert dots and all(r.tensor_cores in ("wgmma", "mma") for r in dots), [r.what for r in dots]
    assert any(r.tensor_cores == "wgmma" for r in dots)
