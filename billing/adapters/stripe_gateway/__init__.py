"""Stripe, for real: the PaymentGateway on the official SDK, and event translation."""

from billing.adapters.stripe_gateway.events import translate_event
from billing.adapters.stripe_gateway.gateway import StripePaymentGateway

__all__ = ["StripePaymentGateway", "translate_event"]
