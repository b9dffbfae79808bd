"""The pass manager: named passes, pipelines parsed from text, and a driver that verifies, prints and
times each stage.

A pass is a frozen dataclass whose fields are its options, with a class-level `name`, a one-line
docstring saying why it exists, and `run(graph, stats=None) -> Graph` (it may count what it did into
`stats`). `@register_pass` next to the class makes it known by name.

>>> passes = parse_pipeline("fold{max_elements=16}, dce")
>>> format_pipeline(passes)
'fold{max_elements=16},dce'

Then `PassManager(passes, verify=True, timing=True).run(graph)` runs them, and its `report` says what
each did.
"""
from __future__ import annotations

import dataclasses
import re
import time
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from axon.ir import Graph, PassError, Span, VerifyError, verify
from axon.ir.errors import did_you_mean

DEFAULT_PIPELINE = ",".join([
    "fold",      # evaluate what is already known: constants feed the rules below
    "simplify",  # algebraic identities (x*1, x+0, double transposes, cast chains) expose shared work
    "cse",       # merge what is now identical, commutative operands in one order
    "dce",       # drop what the outputs no longer reach, and parameters nothing uses
])


class Pass(Protocol):
    """What the manager needs of a pass (the registered classes are frozen dataclasses)."""

    name: ClassVar[str]

    def run(self, graph: Graph, stats: Counter | None = None) -> Graph: ...


_REGISTRY: dict[str, type] = {}


def register_pass(cls: type) -> type:
    """Class decorator: make a pass known to `parse_pipeline` under `cls.name`."""
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, f"{cls} is not frozen"
    assert isinstance(cls.__dict__.get("name"), str), f"{cls.__name__} has no class-level `name`"
    assert cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("), f"{cls.name}: say why"
    assert cls.name not in _REGISTRY, f"pass '{cls.name}' registered twice"
    _REGISTRY[cls.name] = cls
    return cls


def registered_passes() -> dict[str, type]:
    """Every known pass by name: the default pipeline's in its order, then the others by name."""
    stages = DEFAULT_PIPELINE.split(",")
    first = [name for name in stages if name in _REGISTRY]
    return {name: _REGISTRY[name] for name in first + sorted(set(_REGISTRY) - set(first))}


# ---------------------------------------------------------------------------------------------------
# Pipeline text: `name` or `name{option=value, ...}`, separated by commas.

_STAGE = re.compile(r"\s*([A-Za-z_][\w-]*)\s*(?:\{([^{}]*)\}\s*)?")  # a name, then {options} maybe
_OPTION = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*([^,=\s](?:[^,=]*[^,=\s])?)\s*$")
_BOOLS = {"true": True, "false": False}


def parse_pipeline(text: str) -> list[Pass]:
    """Pass instances for a pipeline such as `"fold{max_elements=4096},simplify,dce"`.

    Raises `PassError` pointing at an unknown pass (with a did-you-mean hint), an unknown option or a
    value of the wrong type for the option's field.
    """
    passes: list[Pass] = []
    pos = 0
    while text.strip():
        m = _STAGE.match(text, pos)
        if m is None:
            raise PassError("expected a pass name", _span(text, pos, max(len(text.rstrip()), pos + 1)))
        passes.append(_make_pass(text, m))
        pos = m.end()
        if pos == len(text):
            break
        if text[pos] == "{":
            raise PassError("'{' without a matching '}'", _span(text, pos, pos + 1))
        if text[pos] != ",":
            raise PassError(f"expected ',' or the end of the pipeline, got '{text[pos]}'",
                            _span(text, pos, pos + 1))
        pos += 1
    return passes


def _make_pass(text: str, m: re.Match) -> Pass:
    name = m.group(1)
    cls = _REGISTRY.get(name)
    if cls is None:
        raise PassError(f"unknown pass '{name}'", _span(text, m.start(1), m.end(1)),
                        hint=did_you_mean(name, _REGISTRY) or f"known passes: {', '.join(_REGISTRY)}")
    options: dict[str, object] = {}
    if m.group(2) is not None and m.group(2).strip():
        at = m.start(2)
        for item in m.group(2).split(","):
            options.update(_option(text, cls, item, at, options))
            at += len(item) + 1
    return cls(**options)


def _option(text: str, cls: type, item: str, at: int, seen: dict) -> dict[str, object]:
    """One `key=value` of a pass, typed by the pass's dataclass field."""
    where = _span(text, at + len(item) - len(item.lstrip()), at + len(item.rstrip()))
    om = _OPTION.match(item)
    if om is None:
        raise PassError(f"expected option=value in the options of '{cls.name}', got '{item.strip()}'",
                        where)
    key, raw = om.group(1), om.group(2)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    if key not in names:
        hint = did_you_mean(key, names) or (f"'{cls.name}' takes {', '.join(names)}" if names
                                            else f"'{cls.name}' takes no options")
        raise PassError(f"pass '{cls.name}' has no option '{key}'", where, hint=hint)
    if key in seen:
        raise PassError(f"option '{key}' of '{cls.name}' is given twice", where)
    return {key: _typed(raw, hints[key], f"option '{key}' of '{cls.name}'", where)}


def _typed(raw: str, hint, what: str, where: Span):
    if hint is bool:
        if raw not in _BOOLS:
            raise PassError(f"{what} must be true or false, got '{raw}'", where)
        return _BOOLS[raw]
    if hint in (int, float):
        try:
            return hint(raw)
        except ValueError:
            kind = "an integer" if hint is int else "a number"
            raise PassError(f"{what} must be {kind}, got '{raw}'", where) from None
    assert hint is str, f"{what}: pass options are int, float, bool or str, not {hint}"
    return raw


def _span(text: str, start: int, end: int) -> Span:
    return Span("<pipeline>", 1, start + 1, 1, max(end, start + 1) + 1, text)


def format_pass(p: Pass) -> str:
    """A pass as pipeline text; options left at their default are not written."""
    opts = [f"{f.name}={_format_value(getattr(p, f.name))}" for f in dataclasses.fields(p)
            if getattr(p, f.name) != f.default]
    return p.name + ("{" + ",".join(opts) + "}" if opts else "")


def format_pipeline(passes: Iterable[Pass]) -> str:
    """The text `parse_pipeline` reads back into equal passes."""
    return ",".join(format_pass(p) for p in passes)


def _format_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    text = repr(v) if isinstance(v, float) else str(v)
    assert not set(text) & set(",{}="), f"option value {text!r} cannot be written in a pipeline"
    return text


# ---------------------------------------------------------------------------------------------------
# Running


@dataclass(frozen=True)
class PassReport:
    """What one pass did: wall time, node counts before and after, and the pass's own counts."""

    name: str
    seconds: float
    nodes_before: int
    nodes_after: int
    stats: dict[str, int] = field(default_factory=dict)


def format_report(report: Sequence[PassReport]) -> str:
    """The report as a table, one row per pass run."""
    rows = [("pass", "ms", "nodes", "changes")]
    for r in report:
        changes = ", ".join(f"{k}: {v}" for k, v in sorted(r.stats.items())) or "-"
        rows.append((r.name, f"{r.seconds * 1e3:.2f}", f"{r.nodes_before} -> {r.nodes_after}", changes))
    total = sum(r.seconds for r in report)
    rows.append(("total", f"{total * 1e3:.2f}", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}"
                     .rstrip() for row in rows)


class PassManager:
    """Runs passes in order over a graph.

    verify           check the input, then the graph after every pass; a broken graph raises
                     `PassError` naming the pass that broke it (the `VerifyError` chained)
    print_after      pass names after which to print the IR (through `out`)
    print_after_all  print the IR after every pass
    timing           print the report table (per-pass time, node counts, changes) at the end
    stop_after       a pass name: stop after its first run in the pipeline
    out              where printing goes: a callable taking one string (default `print`)

    `report` holds one `PassReport` per pass run (filled whether or not `timing` prints it).
    """

    def __init__(self, pipeline: Sequence[Pass] | str, *, verify: bool = False,
                 print_after: Iterable[str] = (), print_after_all: bool = False, timing: bool = False,
                 stop_after: str | None = None, out: Callable[[str], object] = print):
        self.passes: list[Pass] = parse_pipeline(pipeline) if isinstance(pipeline, str) else list(pipeline)
        self.verify = verify
        self.print_after = frozenset(print_after)
        self.print_after_all = print_after_all
        self.timing = timing
        self.stop_after = stop_after
        self.out = out
        self.report: list[PassReport] = []
        stages = [p.name for p in self.passes]
        for name in sorted(self.print_after) + ([stop_after] if stop_after is not None else []):
            if name not in stages:
                raise PassError(f"unknown stage '{name}': the pipeline is {format_pipeline(self.passes)}",
                                hint=did_you_mean(name, stages))

    def run(self, graph: Graph) -> Graph:
        """The graph after the pipeline (or after `stop_after`)."""
        from axon.ir.text import print_graph

        self.report = []
        if self.verify:
            _verified(graph, "the input graph is malformed (before any pass ran)")
        for p in self.passes:
            stats: Counter = Counter()
            before = len(graph)
            t0 = time.perf_counter()
            graph = p.run(graph, stats)
            seconds = time.perf_counter() - t0
            self.report.append(PassReport(p.name, seconds, before, len(graph), dict(stats)))
            if self.verify:
                _verified(graph, f"pass '{format_pass(p)}' produced an invalid graph")
            if self.print_after_all or p.name in self.print_after:
                self.out(f"# IR after {format_pass(p)}\n{print_graph(graph)}")
            if p.name == self.stop_after:
                break
        if self.timing:
            self.out(format_report(self.report))
        return graph


def _verified(graph: Graph, what: str) -> None:
    try:
        verify(graph)
    except VerifyError as e:
        raise PassError(f"{what}: {e.message}") from e
