"""The errors an Axon program can cause, one class per kind. Each carries a `Span`, so `str(err)` is

    mlp.axon:3:14: error: unknown function 'lineer'
        h = relu(lineer(x, 128))
                 ^^^^^^
    hint: did you mean 'linear'?

`kind` names the class of mistake for tools and tests ("syntax", "name", "shape", "type", "arity",
"import", "value").
"""
from __future__ import annotations

from axon.ir import AxonError


class AxonSyntaxError(AxonError):
    """Text that does not follow the grammar."""

    kind = "syntax"


class AxonNameError(AxonError):
    """A name that is not defined (or defined twice)."""

    kind = "name"


class ShapeError(AxonError):
    """Tensor shapes that do not fit: a mismatch at a call, a matmul, a broadcast, a reshape."""

    kind = "shape"


class AxonTypeError(AxonError):
    """A value of the wrong kind or dtype: a tensor where an int is needed, i64 where f32 is, ..."""

    kind = "type"


class ArityError(AxonError):
    """A call with too many, too few, unknown or repeated arguments."""

    kind = "arity"


class AxonImportError(AxonError):
    """An import that cannot be read, or that reaches outside the project folder."""

    kind = "import"


class AxonValueError(AxonError):
    """A value out of range: a negative size, a zero step, an unroll too long to compile."""

    kind = "value"
