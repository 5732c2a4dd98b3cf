"""One replica of the service, as a separate OS process (run by test_concurrency.py).

argv[1]: JSON {"url": ..., "events": [[paid session fields, event id], ...]}. Prints "ready" once
connected, waits for "go" on stdin, applies every event on its own thread, then prints
{"first_applications": {event_id: how many times this process applied it first}}.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from functools import partial

from sql_storm import PaidSession, run_together, runner

from billing.adapters.sql import SqlStore
from billing.use_cases.apply_payment_event import ApplyPaymentEvent, EventApplied


def main() -> None:
    spec = json.loads(sys.argv[1])
    store = SqlStore(spec["url"], pool_size=10)
    assert store.ping(), "the replica cannot reach the database"
    apply = ApplyPaymentEvent(runner(store))
    events = [PaidSession(**session).completed(event_id) for session, event_id in spec["events"]]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected go")

    results = run_together([partial(apply, event) for event in events])

    first = Counter({event.event_id: 0 for event in events})
    for event, result in zip(events, results, strict=True):
        if not isinstance(result, EventApplied):
            raise SystemExit(f"{event.event_id}: {result!r}")
        first[event.event_id] += 0 if result.duplicate else 1
    store.dispose()
    print(json.dumps({"first_applications": dict(first)}), flush=True)


if __name__ == "__main__":
    main()
