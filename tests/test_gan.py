"""examples/gan.py runs end to end (a few steps: that it trains and writes its files, not that it
converges; the converged figures come from a full run, see the script's docstring)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "gan.py"


@pytest.fixture(scope="module")
def gan():
    spec = importlib.util.spec_from_file_location("gan_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_short_run_trains_and_writes_its_files(gan, tmp_path, capsys):
    metrics = gan.main(["--steps", "3", "--batch", "16", "--hidden", "8", "--samples", "50",
                        "--out", str(tmp_path / "run")])
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["steps"] == 3 and len(written["history"]) == 3
    assert all(h["loss_d"] > 0 and h["loss_g"] > 0 for h in written["history"])
    for which in ("ema", "last"):
        c = written["coverage"][which]
        assert c["modes"] == 8 and 0 <= c["covered"] <= 8 and 0.0 <= c["quality"] <= 1.0
        assert len(c["shares"]) == 8
    png = (tmp_path / "run" / "samples.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    out = capsys.readouterr().out
    assert "mode coverage" in out and "modes" in out


def test_bad_arguments_are_refused(gan, tmp_path):
    with pytest.raises(SystemExit):
        gan.main(["--steps", "-1", "--out", str(tmp_path)])
