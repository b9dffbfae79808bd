"""Whether processes on this machine can meet on 127.0.0.1 (torch.distributed's rendezvous): tests that
start several processes skip, naming why, in a sandbox without loopback networking."""
from __future__ import annotations

import pytest


def _loopback() -> str | None:
    """Why processes on this machine cannot meet on 127.0.0.1 (a sandbox without loopback), or None."""
    import socket

    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen(1)
            with socket.create_connection(server.getsockname(), timeout=5):
                pass
    except OSError as e:
        return f"no loopback networking for torch.distributed here: {e}"
    return None


needs_loopback = pytest.mark.skipif(_loopback() is not None, reason=str(_loopback()))
