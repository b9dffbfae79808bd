"""The kernel cache (atomic files, damaged entries rebuilt, source-keyed) and a golden kernel source."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from axon.codegen import cache_dir, compile_group, groups, target
from axon.codegen.cache import CHECKSUM, cache_key, code_of, is_intact
from axon.ir import DType, GraphBuilder, Sym


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AXON_CACHE_DIR", str(tmp_path / "kernels"))


def _graph(scale: float = 2.0):
    b = GraphBuilder()
    x = b.input("x", DType.F32, (Sym.of("batch"), 53))
    w = b.input("w", DType.F32, (53,))
    b.output("y", b.mul(b.mul(x, w), scale))
    return b.build()


def _run(kernel, graph):
    x, w = torch.randn(37, 53), torch.randn(53)
    values = {graph.inputs["x"]: x, graph.inputs["w"]: w}
    (out,) = kernel.run(values, {"batch": 37}, poison=True).values()
    return out, x * w


def test_file_written_with_checksum_and_runs():
    graph = _graph()
    kernel = compile_group(groups(graph)[0])
    assert kernel.path.parent == cache_dir()
    text = kernel.path.read_text()
    assert text.startswith(kernel.source) and CHECKSUM in text.splitlines()[-1]
    out, want = _run(kernel, graph)
    torch.testing.assert_close(out, want)
    assert not list(cache_dir().glob("*.tmp"))  # no temporary file left behind


def test_truncated_file_is_rebuilt():
    group = groups(_graph())[0]
    path = compile_group(group).path
    whole = path.read_text()
    path.write_text(whole[: len(whole) // 2])  # a crash half-way through someone else's write
    assert compile_group(group).path == path
    assert path.read_text() == whole


@pytest.mark.parametrize("damage", ["edited", "binary", "no checksum"])
def test_damaged_file_is_rebuilt(damage):
    group = groups(_graph())[0]
    path = compile_group(group).path
    whole = path.read_text()
    if damage == "edited":
        path.write_text(whole.replace("mask=mask", "mask=None", 1))
    elif damage == "binary":
        path.write_bytes(b"\xff\xfe\x00garbage")
    else:
        path.write_text(whole.rpartition(CHECKSUM)[0])
    assert compile_group(group).path == path and path.read_text() == whole


def test_changed_source_gets_a_new_key():
    first = compile_group(groups(_graph(2.0))[1])
    second = compile_group(groups(_graph(3.0))[1])
    assert first.source != second.source and first.path != second.path
    assert cache_key(first.source, "interpreter") != cache_key(first.source, "cuda:sm90")


def test_kernels_that_differ_only_in_comments_share_one_file_and_function():
    """The node labels in a kernel's comments do not change what it computes: one file, one loaded
    function, so Triton compiles it once (its own cache key includes the function's text)."""
    b = GraphBuilder()
    x = b.input("x", DType.F32, (Sym.of("batch"), 53))
    w = b.input("w", DType.F32, (53,))
    b.output("y", b.exp(b.mul(b.exp(x), w)))  # the same exp kernel at another node index
    graph = b.build()
    first = compile_group(groups(_graph())[0])
    exps = [compile_group(g) for g in groups(graph) if g.nodes[-1].op.value == "exp"]
    assert len(exps) == 2 and exps[0].source != exps[1].source  # labels differ
    assert exps[0].path == exps[1].path and exps[0].fn is exps[1].fn
    assert first.path != exps[0].path
    assert code_of(exps[0].source) == code_of(exps[1].source)
    assert "#" not in code_of(exps[0].source)


def test_two_processes_compile_the_same_kernel(tmp_path):
    script = textwrap.dedent("""
        import os, sys
        os.environ["TRITON_INTERPRET"] = "1"
        import torch
        sys.path.insert(0, sys.argv[1])
        from test_codegen_cache import _graph, _run
        from axon.codegen import compile_group, groups
        from axon.codegen.cache import write_cached
        graph = _graph()
        kernel = compile_group(groups(graph)[0])
        for i in range(50):  # both processes write the same 50 new entries at once
            write_cached(kernel.source + f"_variant_{i} = None\\n")  # other code: a file each
        out, want = _run(kernel, graph)
        torch.testing.assert_close(out, want)
        print(kernel.path)
    """)
    env = dict(os.environ)
    here = os.path.dirname(__file__)
    procs = [subprocess.Popen([sys.executable, "-c", script, here], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-2000:]
    paths = {out.strip() for out, _ in results}
    assert len(paths) == 1
    text = open(paths.pop()).read()
    assert CHECKSUM in text and not list(cache_dir().glob("*.tmp"))
    files = list(cache_dir().glob("k_*.py"))
    assert len(files) == 51 and all(is_intact(f.read_text()) for f in files)


def test_target_names_the_interpreter():
    assert target().startswith("interpreter triton-")


GOLDEN = '''\
# Pointwise kernel over [batch, 53], computing:
#   %2 = mul(%0, %1): f32[batch, 53]
import triton
import triton.language as tl


@triton.jit
def pointwise_kernel(
    in0_ptr,
    in1_ptr,
    out0_ptr,
    in0_stride0,
    in0_stride1,
    in1_stride0,
    in1_stride1,
    size0,
    size1,
    n_elements,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n_elements
    # coordinates of each element in the iteration space [size0, size1]
    rem = offs
    i1 = rem % size1
    rem = rem // size1
    i0 = rem
    x0 = tl.load(in0_ptr + i0 * in0_stride0 + i1 * in0_stride1, mask=mask)
    x1 = tl.load(in1_ptr + i0 * in1_stride0 + i1 * in1_stride1, mask=mask)
    # %2 = mul(%0, %1): f32[batch, 53]
    mul0 = x0 * x1
    tl.store(out0_ptr + offs, mul0, mask=mask)
'''


def test_golden_pointwise_source():
    """A change to generated code shows up here, in review."""
    assert compile_group(groups(_graph())[0]).source == GOLDEN
