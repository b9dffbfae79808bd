"""The public API: `axon.compile` turns a model into a callable that runs generated Triton kernels.

>>> import axon, torch
>>> model = axon.compile("examples/mlp.axon")                  # doctest: +SKIP
>>> logits = model(torch.randn(32, 64))                          # doctest: +SKIP
>>> sorted(model.params)                                         # doctest: +SKIP
['fc1.b', 'fc1.w', 'logits.b', 'logits.w']
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from axon.driver import InputError, executable, graph_of, onnx_params, optimize
from axon.frontend.builtins import UPDATE_PREFIX
from axon.ir import AxonError, DType, Graph, evaluate, init_params
from axon.passes.manager import DEFAULT_PIPELINE
from axon.runtime import Executable, RunError


class CompiledModel:
    """A model compiled to kernels, with its parameters.

    Call it with the inputs (positionally in the model's order, or by name): one output comes back as a
    tensor, several as a dict by name. `params` maps readable names (`block.0.attn.wq`) to tensors on
    the model's device; change them in place or assign new tensors of the same shape and dtype.
    """

    def __init__(self, graph: Graph, executable: Executable, params: dict[str, torch.Tensor],
                 fusion: bool = True, graphs=None):
        self.graph = graph
        self.executable = executable
        self.params = params
        self.fusion = fusion  # the autograd path compiles its forward/backward the same way
        self.graphs = graphs  # a runtime.cuda_graphs.GraphedExecutable (cuda_graphs=True), else None

    @property
    def device(self) -> torch.device:
        return self.executable.device

    @property
    def kernels(self):
        return self.executable.kernels

    @property
    def input_names(self) -> list[str]:
        return list(self.graph.inputs)

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor):
        names = self.input_names
        if len(args) > len(names):
            raise RunError(f"{self.graph.name} takes {len(names)} input(s) ({', '.join(names)}), "
                           f"got {len(args)}")
        both = [n for n in names[:len(args)] if n in kwargs]
        if both:
            raise RunError(f"input '{both[0]}' given both by position and by name")
        out = self.run({**dict(zip(names, args)), **kwargs})
        return next(iter(out.values())) if len(out) == 1 else out

    def run(self, inputs: Mapping[str, torch.Tensor], **options) -> dict[str, torch.Tensor]:
        """The named outputs for named inputs (options: `poison`, `check_indices`). When gradients are
        wanted (grad mode on, a float input or parameter requiring grad), the call is recorded for
        `torch.autograd` through a compiled backward (`axon.autograd`)."""
        from axon import autograd

        if autograd.needs_grad(self, inputs):
            if self.graphs is not None:
                names = ", ".join(_requiring_grad({**inputs, **self.params})[:4])
                raise RunError(f"{self.graph.name} was compiled with cuda_graphs=True, which replays calls "
                               f"without gradients only, but this call records for torch.autograd (grad mode "
                               f"on, and {names} require grad): call it under torch.no_grad(), or compile "
                               f"without cuda_graphs")
            out = autograd.run(self, inputs, **options)
        else:
            out = (self.graphs or self.executable)(inputs, self.params, **options)
        # running statistics (a model compiled with training=True): the call moves them, as a torch
        # module's buffers; a new tensor each time, so one saved for a backward is never changed
        for name in [n for n in out if n.startswith(UPDATE_PREFIX)]:
            self.params[name[len(UPDATE_PREFIX):]] = out.pop(name).detach()
        return out

    @property
    def buffers(self) -> list[str]:
        """Parameters the model updates itself when training (running statistics), not an optimizer."""
        return [n[len(UPDATE_PREFIX):] for n in self.graph.outputs if n.startswith(UPDATE_PREFIX)]

    def parameters(self, prefix: str = "") -> list[torch.Tensor]:
        """The floating-point parameters (those named `prefix...`, not running statistics), set to
        require grad, for an optimizer: `torch.optim.Adam(model.parameters())`."""
        skip = set(self.buffers)
        chosen = [t for name, t in self.params.items() if name.startswith(prefix) and t.is_floating_point()
                  and name not in skip]
        return [t.requires_grad_() for t in chosen]

    def reference(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reference evaluator's outputs for the same inputs and parameters (CPU tensors)."""
        return evaluate(self.graph, {k: v.cpu() for k, v in inputs.items()},
                        {k: v.cpu() for k, v in self.params.items()})

    def source(self) -> str:
        """Every generated kernel's Triton source, in launch order."""
        return "\n\n".join(f"# ---- kernel {i}: {k.path.name}\n{k.source}"
                           for i, k in enumerate(self.kernels))

    def load_weights(self, path: str | Path) -> None:
        """Replace the parameters with those of a safetensors file: one of plain parameter names
        (`save_weights`), or a trainer's `best.safetensors` or `checkpoint.safetensors`, whose `param/`
        section is read (its optimizer state is left). Names, shapes and dtypes must match; when they
        do not, an AxonError names the file and lists what is missing, unexpected or different, and
        the parameters are left as they were."""
        self.replace_params(fitting_weights(self.graph, path))

    def replace_params(self, values: Mapping[str, torch.Tensor]) -> None:
        """Every parameter set to `values` (by name, shapes and dtypes already checked): copied into the
        CUDA graphs' static buffers when the model replays graphs, else moved to the model's device."""
        if self.graphs is not None:
            with torch.no_grad():
                for name, t in self.params.items():
                    t.copy_(values[name])
            return
        self.params = {name: values[name].to(self.device) for name in self.graph.params}

    def save_weights(self, path: str | Path) -> None:
        from axon.runtime.safetensors import save

        save(self.params, path)


def fitting_weights(graph: Graph, path: str | Path) -> dict[str, torch.Tensor]:
    """The parameters of `graph` read from a safetensors file (plain parameter names, or a trainer's
    checkpoint's `param/` section), on the CPU; an AxonError naming the file and what is missing,
    unexpected or of another shape or dtype when they do not fit."""
    from axon.runtime.safetensors import load, load_metadata

    weights, stray, trained = parameters_of(load(path))
    problems = []
    missing = [name for name in graph.params if name not in weights]
    if missing:
        problems.append(f"missing {_names(missing)}")
    unexpected = [PARAM_SECTION * trained + n for n in weights if n not in graph.params] + stray
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    for name, node in graph.params.items():
        t = weights.get(name)
        if t is not None and (tuple(t.shape) != tuple(node.shape) or t.dtype != node.dtype.torch):
            problems.append(f"'{name}' is {_type_of(t)}, the model wants {node.type}")
    if problems:
        what = "a trainer checkpoint, whose param/ section" if trained else "its tensors"
        hint = None
        if trained:
            model = load_metadata(path).get("model")
            if model and model != graph.name:
                hint = f"it is a checkpoint of model '{model}'"
        raise AxonError(f"{path}: weights do not fit {graph.name} ({what} has "
                        f"{len(weights)} parameters, the model {len(graph.params)}): "
                        + "; ".join(problems[:8]) + ("; ..." if len(problems) > 8 else ""), hint=hint)
    return weights


PARAM_SECTION, STATE_SECTION = "param/", "state/"  # a trainer checkpoint's sections (`axon.trainer`)


def parameters_of(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], bool]:
    """(the parameters by name, the names of tensors that are neither, whether it is a trainer's file)
    of a weights file's tensors: plain parameter names, or a trainer's checkpoint, whose parameters are
    `param/<name>` beside the optimizer's `state/...` (not parameters, not stray)."""
    if not any(k.startswith(PARAM_SECTION) for k in tensors):
        return dict(tensors), [], False
    params = {k[len(PARAM_SECTION):]: t for k, t in tensors.items() if k.startswith(PARAM_SECTION)}
    stray = [k for k in tensors if not k.startswith((PARAM_SECTION, STATE_SECTION))]
    return params, stray, True


def _names(names: list[str], most: int = 6) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def _type_of(t: torch.Tensor) -> str:
    """A tensor's type as Axon writes it (`f32[128, 10]`), or torch's name for a dtype Axon lacks."""
    try:
        dtype = str(DType.from_torch(t.dtype))
    except AxonError:
        dtype = str(t.dtype).removeprefix("torch.")
    return f"{dtype}[{', '.join(map(str, t.shape))}]"


def _requiring_grad(tensors: Mapping[str, object]) -> list[str]:
    return [name for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.requires_grad]


def compile(source_or_path, model: str | None = None, *, hparams: dict | None = None,  # noqa: A001
            training: bool = False, loss: bool = False, pipeline: str = DEFAULT_PIPELINE,
            device: str | torch.device | None = None, seed: int = 0, fusion: bool = True,
            cuda_graphs: bool = False) -> CompiledModel:
    """Compile a model — an `.axon` file, `.axon` source text, an `.axir` file or a Graph — through
    the named stages (parse -> ir -> passes -> codegen -> runtime) to a callable `CompiledModel`.

    `model` picks one model of a file with several; `hparams` overrides hyper-parameters; `training`
    turns dropout on; `loss` adds the train block's loss as an output (labels become inputs);
    `pipeline` is the pass pipeline; `device` is 'cuda', 'cpu' (Triton's interpreter) or None (CUDA
    when present); `seed` seeds the parameter initializers; `fusion=False` compiles one kernel per node
    (the unfused baseline).

    `cuda_graphs=True` replays each call's whole launch list as one CUDA graph, captured at the first
    call at each set of sizes (`runtime.cuda_graphs`): a DeviceError without a CUDA GPU. Outputs are
    fresh tensors as without it; `params` become the graphs' static buffers (changed in place, they are
    read as they are; a tensor assigned instead is copied into them at the next call); calls that record
    for torch.autograd are refused.
    """
    backend = None
    if cuda_graphs:  # checked first: no compiling for a device that cannot run it
        from axon.runtime import choose
        from axon.runtime.cuda_graphs import CudaGraphs

        backend = CudaGraphs(choose(device))
    graph = graph_of(source_or_path, model, hparams=hparams, training=training, loss=loss)
    graph, _report = optimize(graph, pipeline, verify=True, out=lambda *a, **k: None)
    exe = executable(graph, device, fusion=fusion)
    values = init_params(graph, seed)
    values.update({k: v for k, v in (onnx_params(source_or_path) or {}).items() if k in values})
    params = {k: v.to(exe.device) for k, v in values.items()}
    graphs = None
    if backend is not None:
        from axon.runtime.cuda_graphs import GraphedExecutable

        graphs = GraphedExecutable(exe, adopt=params, backend=backend)
    return CompiledModel(graph, exe, params, fusion, graphs)


def import_onnx(path: str | Path, *, device: str | torch.device | None = None, **options) -> CompiledModel:
    """An ONNX model (opset 13 onwards) compiled to Axon kernels, its initializers as the parameters
    (`frontend/onnx_import.py`; needs the onnx package: `pip install 'axon[onnx]'`)."""
    if not str(path).endswith(".onnx"):
        raise InputError(f"{path}: expected an ONNX model (.onnx)")
    return compile(Path(path), device=device, **options)
