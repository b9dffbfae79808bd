"""Files written whole or not at all: the one atomic write every stage uses (kernel cache, tuning store,
AOT results, checkpoints, metrics, plots).

>>> import os, tempfile
>>> p = os.path.join(tempfile.mkdtemp(), "m.json")
>>> atomic_write(p, '{"ok": 1}'); open(p).read()
'{"ok": 1}'
"""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path


def umask() -> int:
    """The process's umask (read without changing it where the platform allows)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def atomic_write(path: str | os.PathLike, data: str | bytes | Iterable[bytes | memoryview] | None = None, *,
                 writer: Callable[[str], None] | None = None, mode: int = 0o666) -> None:
    """Write `data` (text, bytes or chunks), or let `writer(tmp_path)` write, to a temporary file beside
    `path`; fsync it, give it `mode` less the umask (0644 under the usual umask, like any new file), and
    rename it over `path`.

    A failure at any point (an exception, Ctrl-C) removes the temporary file and leaves `path` as it was; a
    crash leaves at worst a hidden `.<name>.<random>.tmp` beside it, never a half-written `path`. Raises
    OSError (IsADirectoryError where `path` is a folder) for the caller to word.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "Is a directory", path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            if writer is None:
                chunks = [data.encode()] if isinstance(data, str) else [data] if isinstance(data, bytes) \
                    else data
                for chunk in chunks:
                    f.write(chunk)
        if writer is not None:
            writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, mode & ~umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(directory)


def fsync_directory(directory: str | Path) -> None:
    """Make a rename in `directory` durable; best effort, as not every platform or filesystem allows it."""
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
