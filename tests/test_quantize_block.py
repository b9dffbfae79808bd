"""The `quantize` block of the language (`frontend/quantize_block.py`): its settings, its errors at their
place in the file, and `axon quantize` taking its defaults from it (the command line wins)."""
from __future__ import annotations

import json

import pytest

from axon.cli import main
from axon.driver import load_ast
from axon.frontend import quantize_spec
from axon.ir import AxonError

MODEL = """model M(hidden = 64) {
    input x: f32[batch, 32]
    h = relu(linear(x, hidden))
    output logits = linear(h, 4)
}

train M {
    data   = blobs(classes = 4, features = 32, n = 80, val = 0.25)
    loss   = cross_entropy(logits, label)
    optim  = adam(lr = 1e-2)
    epochs = 1   batch = 20
}
"""


def write(tmp_path, block: str):
    path = tmp_path / "m.axon"
    path.write_text(MODEL + block)
    return path


def test_the_block_gives_every_setting(tmp_path):
    path = write(tmp_path, """
quantize M {
    mode = "int8-static"   group = 32   skip = ["logits", "h*"]   min_size = 0
    calibrate = 3   method = "percentile"   percentile = 99.9
}
""")
    spec = quantize_spec(load_ast(path))
    assert (spec.mode, spec.group, spec.skip, spec.min_size, spec.calibrate, spec.method, spec.percentile) \
        == ("int8-static", 32, ("logits", "h*"), 0, 3, "percentile", 99.9)
    assert quantize_spec(load_ast(write(tmp_path, ""))) is None


@pytest.mark.parametrize("line,col,text,message", [
    (15, 12, 'mode = "int8-dynamc"', "unknown mode 'int8-dynamc'"),
    (15, 5, 'grop = 32', "unknown quantize setting 'grop'"),
    (15, 13, 'group = 33', "'group' must be one of 32, 64, 128"),
    (15, 12, 'skip = "logits"', "'skip' must be a list"),
    (15, 16, 'min_size = -1', "'min_size' must be at least 0"),
    (15, 17, 'calibrate = 1.5', "'calibrate' must be an int"),
    (15, 18, 'percentile = 101', "'percentile' must be in (0, 100]"),
    (15, 14, 'method = "kl"', "unknown method 'kl'"),
])
def test_each_bad_setting_is_an_error_at_its_place(tmp_path, capsys, line, col, text, message):
    path = write(tmp_path, f"\nquantize M {{\n    {text}\n}}\n")
    with pytest.raises(AxonError, match=message.replace("(", r"\(").replace("]", r"\]")) as e:
        quantize_spec(load_ast(path))
    assert f"m.axon:{line}:{col}" in str(e.value.format() if hasattr(e.value, "format") else e.value) or \
        (e.value.span.line, e.value.span.col) == (line, col)
    assert main(["check", str(path)]) == 1  # found when the file is loaded, by any command
    assert f":{line}:{col}: error:" in capsys.readouterr().err


def test_twice_and_unknown_model(tmp_path):
    with pytest.raises(AxonError, match="given twice"):
        quantize_spec(load_ast(write(tmp_path, '\nquantize M { mode = "fp8"  mode = "fp8" }\n')))
    with pytest.raises(AxonError, match="unknown model 'N'"):
        quantize_spec(load_ast(write(tmp_path, '\nquantize N { mode = "fp8" }\n')))
    with pytest.raises(AxonError, match="defined twice"):
        quantize_spec(load_ast(write(tmp_path, '\nquantize M { }\nquantize M { }\n')))


def test_axon_quantize_takes_the_blocks_settings_and_the_command_line_wins(tmp_path, capsys):
    path = write(tmp_path, '\nquantize M { mode = "int4-weight"  group = 32  min_size = 0 }\n')
    assert main(["quantize", str(path), "--out", str(tmp_path / "a"), "--target", "none"]) == 0
    a = json.loads((tmp_path / "a" / "ledger.json").read_text())
    assert (a["mode"], a["group"], a["min_size"]) == ("int4-weight", 32, 0)
    assert main(["quantize", str(path), "--mode", "int8-weight", "--out", str(tmp_path / "b"),
                 "--target", "none"]) == 0
    b = json.loads((tmp_path / "b" / "ledger.json").read_text())
    assert (b["mode"], b["min_size"]) == ("int8-weight", 0)
    capsys.readouterr()
    plain = write(tmp_path, "")
    assert main(["quantize", str(plain), "--out", str(tmp_path / "c"), "--target", "none"]) == 1
    assert "no quantization mode" in capsys.readouterr().err


def test_sensitivity_ranks_each_layer_alone_and_max_drop_leaves_the_costly_float(tmp_path, capsys):
    """Each row's metrics are those of the model with that layer alone quantized (checked against
    `axon quantize --skip` of the other layer and `axon eval --quantized`); --max-drop below every cost
    leaves every layer float, above every cost none."""
    path = write(tmp_path, "")
    assert main(["train", str(path), "--out", str(tmp_path / "run"), "--epochs", "2"]) == 0
    weights = str(tmp_path / "run" / "best.safetensors")
    common = ["--mode", "int4-weight", "--group", "32", "--min-size", "0", "--weights", weights,
              "--target", "none"]
    assert main(["quantize", str(path), *common, "--sensitivity", "--out", str(tmp_path / "s")]) == 0
    sens = json.loads((tmp_path / "s" / "ledger.json").read_text())["sensitivity"]
    assert (tmp_path / "s" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    costs = [r["cost"] for r in sens["layers"]]
    assert costs == sorted(costs, reverse=True)
    assert {r["layer"] for r in sens["layers"]} == {"h.w", "logits.w"}
    for r in sens["layers"]:
        other = ({"h.w", "logits.w"} - {r["layer"]}).pop()
        out = tmp_path / f"only-{r['layer']}"
        assert main(["quantize", str(path), *common, "--skip", other, "--out", str(out)]) == 0
        after = json.loads((out / "ledger.json").read_text())["validation"]["after"]
        assert after["acc"] == pytest.approx(r["val_acc"]) and after["loss"] == pytest.approx(r["val_loss"])
        assert r["cost"] == pytest.approx((sens["float"]["acc"] - after["acc"]) * 100)
    low = min(costs) - 1
    assert main(["quantize", str(path), *common, "--max-drop", str(low), "--out",
                 str(tmp_path / "all")]) == 0
    rows = json.loads((tmp_path / "all" / "ledger.json").read_text())["layers"]
    assert all(r["kind"] == "float" and "sensitivity: costs" in r["runs"]
               for r in rows if r["op"] == "matmul")
    assert main(["quantize", str(path), *common, "--max-drop", str(max(costs) + 1), "--out",
                 str(tmp_path / "none")]) == 0
    rows = json.loads((tmp_path / "none" / "ledger.json").read_text())["layers"]
    assert all(r["kind"] != "float" for r in rows if r["op"] == "matmul")
