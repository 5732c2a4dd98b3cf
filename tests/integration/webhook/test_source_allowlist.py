"""BILLING_WEBHOOK_ALLOWED_IPS and BILLING_WEBHOOK_TRUSTED_PROXIES: who the sender is, who may
send, and what a refused source gets (403, counted, rate-limited lines, /healthz still open)."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from billing.adapters.refusal_log import RefusalLog
from billing.adapters.webhook import SourcePolicy, create_public_app
from billing.adapters.webhook.sources import parse_address

from .conftest import NOW, SECRET, StripeSender
from .harness import RunningApp, Service, committed_by_group, request
from .stripe_events import encode, stripe_signature


def nets(*cidrs: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in cidrs)


LOOPBACK_PROXY = nets("127.0.0.0/8")
STRIPE_LIKE = nets("203.0.113.0/24")


# -- the policy ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [("203.0.113.7", "203.0.113.7"), (" 203.0.113.7 ", "203.0.113.7"),
     ("203.0.113.7:4431", "203.0.113.7"), ("[2001:db8::1]:443", "2001:db8::1"),
     ("2001:db8::1", "2001:db8::1"), ("::ffff:203.0.113.7", "203.0.113.7"),
     ("unknown", None), ("", None), (None, None), ("203.0.113.999", None)],
)
def test_addresses_are_read_as_peers_and_proxies_write_them(text, expected):
    address = parse_address(text)
    assert (str(address) if address is not None else None) == expected


@pytest.mark.parametrize(
    ("peer", "forwarded", "sender"),
    [
        ("198.51.100.1", ["203.0.113.7"], "198.51.100.1"),  # not our proxy: XFF ignored
        ("127.0.0.1", [], "127.0.0.1"),  # our proxy, no XFF: the proxy is all we know
        ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["203.0.113.7, 198.51.100.1"], "198.51.100.1"),  # left part: forgeable
        ("127.0.0.1", ["198.51.100.1, 203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["198.51.100.1", "203.0.113.7, 127.0.0.5"], "203.0.113.7"),  # 2 headers
        ("127.0.0.1", ["127.0.0.9, 127.0.0.5"], "127.0.0.9"),  # only proxies: the left-most
        ("127.0.0.1", ["203.0.113.7, garbage"], None),  # a hop that is no address: unknown
        ("::ffff:127.0.0.1", ["203.0.113.7"], "203.0.113.7"),  # a dual-stack listener's peer
    ],
)
def test_the_sender_is_the_right_most_address_that_is_not_our_proxy(peer, forwarded, sender):
    policy = SourcePolicy(trusted_proxies=LOOPBACK_PROXY)
    found = policy.sender(peer, forwarded)
    assert (str(found) if found is not None else None) == sender


def test_without_trusted_proxies_x_forwarded_for_is_never_believed():
    assert str(SourcePolicy().sender("127.0.0.1", ["203.0.113.7"])) == "127.0.0.1"


def test_the_allowlist_admits_its_networks_only_and_unset_admits_anyone():
    policy = SourcePolicy(allowed=nets("203.0.113.0/24", "2001:db8::/32"))
    assert policy.allows(ipaddress.ip_address("203.0.113.200"))
    assert policy.allows(ipaddress.ip_address("2001:db8::5"))
    assert not policy.allows(ipaddress.ip_address("203.0.114.1"))
    assert not policy.allows(ipaddress.ip_address("::ffff:cb00:7107"))  # a v6 form, not mapped
    assert not policy.allows(None)
    assert SourcePolicy().allows(None) and not SourcePolicy().inspects_requests


# -- over HTTP ----------------------------------------------------------------------------------
def refused_sources(service: Service) -> float:
    value = service.metrics.registry.get_sample_value(
        "billing_webhook_events_total", {"type": "unknown", "outcome": "rejected_source"})
    return value or 0.0


def serve(service: Service, sources: SourcePolicy, refusals: RefusalLog | None = None
          ) -> RunningApp:
    return RunningApp(create_public_app(
        committed_by_group(service.apply_event, service.metrics), [SECRET], service.metrics,
        sources=sources, refusals=refusals,
        now=lambda: float(NOW)))


def signed(service: Service, user: str) -> tuple[bytes, str]:
    body = encode(service.checkout(user).completed())
    return body, stripe_signature(body, SECRET, NOW)


def test_an_allowed_source_is_served():
    service = Service()
    with serve(service, SourcePolicy(allowed=nets("127.0.0.1/32"))) as app:
        body, signature = signed(service, "alice")
        assert StripeSender(app.port).send_raw(body, signature).status == 200
    assert service.balance("alice") == 1200 and refused_sources(service) == 0


def test_a_source_outside_the_allowlist_gets_a_403_even_when_signed_and_stores_nothing(caplog):
    service = Service()
    with serve(service, SourcePolicy(allowed=STRIPE_LIKE)) as app:
        body, signature = signed(service, "alice")
        reply = StripeSender(app.port).send_raw(body, signature)
        assert reply.status == 403
        assert reply.json() == {"error": "this source may not send webhooks"}
        assert reply.headers["Connection"] == "close"
        assert request(app.port, "GET", "/metrics").status == 403  # nothing else to probe either
    assert service.inbox() == {} and service.ledger() == []
    assert refused_sources(service) == 2


def test_healthz_answers_whatever_the_source():
    service = Service()
    with serve(service, SourcePolicy(allowed=STRIPE_LIKE)) as app:
        reply = request(app.port, "GET", "/healthz")
    assert reply.status == 200 and reply.json() == {"status": "ok"}
    assert refused_sources(service) == 0


@pytest.mark.parametrize(
    ("forwarded", "status"),
    [("203.0.113.7", 200),
     ("198.51.100.1", 403),
     ("203.0.113.7, 198.51.100.1", 403),  # the sender claims a Stripe address on the left
     ("198.51.100.1, 203.0.113.7", 200),
     (None, 403)],  # the proxy itself is not a Stripe address
)
def test_behind_a_trusted_proxy_the_forwarded_sender_is_checked(forwarded, status):
    service = Service()
    policy = SourcePolicy(allowed=STRIPE_LIKE, trusted_proxies=LOOPBACK_PROXY)
    with serve(service, policy) as app:
        body, signature = signed(service, "alice")
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        assert StripeSender(app.port).send_raw(body, signature, **headers).status == status
    assert service.balance("alice") == (1200 if status == 200 else 0)


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored():
    service = Service()
    with serve(service, SourcePolicy(allowed=STRIPE_LIKE, trusted_proxies=nets("10.0.0.0/8"))
               ) as app:
        body, signature = signed(service, "alice")
        reply = StripeSender(app.port).send_raw(body, signature, **{
            "X-Forwarded-For": "203.0.113.7"})
    assert reply.status == 403


def test_refusal_lines_name_the_forwarded_sender_and_are_rate_limited(caplog):
    service = Service()
    refusals = RefusalLog(logging.getLogger("billing.webhook"))
    policy = SourcePolicy(allowed=STRIPE_LIKE, trusted_proxies=LOOPBACK_PROXY)
    with caplog.at_level(logging.INFO, logger="billing.webhook"), serve(
            service, policy, refusals) as app:
        sender = StripeSender(app.port)
        for n in range(60):
            assert sender.send_raw(b"{}", "t=1,v1=x", **{
                "X-Forwarded-For": f"198.51.100.{n % 3}"}).status == 403
        refusals.flush()
    lines = [r for r in caplog.records if r.name == "billing.webhook"]
    assert [line.remote for line in lines[:5]] == [f"198.51.100.{n % 3}" for n in range(5)]
    assert len(lines) == 6 and refused_sources(service) == 60
    summary = lines[5].getMessage()
    assert summary.startswith("55 more refused in the last ")
    assert summary.endswith("reason rejected_source, top remote addresses "
                            "198.51.100.2 (19), 198.51.100.0 (18), 198.51.100.1 (18)")
