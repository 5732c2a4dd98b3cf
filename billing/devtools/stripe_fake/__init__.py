"""A local fake Stripe: the API subset the gateway uses, a checkout page, signed webhooks.

Never used when a real key is set. See `app` (the server), `checkout_page` and `dev` (the
developer endpoints the CLI helpers in `client` call).
"""

from billing.devtools.stripe_fake.app import create_fake_app, run_fake
from billing.devtools.stripe_fake.client import FakeStripeError, fake_action, trigger_event
from billing.devtools.stripe_fake.config import FakeStripeConfig
from billing.devtools.stripe_fake.dev import TRIGGERS

__all__ = [
    "TRIGGERS",
    "FakeStripeConfig",
    "FakeStripeError",
    "create_fake_app",
    "fake_action",
    "run_fake",
    "trigger_event",
]
