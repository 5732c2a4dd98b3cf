"""The Postgres notification channels that carry wake-ups between replicas.

NOTIFY takes a cluster-wide lock from the notifying statement through its COMMIT, so only two
kinds of commit send one: the feed sequencer's (once per numbering transaction, never one per
ledger write) and a payment status change that wrote no ledger row. A listener that loses its
connection re-reads what it serves after reconnecting: notifications sent meanwhile are lost,
and a slow poll is the safety net.
"""

from __future__ import annotations

# Payload: the highest feed position the sequencer's commit made visible, as decimal text.
FEED_CHANNEL = "billing_feed"
# Payload: the Checkout Session id (cs_...) whose payment status changed without a ledger row.
STATUS_CHANNEL = "billing_status"
