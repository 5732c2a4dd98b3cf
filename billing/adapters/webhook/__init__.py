"""aiohttp apps: Stripe's webhook and liveness (public port); readiness and metrics (admin)."""

from billing.adapters.webhook.admin_app import create_admin_app
from billing.adapters.webhook.connections import ConnectionGuard, ConnectionLimits
from billing.adapters.webhook.group_commit import GroupCommit
from billing.adapters.webhook.public_app import WEBHOOK_PATH, create_public_app
from billing.adapters.webhook.signature import SignatureError, verify_signature
from billing.adapters.webhook.sources import SourcePolicy

__all__ = [
    "GroupCommit",
    "WEBHOOK_PATH",
    "ConnectionGuard",
    "ConnectionLimits",
    "SignatureError",
    "SourcePolicy",
    "create_admin_app",
    "create_public_app",
    "verify_signature",
]
