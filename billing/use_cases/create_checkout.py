"""Create a Checkout Session for a catalog package, surviving a crash at any point (rule 2)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from billing.domain.catalog import Catalog, CoinPackage, product_description, product_name
from billing.domain.errors import GatewayRejected, IdempotencyKeyReused
from billing.domain.limits import check_id, check_key, check_url
from billing.domain.payment import PaymentSession, PaymentStatus, new_payment_id
from billing.ports import CheckoutParams, PaymentGateway, UnitOfWork
from billing.use_cases._unit import UnitRunner

# Stripe accepts 30 minutes to 24 hours; an hour keeps abandoned sessions short-lived.
CHECKOUT_TTL = timedelta(hours=1)


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateCheckoutCommand:
    user_id: str
    package_id: str
    success_url: str
    cancel_url: str
    request_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckoutCreated:
    session_id: str
    checkout_url: str
    expires_at: datetime
    payment_id: str


@dataclass(frozen=True, slots=True)
class CreateCheckout:
    units: UnitRunner
    gateway: PaymentGateway
    catalog: Catalog
    ttl: timedelta = CHECKOUT_TTL

    async def __call__(self, command: CreateCheckoutCommand) -> CheckoutCreated:
        check_id("user_id", command.user_id)
        check_id("package_id", command.package_id)
        check_url("success_url", command.success_url)
        check_url("cancel_url", command.cancel_url)
        check_key("request_id", command.request_id)
        package = self.catalog.get(command.package_id)

        # The slot first: a request past the bound on provider calls is refused (Overloaded)
        # before our row is written.
        async with self.gateway.reserve():
            payment = await self.units.run_async(
                lambda unit: self._record(unit, command, package)
            )
            if not payment.stripe_session_id:
                if payment.status is not PaymentStatus.PENDING:
                    raise GatewayRejected(
                        f"checkout request {command.request_id!r} ended before Stripe was"
                        " reached; send a new request_id"
                    )
                # If the caller leaves while Stripe answers, the PENDING row stays: a retry
                # with the same request_id resends the same parameters under the same
                # Idempotency-Key and gets the same session (rule 2).
                snapshot = await self.gateway.create_checkout(checkout_params(payment))
                payment = await self.units.run_async(
                    lambda unit: self._attach(
                        unit, payment.payment_id, snapshot.session_id, snapshot.url
                    )
                )
        return CheckoutCreated(
            session_id=payment.stripe_session_id,
            checkout_url=payment.checkout_url,
            expires_at=payment.expires_at,
            payment_id=payment.payment_id,
        )

    def _record(
        self, unit: UnitOfWork, command: CreateCheckoutCommand, package: CoinPackage
    ) -> PaymentSession:
        existing = unit.payments.by_request(command.user_id, command.request_id)
        if existing is not None:
            asked = (command.package_id, command.success_url, command.cancel_url)
            if asked != (existing.package_id, existing.success_url, existing.cancel_url):
                raise IdempotencyKeyReused(
                    f"request_id {command.request_id!r} was already used with other parameters"
                )
            return existing
        now = self.units.now()
        payment = PaymentSession(
            payment_id=new_payment_id(),
            user_id=command.user_id,
            request_id=command.request_id,
            package_id=package.id,
            coins=package.coins,
            bonus=package.bonus,
            amount=package.price,
            success_url=command.success_url,
            cancel_url=command.cancel_url,
            expires_at=(now + self.ttl).replace(microsecond=0),
            created_at=now,
            updated_at=now,
        )
        unit.payments.add(payment)
        return payment

    def _attach(
        self, unit: UnitOfWork, payment_id: str, session_id: str, url: str
    ) -> PaymentSession:
        payment = unit.payments.by_payment_id(payment_id)
        assert payment is not None, "a recorded payment is never deleted"
        if not payment.stripe_session_id or not payment.checkout_url:
            payment.attach_checkout(session_id, url, self.units.now())
            unit.payments.save(payment)
        return payment


def checkout_params(payment: PaymentSession) -> CheckoutParams:
    """The parameters sent to Stripe, rebuilt from our row only, so a retry sends the same."""
    return CheckoutParams(
        payment_id=payment.payment_id,
        user_id=payment.user_id,
        package_id=payment.package_id,
        coins=payment.coins,
        bonus=payment.bonus,
        amount=payment.amount,
        product_name=product_name(payment.coins),
        description=product_description(payment.coins, payment.bonus),
        success_url=payment.success_url,
        cancel_url=payment.cancel_url,
        expires_at=payment.expires_at,
    )
