"""Exactness against PyTorch's own op database: every OpInfo of `op_db` that maps onto an Axon primitive
(the translations are in `opinfo_map.py`), at f64/f32/f16/bf16 and the integer and bool dtypes the op
takes, through the reference evaluator and the generated kernels, forward and gradients (`opinfo_run.py`).

Every sample either passes or matches one line of RULES below, which says why:
- skip: Axon cannot express the sample (a kwarg it has no equivalent of, a complex scalar, ...);
- refuse: Axon refuses it on purpose, and the error must name the op and an operand's shape;
- xfail: a known difference (of dtype); the sample must fail, so the table cannot go stale;
- undefined: torch's result is undefined at some elements (float -> int out of range); the rest are
  compared;
- ref64: torch's own result at that dtype is wrong; compared with torch in float64 instead;
- no_grad: a gradient convention torch has and Axon does not (a tie, a NaN); the forward is checked.

The suite runs the smallest samples of each op and dtype (CAP); `-m slow` runs every sample. The
per-op counts (pass, then each rule's reason with its count) are printed by

    python tests/test_opinfo.py            # the samples the suite runs (about a minute)
    python tests/test_opinfo.py --all      # every sample (about 40 minutes through the interpreter)
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # when run as a script

from opinfo_map import MAP  # noqa: E402
from opinfo_run import (NO_GRAD, REF64, REFUSE, SKIP, UNDEFINED, XFAIL, Counts, Rule, opinfos,  # noqa: E402
                        run_sample, samples)

FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
INTS = (torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool)
CAP = 2  # samples per op and dtype in the suite: the smallest of the sample and of the reference inputs
INT_POW = frozenset({torch.int64, torch.int32, torch.int8, torch.uint8})
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
BIG = 100_000  # elements in a sample's tensors beyond which the interpreter is too slow


def _numel(s) -> int:
    return sum(t.numel() for t in _tensors(s))


def _tensors(s) -> list[torch.Tensor]:
    out, todo = [], [s.input, *s.args, *s.kwargs.values()]
    while todo:
        v = todo.pop()
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, (list, tuple)):
            todo.extend(v)
    return out


def _tie_or_nan(s) -> bool:
    """The two operands of a binary op are equal (no derivative) or unordered (NaN) somewhere."""
    a, b = s.input, s.args[0]
    return bool(((a == b) | (a != a) | (b != b)).any())


def _out_of_range(dtype: torch.dtype):
    """The elements of a float input that `dtype` cannot hold: NaN, infinities, beyond its range."""
    info = torch.iinfo(dtype)

    def where(s) -> torch.Tensor:
        x = s.input.double().trunc()
        return ~x.isfinite() | (x < info.min) | (x >= info.max + 1)
    return where


def _getitem_advanced(s) -> bool:
    """Several index lists (NumPy's zipped advanced indexing), or a tensor or bool index."""
    index = s.args[0] if isinstance(s.args[0], tuple) else (s.args[0],)
    lists = [i for i in index if isinstance(i, (list, torch.Tensor))]
    return len(lists) > 1 or any(isinstance(i, torch.Tensor) or isinstance(i, bool) for i in index)


RULES = [
    # --- too slow to run here --------------------------------------------------------------------
    Rule(tuple(MAP), SKIP, f"more than {BIG:,} elements through Triton's interpreter (minutes a sample; "
         f"the same kernels run on the smaller samples)", when=lambda s: INTERPRETED and _numel(s) > BIG),
    # --- what Axon cannot express ------------------------------------------------------------------
    Rule(("add", "sub", "rsub"), SKIP, "alpha= (Axon's add and sub have no scale factor)",
         when=lambda s: "alpha" in s.kwargs),
    Rule(("where",), SKIP, "a complex scalar (Axon has no complex dtypes)",
         when=lambda s: any(isinstance(a, complex) for a in (s.input, *s.args))),
    Rule(("narrow",), SKIP, "a tensor start (Axon slices at bounds known when the graph is built)",
         when=lambda s: isinstance(s.args[1], torch.Tensor)),
    Rule(("__getitem__",), SKIP, "advanced indexing with several index lists or a tensor (Axon's take "
         "indexes one axis)", when=_getitem_advanced),
    Rule(("cat",), SKIP, "torch's legacy rule that skips 1-D empty tensors of another rank",
         when=lambda s: any(t.shape == (0,) for t in s.input) and any(t.dim() != 1 for t in s.input)),
    Rule(("__rsub__",), SKIP, "a Python number as self: Tensor.__rsub__ gives NotImplemented, no value",
         when=lambda s: not isinstance(s.input, torch.Tensor)),
    Rule(("nn.functional.embedding",), SKIP, "max_norm= (renormalizes the weight in place)",
         when=lambda s: s.kwargs.get("max_norm") is not None),
    # --- refused on purpose ------------------------------------------------------------------------
    Rule(("add", "__radd__", "mul", "__rmul__", "maximum", "minimum", "max.binary", "min.binary",
          "clamp_min", "clamp_max", "sign", "sgn"), REFUSE, "arithmetic on bool (torch: + and max are "
         "or, * and min are and); Axon asks for an explicit cast", dtypes=frozenset({torch.bool})),
    Rule(("amax", "amin", "max.reduction_no_dim", "min.reduction_no_dim", "max.reduction_with_dim",
          "min.reduction_with_dim"), REFUSE, "max/min of bool (torch: any/all); Axon asks for a cast",
         dtypes=frozenset({torch.bool})),
    Rule(("gather",), REFUSE, "an index of another rank than the source (torch lets an empty one by)",
         when=lambda s: s.args[1].dim() != s.input.dim() and s.input.dim() > 0),
    Rule(("nn.functional.pad.constant",), REFUSE, "a pad value the dtype cannot hold (2.0 for bool; "
         "torch casts it)", dtypes=frozenset({torch.bool}),
         when=lambda s: len(s.args) > 2 and s.args[2] not in (0, 1)),
    # --- known differences: of dtype (xfail), at elements torch leaves undefined (the rest compared) --
    Rule(("pow", "__rpow__"), XFAIL, "integer pow: Axon's pow is floating-point (the builder computes "
         "integers in f32, torch stays in the integers)", dtypes=INT_POW),
    Rule(("nn.functional.conv2d",), XFAIL, "integer conv2d: Axon's conv2d is floating-point (integers "
         "computed in f32)", dtypes=frozenset({torch.int64})),
    *[Rule((op,), UNDEFINED, f"float -> {str(d)[6:]} of NaN, an infinity or a value out of range: "
           "undefined (C; torch's docs), torch wraps or gives the type's minimum, Axon saturates and "
           "maps NaN to 0 (EvalContext.cast)", dtypes=FLOATS, where=_out_of_range(d))
      for op, d in [("long", torch.int64), ("int", torch.int32), ("char", torch.int8),
                    ("byte", torch.uint8)]],
    # --- torch's own result is wrong: compared with torch in float64 instead --------------------
    Rule(("nn.functional.conv2d",), REF64, "torch's CPU float16 conv2d with dilation returns garbage in "
         "some outputs, different on each call (torch 2.13)", dtypes=frozenset({torch.float16}),
         when=lambda s: s.kwargs.get("dilation", 1) not in (1, (1, 1))),
    # --- gradient conventions Axon does not have (forward still checked) ---------------------------
    Rule(("clamp_min", "clamp_max"), NO_GRAD, "a tie or a NaN between input and bound: torch's clamp "
         "gives a tie's gradient to the input and a NaN's to neither; Axon's maximum/minimum follow "
         "torch.maximum (a tie split half and half, a NaN passing it to both)", dtypes=FLOATS,
         when=_tie_or_nan),
    Rule(("nn.functional.embedding",), NO_GRAD, "padding_idx=, scale_grad_by_freq= or sparse= (they "
         "change only the gradient; Axon's take has no such options)",
         when=lambda s: any(s.kwargs.get(k) not in (None, False) for k in
                            ("padding_idx", "scale_grad_by_freq", "sparse"))),
]

OPINFOS = opinfos()
CASES = [(op, dtype) for op, info in OPINFOS.items() for dtype in FLOATS + INTS if dtype in info.dtypes]


def run(op: str, dtype: torch.dtype, cap: int | None, counts: Counts) -> list[str]:
    """Every chosen sample of `op` at `dtype` (counted in `counts`); the failures, described."""
    gen = torch.Generator().manual_seed(0)
    failures = []
    for k, sample in enumerate(samples(OPINFOS[op], dtype, cap)):
        outcome = run_sample(op, OPINFOS[op], dtype, sample, RULES, gen)
        counts.add(op, outcome)
        if outcome.status == "fail":
            shapes = ", ".join(str(tuple(t.shape)) for t in _tensors(sample)) or "no tensors"
            failures.append(f"{op} at {str(dtype)[6:]}, sample {k} ({shapes}): {outcome.reason}")
    return failures


@pytest.mark.parametrize("op,dtype", CASES, ids=[f"{op}-{str(d)[6:]}" for op, d in CASES])
def test_opinfo(op, dtype):
    failures = run(op, dtype, CAP, Counts())
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("op", sorted(OPINFOS))
def test_opinfo_every_sample(op):
    failures = [f for dtype in FLOATS + INTS if dtype in OPINFOS[op].dtypes
                for f in run(op, dtype, None, Counts())]
    assert not failures, "\n".join(failures)


def main(argv: list[str]) -> int:
    """Print per-op counts (pass; skip, refuse, xfail by reason; failures) and the totals."""
    counts, failures = Counts(), []
    for op, dtype in CASES:
        failures += run(op, dtype, None if "--all" in argv else CAP, counts)
    print(counts.table())
    print("\n".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
