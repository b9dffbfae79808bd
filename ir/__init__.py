"""Axon's graph IR: dtypes, symbolic shapes, typed immutable nodes, graphs, the verifier, the text form
and the reference evaluator. Imports nothing else of Axon.
"""
# the op families register their facts (shape rule, evaluation, gradient) in `ops.OPS` on import; the
# graph builder reads that table, and imports none of them (their gradient rules build graphs)
from . import (op_bsmatmul, op_elementwise, op_linalg, op_movement, op_qmatmul, op_quant,  # noqa: F401  (registration)
               op_reduce, op_source)
from .dtypes import DType, promote
from .errors import (AxonError, EvalError, IRDTypeError, IRShapeError, IRSyntaxError, IRTypeError, PassError,
                     Span, VerifyError)
from .evaluate import evaluate
from .graph import Graph, GraphBuilder, Node
from .init import init_params
from .ops import OPS, Init, OpKind
from .rewrite import apply_rules, rebuild, reachable
from .shapes import Sym, TensorType
from .verify import verify

__all__ = [
    "AxonError", "DType", "EvalError", "Graph", "GraphBuilder", "IRDTypeError", "IRShapeError",
    "IRSyntaxError", "IRTypeError", "Init", "Node", "OPS", "OpKind", "PassError", "Span", "Sym",
    "TensorType", "VerifyError", "apply_rules", "evaluate", "init_params", "promote", "reachable", "rebuild",
    "verify",
]
