"""The schema: SQLAlchemy Core tables. The migrations add up to exactly this (a test checks it).

The database, not only Python, holds the money invariants, for every process that writes:
- `accounts.balance >= 0` (CHECK);
- one ledger row per credit or debit (`ledger.key` unique: a purchase, refund, dispute or
  idempotency key), one inbox row per provider event, one refund per refund key and per `re_` id,
  one payment per (user, request_id) and per Checkout Session, one response per idempotency scope.

Optional Stripe ids are NULL until known (many rows may lack one, a unique index ignores NULLs);
the repositories map NULL to the domain's "" and back. Money is an integer amount in the
currency's minor unit plus its ISO 4217 code. Every timestamp is timezone-aware UTC.
"""

from __future__ import annotations

from sqlalchemy import (
    CHAR,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from billing.adapters.sql.types import UtcDateTime

# Deterministic constraint names, identical on every backend, so migrations can refer to them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Lengths: our own ids follow DESIGN.md's limits; Stripe documents ids of at most 255 characters;
# anything of unbounded size (URLs from Stripe, payloads, free text) is TEXT.
USER_ID = String(128)
OUR_KEY = String(64)  # request_id, idempotency key, our payment id
STRIPE_ID = String(255)
LEDGER_KEY = String(255)  # e.g. "SpendCoins:<user_id>:<idempotency key>"
ENUM = String(32)

# SQLite gives automatic ids only to an INTEGER PRIMARY KEY (its rowid, 64-bit anyway).
SEQUENCE = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("user_id", USER_ID, primary_key=True),
    Column("balance", BigInteger, nullable=False),
    CheckConstraint("balance >= 0", name="balance_not_negative"),
)

ledger = Table(
    "ledger",
    metadata,
    # The keyset of pagination and the public transaction id (txn_<seq>). AUTOINCREMENT on
    # SQLite: a seq is never reused, even if the newest rows were ever deleted.
    Column("seq", SEQUENCE, Identity(), primary_key=True),
    Column("key", LEDGER_KEY, nullable=False),
    Column("user_id", USER_ID, ForeignKey("accounts.user_id"), nullable=False),
    Column("type", ENUM, nullable=False),
    Column("coins", BigInteger, nullable=False),  # signed: debits are negative
    Column("balance_after", BigInteger, nullable=False),
    Column("shortfall", BigInteger, nullable=False),
    Column("description", Text, nullable=False),
    Column("session_id", STRIPE_ID, nullable=False),
    Column("payment_id", OUR_KEY, nullable=False),
    Column("caller", String(128), nullable=False),
    Column("request_id", STRIPE_ID, nullable=False),  # an idempotency key or a Stripe event id
    Column("created_at", UtcDateTime, nullable=False),
    # The row's place in the one global feed, given after its transaction commits: NULL until
    # then (Postgres: the sequencer numbers committed rows; SQLite: the writer, just before its
    # COMMIT, under the database's write lock).
    Column("feed_position", BigInteger, nullable=True),
    UniqueConstraint("key"),
    CheckConstraint("balance_after >= 0", name="balance_after_not_negative"),
    sqlite_autoincrement=True,
)
# The sequence behind ledger.seq on Postgres (an identity column's sequence is named
# <table>_<column>_seq; CACHE 1, the default: values are never handed out in blocks, so per user,
# seq order is commit order). A test checks both. The SQL repositories draw from it by name.
LEDGER_SEQUENCE = "ledger_seq_seq"
# A user's history, newest first (WHERE user_id = ? AND seq < ? ORDER BY seq DESC LIMIT n: the
# index read backwards), and the audit's scan of every row by (user_id, seq) without a sort.
Index("ix_ledger_user_id_seq", ledger.c.user_id, ledger.c.seq)
# The sequence feed positions are drawn from on Postgres (sequencer.py), CACHE 1: never handed
# out in blocks, so a later draw is always a higher value, whichever session makes it. A test
# checks it. SQLite needs none: a row's position there is its seq.
FEED_SEQUENCE = "ledger_feed_position_seq"
# The feed, every user's or one user's (WHERE [user_id = ? AND] feed_position > ? ORDER BY
# feed_position LIMIT n), read in the order of these indexes; one position per row.
Index("ix_ledger_feed_position", ledger.c.feed_position, unique=True)
Index("ix_ledger_user_id_feed_position", ledger.c.user_id, ledger.c.feed_position)
# The rows still waiting for a position, in seq order: the sequencer finds them here without a
# scan of the ledger. Partial, so it holds only those few rows (on SQLite, for an instant).
Index("ix_ledger_seq", ledger.c.seq, postgresql_where=ledger.c.feed_position.is_(None),
      sqlite_where=ledger.c.feed_position.is_(None))

payments = Table(
    "payments",
    metadata,
    Column("payment_id", OUR_KEY, primary_key=True),
    Column("user_id", USER_ID, nullable=False),
    Column("request_id", OUR_KEY, nullable=False),
    Column("package_id", String(128), nullable=False),
    Column("coins", BigInteger, nullable=False),
    Column("bonus", BigInteger, nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", CHAR(3), nullable=False),
    Column("success_url", Text, nullable=False),
    Column("cancel_url", Text, nullable=False),
    Column("expires_at", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("status", ENUM, nullable=False),
    Column("stripe_session_id", STRIPE_ID, nullable=True),  # NULL until Stripe answered
    Column("checkout_url", Text, nullable=False),
    Column("payment_intent_id", STRIPE_ID, nullable=True),  # NULL until paid
    Column("coins_credited", BigInteger, nullable=False),
    Column("coins_refunded", BigInteger, nullable=False),
    UniqueConstraint("user_id", "request_id"),  # a retried CreateCheckout resumes, never doubles
    UniqueConstraint("stripe_session_id"),
    UniqueConstraint("payment_intent_id"),
)
# Reconciliation: PENDING sessions older than a cutoff, oldest first.
Index("ix_payments_status_created_at", payments.c.status, payments.c.created_at)

refunds = Table(
    "refunds",
    metadata,
    Column("refund_key", STRIPE_ID, primary_key=True),  # ours (rfk_...) or a foreign re_ id
    Column("payment_id", OUR_KEY, ForeignKey("payments.payment_id"), nullable=False),
    Column("user_id", USER_ID, nullable=False),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", CHAR(3), nullable=False),
    Column("coins", BigInteger, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("payment_intent_id", STRIPE_ID, nullable=False),
    Column("reason", Text, nullable=False),
    Column("request_id", OUR_KEY, nullable=False),
    Column("stripe_refund_id", STRIPE_ID, nullable=True),  # NULL until Stripe answered
    Column("status", ENUM, nullable=False),
    Column("shortfall", BigInteger, nullable=False),
    UniqueConstraint("stripe_refund_id"),
)
Index("ix_refunds_payment_id", refunds.c.payment_id)
# Reconciliation: refunds Stripe has not confirmed yet, oldest first.
Index("ix_refunds_status_created_at", refunds.c.status, refunds.c.created_at)

webhook_inbox = Table(
    "webhook_inbox",
    metadata,
    Column("event_id", STRIPE_ID, primary_key=True),  # each provider event is applied once
    Column("type", String(128), nullable=False),
    Column("payload", Text, nullable=False),
    Column("received_at", UtcDateTime, nullable=False),
    Column("processed_at", UtcDateTime, nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("outcome", ENUM, nullable=False),
    Column("error", Text, nullable=False),
    Column("next_attempt_at", UtcDateTime, nullable=True),
)
# `billing events list [--failed]`: newest first, optionally only unmatched/rejected/parked;
# reconciliation: unmatched events due for a retry, oldest first.
Index("ix_webhook_inbox_received_at", webhook_inbox.c.received_at)
Index("ix_webhook_inbox_outcome_received_at", webhook_inbox.c.outcome,
      webhook_inbox.c.received_at)

idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("rpc", String(64), nullable=False),
    Column("user_id", USER_ID, nullable=False),
    Column("key", OUR_KEY, nullable=False),
    Column("params_hash", String(64), nullable=False),  # sha256 hex of the canonical parameters
    Column("response", Text, nullable=False),  # the first successful response, as JSON
    Column("created_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("rpc", "user_id", "key"),  # a key is scoped to (RPC, user)
)
