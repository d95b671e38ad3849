"""Payment events for the built-in feature set, and the aggregates they make."""

from __future__ import annotations

import random
import time
from collections.abc import Sequence


def make_payments(count: int, entities: Sequence[str], seed: int) -> list[dict[str, object]]:
    """`count` payments over `entities`, all within the last five minutes, so
    both windows of the built-in feature set hold every one of them."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    return [
        {
            "event_id": f"ev-{i}",
            "customer_id": rng.choice(entities),
            "ts": now - 300_000 + i * (290_000 // count),
            "amount": round(rng.uniform(1, 400), 2),
            "channel": rng.choice(["web", "pos", "atm"]),
            "hour": rng.randrange(24),
        }
        for i in range(count)
    ]


def expected_aggregates(
    events: Sequence[dict[str, object]], entities: Sequence[str]
) -> dict[str, tuple[int, float]]:
    """Per entity: how many payments, and their mean amount."""
    expected = {}
    for entity in entities:
        amounts = [float(e["amount"]) for e in events if e["customer_id"] == entity]  # type: ignore[arg-type]
        expected[entity] = (len(amounts), sum(amounts) / len(amounts))
    return expected
