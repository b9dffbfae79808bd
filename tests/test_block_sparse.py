"""Block-sparse matmuls: a weight pruned in square blocks runs through a generated kernel that visits
only its nonzero blocks (forward, and the gradient with respect to the activations), equal to the dense
masked matmul; the kernel counts the block products it executes."""
from __future__ import annotations

import pytest
import torch

from axon.driver import executable, optimize
from axon.ir import DType, GraphBuilder, Init, evaluate, init_params
from axon.passes.autodiff import vjp
from axon.passes.block_sparse import BlockSparse, block_index, block_mask, index_names, nm_mask
from numerics import assert_close

QUIET = lambda *a, **k: None  # noqa: E731


def layer(k: int, n: int, block: int, batch=(3, 7)):
    """relu(x @ w + bias) with w block-sparse: the graph and its parameter names."""
    b = GraphBuilder("layer")
    x = b.input("x", DType.F32, (*batch, k))
    w = b.param("w", DType.F32, (k, n))
    i, it, t = index_names("w")
    kb, nb = -(-k // block), -(-n // block)
    y = b.bsmatmul(x, w, b.param(i, DType.I32, (nb, kb + 1), Init("all_blocks")),
                   b.param(it, DType.I32, (kb, nb + 1), Init("all_blocks")), b.param(t, DType.I64, (1,)),
                   block)
    b.output("y", b.relu(b.add(y, b.param("bias", DType.F32, (n,)))))
    return b.build()


def sparse_params(k, n, block, amount, gen):
    w = torch.randn(k, n, generator=gen)
    w = w * block_mask(w, block, amount)
    index, index_t = block_index(w, block)
    return {"w": w, "w.blocks": index, "w.blocks_t": index_t, "w.tiles": torch.zeros(1, dtype=torch.int64),
            "bias": torch.randn(n, generator=gen)}


@pytest.mark.parametrize("k, n, block", [(128, 96, 16), (100, 70, 32), (64, 130, 16)])
def test_a_75_percent_block_sparse_matmul_executes_a_quarter_of_the_tile_products(k, n, block, gen):
    g = layer(k, n, block)
    params = sparse_params(k, n, block, 0.75, gen)
    x = torch.randn(3, 7, k, generator=gen)
    exe = executable(g, "cpu")
    got = exe({"x": x}, params)["y"]
    want = torch.relu(x @ params["w"] + params["bias"])
    assert_close(got, want, tol=1e-5, what="y")
    assert_close(got, evaluate(g, {"x": x}, params)["y"], tol=1e-5, what="y vs evaluator")
    assert len(exe.kernels) == 1  # the bias and relu in its epilogue
    kb, nb = -(-k // block), -(-n // block)
    kept = int(params["w.blocks"][:, 0].sum())
    assert kept == kb * nb - round(0.75 * kb * nb)
    launch = exe.plan({}).launches[0][1]
    m_tiles = launch.grid[0] // nb
    assert int(params["w.tiles"]) == m_tiles * kept  # measured by the kernel's atomic adds
    if (kb * nb) % 4 == 0:
        assert int(params["w.tiles"]) * 4 == m_tiles * kb * nb


def test_the_gradient_with_respect_to_the_activations_is_block_sparse_too(gen):
    k, n, block = 96, 64, 16
    g = layer(k, n, block)
    bwd = vjp(g, ["x"])
    params = sparse_params(k, n, block, 0.75, gen)
    x = torch.randn(3, 7, k, generator=gen, requires_grad=True)
    dy = torch.randn(3, 7, n, generator=gen)
    exe = executable(optimize(bwd, out=QUIET)[0], "cpu")
    got = exe({"x": x.detach(), "dout.y": dy}, params)["grad.x"]
    torch.relu(x @ params["w"] + params["bias"]).backward(dy)
    assert_close(got, x.grad, tol=1e-5, what="grad.x")
    kinds = [n.op.value for kern in exe.kernels for n in kern.group.nodes]
    assert kinds.count("bsmatmul") == 2  # the forward (for relu's mask) and g @ w^T
    kb, nb = k // block, n // block
    kept = int(params["w.blocks"][:, 0].sum())
    assert kept * 4 == kb * nb
    # both kernels counted in the one counter: each ran a quarter of its dense block products
    grids = [launch.grid[0] for kern, launch in exe.plan({}).launches
             if any(n.op.value == "bsmatmul" for n in kern.group.nodes)]
    m_tiles = [grids[0] // nb, grids[1] // kb]  # forward: column blocks of w; backward: of w^T
    assert int(params["w.tiles"]) * 4 == m_tiles[0] * kb * nb + m_tiles[1] * kb * nb


def test_the_pass_rewrites_only_the_named_weights_and_unfilled_indices_compute_the_dense_product(gen):
    b = GraphBuilder("two")
    x = b.input("x", DType.F32, (5, 48))
    h = b.matmul(x, b.param("a", DType.F32, (48, 32)))
    b.output("y", b.matmul(h, b.param("c", DType.F32, (32, 16))))
    g = b.build()
    q = BlockSparse(block=16, layers="a").run(g)
    assert [n.op.value for n in q.nodes if n.op.value.endswith("matmul")] == ["bsmatmul", "matmul"]
    params = init_params(q, 0)
    assert params["a.blocks"].tolist() == [[3, 0, 1, 2]] * 2  # all_blocks(): every block listed
    xs = torch.randn(5, 48, generator=gen)
    assert_close(executable(q, "cpu")({"x": xs}, params)["y"], xs @ params["a"] @ params["c"], tol=1e-5)
    assert int(params["a.tiles"]) == 1 * 3 * 2


def test_block_and_n_m_masks(gen):
    w = torch.randn(70, 45, generator=gen)
    m = block_mask(w, 16, 0.6)
    kb, nb = 5, 3
    blocks = torch.zeros(kb * 16, nb * 16)
    blocks[:70, :45] = m
    per = blocks.view(kb, 16, nb, 16).amax(dim=(1, 3))
    assert int((per == 0).sum()) == round(0.6 * kb * nb)
    w2 = torch.randn(16, 6, generator=gen)
    m2 = nm_mask(w2, 2, 4)
    groups = m2.view(4, 4, 6)
    assert bool((groups.sum(dim=1) == 2).all())
    mags = w2.abs().view(4, 4, 6)
    kept = torch.where(groups == 1, mags, torch.inf).amin(dim=1)
    dropped = torch.where(groups == 0, mags, -torch.inf).amax(dim=1)
    assert bool((kept >= dropped).all())
    with pytest.raises(ValueError, match="multiple of 4"):
        nm_mask(torch.ones(6, 2))


@pytest.mark.parametrize("dtype", [None, "bf16"])
def test_the_block_sparse_kernel_compiles_for_sm90_without_spills(dtype):
    from test_aot import assert_clean, example_graph, sweep

    g, env = example_graph("mlp.axon", False, dtype)
    q, _ = optimize(g, "block_sparse{block=32,layers=h.w},dce", out=QUIET)
    rows = sweep(q, env)
    assert_clean(rows)
    (row,) = [r for r in rows if "bsmatmul" in r.what]
    assert row.spills == 0 or row.spills is None
    if dtype:
        assert row.tensor_cores.startswith("wgmma"), row


def test_a_block_pruned_training_step_compiles_for_sm90_without_spills():
    """The MLP's step with both weights block-sparse (forward, the activations' gradient) and masked."""
    from pathlib import Path

    from test_aot import assert_clean

    from axon.driver import load_ast
    from axon.frontend import training_graph
    from axon.run import bind_dims
    from axon.trainer import step_graph

    loss, spec = training_graph(load_ast(Path(__file__).parents[1] / "examples" / "mlp.axon"))
    loss = BlockSparse(32, "h.w|logits.w").run(loss)
    step = step_graph(loss, {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)},
                      masked=("h.w", "logits.w"))
    assert [n.op.value for n in step.nodes].count("bsmatmul") == 3
    from test_aot import sweep

    assert_clean(sweep(step, bind_dims(step, {"batch": 64})))
