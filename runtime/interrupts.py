"""Ctrl-C and SIGTERM during a run: finish the step under way, then stop cleanly.

Inside `deferred()`, the first SIGINT or SIGTERM only sets `requested` (and says so on stderr): the run
checks it between steps, writes a checkpoint and stops with `Interrupted`. A second SIGINT abandons the
step at once (KeyboardInterrupt, as without the handler): the last checkpoint written stays as it was,
since every file is replaced atomically. Outside the main thread nothing is installed.
"""
from __future__ import annotations

import contextlib
import signal
import sys
import threading

from axon.ir.errors import AxonError

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the signal's number, as shells report it


class Interrupted(AxonError):
    """A run stopped by a signal between two steps; `exit_code` is the shell's code for that signal."""

    def __init__(self, message: str, signum: int = signal.SIGINT, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.exit_code = EXIT_CODES.get(signum, 130)

    def __str__(self) -> str:  # not an error: what happened and how to go on
        return self.message + (f"\n{self.hint}" if self.hint else "")


class Stop:
    """What the handler saw: the signal asked for, or None."""

    def __init__(self):
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: abandon the step
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: stopping after this step (Ctrl-C again to abandon it)", file=sys.stderr, flush=True)


@contextlib.contextmanager
def deferred():
    """Defer SIGINT and SIGTERM to the next step boundary for the `with` block; yields the `Stop`."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    old = {s: signal.getsignal(s) for s in EXIT_CODES}
    for s in EXIT_CODES:
        signal.signal(s, stop._handle)
    try:
        yield stop
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
