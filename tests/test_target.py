"""Targets: names, limits, and the f32 dot precision following PyTorch's own switch."""
from __future__ import annotations

import pytest
import torch

from axon.codegen import groups
from axon.codegen.matmul import MatmulKernel
from axon.codegen.target import Target, TargetError, native, parse
from axon.ir import DType, GraphBuilder


@pytest.mark.parametrize("name,arch", [("sm_90", 90), ("sm90", 90), ("90", 90), ("SM_80", 80),
                                       ("sm_100", 100), ("sm_90a", 90)])
def test_names(name, arch):
    t = parse(name)
    assert t.backend == "cuda" and t.arch == arch and t.name == f"sm_{arch}"


@pytest.mark.parametrize("name", ["sm_70", "hopper", "sm_", "cuda:0", ""])
def test_unknown_names_are_refused_with_the_known_ones(name):
    with pytest.raises(TargetError, match="use one of sm_80, .*native, interpreter"):
        parse(name)


def test_native_here_is_the_interpreter():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert native().interpreted and parse("native") == native() and native().name == "interpreter"


def test_limits_by_architecture():
    assert parse("sm_90").limits.smem_per_block == 227 * 1024
    assert parse("sm_80").limits.smem_per_block == 163 * 1024
    assert parse("sm_89").limits.threads_per_sm == 1536
    assert parse("sm_120").limits == parse("sm_121").limits  # the closest older known


def _source(target: Target) -> str:
    b = GraphBuilder()
    b.output("y", b.matmul(b.input("x", DType.F32, (37, 53)), b.input("w", DType.F32, (53, 29))))
    return MatmulKernel(groups(b.build())[0], target=target).source()


def test_tf32_follows_torchs_float32_matmul_precision():
    """As in PyTorch: full f32 by default; TF32 tensor cores once the user allows them, by either of
    PyTorch's switches. The interpreter computes full f32 whatever the setting."""
    old = torch.get_float32_matmul_precision()
    try:
        assert not parse("sm_90").tf32 and 'input_precision="ieee"' in _source(parse("sm_90"))
        torch.set_float32_matmul_precision("high")
        assert parse("sm_90").tf32 and 'input_precision="tf32"' in _source(parse("sm_90"))
        assert 'input_precision="ieee"' in _source(parse("interpreter"))
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.allow_tf32 = True
        assert parse("sm_80").dot_precision == "tf32"
    finally:
        torch.set_float32_matmul_precision(old)
    assert parse("sm_90").key() != parse("sm_90", tf32=True).key()  # another kernel file
