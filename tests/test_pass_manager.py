"""The pass manager: pipeline text (parsing, errors, round trip), verify-after-each naming the pass that
broke the graph, printing after passes, the timing report, and stopping after a stage."""
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import pytest

from axon.ir import DType, Graph, Node, PassError, TensorType, VerifyError
from axon.ir.ops import NoAttrs, OpKind
from axon.ir.text import parse_graph, print_graph
from axon.passes import (DEFAULT_PIPELINE, PassManager, format_pipeline, format_report, parse_pipeline,
                         registered_passes)
from axon.passes.fold import Fold
from axon.passes.simplify import Simplify
from passcheck import ir

GRAPH = ir("""
    graph g {
      input %x: f32[3]
      param %w: f32[3]
      %0 = const(value=1.0) : f32[]
      %1 = const(value=2.0) : f32[]
      %2 = sub(%1, %0) : f32[]
      %3 = mul(%x, %2) : f32[3]
      %4 = exp(%3) : f32[3]
      output %y = %3
    }""")
OPTIMIZED = ir("""
    graph g {
      input %x: f32[3]
      output %y = %x
    }""")


# --- pipeline text ---------------------------------------------------------------------------------


def test_default_pipeline_names_the_clean_up_passes():
    assert [p.name for p in parse_pipeline(DEFAULT_PIPELINE)] == ["fold", "simplify", "cse", "dce"]
    assert set(registered_passes()) >= {"fold", "simplify", "cse", "dce"}
    for cls in registered_passes().values():
        assert cls.__doc__.strip() and "\n" not in cls.__doc__.strip()  # one line of "why"


def test_options_are_typed_by_the_pass_fields_and_whitespace_is_tolerated():
    passes = parse_pipeline("  fold { max_elements = 16 } ,simplify{signed_zeros=true},  cse,dce ")
    assert passes == [Fold(max_elements=16), Simplify(signed_zeros=True), *parse_pipeline("cse,dce")]
    assert parse_pipeline("") == [] and parse_pipeline("fold{}") == [Fold()]


@pytest.mark.parametrize("text", [
    "fold,simplify,cse,dce", "fold{max_elements=16},dce", "simplify{signed_zeros=true},fold", "dce,dce", "",
])
def test_pipeline_text_round_trips(text):
    passes = parse_pipeline(text)
    assert format_pipeline(passes) == text
    assert parse_pipeline(format_pipeline(passes)) == passes


def test_default_options_are_not_written():
    assert format_pipeline(parse_pipeline("fold{max_elements=4096}, simplify{signed_zeros=false}")) == \
        "fold,simplify"


@pytest.mark.parametrize("text, message, hint", [
    ("fold,simplfy", "unknown pass 'simplfy'", "did you mean 'simplify'?"),
    ("fold{max_element=3}", "pass 'fold' has no option 'max_element'", "did you mean 'max_elements'?"),
    ("dce{x=1}", "pass 'dce' has no option 'x'", "'dce' takes no options"),
    ("fold{max_elements=many}", "option 'max_elements' of 'fold' must be an integer, got 'many'", None),
    ("fold{max_elements=1.5}", "must be an integer, got '1.5'", None),
    ("simplify{signed_zeros=yes}", "option 'signed_zeros' of 'simplify' must be true or false", None),
    ("fold{max_elements=1,max_elements=2}", "option 'max_elements' of 'fold' is given twice", None),
    ("fold{max_elements}", "expected option=value in the options of 'fold'", None),
    ("fold,", "expected a pass name", None),
    ("fold,,dce", "expected a pass name", None),
    ("fold{max_elements=1", "'{' without a matching '}'", None),
    ("fold;dce", "expected ',' or the end of the pipeline, got ';'", None),
    ("fold{max_elements=1}x", "expected ',' or the end of the pipeline, got 'x'", None),
])
def test_bad_pipelines_name_what_is_wrong(text, message, hint):
    with pytest.raises(PassError) as info:
        parse_pipeline(text)
    err = info.value
    assert message in err.message
    assert err.hint == hint if hint is None else hint in err.hint
    assert err.span is not None and err.span.source_line == text and "^" in str(err)


def test_error_caret_points_at_the_unknown_pass():
    with pytest.raises(PassError) as info:
        parse_pipeline("fold, simplfy")
    assert str(info.value).splitlines()[1:3] == ["    fold, simplfy", "          ^^^^^^^"]


# --- running ----------------------------------------------------------------------------------------


def test_run_reports_each_pass():
    pm = PassManager(DEFAULT_PIPELINE, verify=True)
    out = pm.run(parse_graph(GRAPH))
    assert print_graph(out) == OPTIMIZED
    assert [(r.name, r.nodes_before, r.nodes_after) for r in pm.report] == [
        ("fold", 7, 5), ("simplify", 5, 3), ("cse", 3, 3), ("dce", 3, 1)]
    assert pm.report[0].stats == {"folded to const": 1}
    assert pm.report[1].stats == {"mul_one": 1}
    assert pm.report[3].stats == {"dropped param": 1, "dropped dead node": 1}  # simplify left them
    assert all(r.seconds >= 0 for r in pm.report)


def test_timing_prints_a_table():
    lines = []
    PassManager(DEFAULT_PIPELINE, timing=True, out=lines.append).run(parse_graph(GRAPH))
    (table,) = lines
    rows = table.splitlines()
    assert rows[0].split() == ["pass", "ms", "nodes", "changes"]
    assert [r.split()[0] for r in rows[1:]] == ["fold", "simplify", "cse", "dce", "total"]
    assert "7 -> 5" in rows[1] and "mul_one: 1" in rows[2] and "dropped param: 1" in rows[4]
    assert format_report([]).splitlines()[-1].split() == ["total", "0.00"]


def test_print_after_named_passes_and_after_all():
    lines = []
    PassManager("fold,simplify,dce", print_after=["simplify"], out=lines.append).run(parse_graph(GRAPH))
    assert len(lines) == 1 and lines[0].startswith("# IR after simplify\ngraph g {")
    assert print_graph(parse_graph(lines[0])) == ir("""
        graph g {
          input %x: f32[3]
          param %w: f32[3]
          %0 = exp(%x) : f32[3]
          output %y = %x
        }""")  # the printout is IR text: it parses back (the header is a comment)
    lines.clear()
    PassManager("fold{max_elements=8},dce", print_after_all=True, out=lines.append).run(parse_graph(GRAPH))
    assert [s.splitlines()[0] for s in lines] == ["# IR after fold{max_elements=8}", "# IR after dce"]


def test_stop_after_a_stage():
    pm = PassManager(DEFAULT_PIPELINE, stop_after="simplify")
    out = pm.run(parse_graph(GRAPH))
    assert [r.name for r in pm.report] == ["fold", "simplify"]
    assert "param %w" in print_graph(out)  # dce did not run


@pytest.mark.parametrize("kwargs, name", [({"stop_after": "simplfy"}, "simplfy"),
                                          ({"print_after": ["cse", "verify"]}, "verify")])
def test_unknown_stage_is_an_error(kwargs, name):
    with pytest.raises(PassError, match=f"unknown stage '{name}'"):
        PassManager("fold,simplify,cse", **kwargs)


# --- verify after each pass ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetypeLast:
    """Test only: gives the last computed node a wrong dtype, as a buggy pass might."""

    name: ClassVar[str] = "retype"

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph:
        old = graph.nodes[-1]
        bad = Node(old.op, old.inputs, old.attrs, TensorType(DType.F64, old.shape))
        outputs = {k: bad if v is old else v for k, v in graph.outputs.items()}
        return Graph(graph.nodes[:-1] + (bad,), outputs, graph.name)


def test_verify_names_the_pass_that_broke_the_graph():
    g = parse_graph(GRAPH)
    passes = [*parse_pipeline("fold"), RetypeLast(), *parse_pipeline("dce")]
    with pytest.raises(PassError) as info:
        PassManager(passes, verify=True).run(g)
    assert "pass 'retype' produced an invalid graph" in info.value.message
    assert "exp is typed f64[3] but its operands give f32[3]" in info.value.message
    assert isinstance(info.value.__cause__, VerifyError)
    PassManager(passes, verify=False).run(g)  # unverified, the broken graph goes through unnoticed


def test_verify_checks_the_input_before_blaming_a_pass():
    g = RetypeLast().run(parse_graph(GRAPH))
    with pytest.raises(PassError, match=r"the input graph is malformed \(before any pass ran\)"):
        PassManager("dce", verify=True).run(g)


def test_a_pass_never_sees_a_wrong_node_type_unnoticed():
    x = parse_graph(GRAPH).inputs["x"]
    bad = Node(OpKind.NEG, (x,), NoAttrs(), TensorType(DType.I32, x.shape))
    with pytest.raises(PassError, match="neg is typed i32"):
        PassManager("cse", verify=True).run(Graph([x, bad], {"y": bad}))
