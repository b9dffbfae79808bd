"""ONNX import: ONNX's own backend node tests through Axon's kernels (at least 95% of those for the ops
Axon claims), a model with initializers end to end (`axon run model.onnx`), and refusals that name the
node and op type."""
from __future__ import annotations

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto as T, helper as oh, numpy_helper as nh  # noqa: E402

import onnx_nodes  # noqa: E402

import axon  # noqa: E402
from axon.cli import main  # noqa: E402
from axon.frontend.onnx_import import OnnxError, import_onnx  # noqa: E402


def test_onnx_node_tests_pass_through_the_kernels(capsys):
    """Every node test of ONNX's suite whose ops Axon claims (opset 13+, Axon dtypes) runs through the
    generated kernels; at least 95% pass, and each failure has its reason."""
    counts, failures, per_op = onnx_nodes.report(kernels=True)
    total = counts["pass"] + counts["fail"]
    with capsys.disabled():
        print(f"\nONNX node tests: {counts['pass']} of {total} claimed pass over {len(per_op)} op types")
    assert total > 400
    assert counts["pass"] >= 0.95 * total, "\n".join(f"{n}: {w}" for n, w in failures)
    assert all(why for _, why in failures)


def mlp(path, opset=17, op="Relu"):
    rng = np.random.default_rng(0)
    w1 = nh.from_array(rng.standard_normal((7, 9)).astype(np.float32), "w1")
    b1 = nh.from_array(rng.standard_normal((9,)).astype(np.float32), "b1")
    w2 = nh.from_array(rng.standard_normal((9, 4)).astype(np.float32), "w2")
    nodes = [oh.make_node("MatMul", ["x", "w1"], ["h0"]), oh.make_node("Add", ["h0", "b1"], ["h1"]),
             oh.make_node(op, ["h1"], ["h2"], name="act"), oh.make_node("MatMul", ["h2", "w2"], ["h3"]),
             oh.make_node("Softmax", ["h3"], ["y"], axis=-1)]
    g = oh.make_graph(nodes, "mlp", [oh.make_tensor_value_info("x", T.FLOAT, ["batch", 7])],
                      [oh.make_tensor_value_info("y", T.FLOAT, ["batch", 4])], [w1, b1, w2])
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", opset)]), str(path))
    return {t.name: nh.to_array(t).copy() for t in (w1, b1, w2)}


def test_a_model_with_initializers_end_to_end(tmp_path, gen):
    weights = mlp(tmp_path / "mlp.onnx")
    model = axon.import_onnx(tmp_path / "mlp.onnx", device="cpu")
    assert sorted(model.params) == ["b1", "w1", "w2"]  # the initializers, as parameters
    x = torch.randn(5, 7, generator=gen)
    h = torch.relu(x @ torch.from_numpy(weights["w1"]) + torch.from_numpy(weights["b1"]))
    want = torch.softmax(h @ torch.from_numpy(weights["w2"]), -1)
    torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-6)
    assert str(model.graph.inputs["x"].shape[0]) == "batch"  # a dim_param stays symbolic
    assert main(["run", str(tmp_path / "mlp.onnx"), "--check", "--dim", "batch=3"]) == 0


@pytest.mark.parametrize("opset, op, message", [
    (17, "Hardmax", "node 'act' (Hardmax): op type Hardmax has no Axon translation"),
    (11, "Relu", "opset 11; Axon imports opset 13 onwards"),
])
def test_what_cannot_be_imported_is_refused_with_the_node(tmp_path, opset, op, message):
    mlp(tmp_path / "m.onnx", opset, op)
    with pytest.raises(OnnxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        import_onnx(tmp_path / "m.onnx")


def test_a_damaged_file_is_refused(tmp_path, capsys):
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage" * 10)
    assert main(["run", str(tmp_path / "bad.onnx")]) != 0
    assert "bad.onnx" in capsys.readouterr().err
