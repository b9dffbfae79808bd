"""A whole program: the user's file, the files it imports, and the prelude, with their definitions.

`import "layers.axon"` is resolved against the importing file's folder and must stay inside the
project folder (the main file's folder): an import never reads `../../etc/passwd`. Each file is read
once, so import cycles are harmless. Definitions from all user files share one namespace (a name
defined twice is an error); the prelude sits under it, so a user may redefine a prelude layer, while
the prelude's own layers keep calling the prelude's.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from axon.ir.errors import Note

from . import ast as A
from .errors import AxonImportError, AxonNameError
from .parser import parse
from .typecheck import ANY_DTYPE, SCALAR_TYPES, dtype_of

PRELUDE_PATH = Path(__file__).with_name("prelude.axon")
SUFFIX = ".axon"
MAX_SOURCE_BYTES = 10 * 2**20  # one source file; a larger one is not a program a person wrote


@dataclass
class Namespace:
    fns: dict[str, A.FnDef] = field(default_factory=dict)
    models: dict[str, A.ModelDef] = field(default_factory=dict)
    trains: dict[str, A.TrainDef] = field(default_factory=dict)
    quantizes: dict[str, A.QuantizeDef] = field(default_factory=dict)

    def add(self, item) -> None:
        if isinstance(item, A.TrainDef):
            key, prev, what = item.model, self.trains.get(item.model), "a train block for "
        elif isinstance(item, A.QuantizeDef):
            key, prev, what = item.model, self.quantizes.get(item.model), "a quantize block for "
        else:
            key, what = item.name, ""
            prev = self.fns.get(key) or self.models.get(key)
        if prev is not None:
            raise AxonNameError(f"{what}'{key}' is defined twice", item.span,
                                notes=[Note("first defined here", prev.span)])
        if not isinstance(item, (A.TrainDef, A.QuantizeDef)):
            check_params(item)
        table = {A.FnDef: self.fns, A.ModelDef: self.models, A.TrainDef: self.trains,
                 A.QuantizeDef: self.quantizes}[type(item)]
        table[key] = item


def check_params(item: A.FnDef | A.ModelDef) -> None:
    """A definition's parameters, checked when it is loaded (even if it is never called): each name
    once, and each type's dtype known."""
    seen: dict[str, A.Param] = {}
    for p in item.params:
        if p.name in seen:
            raise AxonNameError(f"parameter '{p.name}' of '{item.name}' is declared twice", p.span,
                                notes=[Note("first declared here", seen[p.name].span)])
        seen[p.name] = p
        t = p.type
        if t is not None and t.name not in ANY_DTYPE and not (t.dims is None and t.name in SCALAR_TYPES):
            dtype_of(t)  # raises for an unknown dtype, at the type


@dataclass
class Program:
    """The user's definitions (`user`), the prelude's (`prelude`), and the files they came from."""

    main: A.Module
    user: Namespace
    prelude: Namespace
    files: list[str]


@functools.cache
def prelude() -> Namespace:
    ns = Namespace()
    for item in parse(PRELUDE_PATH.read_text(), str(PRELUDE_PATH)).items:
        ns.add(item)
    return ns


def load_program(main: A.Module, root: str | Path | None = None) -> Program:
    """Collect `main` and everything it imports (breadth-first, each file once)."""
    main_dir = Path(main.file).parent if not main.file.startswith("<") else Path.cwd()
    root = Path(root or main_dir).resolve()
    ns = Namespace()
    seen: set[Path] = set()
    if not main.file.startswith("<"):
        seen.add(Path(main.file).resolve())
    queue, files = [main], [main.file]
    while queue:
        module = queue.pop(0)
        here = main_dir if module is main else Path(module.file).parent
        for item in module.items:
            if isinstance(item, A.Import):
                path = _resolve(item, here, root)
                if path not in seen:
                    seen.add(path)
                    queue.append(_read(item, path))
                    files.append(str(path))
            else:
                ns.add(item)
    return Program(main, ns, prelude(), files)


def _resolve(item: A.Import, here: Path, root: Path) -> Path:
    if not item.path.endswith(SUFFIX):
        raise AxonImportError(f"can only import {SUFFIX} files, not '{item.path}'", item.span)
    path = (here / item.path).resolve()
    try:
        path.relative_to(root)
    except ValueError:
        raise AxonImportError(f"import '{item.path}' reaches outside the project folder {root}",
                              item.span, hint="imports are confined to the main file's folder") from None
    return path


def _read(item: A.Import, path: Path) -> A.Module:
    try:
        text = read_source(path)
    except FileNotFoundError:
        raise AxonImportError(f"cannot import '{item.path}': no such file ({path})", item.span) from None
    except (OSError, UnicodeDecodeError) as e:
        raise AxonImportError(f"cannot import '{item.path}': {e}", item.span) from e
    return parse(text, str(path))


def read_source(path: Path) -> str:
    """The text of an `.axon` file; a FIFO or a device (which could block forever or never end) and a
    file over `MAX_SOURCE_BYTES` are refused with an `OSError` that says why."""
    if path.exists() and not path.is_file():
        raise OSError(f"{path} is not a regular file")
    size = path.stat().st_size
    if size > MAX_SOURCE_BYTES:
        raise OSError(f"{path} is {size:,} bytes, more than the {MAX_SOURCE_BYTES:,} a source file may have")
    return path.read_text(encoding="utf-8")
