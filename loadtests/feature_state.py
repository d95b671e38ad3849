"""The feature store's per-entity state: cost per event and memory per entity.

    .venv/bin/python loadtests/feature_state.py [--entities 10000,100000,1000000]
        [--events-per-entity 3] [--hot-events 100000]

Two questions from issue 21, answered on the built-in feature set with the
store's own arithmetic (`driftloop_core.feature_math`, no Kafka):

1. Does an event cost the same for a quiet entity as for a hot one? Applies
   events to one entity whose windows hold about 10, 1,000 and 100,000 events
   (events spaced so the 1 h window holds that many) and prints microseconds
   per event (point-in-time row + apply, what the stream does) and per online
   lookup, with the state's size as a changelog record (its JSON).
2. Memory per entity: builds N entities (`--events-per-entity` events each, in
   the in-memory form the stream caches) and prints the process's resident
   memory growth per entity and the average JSON record.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import time
from collections.abc import Sequence

from driftloop_core.feature_math import EntityState, FeatureMath
from driftloop_core.featureset import default_featureset_path, load_featureset

HOUR_MS = 3_600_000
T0 = 1_763_800_000_000
CHANNELS = ("web", "pos", "atm")


def rss_bytes() -> int:
    """Resident memory now (Linux /proc), falling back to the peak."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def values(i: int) -> dict[str, float | int | str]:
    return {"amount": float(i % 500) + 0.5, "channel": CHANNELS[i % 3], "hour": i % 24}


def per_event_cost(math: FeatureMath, in_window: int, measured: int = 20_000) -> dict[str, float]:
    """µs per event and per lookup for an entity whose 1 h window holds `in_window`."""
    spacing = max(1, HOUR_MS // in_window)
    state = EntityState()
    warm = in_window + HOUR_MS // spacing // 10  # fill the window, then measure
    for i in range(warm):
        math.apply(state, f"w{i}", T0 + i * spacing, values(i), position=(0, i))
    start_ms = T0 + warm * spacing
    began = time.perf_counter()
    for i in range(measured):
        event_time = start_ms + i * spacing
        fields = values(i)
        math.point_in_time_row(state, event_time, fields)
        math.apply(state, f"e{i}", event_time, fields, position=(0, warm + i))
    event_us = (time.perf_counter() - began) / measured * 1e6
    names = list(math.feature_names)
    now = start_ms + measured * spacing
    began = time.perf_counter()
    for i in range(measured):
        math.lookup(state, names, as_of_ms=None, now_ms=now + i)
    lookup_us = (time.perf_counter() - began) / measured * 1e6
    return {
        "event_us": event_us,
        "lookup_us": lookup_us,
        "json_bytes": len(json.dumps(state.to_json())),
        "raw_events": len(state.events),
    }


def memory_per_entity(math: FeatureMath, entities: int, events_each: int) -> dict[str, float]:
    gc.collect()
    before = rss_bytes()
    states: dict[str, EntityState] = {}
    sample_json = 0
    for e in range(entities):
        state = states[f"c{e}"] = EntityState()
        for k in range(events_each):
            i = e * events_each + k
            math.apply(state, f"e{i}", T0 + k * 60_000 + e % 1000, values(i), position=(0, i))
        if e % 1000 == 0:
            sample_json += len(json.dumps(state.to_json()))
    gc.collect()
    grown = rss_bytes() - before
    result = {
        "bytes_per_entity": grown / entities,
        "json_bytes": sample_json / len(range(0, entities, 1000)),
    }
    del states
    gc.collect()
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entities", default="10000,100000,1000000")
    parser.add_argument("--events-per-entity", type=int, default=3)
    parser.add_argument("--hot-events", type=int, default=100_000)
    args = parser.parse_args(argv)
    math = FeatureMath(load_featureset(default_featureset_path()))

    print("Cost per event by events in the entity's 1 h window (built-in feature set):")
    print(
        "| events in window | µs per event (row + apply) | µs per lookup "
        "| raw events kept | state JSON |"
    )
    print("|---|---|---|---|---|")
    for in_window in (10, 1_000, args.hot_events):
        cost = per_event_cost(math, in_window)
        print(
            f"| {in_window:,} | {cost['event_us']:.1f} | {cost['lookup_us']:.1f} | "
            f"{cost['raw_events']:,} | {cost['json_bytes'] / 1024:.1f} KiB |"
        )

    print()
    print(f"Memory per entity ({args.events_per_entity} events each, in-memory states):")
    print("| entities | resident memory per entity | state JSON per entity |")
    print("|---|---|---|")
    for entities in (int(n) for n in args.entities.split(",")):
        memory = memory_per_entity(math, entities, args.events_per_entity)
        print(
            f"| {entities:,} | {memory['bytes_per_entity'] / 1024:.2f} KiB | "
            f"{memory['json_bytes']:.0f} B |"
        )


if __name__ == "__main__":
    main()
