from __future__ import annotations

import json

from billing.adapters.stripe_gateway.events import translate_event
from billing.domain.payment_events import PaymentEvent


class StripeEventParser:
    """Implements PaymentEventParser: a stored Stripe event payload back into a PaymentEvent."""

    def parse(self, payload: str) -> PaymentEvent:
        return translate_event(json.loads(payload), payload)
