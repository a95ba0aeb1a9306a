"""Free loopback TCP ports for the local servers that promptray starts on one machine: the SDK's private Ray
cluster (`sdk/local_cluster.py`) and the test/dev S3 server (`platform/testing/seaweedfs.py`). Standard library
only, so the SDK can import it without torch."""

from __future__ import annotations

import socket


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback TCP ports that were free a moment ago."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()
