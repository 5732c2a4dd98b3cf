"""How one fake Stripe runs: where its state lives, where it sends events, how it misbehaves."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PUBLIC_URL = "http://127.0.0.1:12111"


@dataclass(frozen=True, slots=True)
class FakeStripeConfig:
    state_path: str  # SQLite file: sessions, refunds, events, idempotency keys
    webhook_url: str  # where events are POSTed; empty: nowhere (they stay undelivered)
    webhook_secret: str  # events are signed with it (the first one, if comma-separated)
    drop_rate: float = 0.0  # share of events never delivered (reconciliation finds them)
    latency_s: float = 0.0  # added to every API answer: real Stripe takes a few hundred ms
    public_url: str = DEFAULT_PUBLIC_URL  # base of the checkout URLs customers open
    api_key_prefix: str = "sk_test_"  # any key with this prefix (and more) is accepted
    # A card-4000000000005126 refund succeeds first, then fails this much later.
    refund_failure_delay_s: float = 0.5
    # Re-sending after a non-2xx answer: first delay, doubling up to the cap.
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.drop_rate <= 1.0:
            raise ValueError("drop_rate must be between 0 and 1")
        if self.latency_s < 0:
            raise ValueError("latency_s must not be negative")
        if not self.api_key_prefix:
            raise ValueError("api_key_prefix must not be empty")

    @property
    def signing_secret(self) -> str:
        return self.webhook_secret.split(",")[0].strip()
