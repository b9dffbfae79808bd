"""Graph passes: the pass manager and the clean-up pipeline (fold, simplify, cse, dce).

Importing the package registers every pass, so `parse_pipeline` knows them all.
"""
from . import autocast, block_sparse, cse, dce, fold, precision, qat, quantize, simplify  # noqa: F401  (importing registers the passes)
from .manager import (DEFAULT_PIPELINE, Pass, PassManager, PassReport, format_pass, format_pipeline,
                      format_report, parse_pipeline, register_pass, registered_passes)

__all__ = [
    "DEFAULT_PIPELINE", "Pass", "PassManager", "PassReport", "format_pass", "format_pipeline",
    "format_report", "parse_pipeline", "register_pass", "registered_passes",
]
