"""How long an id may be, written once for every way in.

Event, entity and model ids become Kafka keys, table keys, file names and
metric labels everywhere, and are echoed in answers: each service refuses one
longer than :data:`MAX_ID_BYTES` of UTF-8, on every path (gRPC and Kafka).
"""

from __future__ import annotations

from typing import Final

__all__ = ["MAX_ID_BYTES", "oversized"]

MAX_ID_BYTES: Final = 256


def oversized(identifier: str, limit: int = MAX_ID_BYTES) -> int | None:
    """The id's size in UTF-8 bytes when it is over ``limit``, else None.

    A character takes at most four bytes, so most ids are measured without
    being encoded. Lone surrogates (which JSON can carry) count as three bytes.
    """
    if len(identifier) * 4 <= limit:
        return None
    size = len(identifier.encode("utf-8", "surrogatepass"))
    return size if size > limit else None
