"""Axon: a deep-learning compiler.

`axon.compile(path_or_source)` returns a `CompiledModel` (see `axon.api`); the stages behind it are the
packages `axon.frontend`, `axon.ir`, `axon.passes`, `axon.codegen` and `axon.runtime`.
"""


def __getattr__(name):  # imported on first use, so `axon check` does not load torch and Triton
    if name in ("compile", "CompiledModel", "import_onnx"):
        from . import api

        return getattr(api, name)
    if name in ("Module", "load_checkpoint"):
        from . import module

        return getattr(module, name)
    if name == "explain":  # what torch.compile(model, backend="axon") compiles, and what it leaves
        from . import dynamo

        return dynamo.explain
    raise AttributeError(f"module 'axon' has no attribute '{name}'")
