"""The Axon language: grammar (`axon.lark`), typed AST (`ast.py`), parser, and elaboration to the graph
IR, with the standard layers written in Axon in `prelude.axon`.

>>> from axon.frontend import compile_source
>>> g = compile_source('''
... model MLP(hidden = 16) {
...     input x: f32[batch, 8]
...     h = relu(linear(x, hidden))
...     output logits = linear(h, 3)
... }''', "mlp.axon")
>>> sorted(g.params)
['h.b', 'h.w', 'logits.b', 'logits.w']
"""
from __future__ import annotations

from pathlib import Path

from axon.ir import Graph
from axon.ir.errors import did_you_mean

from . import ast
from .elaborator import Elaborator
from .errors import (ArityError, AxonImportError, AxonNameError, AxonSyntaxError, AxonTypeError,
                     AxonValueError, ShapeError)
from .parser import parse
from .program import Program, load_program, read_source
from .quantize_block import QuantizeSpec, check_quantize_def
from .train import TrainSpec, add_loss, check_train, check_train_def

__all__ = [
    "ArityError", "AxonImportError", "AxonNameError", "AxonSyntaxError", "AxonTypeError",
    "AxonValueError", "Program", "QuantizeSpec", "ShapeError", "TrainSpec", "ast", "compile_source",
    "elaborate", "load", "load_program", "parse", "quantize_spec", "read_axon", "train_spec",
    "training_graph",
]


def elaborate(module: ast.Module, model: str | None = None, *, hparams: dict | None = None,
              training: bool = False, root: str | Path | None = None) -> Graph:
    """The graph of one model of a parsed module (the only one, when `model` is None).

    `hparams` overrides the model's hyper-parameters; `training` turns on dropout; imports are
    confined to `root` (default: the module's folder).
    """
    program = load_program(module, root)
    name = _pick_model(program, model)
    for td in program.user.trains.values():  # checked now, run by the training driver later
        check_train_def(program, td)
    for qd in program.user.quantizes.values():  # checked now, used by `axon quantize` later
        check_quantize_def(program, qd)
    return Elaborator(program, training=training).model(name, hparams)


def training_graph(module: ast.Module, model: str | None = None, *, hparams: dict | None = None,
                   root: str | Path | None = None, training: bool = True,
                   step: str | None = None) -> tuple[Graph, TrainSpec]:
    """The model compiled for training (dropout on; `training=False` for evaluation) with its train
    block's loss as the output `loss`; labels become inputs typed from the loss function's declaration.
    Returns the graph and the spec. For a GAN's train block, `step` ("discriminator", the default, or
    "generator") picks the loss, and the spec returned has that step's loss and optimizer."""
    program = load_program(module, root)
    name = _pick_model(program, model)
    td = program.user.trains.get(name)
    if td is None:
        raise AxonNameError(f"model '{name}' has no train block")
    spec = check_train_def(program, td)
    if spec.gan is not None and step is not None:
        spec = spec.step(step)
    el = Elaborator(program, training=training)
    el.model(name, hparams)
    add_loss(el, td, spec)
    return el.b.build(), spec


def compile_source(text: str, file: str = "<string>", model: str | None = None, **options) -> Graph:
    """Parse and elaborate source text (see `elaborate` for the options)."""
    return elaborate(parse(text, file), model, **options)


def read_axon(path: str | Path) -> ast.Module:
    """Parse a `.axon` file (a missing or unreadable file is an `AxonImportError`)."""
    p = Path(path)
    try:
        text = read_source(p)
    except FileNotFoundError:
        raise AxonImportError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise AxonImportError(f"{p}: is a directory, not an .axon file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AxonImportError(f"{p}: cannot read it ({e})") from e
    return parse(text, str(p))


def load(path: str | Path, model: str | None = None, **options) -> Graph:
    """Parse and elaborate a `.axon` file."""
    return elaborate(read_axon(path), model, **options)


def train_spec(module: ast.Module, model: str | None = None) -> TrainSpec | None:
    """The checked `train` block for a model of the module (None when it has none)."""
    program = load_program(module)
    name = _pick_model(program, model)
    return check_train(program, name)


def quantize_spec(module: ast.Module, model: str | None = None) -> QuantizeSpec | None:
    """The checked `quantize` block for a model of the module (None when it has none)."""
    program = load_program(module)
    specs = {name: check_quantize_def(program, qd) for name, qd in program.user.quantizes.items()}
    return specs.get(_pick_model(program, model))


def _pick_model(program: Program, model: str | None) -> str:
    models = program.user.models
    if model is not None:
        if model not in models:
            raise AxonNameError(f"no model named '{model}' in {program.main.file}",
                                hint=did_you_mean(model, models) or _listing(models))
        return model
    own = [m for m in models.values() if m.span.file == program.main.file] or list(models.values())
    if len(own) == 1:  # the main file's own model, even if imported files define others
        return own[0].name
    if not own:
        raise AxonNameError(f"{program.main.file} defines no model")
    raise AxonNameError(f"{program.main.file} defines several models; choose one",
                        hint=_listing([m.name for m in own]))


def _listing(models) -> str:
    return "models: " + ", ".join(models) if models else "there are no models"
