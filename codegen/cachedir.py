"""Where Axon's on-disk caches live: one folder, checked once per process before anything is loaded from it.

Generated kernels are Python modules that the cache imports, so the folder must be one that only this user
can write: `ensure_cache_dir()` creates `$AXON_CACHE_DIR` (default `~/.cache/axon`) with mode 0700 (and any
parents it creates), checks that it is a folder owned by this user and not writable by group or others,
and proves it writable by creating a probe file. When any of that fails, this process uses a private
temporary folder instead (mode 0700, removed at exit), and says so in one line on stderr:

    axon: warning: kernel cache /x/y is not writable (Read-only file system); using a private temporary
    cache for this run

The kernel cache, the tuning store (`tune/`) and the AOT results (`aot/`) all live below it.
"""
from __future__ import annotations

import atexit
import os
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from axon.ir import AxonError

_RESOLVED: dict[str, Path] = {}  # $AXON_CACHE_DIR's value ("" when unset) -> the folder in use
_FALLBACK: list[Path] = []       # this process's private temporary cache, once made
_WARNED: set[str] = set()        # what was already warned about (one line each)


class CacheError(AxonError):
    """No usable cache folder at all: neither the configured one nor a private temporary one."""


def configured() -> Path:
    """The folder the settings name: `$AXON_CACHE_DIR`, else `~/.cache/axon`."""
    named = os.environ.get("AXON_CACHE_DIR")
    return Path(named) if named else Path.home() / ".cache" / "axon"


def ensure_cache_dir() -> Path:
    """The cache folder this process uses: the configured one when it is a private, writable folder (made
    so when missing), else a private temporary one, with one warning line on stderr saying why.

    Resolved once per process and per value of `$AXON_CACHE_DIR`; later calls cost a dict lookup."""
    key = os.environ.get("AXON_CACHE_DIR") or ""
    found = _RESOLVED.get(key)
    if found is not None:
        return found
    try:
        wanted = configured()
    except RuntimeError as e:  # no home folder to put the default in
        wanted, problem = Path("~/.cache/axon"), f"has no home folder ({e})"
    else:
        problem = _prepare(wanted)
    if problem:
        found = fallback_dir()
        warn(f"kernel cache {wanted} {problem}; using a private temporary cache for this run")
    else:
        found = wanted
    _RESOLVED[key] = found
    return found


def fallback_dir() -> Path:
    """This process's private temporary cache (mode 0700, removed when the process exits)."""
    if not _FALLBACK:
        try:
            path = Path(tempfile.mkdtemp(prefix="axon-cache-"))
        except OSError as e:
            raise CacheError(f"no usable kernel cache: {configured()} cannot be used and no temporary "
                             f"folder can be made in {tempfile.gettempdir()} ({e.strerror}); set "
                             f"AXON_CACHE_DIR to a writable folder") from e
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _FALLBACK.append(path)
    return _FALLBACK[0]


def warn(message: str) -> None:
    """`axon: warning: <message>` on stderr, once per process for each message."""
    if message not in _WARNED:
        _WARNED.add(message)
        print(f"axon: warning: {message}", file=sys.stderr, flush=True)


def unsafe(info: os.stat_result, what: str = "folder") -> str:
    """Why a file or folder with this `stat` must not hold code this process runs ("" if it may)."""
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"is owned by another user (uid {info.st_uid})"
    if info.st_mode & 0o022:
        return (f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}; "
                f"`chmod go-w` it to use it)")
    return ""


def _prepare(path: Path) -> str:
    """Make `path` a private folder if missing, and check it; the reason it cannot be used, or ""."""
    try:
        _make(path)
        info = os.stat(path)
    except OSError as e:
        return _reason(path, e)
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    problem = unsafe(info)
    if problem:
        return problem
    try:  # writable? only trying says so (root ignores modes; a read-only mount refuses root too)
        fd, probe = tempfile.mkstemp(prefix=".probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"is not writable ({e.strerror or e})"
    return ""


def _make(path: Path) -> None:
    """Create `path` and each missing parent with mode 0700 (Path.mkdir gives parents the default mode)."""
    missing = []
    here = Path(os.path.abspath(path))
    while not os.path.lexists(here) and here != here.parent:
        missing.append(here)
        here = here.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass  # another process made it meanwhile


def _reason(path: Path, e: OSError) -> str:
    if os.path.lexists(path) and not os.path.isdir(path):
        return "is not a folder"
    if isinstance(e, (NotADirectoryError, FileExistsError)):
        return f"cannot be made: a part of its path is not a folder ({e.strerror})"
    return f"cannot be made ({e.strerror or e})"
