"""What the `axon` commands' shared options mean: `--set NAME=VALUE` overrides, `--dim NAME=N` sizes, and
the graph a command's FILE and options name. Values are parsed, never evaluated as code."""
from __future__ import annotations

from axon.ir import AxonError


def override(text: str, flag: str = "--set") -> tuple[str, object]:
    """`--set NAME=VALUE` (or `flag`'s): an int, a float, true or false (never evaluated as code)."""
    name, sep, value = text.partition("=")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise AxonError(f"{flag} takes NAME=VALUE, got '{text}'")
    if value in ("true", "false"):
        return name, value == "true"
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    raise AxonError(f"{flag} {name}: '{value}' is not an int, a float, true or false")


def dim(text: str) -> tuple[str, int]:
    name, value = override(text, "--dim")
    if not isinstance(value, int) or isinstance(value, bool):
        raise AxonError(f"--dim {name}: '{value}' is not an integer")
    return name, value


def load(args):
    from axon.driver import load_graph

    hparams = dict(override(s) for s in args.set)
    return load_graph(args.file, args.model, hparams=hparams or None, training=args.training,
                      loss=args.loss)
