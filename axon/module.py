"""`axon.Module`: a compiled `.axon` model as a `torch.nn.Module`.

    net = axon.Module("examples/mlp.axon")                 # hyper-parameters as keywords: hidden=64
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = F.cross_entropy(net(x), labels); loss.backward(); opt.step()
    net.load_state_dict(axon.load_checkpoint("runs/MLP/best.safetensors"))

The model's parameters are `nn.Parameter`s under their IR names (`h.w` is the parameter `w` of a child
module `h`, so `state_dict()` keys are the names `axon train` checkpoints use); running statistics are
buffers, moved by a training-mode call as the model's graph says. A call runs the model compiled for
the module's device and mode (`train()`: dropout on, a fresh dropout seed per call; `eval()`: off),
compiled once per (device, mode); gradients flow through Axon's compiled backward (`axon.autograd`), so
any `torch.optim` optimizer, `torch.amp.GradScaler` and gradient clipping work on `parameters()`.
"""
from __future__ import annotations

from pathlib import Path

import torch

SEED_INPUT = "seed"   # a model's dropout seed (as `axon train` feeds it)


class Module(torch.nn.Module):
    def __init__(self, path_or_source, model: str | None = None, *, seed: int = 0, **hparams):
        super().__init__()
        import axon.codegen  # noqa: F401  (without a GPU: the interpreter, chosen before Triton is imported)
        from axon.driver import graph_of
        from axon.frontend.builtins import UPDATE_PREFIX
        from axon.ir import init_params

        self._source, self._model, self._hparams = path_or_source, model, dict(hparams) or None
        self._compiled: dict[tuple[str, bool], object] = {}
        graph = graph_of(_source(path_or_source), model, hparams=self._hparams, training=True)
        buffers = {n[len(UPDATE_PREFIX):] for n in graph.outputs if n.startswith(UPDATE_PREFIX)}
        self.seed, self.calls = seed, 0
        self.input_names = [n for n in graph.inputs if n != SEED_INPUT]
        values = init_params(graph, seed)
        for name, t in values.items():
            owner, leaf = self._owner(name)
            if t.is_floating_point() and name not in buffers:
                owner.register_parameter(leaf, torch.nn.Parameter(t))
            else:
                owner.register_buffer(leaf, t)
        self._names = list(values)

    def _owner(self, name: str) -> tuple[torch.nn.Module, str]:
        """The child module holding `name` (made on the way: `block.0.attn.wq` -> block/0/attn, 'wq')."""
        *path, leaf = name.split(".")
        owner: torch.nn.Module = self
        for part in path:
            if part not in owner._modules:
                owner.add_module(part, torch.nn.Module())
            owner = owner._modules[part]
        return owner, leaf

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self._names:
            owner, leaf = self._owner(name)
            out[name] = owner._parameters[leaf] if leaf in owner._parameters else owner._buffers[leaf]
        return out

    def compiled(self, device: torch.device | None = None, training: bool | None = None):
        """The compiled model for a device and mode (made on first use)."""
        import axon

        device = device or next(iter(self._tensors().values())).device
        training = self.training if training is None else training
        key = (str(device), training)
        if key not in self._compiled:
            self._compiled[key] = axon.compile(_source(self._source), self._model, hparams=self._hparams,
                                               training=training, device=device, seed=self.seed)
        return self._compiled[key]

    def forward(self, *inputs: torch.Tensor, **named: torch.Tensor):
        tensors = self._tensors()
        device = next(iter(tensors.values())).device
        model = self.compiled(device)
        feeds = dict(zip(self.input_names, inputs), **named)
        if SEED_INPUT in model.graph.inputs:  # dropout: a new stream per training call, as axon train
            self.calls += 1
            feeds[SEED_INPUT] = torch.tensor(self.seed * 1_000_003 + self.calls, dtype=torch.int64,
                                             device=device)
        model.params = dict(tensors)
        out = model.run(feeds)
        with torch.no_grad():  # running statistics the call moved (training mode)
            for name in model.buffers:
                if model.params[name] is not tensors[name]:
                    tensors[name].copy_(model.params[name])
        return next(iter(out.values())) if len(out) == 1 else out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, also taking an `axon train` checkpoint's tensors (its `param/` section; the
        optimizer state and masks are left)."""
        if any(k.startswith("param/") for k in state_dict):
            state_dict = {k[len("param/"):]: v for k, v in state_dict.items() if k.startswith("param/")}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def save(self, path: str | Path) -> None:
        """The parameters as safetensors under their IR names (`axon run --weights` reads them)."""
        from axon.runtime.safetensors import save

        save({k: v.detach().cpu().contiguous() for k, v in self._tensors().items()}, path)


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file (checksums verified), e.g. for `Module.load_state_dict`."""
    from axon.runtime.safetensors import load

    return load(path)


def _source(s):
    return Path(s) if isinstance(s, str) and s.endswith(".axon") else s
