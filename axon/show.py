"""`axon show`: a model at any stage — the AST, the IR after any pass, the fused kernel groups (and every
fusion refused), the Triton source of each kernel, the memory plan, the activations a gradient saves —
and the parameter table and Graphviz form."""
from __future__ import annotations

import math

from axon.args import dim, load, override


def show(args) -> int:
    from axon.driver import load_ast, optimize
    from axon.passes.manager import DEFAULT_PIPELINE

    if args.stage == "triton":
        return _show_triton(args)
    if args.memory:
        return _show_memory(args)
    if args.saved:
        return _show_saved(args)
    if args.stage == "fused" or args.why_not:
        return _show_fused(args)
    if args.stage == "ast":
        from axon.frontend.ast import dump

        print(dump(load_ast(args.file)))
        return 0
    g = load(args)
    if args.stage != "ir":
        g, _report = optimize(g, args.pipeline or DEFAULT_PIPELINE, verify=True, stop_after=args.stage,
                              print_after_all=args.print_after_all, timing=args.time, out=print)
    if args.params:
        print(format_params(g))
    else:
        print(to_dot(g) if args.dot else str(g))
    return 0


def _show_saved(args) -> int:
    from axon.passes.partition import partition

    g = load(args)
    wrt = [n for n, node in [*g.params.items(), *g.inputs.items()] if node.dtype.is_float]
    p = partition(g, wrt)
    print(f"{g.name}: gradients of {', '.join(p.outputs) or 'no output'} with respect to {len(wrt)} "
          f"parameter(s)/input(s)")
    print(p.summary())
    return 0


def _show_triton(args) -> int:
    from axon.codegen import compile_group
    from axon.driver import kernel_groups, optimize
    from axon.passes.manager import DEFAULT_PIPELINE
    from axon.runtime import choose

    choose(getattr(args, "device", None))  # the target decides interpreter or compiler
    g, _ = optimize(load(args), args.pipeline or DEFAULT_PIPELINE, out=lambda *a, **k: None)
    for i, group in enumerate(kernel_groups(g, fusion=not args.no_fusion)):
        kernel = compile_group(group)
        print(f"# ---- kernel {i} ({group.kind}): {kernel.path}")
        print(kernel.source)
    return 0


def shown_graph(args):
    """The graph `show --memory`/`--stage fused` look at: the optimized model, or with --step the whole
    training step; and the sizes given for its symbolic dimensions."""
    from axon.driver import optimize
    from axon.passes.manager import DEFAULT_PIPELINE
    from axon.run import symbols

    dims = dict(dim(s) for s in args.dim)
    if args.step:
        from axon.driver import load_ast
        from axon.frontend import training_graph
        from axon.trainer import step_graph

        hparams = dict(override(s) for s in args.set)
        loss_graph, spec = training_graph(load_ast(args.file), args.model, hparams=hparams or None)
        g = step_graph(loss_graph, {"name": spec.optimizer.name, **dict(spec.optimizer.kwargs)},
                       getattr(args, "precision", None) or "f32")
        if args.batch is None and spec.batch and "batch" in symbols(g):
            dims["batch"] = spec.batch
    else:
        pipeline = args.pipeline or DEFAULT_PIPELINE
        if getattr(args, "precision", None):
            pipeline = f"autocast{{to={args.precision}}},{pipeline}"
        g, _ = optimize(load(args), pipeline, out=lambda *a, **k: None)
    if args.batch is not None:
        dims["batch"] = args.batch
    return g, dims


def _show_memory(args) -> int:
    from axon.driver import executable
    from axon.run import bind_dims
    from axon.runtime.memory import format_plan

    g, dims = shown_graph(args)
    env = bind_dims(g, dims)
    exe = executable(g, fusion=not args.no_fusion)
    print(format_plan(exe.memory_plan(env), g, env, [k.group for k in exe.kernels]))
    return 0


def _show_fused(args) -> int:
    from axon.passes.fusion import fuse

    g, _ = shown_graph(args)
    if args.no_fusion:
        print("fusion is off (--no-fusion): one kernel per computed node")
        return 0
    print(g)
    print(fuse(g).report(why_not=args.why_not))
    return 0


def format_params(graph) -> str:
    """One line per parameter (name, type, element count, initializer), then the total."""
    rows = [(name, str(n.type), math.prod(n.shape), str(n.attrs.init)) for name, n in graph.params.items()]
    widths = [max((len(str(r[i])) for r in rows), default=0) for i in range(3)]
    lines = [f"{name:<{widths[0]}}  {t:<{widths[1]}}  {count:>{widths[2]},}  {init}"
             for name, t, count, init in rows]
    lines.append(f"{len(rows)} parameters, {sum(r[2] for r in rows):,} values")
    return "\n".join(lines)


def to_dot(graph) -> str:
    """Graphviz DOT of the graph, from its networkx form (no pydot/pygraphviz needed)."""
    g = graph.to_networkx()
    name = graph.name.replace("\\", "\\\\").replace('"', '\\"')
    lines = [f'digraph "{name}" {{', "  node [shape=box, fontname=monospace];"]
    for i, data in g.nodes(data=True):
        label = f"{data['label']}\\n{data['type']}".replace('"', '\\"')
        lines.append(f'  n{i} [label="{label}"];')
    for a, b in g.edges():
        lines.append(f"  n{a} -> n{b};")
    lines.append("}")
    return "\n".join(lines)
