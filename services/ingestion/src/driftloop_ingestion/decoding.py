"""JSON text to one event's object, within the size limit.

The limit is checked before parsing, so a huge record costs no parse; JSON
that is not an object is refused with rule `json` like JSON that is broken.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

from driftloop_ingestion.rules import RULE_JSON, RULE_SIZE, Problem, Rejection, show

# The longest JSON text taken for one event. Events are a few hundred bytes; the
# limit keeps one huge record from costing a parse, and keeps its dead letter
# within the producer's 1 MiB request size.
DEFAULT_MAX_EVENT_BYTES: Final = 256 * 1024


def decode_event(payload: bytes | str, max_event_bytes: int) -> dict[str, Any] | Rejection:
    """The JSON object in `payload`, or a `size` or `json` rejection."""
    size = _utf8_size(payload, max_event_bytes)
    if size > max_event_bytes:
        return Rejection(
            (
                Problem(
                    "",
                    RULE_SIZE,
                    f"event is {size} bytes of JSON, more than the {max_event_bytes} "
                    "allowed (DRIFTLOOP_INGESTION_MAX_EVENT_BYTES)",
                ),
            )
        )
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError as error:
        return Rejection((Problem("", RULE_JSON, f"event is not valid JSON: {error}"),))
    if type(data) is not dict:
        return Rejection(
            (Problem("", RULE_JSON, f"event must be a JSON object, got {show(data)}"),)
        )
    return data


def _utf8_size(payload: bytes | str, limit: int) -> int:
    """The payload's size in UTF-8 bytes; for a str too short to exceed `limit`
    even at 4 bytes a character, its length (a lower bound) without encoding it."""
    if isinstance(payload, bytes):
        return len(payload)
    if len(payload) * 4 <= limit:
        return len(payload)
    return len(payload.encode("utf-8", errors="surrogatepass"))
