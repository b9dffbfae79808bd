"""The runtime: a compiled graph as a launch list run on torch tensors (`Executable`), its intermediates
sharing one arena by liveness (`memory`), its replay as CUDA graphs (`cuda_graphs`), the device choice, and
safetensors files for weights and checkpoints.

>>> from axon.ir import GraphBuilder, DType
>>> import torch
>>> b = GraphBuilder(); x = b.input("x", DType.F32, (3, 5)); _ = b.output("y", b.relu(x))
>>> exe = Executable(b.build(), device="cpu")
>>> x_value = torch.randn(3, 5)
>>> torch.equal(exe({"x": x_value})["y"], x_value.relu())
True
"""
from .device import DeviceError, choose, describe
from .executable import Executable, Plan, RunError
from .harness import run_graph
from .cuda_graphs import GraphedExecutable
from .memory import MemoryPlan, format_plan, plan_memory
from .safetensors import SafetensorsError, load_metadata

__all__ = ["DeviceError", "Executable", "GraphedExecutable", "MemoryPlan", "Plan", "RunError",
           "SafetensorsError", "choose", "describe", "format_plan", "load_metadata", "plan_memory",
           "run_graph"]
