"""The optimizer options of the train block: AdaGrad, gradient clipping and learning-rate schedules are
accepted with their values, and each mistake is one typed error at the option, in the words of the
other option checks."""
import pytest

from axon.frontend import compile_source, parse, train_spec
from axon.ir import AxonError

_MODEL = "model M { input x: f32[3]  output y = x }\n"


def _train(optim: str) -> str:
    return _MODEL + f"train M {{ data = d()  loss = mse(y, t)  epochs = 1  optim = {optim} }}"


GOOD = [
    ('sgd(lr = 0.1, momentum = 0.9, nesterov = true, clip = 1.0)',
     {"lr": 0.1, "momentum": 0.9, "nesterov": True, "clip": 1.0}),
    ("adagrad(lr = 0.01, eps = 1e-10, weight_decay = 0)", {"lr": 0.01, "eps": 1e-10, "weight_decay": 0}),
    ('adam(schedule = "cosine", warmup = 100, eta_min = 1e-5, start_factor = 0.01)',
     {"schedule": "cosine", "warmup": 100, "eta_min": 1e-5, "start_factor": 0.01}),
    ('rmsprop(schedule = "step", step_size = 10, gamma = 0.5, clip = 5)',
     {"schedule": "step", "step_size": 10, "gamma": 0.5, "clip": 5}),
    ('adamw(schedule = "constant", warmup = 0)', {"schedule": "constant", "warmup": 0}),
]


@pytest.mark.parametrize("optim, options", GOOD)
def test_options_are_accepted(optim, options):
    spec = train_spec(parse(_train(optim), "t.axon")).optimizer
    assert dict(spec.kwargs) == options


# (optimizer call, kind, the option the caret points at, a fragment of the message)
BAD = [
    ("adam(clip = 0)", "value", "clip",
     "the maximum gradient norm 'clip' must be a finite number > 0, got 0"),
    ("adam(clip = true)", "type", "clip", "'clip' must be a number, got true"),
    ('adam(schedule = "cosin")', "value", "schedule",
     """'schedule' must be one of "constant", "step", "cosine", got "cosin\""""),
    ("adam(schedule = 1)", "type", "schedule", "'schedule' must be a string, got 1"),
    ("adam(warmup = 2.5)", "type", "warmup", "'warmup' must be an int, got 2.5"),
    ("adam(warmup = -1)", "value", "warmup", "'warmup' must be in [0, 2,147,483,647], got -1"),
    ('sgd(schedule = "step", step_size = 0)', "value", "step_size",
     "'step_size' must be in [1, 2,147,483,647], got 0"),
    ('sgd(schedule = "step", step_size = 3, gamma = 0)', "value", "gamma",
     "'gamma' must be a finite number > 0, got 0"),
    ("sgd(warmup = 5, start_factor = 0)", "value", "start_factor", "'start_factor' must be in (0, 1], got 0"),
    ("sgd(warmup = 5, start_factor = 1.5)", "value", "start_factor", "must be in (0, 1], got 1.5"),
    ('adam(schedule = "cosine", eta_min = -1)', "value", "eta_min", "'eta_min' must be a finite number >= 0"),
    ("adagrad(momentum = 0.9)", "arity", "adagrad", "'adagrad' has no option 'momentum'"),
    ("adagard(lr = 0.1)", "name", "adagard", "unknown optimizer 'adagard'"),
    ("sgd(lr = 0.1, nesterov = true)", "value", "nesterov", "nesterov = true needs a momentum > 0"),
    ("sgd(momentum = 0, nesterov = true)", "value", "nesterov", "nesterov = true needs a momentum > 0"),
    ('sgd(schedule = "step")', "arity", "schedule", 'schedule = "step" needs step_size = <steps'),
    ("sgd(gamma = 0.5)", "arity", "gamma", """'gamma' applies only with schedule = "step\""""),
    ('sgd(schedule = "cosine", step_size = 4)', "arity", "step_size",
     """'step_size' applies only with schedule = "step\""""),
    ('sgd(schedule = "step", step_size = 4, eta_min = 0)', "arity", "eta_min",
     """'eta_min' applies only with schedule = "cosine\""""),
    ("sgd(start_factor = 0.5)", "arity", "start_factor", "'start_factor' applies only with a warmup > 0"),
    ("sgd(warmup = 0, start_factor = 0.5)", "arity", "start_factor", "applies only with a warmup > 0"),
]


@pytest.mark.parametrize("optim, kind, at, fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_options_are_located(optim, kind, at, fragment):
    src = _train(optim)
    with pytest.raises(AxonError) as info:
        compile_source(src, "bad.axon", model="M")
    err = info.value
    line = src.splitlines()[1]
    assert (err.kind, err.span.line, err.span.col) == (kind, 2, line.index(at) + 1), str(err)
    assert fragment in err.message
    assert "^" in str(err).splitlines()[2]
