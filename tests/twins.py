"""Helpers for PyTorch twins of Axon models: copying Axon's parameters into torch modules."""
import torch


def copy_rnn_cell(module: torch.nn.Module, params: dict, prefix: str) -> None:
    """Load an Axon rnn/lstm/gru cell (`prefix.wi`, `.wh` stored [in, out]; `.bi`, `.bh`) into a
    one-layer torch RNN/LSTM/GRU (which stores [out, in])."""
    with torch.no_grad():
        module.weight_ih_l0.copy_(params[f"{prefix}.wi"].T)
        module.weight_hh_l0.copy_(params[f"{prefix}.wh"].T)
        module.bias_ih_l0.copy_(params[f"{prefix}.bi"])
        module.bias_hh_l0.copy_(params[f"{prefix}.bh"])
