"""Calibration runs: the float model over calibration batches, observing the values chosen nodes take
(`runtime/observers.py`), for static int8 quantization's activation ranges.

The graph runs on the reference evaluator (torch ops on the host): calibration is a one-off pass over a
few batches, and the evaluator computes exactly the values the float model defines, with no kernel
compiled for the extended graph (each observed node becomes one more output)."""
from __future__ import annotations

from collections.abc import Iterable

import torch

from axon.ir import Graph, GraphBuilder, Node, evaluate
from .observers import CalibrationError, Observer


def calibrate(graph: Graph, params: dict[str, torch.Tensor], taps: dict[str, list[Node]],
              batches: Iterable[dict[str, torch.Tensor]], method: str = "minmax",
              percentile: float = 99.99) -> dict[str, Observer]:
    """One observer per key of `taps`, fed the values of its nodes (nodes of `graph`) on each batch of
    inputs; raises CalibrationError when no batch came or a value is NaN or infinite."""
    b, mapping = GraphBuilder.extending(graph)
    outputs: dict[str, list[str]] = {}
    for key, nodes in taps.items():
        for node in nodes:
            name = f"calibration_tap_{sum(map(len, outputs.values()))}"
            while b.has_output(name):
                name += "_"
            b.output(name, mapping[node])
            outputs.setdefault(key, []).append(name)
    extended = b.build()
    observers = {key: Observer(method, percentile) for key in taps}
    params = {k: v.detach().cpu() for k, v in params.items() if k in graph.params}
    seen = 0
    for feeds in batches:
        values = evaluate(extended, {k: v.cpu() for k, v in feeds.items()}, params)
        for key, names in outputs.items():
            for name in names:
                try:
                    observers[key].update(values[name])
                except CalibrationError as e:
                    raise CalibrationError(f"'{key}': {e} in calibration batch {seen}") from None
        seen += 1
    if not seen:
        raise CalibrationError("no calibration batch: the data set's training split is empty")
    return observers
