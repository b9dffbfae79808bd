"""The optimizers of `axon.optim` against torch.optim: the same gradients fed to both for several steps on
irregular parameter shapes, parameters and states compared after every step; clipping against
clip_grad_norm_, schedules against torch's schedulers."""
import math

import pytest
import torch

from axon.frontend import parse, train_spec
from axon.frontend.errors import ArityError, AxonNameError, AxonValueError
from axon.frontend.train import OPTIMIZERS as FRONTEND_OPTIMIZERS
from axon.ir import DType, GraphBuilder, evaluate
from axon.optim import (CLIP_OPTION, HOST_OPTIONS, LR_INPUT, OPTIMIZERS, STEP_INPUT, Schedule,
                        clip_grad_norm, make_update, state_input_name)
from numerics import assert_close

SHAPES = {"fc1.w": (7, 13), "fc1.b": (13,), "conv.w": (3, 1, 5, 2), "scale": ()}
DTYPES = {torch.float32: DType.F32, torch.float64: DType.F64}
TOL = {torch.float32: 1e-6, torch.float64: 1e-12}
STEPS = 5
TORCH = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
         "rmsprop": torch.optim.RMSprop, "adagrad": torch.optim.Adagrad}
TORCH_STATE = {("sgd", "buf"): "momentum_buffer", ("adam", "m"): "exp_avg", ("adam", "v"): "exp_avg_sq",
               ("adamw", "m"): "exp_avg", ("adamw", "v"): "exp_avg_sq", ("rmsprop", "v"): "square_avg",
               ("rmsprop", "buf"): "momentum_buffer", ("adagrad", "sum"): "sum"}

CASES = [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9}),
    ("sgd", {"momentum": 0.9, "dampening": 0.3}),
    ("sgd", {"momentum": 0.9, "nesterov": True}),
    ("sgd", {"momentum": 0.5, "nesterov": True, "weight_decay": 0.01, "clip": 1e3}),
    ("sgd", {"weight_decay": 0.1, "clip": 0.5}),
    ("adam", {}),
    ("adam", {"weight_decay": 0.01}),
    ("adam", {"betas": (0.3, 0.95), "eps": 1e-6, "clip": 0.5}),  # lerp weight > 0.5: torch's other branch
    ("adamw", {}),
    ("adamw", {"weight_decay": 0.1, "betas": (0.8, 0.99)}),
    ("adamw", {"weight_decay": 0.0}),
    ("rmsprop", {}),
    ("rmsprop", {"momentum": 0.9}),
    ("rmsprop", {"momentum": 0.9, "weight_decay": 0.01, "alpha": 0.9, "clip": 0.5}),
    ("adagrad", {}),
    ("adagrad", {"weight_decay": 0.01}),
    ("adagrad", {"lr_decay": 0.1, "eps": 1e-6}),
]


def step_graph(spec: dict, dtype: DType):
    """The update of the parameters of SHAPES, with each gradient an input `grad.<name>`."""
    b = GraphBuilder()
    params = {n: b.param(n, dtype, s) for n, s in SHAPES.items()}
    grads = {n: b.input(f"grad.{n}", dtype, s) for n, s in SHAPES.items()}
    new_params, state_inputs, new_states = make_update(b, params, grads, spec)
    for name, node in {**new_params, **new_states}.items():
        b.output(f"new.{name}", node)
    return b.build(), state_inputs


def flat(tensors: dict) -> torch.Tensor:
    return torch.cat([tensors[n].reshape(-1) for n in SHAPES])


def scalar(v: float) -> torch.Tensor:
    return torch.tensor(v, dtype=torch.float64)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_update_matches_torch(name, options, dtype, gen):
    spec = {"name": name, **options}
    graph, state_inputs = step_graph(spec, DTYPES[dtype])
    ours = {n: torch.randn(s, generator=gen, dtype=dtype) for n, s in SHAPES.items()}
    theirs = {n: p.clone() for n, p in ours.items()}
    torch_options = {k: v for k, v in options.items() if k != CLIP_OPTION}
    opt = TORCH[name](list(theirs.values()), lr=0.05, **torch_options)
    states = {n: torch.zeros(node.shape, dtype=dtype) for n, node in state_inputs.items()}
    for t in range(1, STEPS + 1):
        lr = 0.05 * (1 + 0.3 * t)  # a different rate every step: the graph reads it from its input
        grads = {n: torch.randn(s, generator=gen, dtype=dtype) for n, s in SHAPES.items()}
        for n, p in theirs.items():
            p.grad = grads[n].clone()
        if CLIP_OPTION in options:
            torch.nn.utils.clip_grad_norm_(list(theirs.values()), options[CLIP_OPTION])
        opt.param_groups[0]["lr"] = lr
        opt.step()

        feed = {**{f"grad.{n}": g for n, g in grads.items()}, **states, STEP_INPUT: scalar(t),
                LR_INPUT: scalar(lr)}
        out = evaluate(graph, feed, ours)
        ours = {n: out[f"new.{n}"] for n in SHAPES}
        states = {n: out[f"new.{n}"] for n in state_inputs}
        # All parameters as one vector: a scalar parameter near zero would make a one-ulp difference
        # (torch's kernels fuse multiply-adds, the evaluator does not) a large relative error.
        assert_close(flat(ours), flat(theirs), tol=TOL[dtype], what=f"parameters after step {t}")
        for slot in OPTIMIZERS[name].slots(OPTIMIZERS[name].options(options)):
            assert_close(flat({n: states[state_input_name(slot, n)] for n in SHAPES}),
                         flat({n: opt.state[theirs[n]][TORCH_STATE[name, slot]] for n in SHAPES}),
                         tol=TOL[dtype], what=f"state {slot} after step {t}")


def test_state_slots_follow_the_options():
    assert step_graph({"name": "sgd"}, DType.F32)[1] == {}
    assert sorted(step_graph({"name": "rmsprop", "momentum": 0.5}, DType.F32)[1])[:2] == [
        "state.buf.conv.w", "state.buf.fc1.b"]
    _, inputs = step_graph({"name": "adam"}, DType.F64)
    assert len(inputs) == 2 * len(SHAPES)
    assert all(inputs[state_input_name(s, n)].type.shape == shape for n, shape in SHAPES.items()
               for s in ("m", "v"))


def test_sgd_first_step_takes_the_gradient_whatever_the_buffer_holds(gen):
    graph, inputs = step_graph({"name": "sgd", "momentum": 0.9}, DType.F64)
    params = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}
    feed = {f"grad.{n}": torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}
    feed.update({STEP_INPUT: scalar(1.0), LR_INPUT: scalar(0.1)})
    zero = evaluate(graph, {**feed, **{n: torch.zeros(node.shape, dtype=torch.float64)
                                       for n, node in inputs.items()}}, params)
    junk = evaluate(graph, {**feed, **{n: torch.full(node.shape, 7.0, dtype=torch.float64)
                                       for n, node in inputs.items()}}, params)
    for name in zero:
        assert torch.equal(zero[name], junk[name]), name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("max_norm", [0.3, 1e6])
def test_clip_grad_norm_matches_torch(dtype, max_norm, gen):
    b = GraphBuilder()
    grads = {n: b.input(f"g.{n}", DTYPES[dtype], s) for n, s in SHAPES.items()}
    clipped, total = clip_grad_norm(b, grads, max_norm)
    for n, node in clipped.items():
        b.output(f"clipped.{n}", node)
    b.output("total", total)
    values = {n: torch.randn(s, generator=gen, dtype=dtype) * 3 for n, s in SHAPES.items()}
    out = evaluate(b.build(), {f"g.{n}": v for n, v in values.items()})
    theirs = [v.clone().requires_grad_() for v in values.values()]
    for p, v in zip(theirs, values.values()):
        p.grad = v.clone()
    norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert_close(out["total"], norm, tol=TOL[dtype], what="total norm")
    for n, p in zip(values, theirs):
        assert_close(out[f"clipped.{n}"], p.grad, tol=TOL[dtype], what=f"clipped {n}")


def torch_scheduler(opt: torch.optim.Optimizer, s: Schedule):
    """torch's scheduler for a `Schedule`: the warm-up then the main schedule, in a SequentialLR."""
    warm = torch.optim.lr_scheduler.LinearLR(opt, s.start_factor, total_iters=s.warmup) if s.warmup else None
    main = {"constant": None,
            "step": lambda: torch.optim.lr_scheduler.StepLR(opt, s.step_size, s.gamma),
            "cosine": lambda: torch.optim.lr_scheduler.CosineAnnealingLR(opt, s.total - s.warmup, s.eta_min),
            }[s.kind]
    if main is None:
        return warm or torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0)
    main = main()
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, main], [s.warmup]) if warm else main


SCHEDULE_CASES = [
    {}, {"schedule": "step", "step_size": 7, "gamma": 0.5}, {"schedule": "cosine"},
    {"schedule": "cosine", "eta_min": 0.01}, {"warmup": 5}, {"warmup": 8, "start_factor": 0.1},
    {"schedule": "step", "step_size": 10, "warmup": 5}, {"schedule": "cosine", "warmup": 5, "eta_min": 0.002},
]


@pytest.mark.parametrize("options", SCHEDULE_CASES, ids=str)
def test_schedule_matches_torch(options):
    steps = 50
    s = Schedule.of({"name": "sgd", "lr": 0.1, **options}, total=steps)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = torch_scheduler(opt, s)
    for t in range(1, steps + 1):
        want = opt.param_groups[0]["lr"]
        assert abs(s(t) - want) <= 1e-12 * want, f"step {t}: {s(t)} vs torch {want}"
        opt.step()
        sched.step()


def test_schedule_defaults_and_refusals():
    assert Schedule.of({"name": "adagrad"})(100) == 1e-2  # torch's default rate, constant
    assert Schedule(1.0, "cosine", total=10, eta_min=0.1)(50) == pytest.approx(0.1)  # held past the end
    with pytest.raises(AxonValueError, match="needs a step_size"):
        Schedule(0.1, "step")
    with pytest.raises(AxonValueError, match="needs more steps"):
        Schedule(0.1, "cosine", total=5, warmup=5)
    with pytest.raises(AxonNameError, match="did you mean 'cosine'"):
        Schedule(0.1, "cosin")


def test_make_update_refuses_unknown_optimizers_and_options():
    b = GraphBuilder()
    p = b.param("w", DType.F32, (2,))
    g = b.input("g", DType.F32, (2,))
    with pytest.raises(AxonNameError, match="did you mean 'adam'"):
        make_update(b, {"w": p}, {"w": g}, {"name": "adan"})
    with pytest.raises(AxonNameError, match="'adam' has no option 'momentum'"):
        make_update(b, {"w": p}, {"w": g}, {"name": "adam", "momentum": 0.9})
    with pytest.raises(AxonValueError, match="nesterov"):
        make_update(b, {"w": p}, {"w": g}, {"name": "sgd", "nesterov": True})


def test_every_frontend_option_reaches_the_optimizer():
    assert set(FRONTEND_OPTIMIZERS) == set(OPTIMIZERS)
    for name, options in FRONTEND_OPTIMIZERS.items():
        accepted = {*OPTIMIZERS[name].defaults, *HOST_OPTIONS, CLIP_OPTION}
        assert set(options) <= accepted, (name, set(options) - accepted)


def test_a_train_block_compiles_to_an_update():
    src = ("model M { input x: f32[b, 3]  output y = linear(x, 2) }\n"
           "train M { data = d()  loss = mse(y, t)  epochs = 1\n"
           '  optim = adamw(lr = 3e-4, betas = [0.9, 0.95], clip = 1.0, schedule = "cosine", warmup = 10) }')
    opt = train_spec(parse(src, "t.axon")).optimizer
    spec = {"name": opt.name, **dict(opt.kwargs)}
    b = GraphBuilder()
    params = {n: b.param(n, DType.F32, (3, 2)) for n in ("y.w",)}
    new, inputs, states = make_update(b, params, {"y.w": b.input("g", DType.F32, (3, 2))}, spec)
    assert set(inputs) == set(states) == {"state.m.y.w", "state.v.y.w"}
    s = Schedule.of(spec, total=100)
    assert (s(1), s(11), s(100)) == pytest.approx((1e-4, 3e-4, 3e-4 * (1 + math.cos(math.pi * 89 / 90)) / 2))
    with pytest.raises(ArityError):
        train_spec(parse(src.replace("\"cosine\"", "\"step\""), "t.axon"))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_step_graph_verifies_round_trips_and_survives_the_clean_up(name, gen):
    from axon.ir import verify
    from axon.ir.text import parse_graph, print_graph
    from axon.passes import DEFAULT_PIPELINE, PassManager

    options = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    graph, inputs = step_graph({"name": name, "clip": 1.0, **options}, DType.F64)
    verify(graph)
    assert print_graph(parse_graph(print_graph(graph))) == print_graph(graph)
    cleaned = PassManager(DEFAULT_PIPELINE, verify=True).run(graph)
    params = {n: torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}
    feed = {f"grad.{n}": torch.randn(s, generator=gen, dtype=torch.float64) for n, s in SHAPES.items()}
    feed.update({n: torch.rand(node.shape, generator=gen, dtype=torch.float64) for n, node in inputs.items()})
    feed.update({STEP_INPUT: scalar(3.0), LR_INPUT: scalar(0.01)})
    before, after = evaluate(graph, feed, params), evaluate(cleaned, feed, params)
    for out in before:
        assert_close(after[out], before[out], tol=1e-12, what=out)
