"""PyTorch twins of Axon models: copying Axon's parameters into torch modules, and the GPT example."""
import torch
import torch.nn.functional as F


def copy_rnn_cell(module: torch.nn.Module, params: dict, prefix: str) -> None:
    """Load an Axon rnn/lstm/gru cell (`prefix.wi`, `.wh` stored [in, out]; `.bi`, `.bh`) into a
    one-layer torch RNN/LSTM/GRU (which stores [out, in])."""
    with torch.no_grad():
        module.weight_ih_l0.copy_(params[f"{prefix}.wi"].T)
        module.weight_hh_l0.copy_(params[f"{prefix}.wh"].T)
        module.bias_ih_l0.copy_(params[f"{prefix}.bi"])
        module.bias_hh_l0.copy_(params[f"{prefix}.bh"])


def _layernorm(x, p, name):
    return F.layer_norm(x, x.shape[-1:], p[f"{name}.w"], p[f"{name}.b"], eps=1e-5)


def gpt_twin(tokens, p, d: int = 32, heads: int = 4, layers: int = 2):
    """examples/gpt.axon's forward in PyTorch, on its parameters by name (differentiable)."""
    b, t = tokens.shape
    h = F.embedding(tokens, p["tok.w"]) + p["pos.w"][:t]
    for i in range(layers):
        blk = f"block.{i}"
        a_in = _layernorm(h, p, f"{blk}.ln1")
        q, k, v = ((a_in @ p[f"{blk}.attn.{w}"]).reshape(b, t, heads, d // heads).transpose(1, 2)
                   for w in ("wq", "wk", "wv"))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + att.transpose(1, 2).reshape(b, t, d) @ p[f"{blk}.attn.wo"]
        m = F.gelu(_layernorm(h, p, f"{blk}.ln2") @ p[f"{blk}.up.w"] + p[f"{blk}.up.b"])
        h = h + m @ p[f"{blk}.down.w"] + p[f"{blk}.down.b"]
    return _layernorm(h, p, "hn") @ p["logits.w"]
