"""Initial schema: accounts, ledger, payments, refunds, webhook inbox, idempotency records.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Written once and never edited: billing/adapters/sql/tables.py must keep matching the sum of the
migrations (tests/integration/sql/test_migrations.py compares them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def timestamp() -> sa.DateTime:
    # The application stores these through UtcDateTime (timezone-aware UTC on every backend).
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_accounts_balance_not_negative")),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_accounts")),
    )
    op.create_table(
        "ledger",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                  sa.Identity(always=False), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=32), nullable=False),
        sa.Column("coins", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("shortfall", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("session_id", sa.String(length=255), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("caller", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.CheckConstraint("balance_after >= 0",
                           name=op.f("ck_ledger_balance_after_not_negative")),
        sa.ForeignKeyConstraint(["user_id"], ["accounts.user_id"],
                                name=op.f("fk_ledger_user_id_accounts")),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_ledger")),
        sa.UniqueConstraint("key", name=op.f("uq_ledger_key")),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_ledger_user_id_seq", "ledger", ["user_id", "seq"], unique=False)
    op.create_table(
        "payments",
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("package_id", sa.String(length=128), nullable=False),
        sa.Column("coins", sa.BigInteger(), nullable=False),
        sa.Column("bonus", sa.BigInteger(), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("success_url", sa.Text(), nullable=False),
        sa.Column("cancel_url", sa.Text(), nullable=False),
        sa.Column("expires_at", timestamp(), nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("stripe_session_id", sa.String(length=255), nullable=True),
        sa.Column("checkout_url", sa.Text(), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("coins_credited", sa.BigInteger(), nullable=False),
        sa.Column("coins_refunded", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("payment_id", name=op.f("pk_payments")),
        sa.UniqueConstraint("payment_intent_id", name=op.f("uq_payments_payment_intent_id")),
        sa.UniqueConstraint("stripe_session_id", name=op.f("uq_payments_stripe_session_id")),
        sa.UniqueConstraint("user_id", "request_id",
                            name=op.f("uq_payments_user_id_request_id")),
    )
    op.create_index("ix_payments_status_created_at", "payments",
                    ["status", "created_at"], unique=False)
    op.create_table(
        "refunds",
        sa.Column("refund_key", sa.String(length=255), nullable=False),
        sa.Column("payment_id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.CHAR(length=3), nullable=False),
        sa.Column("coins", sa.BigInteger(), nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.Column("updated_at", timestamp(), nullable=False),
        sa.Column("payment_intent_id", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("stripe_refund_id", sa.String(length=255), nullable=True),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("shortfall", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.payment_id"],
                                name=op.f("fk_refunds_payment_id_payments")),
        sa.PrimaryKeyConstraint("refund_key", name=op.f("pk_refunds")),
        sa.UniqueConstraint("stripe_refund_id", name=op.f("uq_refunds_stripe_refund_id")),
    )
    op.create_index("ix_refunds_payment_id", "refunds", ["payment_id"], unique=False)
    op.create_index("ix_refunds_status_created_at", "refunds",
                    ["status", "created_at"], unique=False)
    op.create_table(
        "webhook_inbox",
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=128), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", timestamp(), nullable=False),
        sa.Column("processed_at", timestamp(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(length=32), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("next_attempt_at", timestamp(), nullable=True),
        sa.PrimaryKeyConstraint("event_id", name=op.f("pk_webhook_inbox")),
    )
    op.create_index("ix_webhook_inbox_received_at", "webhook_inbox",
                    ["received_at"], unique=False)
    op.create_index("ix_webhook_inbox_outcome_received_at", "webhook_inbox",
                    ["outcome", "received_at"], unique=False)
    op.create_table(
        "idempotency_records",
        sa.Column("rpc", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("params_hash", sa.String(length=64), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", timestamp(), nullable=False),
        sa.PrimaryKeyConstraint("rpc", "user_id", "key", name=op.f("pk_idempotency_records")),
    )


def downgrade() -> None:
    op.drop_table("idempotency_records")
    op.drop_table("webhook_inbox")
    op.drop_table("refunds")
    op.drop_table("payments")
    op.drop_table("ledger")
    op.drop_table("accounts")
