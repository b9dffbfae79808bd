"""The ledger of `axon prune`: per layer what pruning kept, what it costs in multiply-adds and block
products, which kernel runs it; validation before and after (printed, and written as ledger.json)."""
from __future__ import annotations

import math

import torch

from axon.ir import Graph, OpKind
from axon.ir.shapes import concrete
from axon.runtime.pruning import Pruner

K = OpKind
TILE = 32  # the weight tile a block-sparse matmul would skip (BLOCK_K x BLOCK_N)


def structured_record(setup, graph, small, params, sparams, cands, structure, settings, origin, before,
                      after) -> dict:
    from axon.passes.quantize import weight_uses

    env = setup.sizes(graph)
    old, new = weight_uses(graph), weight_uses(small)
    layers = []
    for c in cands:
        row = {"layer": c.name, "seed": c.label, "pruned": c.group is not None, "reason": c.reason}
        if c.group is not None:
            keep = structure["keep"][c.label]
            names = sorted(c.group.params())
            row.update(channels=c.group.channels, kept=len(keep), weights=names,
                       params_before=sum(params[n].numel() for n in names),
                       params_after=sum(sparams[n].numel() for n in names))
        layers.append(row)
    weights = []
    for name, u in old.items():
        if not u.sites:
            continue
        small_env = setup.sizes(small)
        weights.append({"weight": name, "shape_before": list(params[name].shape),
                        "shape_after": list(sparams[name].shape),
                        "macs_before": sum(_macs(s, env) for s in u.sites),
                        "macs_after": sum(_macs(s, small_env) for s in new[name].sites)})
    return {"model": graph.name, "file": setup.file, "weights": origin, "settings": settings,
            "batch": setup.batch, "layers": layers, "weight_shapes": weights,
            "params": {"before": sum(p.numel() for p in params.values()),
                       "after": sum(p.numel() for p in sparams.values())},
            "macs": {"before": sum(w["macs_before"] for w in weights),
                     "after": sum(w["macs_after"] for w in weights)},
            "validation": _validation(setup, before, after)}


def format_structured(record: dict) -> str:
    s = record["settings"]
    lines = [f"{record['model']} pruned: structured, {s['granularity']}s, amount {s['amount']}, "
             f"L{s['norm']:g} norm (weights: {record['weights']}); MACs at batch {record['batch']}"]
    rows = [("layer", "kept", "its weights' parameters", "or why not pruned")]
    for r in record["layers"]:
        if r["pruned"]:
            rows.append((r["layer"], f"{r['kept']} of {r['channels']}",
                         f"{r['params_before']:,} -> {r['params_after']:,}", ", ".join(r["weights"])))
        else:
            rows.append((r["layer"], "-", "-", r["reason"]))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += ["  ".join(f"{c:<{w}}" for c, w in zip(row[:3], widths)) + "  " + row[3] for row in rows]
    rows = [("weight", "shape before -> after", "MACs per batch before -> after")]
    for w in record["weight_shapes"]:
        rows.append((w["weight"], f"{'x'.join(map(str, w['shape_before']))} -> "
                                  f"{'x'.join(map(str, w['shape_after']))}",
                     f"{w['macs_before']:,} -> {w['macs_after']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines += ["  ".join(f"{c:<{w}}" for c, w in zip(row[:2], widths)) + "  " + row[2] for row in rows]
    p, m = record["params"], record["macs"]
    lines.append(f"parameters {p['before']:,} -> {p['after']:,} ({p['after'] / p['before']:.1%}); "
                 f"matmul/conv multiply-adds {m['before']:,} -> {m['after']:,} "
                 f"({m['after'] / max(m['before'], 1):.1%})")
    lines.append(_validation_line(record["validation"]))
    return "\n".join(line.rstrip() for line in lines)


def ledger_record(setup, graph: Graph, params, masks, pruner: Pruner, settings, origin, before,
                  after, sparse=None) -> dict:
    from axon.passes.masks import prunable
    from axon.passes.quantize import weight_uses

    env = setup.sizes(graph)
    uses = weight_uses(graph)
    why = prunable(graph, tuple(settings["skip"]))
    rows = []
    for name, reason in why.items():
        w = params[name]
        macs = sum(_macs(site, env) for site in uses[name].sites)
        nonzero = int((w != 0).sum())
        tiles, empty = _tiles(w, uses[name].sites[0].op if uses[name].sites else None)
        rows.append({
            "layer": name, "op": uses[name].sites[0].op.value if uses[name].sites else "-",
            "shape": list(w.shape), "params": w.numel(), "nonzero": nonzero,
            "sparsity": 1 - nonzero / w.numel() if w.numel() else 0.0,
            "bytes_before": w.numel() * w.element_size(), "bytes_after": w.numel() * w.element_size(),
            "macs": macs, "macs_nonzero": round(macs * nonzero / w.numel()) if w.numel() else 0,
            "tiles": tiles, "tiles_empty": empty,
            "runs": _runs(name, uses[name], reason, empty, tiles, sparse),
            "pruned": reason is None and name in masks, "reason": reason or (
                None if name in masks else f"not a [K, N] matmul weight ({settings.get('granularity')} "
                                           f"pruning)")})
        if sparse and name in sparse["tiles"]:
            rows[-1].update(tile_products=sparse["tiles"][name],
                            dense_tile_products=sparse["dense_tiles"][name],
                            blocks_kept=sparse["blocks"][name][0], blocks=sparse["blocks"][name][1])
    listed = [r for r in rows if r["pruned"]]
    total = sum(r["params"] for r in listed)
    record = {"model": graph.name, "file": setup.file, "weights": origin, "settings": settings,
              "schedule": pruner.record(), "batch": setup.batch, "layers": rows,
              "pruned": {"params": total, "nonzero": sum(r["nonzero"] for r in listed),
                         "macs": sum(r["macs"] for r in listed),
                         "macs_nonzero": sum(r["macs_nonzero"] for r in listed)},
              "validation": _validation(setup, before, after)}
    return record


def _runs(name, use, reason, empty, tiles, sparse) -> str:
    op = use.sites[0].op.value if use.sites else "op"
    if sparse and name in sparse["tiles"]:
        kept, total = sparse["blocks"][name]
        b = sparse["block"]
        return (f"block-sparse matmul ({b}x{b} blocks, {kept} of {total} kept): {sparse['tiles'][name]:,} "
                f"block products executed over the validation set, {sparse['dense_tiles'][name]:,} with "
                f"every block (both counted by the kernels)")
    if reason is not None:
        return f"dense {op}"
    return (f"dense {op}: the zeros are multiplied ({empty} of {tiles} {TILE}x{TILE} weight tiles all zero; "
            f"block pruning lets a kernel skip them)")


def _macs(site, env) -> int:
    """Multiply-adds of one matmul or conv2d node at the measured sizes."""
    out = math.prod(concrete(site.shape, env))
    if site.op == K.MATMUL:
        return out * concrete(site.inputs[0].shape, env)[-1]
    return out * math.prod(concrete(site.inputs[1].shape, env)[1:])  # conv2d: C_in/groups * kh * kw


def _tiles(w: torch.Tensor, op) -> tuple[int, int]:
    """The TILE x TILE tiles of the weight as the kernel reads it (a matmul's [K, N]; a conv's
    [C_out, C_in*kh*kw]) and how many are all zero."""
    m = w.reshape(w.shape[0], -1) if op == K.CONV2D else w.reshape(-1, w.shape[-1])
    rows, cols = -(-m.shape[0] // TILE), -(-m.shape[1] // TILE)
    padded = torch.zeros(rows * TILE, cols * TILE, dtype=torch.bool)
    padded[:m.shape[0], :m.shape[1]] = m != 0
    nonzero = padded.view(rows, TILE, cols, TILE).any(dim=3).any(dim=1)
    return rows * cols, int((~nonzero).sum())


def _validation(setup, before, after) -> dict:
    from axon import data as datasets

    v = {"examples": datasets.num_examples(setup.validation), "before": before, "after": after,
         "loss_increase": after["loss"] - before["loss"]}
    if "acc" in before:
        v["acc_change"] = after["acc"] - before["acc"]
    return v


def format_table(record: dict) -> str:
    head = ("layer", "op", "weight", "nonzero / params", "MACs per batch: all -> nonzero",
            "runs / why not pruned")
    rows = [head]
    for r in record["layers"]:
        rows.append((r["layer"], r["op"], "x".join(map(str, r["shape"])),
                     f"{r['nonzero']:,} / {r['params']:,} ({r['sparsity']:.1%} zero)",
                     f"{r['macs']:,} -> {r['macs_nonzero']:,}",
                     r["runs"] if r["pruned"] else f"dense: {r['reason']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head) - 1)]
    lines = ["  ".join(f"{c:<{w}}" for c, w in zip(row[:-1], widths)) + "  " + row[-1] for row in rows]
    s = record["settings"]
    lines.insert(0, f"{record['model']} pruned: {s['method']}, amount {s['amount']}, scope {s['scope']}, "
                    f"schedule {s['schedule']} (weights: {record['weights']}); MACs at batch "
                    f"{record['batch']}")
    p = record["pruned"]
    executes = ("the block-sparse kernels skip the removed blocks" if any("tile_products" in r for r in
                record["layers"]) else "the dense kernels still execute all")
    lines.append(f"pruned weights: {p['nonzero']:,} of {p['params']:,} nonzero "
                 f"({1 - p['nonzero'] / max(p['params'], 1):.1%} removed); their multiply-adds "
                 f"{p['macs']:,} -> {p['macs_nonzero']:,} nonzero ({executes})")
    lines.append(_validation_line(record["validation"]))
    return "\n".join(line.rstrip() for line in lines)


def _validation_line(v: dict) -> str:
    b, a = v["before"], v["after"]
    acc = (f"; acc {b['acc']:.2%} -> {a['acc']:.2%} ({100 * v['acc_change']:+.2f} points)"
           if "acc_change" in v else "")
    return (f"validation ({v['examples']} examples): loss {b['loss']:.4f} -> {a['loss']:.4f} "
            f"({v['loss_increase']:+.4f} nats){acc}")
