"""Calibration for int8-static (`runtime/observers.py`, `runtime/calibrate.py`, `axon quantize --mode
int8-static`): the observers against torch.ao's MinMaxObserver, numpy's percentile and a plain
re-implementation of TensorRT's entropy calibration; the calibration run against the float model's own
activations; bad data refused; the command end to end."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from axon.ir import AxonError, DType, GraphBuilder
from axon.runtime.calibrate import calibrate
from axon.runtime.observers import BINS, CalibrationError, Observer, entropy_threshold


def batches(gen, dist="gauss", n=4, size=5000):
    out = []
    for i in range(n):
        x = torch.randn(size, generator=gen) if dist == "gauss" else torch.rand(size, generator=gen) * 2 - 1
        out.append(x * (1 + i))  # a growing range: the histogram is re-binned three times
    return out


def test_minmax_equals_torch_ao_symmetric_min_max_observer(gen):
    from torch.ao.quantization import MinMaxObserver

    ours, theirs = Observer("minmax"), MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                                      quant_min=-127, quant_max=127)
    for x in batches(gen):
        ours.update(x)
        theirs(x)
    scale, _ = theirs.calculate_qparams()
    # torch.ao: max(-min, max) / ((quant_max - quant_min) / 2) = amax / 127
    assert ours.threshold() / 127 == pytest.approx(float(scale), rel=1e-6)


def test_percentile_is_numpys_within_one_bin(gen):
    xs = batches(gen)
    o = Observer("percentile", percentile=99.9)
    for x in xs:
        o.update(x)
    want = float(np.percentile(torch.cat(xs).abs().numpy(), 99.9))
    assert abs(o.threshold() - want) <= 2 * o.amax / BINS  # re-binning moves counts by up to a bin
    assert o.clipped(o.threshold()) == pytest.approx(0.001, abs=3e-4)


def _plain_entropy(hist: np.ndarray, amax: float, levels: int = 128) -> float:
    """TensorRT's algorithm written plainly, bin by bin, to check the vectorized one."""
    best, best_i = math.inf, len(hist)
    for i in range(levels, len(hist) + 1):
        p = [float(v) for v in hist[:i]]
        p[-1] += float(hist[i:].sum())
        q = [0.0] * i
        for j in range(levels):  # group j holds bins [lo, hi)
            lo, hi = -(-j * i // levels), -(-(j + 1) * i // levels)
            members = [k for k in range(lo, hi) if p[k] > 0]
            mass = float(hist[lo:hi].sum())
            for k in members:
                q[k] = mass / len(members)
        ps, qs = sum(p), sum(q)
        p, q = [v / ps for v in p], [v / qs for v in q]
        holes = [k for k in range(i) if q[k] == 0 and p[k] > 0]
        if holes:
            filled = [k for k in range(i) if q[k] > 0]
            for k in filled:
                q[k] -= 1e-4 * len(holes) / len(filled)
            for k in holes:
                q[k] = 1e-4
        kl = sum(pk * math.log(pk / qk) for pk, qk in zip(p, q) if pk > 0)
        if kl < best:
            best, best_i = kl, i
    return best_i * amax / len(hist)


def test_entropy_matches_a_plain_re_implementation_and_clips_heavy_tails(gen):
    lap = torch.distributions.Laplace(0.0, 1.0)
    torch.manual_seed(0)
    x = lap.sample((40000,))
    hist = torch.histc(x.abs().double(), 256, 0, float(x.abs().max())).numpy()
    assert entropy_threshold(hist, float(x.abs().max()), levels=32) == \
        pytest.approx(_plain_entropy(hist, float(x.abs().max()), levels=32))
    o = Observer("entropy")
    o.update(x)
    t = o.threshold()
    assert t < 0.8 * o.amax and o.clipped(t) < 0.005  # a heavy tail: clipped, a few values only
    u = Observer("entropy")
    for b in batches(gen, "uniform", n=1):
        u.update(b)
    assert u.threshold() > 0.95 * u.amax  # uniform: nothing worth clipping


def test_bad_data_and_bad_options_are_refused():
    o = Observer("minmax")
    with pytest.raises(CalibrationError, match="NaN or infinite"):
        o.update(torch.tensor([1.0, float("nan")]))
    with pytest.raises(CalibrationError, match="no calibration values"):
        Observer("entropy").threshold()
    with pytest.raises(CalibrationError, match="methods are"):
        Observer("kl")
    with pytest.raises(CalibrationError, match="percentile"):
        Observer("percentile", percentile=0)
    zero = Observer("entropy")
    zero.update(torch.zeros(10))
    assert zero.threshold() == 0.0  # the quantizer then takes the smallest scale (quant_weights)


def test_calibrate_observes_the_float_models_activations(gen):
    b = GraphBuilder("m")
    x = b.input("x", DType.F32, (6, 5))
    h = b.relu(b.matmul(x, b.param("w", DType.F32, (5, 4))))
    b.output("y", b.matmul(h, b.param("v", DType.F32, (4, 3))))
    g = b.build()
    params = {"w": torch.randn(5, 4, generator=gen), "v": torch.randn(4, 3, generator=gen)}
    xs = [torch.randn(6, 5, generator=gen) * 3 for _ in range(3)]
    obs = calibrate(g, params, {"in": [x], "hidden": [h]}, ({"x": v} for v in xs))
    assert obs["in"].threshold() == pytest.approx(float(torch.stack(xs).abs().max()))
    hs = [torch.relu(v @ params["w"]) for v in xs]
    assert obs["hidden"].threshold() == pytest.approx(float(torch.stack(hs).abs().max()))
    with pytest.raises(CalibrationError, match="no calibration batch"):
        calibrate(g, params, {"in": [x]}, iter([]))
    bad = [torch.full((6, 5), float("inf"))]
    with pytest.raises(AxonError, match="'in'.*calibration batch 0"):
        calibrate(g, params, {"in": [x]}, ({"x": v} for v in bad))


def test_axon_quantize_int8_static_calibrates_and_writes_its_scales(capsys, tmp_path):
    from test_quantize_pass import MLP, TINY

    from axon.cli import main

    src = tmp_path / "tiny.axon"
    src.write_text(TINY)
    assert main(["quantize", str(src), "--mode", "int8-static", "--min-size", "0", "--method", "percentile",
                 "--calibrate", "2", "--out", str(tmp_path / "q"), "--target", "none"]) == 0
    out = capsys.readouterr().out
    assert "calibration: percentile 99.99 over 2 training batch(es)" in out
    ledger = json.loads((tmp_path / "q" / "ledger.json").read_text())
    cal = ledger["calibration"]["layers"]
    assert cal and all(0 < r["threshold"] <= r["amax"] and r["scale"] == pytest.approx(r["threshold"] / 127)
                       for r in cal.values())
    assert main(["eval", str(src), "--quantized", str(tmp_path / "q")]) == 0
    assert main(["quantize", str(src), "--mode", "int8-static", "--calibrate", "0", "--out",
                 str(tmp_path / "q0"), "--target", "none"]) == 1
    assert "at least one batch" in capsys.readouterr().err
    plain = tmp_path / "plain.axon"
    plain.write_text(MLP)
    assert main(["quantize", str(plain), "--mode", "int8-static", "--min-size", "0", "--out",
                 str(tmp_path / "q1"), "--target", "none"]) == 1
    assert "no train block" in capsys.readouterr().err
