"""What a failed call to a Driftloop service tells the person who made it.

gRPC's own text for a service that is not running ("failed to connect to all
addresses; last error: UNKNOWN: ipv4:127.0.0.1:50053: Failed to connect to
remote host: Connection refused") names an address, not a service, and not
what to do. Every command that calls a service says instead which service is
not answering where, and how to start it or point the command elsewhere.
"""

from __future__ import annotations

import grpc
import grpc.aio

# gRPC's words for "nothing listens there" (or the name does not resolve).
_NOT_LISTENING = (
    "failed to connect to all addresses",
    "connection refused",
    "dns resolution failed",
    "name resolution",
)


def failure(service: str, target: str, error: grpc.aio.AioRpcError) -> str:
    """One line for the user: a service that is not running named with the
    way to start it; any other failure as its status code and details."""
    details = error.details() or ""
    if error.code() == grpc.StatusCode.UNAVAILABLE and any(
        words in details.lower() for words in _NOT_LISTENING
    ):
        return (
            f"UNAVAILABLE: the {service} service is not answering at {target}: "
            "is the stack running? "
            f"Start it with `driftloop up` (`driftloop status` shows what runs), or give "
            f"the address with --endpoint or DRIFTLOOP_ENDPOINTS__{service.upper()}."
        )
    return f"{error.code().name}: {details}"
