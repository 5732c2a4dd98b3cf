"""Stripe, for real: the PaymentGateway on the official SDK, and event translation."""

from billing.adapters.stripe_gateway.events import translate_event
from billing.adapters.stripe_gateway.gateway import StripePaymentGateway
from billing.adapters.stripe_gateway.parser import StripeEventParser

__all__ = ["StripeEventParser", "StripePaymentGateway", "translate_event"]
