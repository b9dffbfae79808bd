"""The runtime's tuner: configs that spill or cannot launch are never timed, the fastest of the rest is
kept and remembered per device. The choosing is checked here with stand-ins for Triton's compiler and
timer; on a GPU (marked) with the real ones."""
from __future__ import annotations

import json

import pytest
import torch

from axon.codegen import groups
from axon.codegen.launch import Launch
from axon.codegen.matmul import MatmulKernel
from axon.codegen.target import parse
from axon.ir import DType, GraphBuilder
from axon.runtime import tune


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AXON_CACHE_DIR", str(tmp_path / "cache"))


def _launch(n: int) -> Launch:
    configs = tuple({"BLOCK_K": 16 * (i + 1), "num_warps": 4} for i in range(n))
    return Launch((3, 1), (), (), (7, 11), configs[0], configs)


class Fake:
    """Triton's compile and timer, scripted: registers and spills (or an error) and a time per config."""

    def __init__(self, figures: dict[int, object], times: dict[int, float]):
        self.figures, self.times = figures, times
        self.compiled: list[int] = []
        self.timed: list[int] = []

    def compile(self, config):
        k = config["BLOCK_K"]
        self.compiled.append(k)
        found = self.figures[k]
        if isinstance(found, Exception):
            raise found
        return found

    def time(self, config):
        self.timed.append(config["BLOCK_K"])
        return self.times[config["BLOCK_K"]]


def test_spilling_and_unlaunchable_configs_are_never_timed():
    launch = _launch(4)
    fake = Fake({16: (96, 0), 32: (255, 48), 48: RuntimeError("out of resource: shared memory"),
                 64: (128, 0)}, {16: 0.5, 64: 0.2})
    store = tune.Store.for_device("Fake GPU")
    tuned, trials = tune.choose(launch, "k", store, fake.compile, fake.time)
    assert tuned.meta == {"BLOCK_K": 64, "num_warps": 4} and tuned.grid == launch.grid
    assert fake.compiled == [16, 32, 48, 64] and fake.timed == [16, 64]
    assert [t.dropped for t in trials] == ["", "spills 48 bytes",
                                           "cannot launch: RuntimeError: out of resource: shared memory", ""]


def test_a_choice_is_remembered_per_device_across_processes():
    launch = _launch(2)
    fake = Fake({16: (96, 0), 32: (96, 0)}, {16: 0.3, 32: 0.1})
    tune.choose(launch, "key", tune.Store.for_device("Fake GPU"), fake.compile, fake.time)
    again = Fake({}, {})  # a new process: the store on disk answers, nothing is compiled or timed
    tuned, trials = tune.choose(launch, "key", tune.Store.for_device("Fake GPU"), again.compile, again.time)
    assert tuned.meta["BLOCK_K"] == 32 and not trials and not again.compiled
    other = Fake({16: (96, 0), 32: (96, 0)}, {16: 0.1, 32: 0.3})  # another device chooses for itself
    tuned, _ = tune.choose(launch, "key", tune.Store.for_device("Other GPU"), other.compile, other.time)
    assert tuned.meta["BLOCK_K"] == 16


def test_a_damaged_store_is_started_afresh():
    store = tune.Store.for_device("Fake GPU")
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{not json")
    fake = Fake({16: (96, 0), 32: (96, 0)}, {16: 0.3, 32: 0.1})
    tuned, _ = tune.choose(_launch(2), "k", tune.Store.for_device("Fake GPU"), fake.compile, fake.time)
    assert tuned.meta["BLOCK_K"] == 32
    assert json.loads(store.path.read_text())["k"]["config"]["BLOCK_K"] == 32


def test_when_every_config_spills_the_least_spilling_runs_with_a_warning():
    fake = Fake({16: (255, 64), 32: (255, 16)}, {32: 1.0})
    with pytest.warns(RuntimeWarning, match="every config of a kernel spills"):
        tuned, _ = tune.choose(_launch(2), "k", tune.Store.for_device("Fake GPU"), fake.compile, fake.time)
    assert tuned.meta["BLOCK_K"] == 32 and fake.timed == [32]
    nothing = Fake({16: RuntimeError("too many threads"), 32: RuntimeError("too many threads")}, {})
    with pytest.raises(RuntimeError, match="no config of this kernel can launch"):
        tune.choose(_launch(2), "k2", tune.Store.for_device("Fake GPU"), nothing.compile, nothing.time)


def test_one_config_is_not_tuned():
    fake = Fake({}, {})
    launch = _launch(1)
    store = tune.Store.for_device("Fake GPU")
    assert tune.choose(launch, "k", store, fake.compile, fake.time) == (launch, [])


def test_the_key_follows_the_kernel_its_sizes_and_its_configs():
    b = GraphBuilder()
    b.output("y", b.matmul(b.input("x", DType.BF16, (37, 53)), b.input("w", DType.BF16, (53, 29))))
    spec = MatmulKernel(groups(b.build())[0], target=parse("sm_90"))
    launch = spec.prepare({})
    assert len(launch.configs) >= 2
    keys = {tune.key_of("k_a.py", launch), tune.key_of("k_b.py", launch),
            tune.key_of("k_a.py", Launch(launch.grid, (), (), (*launch.scalars[:-1], 99), launch.meta,
                                         launch.configs))}
    assert len(keys) == 3


@pytest.mark.gpu
def test_executable_tunes_its_matmuls_on_the_gpu(gen):
    from axon.driver import executable

    b = GraphBuilder()
    x, w = b.input("x", DType.BF16, (300, 256)), b.param("w", DType.BF16, (256, 384))
    b.output("y", b.relu(b.matmul(x, w)))
    exe = executable(b.build(), "cuda")
    xs = torch.randn(300, 256, generator=gen).to("cuda", torch.bfloat16)
    ws = torch.randn(256, 384, generator=gen).to("cuda", torch.bfloat16)
    y = exe({"x": xs}, {"w": ws})["y"]
    torch.testing.assert_close(y.float(), torch.relu(xs @ ws).float(), atol=0.5, rtol=2e-2)
    plan = exe.plan({})
    assert plan.tuned and all(launch.meta in launch.configs for _, launch in plan.launches if launch.configs)
    store = tune.Store.for_device(torch.cuda.get_device_name())
    assert store.choices  # remembered for the next process


def test_a_plan_compiles_ahead_what_its_first_call_will_launch(monkeypatch):
    """The cold-start jobs of a plan: every config of a launch the tuner will try, only the stored
    choice where there is one; each job is what `axon compile --target` compiles (same file, same
    arguments), so the worker's compile is the launch's in Triton's cache."""
    from axon.driver import executable
    from axon.runtime import warm
    from axon.runtime.plan import make

    b = GraphBuilder()
    x, w = b.input("x", DType.BF16, (300, 256)), b.param("w", DType.BF16, (256, 384))
    b.output("y", b.relu(b.matmul(x, w)))
    exe = executable(b.build())
    sm90 = parse("sm_90")
    from axon.codegen import compile_group

    kernels = [compile_group(k.group, target=sm90) for k in exe.kernels]
    plan = make(exe.graph, kernels, {}, torch.device("cpu"), True)
    (step,) = plan.steps
    every = warm.jobs(plan, sm90)
    assert len(every) == len(step.launch.configs) >= 2
    assert {j.path for j in every} == {kernels[0].path}
    chosen = step.launch.configs[1]
    narrowed = warm.jobs(plan, sm90, lambda launch, kernel: chosen)
    assert [j.meta for j in narrowed] == [chosen]
    monkeypatch.setenv(warm.SWITCH, "0")
    assert warm.compile_ahead(plan, sm90) == 0


@pytest.mark.gpu
def test_after_the_parallel_compile_the_first_call_compiles_nothing(tmp_path, monkeypatch, gen):
    """On a GPU: the workers fill Triton's cache; the first call then adds no entry of its own."""
    from axon.driver import executable

    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton"))
    b = GraphBuilder()
    x = b.input("x", DType.F32, (64, 96))
    h = b.relu(b.matmul(x, b.param("w1", DType.F32, (96, 80))))
    b.output("y", b.exp(b.sub(h, b.max(h, 1, keepdim=True))))
    exe = executable(b.build(), "cuda")
    exe.plan({})  # compiles ahead
    before = {p.name for p in (tmp_path / "triton").iterdir()}
    params = {"w1": torch.randn(96, 80, generator=gen).cuda()}
    exe({"x": torch.randn(64, 96, generator=gen).cuda()}, params)
    after = {p.name for p in (tmp_path / "triton").iterdir()}
    assert before and after == before
