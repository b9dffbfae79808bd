"""Pruning masks in the compiled training step.

A pruned parameter `w` gets a step input `mask.w` (its dtype and shape, 1 keeps an entry, 0 removes it).
The step multiplies the gradient by the mask before the optimizer sees it (what torch.nn.utils.prune's
reparametrization w = w_orig * mask gives w_orig: clipping and weight decay see the same), and the new
parameter and each new optimizer state by the mask after the update, so a removed entry is exactly zero
in the weight and in every state, whatever the optimizer (AdamW's decoupled decay, momentum left over
from before the mask changed). All of it is pointwise: it fuses into the update's kernels.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from axon.ir import GraphBuilder, Node
from axon.passes.quantize import _matches, weight_uses

MASK_PREFIX = "mask."
STATE_PREFIX = "state."


def mask_input_name(param: str) -> str:
    return MASK_PREFIX + param


def state_param(state_input: str, params: Iterable[str]) -> str | None:
    """The parameter a `state.<slot>.<param>` input belongs to (slots are single words)."""
    if not state_input.startswith(STATE_PREFIX):
        return None
    rest = state_input[len(STATE_PREFIX):].split(".", 1)
    return rest[1] if len(rest) == 2 and rest[1] in set(params) else None


def mask_inputs(b: GraphBuilder, params: Mapping[str, Node], names: Iterable[str]) -> dict[str, Node]:
    """A mask input for each named parameter."""
    return {n: b.input(mask_input_name(n), params[n].dtype, params[n].shape) for n in names}


def masked_gradients(b: GraphBuilder, grads: Mapping[str, Node], masks: Mapping[str, Node]) -> dict:
    return {n: b.mul(g, masks[n]) if n in masks else g for n, g in grads.items()}


def masked_update(b: GraphBuilder, masks: Mapping[str, Node], new_params: Mapping[str, Node],
                  new_states: Mapping[str, Node]) -> tuple[dict[str, Node], dict[str, Node]]:
    """The new parameters and states with every removed entry zero."""
    params = {n: b.mul(p, masks[n]) if n in masks else p for n, p in new_params.items()}
    states = {}
    for name, node in new_states.items():
        owner = state_param(name, masks)
        states[name] = b.mul(node, masks[owner]) if owner is not None else node
    return params, states


def prunable(graph, skip: tuple[str, ...] = ()) -> dict[str, str | None]:
    """Each float parameter of rank >= 2 -> None when it can be pruned (the weight of matmuls or
    convolutions only, not skipped by name), else why not."""
    out: dict[str, str | None] = {}
    for name, u in weight_uses(graph).items():
        if not u.sites:
            out[name] = "not a matmul or conv2d weight (" + ", ".join(dict.fromkeys(u.other)) + ")" \
                if u.other else "unused"
        elif u.other:
            out[name] = f"also {u.other[0]}"
        elif _matches(name, skip):
            out[name] = "skipped by name"
        else:
            out[name] = None
    return out
