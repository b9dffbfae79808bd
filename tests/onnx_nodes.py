"""ONNX's backend node tests (generated in-process by the `onnx` wheel: each a one-op model with inputs
and expected outputs) run through Axon: imported, compiled to kernels, compared with the case's own
tolerances. `python tests/onnx_nodes.py` prints the counts per op and every failure with its reason.

Which cases count (the claim): models of opset 13 onwards whose every node is an op type Axon imports
(`frontend/onnx_import.ONNX`) and whose tensors all have Axon dtypes. Integer inputs that an op needs
as static values (Reshape's shape, Slice's bounds, reduction axes) are fed as constants from the case's
data, as a deployed model holds them in initializers.
"""
from __future__ import annotations

import collections
import re
import sys
import warnings

import numpy as np
import torch

AXON_ELEM = {1, 2, 3, 6, 7, 9, 10, 11, 16}  # the ONNX element types with an Axon dtype
STATIC = re.compile(r"needs '([^']+)' to be a constant")


def cases():
    import onnx.backend.test.case.node as node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return node.collect_testcases(None)


def _elems(model):
    g = model.graph
    for vi in list(g.input) + list(g.output) + list(g.value_info):
        t = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
        if t is None:
            yield None
        else:
            yield t.elem_type


def claimed(case) -> bool:
    from axon.frontend.onnx_import import MIN_OPSET, ONNX

    m = case.model
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    ops_known = all(n.op_type in ONNX and n.domain in ("", "ai.onnx") for n in m.graph.node)
    dtypes_known = all(e in AXON_ELEM for e in _elems(m))
    return opset >= MIN_OPSET and ops_known and dtypes_known and bool(case.data_sets)


def array(v) -> np.ndarray:
    if isinstance(v, (np.ndarray, np.generic)):
        return np.asarray(v)
    import onnx.numpy_helper as nh

    return nh.to_array(v)


def tensor(a: np.ndarray) -> torch.Tensor:
    if a.dtype.name == "bfloat16":  # ml_dtypes' bfloat16: by its bits
        bits = np.ascontiguousarray(a).view(np.uint16).astype(np.int32)
        return torch.from_numpy(bits).to(torch.int16).view(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True))  # (0-d arrays stay 0-d)


def run(case, kernels: bool = True) -> tuple[bool, str]:
    """(passed, why not) for one case, through the generated kernels (or the reference evaluator)."""
    import axon
    from axon.frontend.onnx_import import OnnxError, import_onnx
    from axon.ir import AxonError, evaluate

    ins, outs = case.data_sets[0]
    inits = {x.name for x in case.model.graph.initializer}
    names = [i.name for i in case.model.graph.input if i.name not in inits]
    data = dict(zip(names, (array(v) for v in ins)))
    static: dict[str, np.ndarray] = {}
    for _ in range(len(names) + 1):
        try:
            imp = import_onnx(case.model, case.name, static=static)
            break
        except OnnxError as e:
            m = STATIC.search(str(e))
            if not m or m.group(1) in static:
                return False, str(e).split("error: ", 1)[-1]
            if m.group(1) in data:
                static[m.group(1)] = data[m.group(1)]
            else:  # computed from inputs: the integer ones (shapes, axes, sizes) fixed, once
                ints = {k: v for k, v in data.items() if v.dtype.kind in "iu" and k not in static}
                if not ints:
                    return False, str(e).split("error: ", 1)[-1]
                static.update(ints)
    g = imp.graph
    feeds = {}
    for onnx_name, name in imp.inputs.items():
        feeds[name] = tensor(data[onnx_name])
    try:
        if kernels:
            model = axon.compile(g, device="cpu")
            model.params = dict(imp.params)
            got = model.run(feeds)
        else:
            got = evaluate(g, feeds, imp.params)
    except (AxonError, RuntimeError, ValueError) as e:
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    for (name, out), want in zip(got.items(), outs):
        want = array(want)
        out = out.detach().cpu()
        out = out.numpy() if out.dtype != torch.bfloat16 else out.float().numpy()
        if want.dtype.name == "bfloat16":
            want = want.astype(np.float32)
        if out.shape != want.shape:
            return False, f"output '{name}': shape {out.shape}, expected {want.shape}"
        try:
            if want.dtype == bool or out.dtype == bool:
                np.testing.assert_array_equal(out, want)
            else:
                np.testing.assert_allclose(out.astype(np.float64), want.astype(np.float64), rtol=case.rtol,
                                           atol=case.atol)
        except AssertionError as e:
            return False, f"output '{name}' differs: {str(e).strip().splitlines()[-1][:160]}"
    return True, ""


def report(kernels: bool = True) -> tuple[collections.Counter, list[tuple[str, str]], dict]:
    per_op: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    counts, failures = collections.Counter(), []
    for case in cases():
        if not claimed(case):
            continue
        ok, why = run(case, kernels)
        op = case.model.graph.node[0].op_type if len(case.model.graph.node) == 1 else "(expanded functions)"
        per_op[op][0 if ok else 1] += 1
        counts["pass" if ok else "fail"] += 1
        if not ok:
            failures.append((case.name, why))
    return counts, failures, dict(per_op)


if __name__ == "__main__":
    import os

    os.environ.setdefault("TRITON_INTERPRET", "1")
    counts, failures, per_op = report(kernels="--evaluator" not in sys.argv)
    for op, (ok, bad) in sorted(per_op.items()):
        print(f"{op:24s} {ok:4d} pass {bad:4d} fail")
    total = counts["pass"] + counts["fail"]
    print(f"\n{counts['pass']} of {total} claimed node tests pass ({counts['pass'] / max(total, 1):.1%})")
    for name, why in failures:
        print(f"  {name}: {why}")
