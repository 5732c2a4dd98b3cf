"""Typed settings from the environment (and an optional `.env`), per DESIGN.md's table.

Every variable is parsed and checked once, at start: an error names the variable and what is
wrong with it, never its secret value. Secrets are wrapped in `Secret`, whose repr hides them.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from dotenv import dotenv_values

from billing.domain.feed import EVERY_USER_SCOPE
from billing.domain.limits import DEFAULT_MAX_COINS

T = TypeVar("T")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

FAKE_STRIPE_KEY = "sk_test_fake"
FAKE_WEBHOOK_SECRET = "whsec_dev_only_not_secret"  # public by design: the fake's only
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("json", "text")
_KEY_PREFIXES = ("sk_test_", "sk_live_", "rk_test_", "rk_live_")


class SettingsError(ValueError):
    """A variable is unusable; the message names it and says why."""


class Secret:
    """A value that must never reach a log, a repr or an error message."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True, slots=True)
class ApiToken:
    """One caller's bearer token; `rpcs` None means every RPC."""

    name: str
    token: Secret
    rpcs: frozenset[str] | None = None

    def allows(self, rpc: str) -> bool:
        return self.rpcs is None or rpc in self.rpcs


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    database_url: str = field(default="sqlite:///var/billing.db", repr=False)
    host: str = "127.0.0.1"
    grpc_port: int = 50051
    http_port: int = 8080
    admin_port: int = 9090
    api_tokens: tuple[ApiToken, ...] = ()
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    catalog_path: Path | None = None
    max_coins: int = DEFAULT_MAX_COINS
    reconcile_interval_s: float = 60.0
    reconcile_after_s: float = 900.0
    event_max_attempts: int = 10
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "json"
    stripe_secret_key: Secret | None = None
    stripe_webhook_secrets: tuple[Secret, ...] = (Secret(FAKE_WEBHOOK_SECRET),)
    stripe_api_base: str | None = None
    fake_stripe_port: int = 12111
    fake_stripe_state: Path = Path("var/stripe-fake.db")
    fake_stripe_webhook_url: str = ""  # "" = derived from http_port
    fake_stripe_drop_rate: float = 0.0
    fake_stripe_latency_ms: int = 0
    workers: int = 1
    db_pool_size: int = 16
    stripe_max_concurrency: int = 256
    stripe_timeout_s: float = 30.0
    # The public port (the one the internet reaches); the defaults are argued in the README.
    webhook_allowed_ips: tuple[Network, ...] | None = None  # None: any source
    webhook_trusted_proxies: tuple[Network, ...] = ()
    webhook_max_connections: int = 512
    webhook_header_timeout_s: float = 10.0
    webhook_body_timeout_s: float = 10.0
    webhook_keepalive_s: float = 75.0
    webhook_max_refusals_per_s: float = 500.0  # 0: no pace
    # Streams (WatchPaymentStatus, StreamTransactions).
    max_streams: int = 10000  # per process; beyond: OVERLOADED (limit "streams")
    max_watch_s: float = 3600.0  # a watch without a deadline ends after this
    stream_checkpoint_s: float = 5.0  # an idle StreamTransactions sends a checkpoint this often
    stream_buffer: int = 1000  # rows a stream may fall behind before SLOW_CONSUMER
    feed_poll_s: float = 1.0  # the feed's safety net: read it (and sequence it) this often

    # -- derived -------------------------------------------------------------------------------
    @property
    def fake_mode(self) -> bool:
        """No Stripe key: the SDK talks to the local fake with a test key."""
        return self.stripe_secret_key is None

    @property
    def live_mode(self) -> bool:
        key = self.stripe_secret_key
        return key is not None and "_live_" in key.reveal()[:8]

    @property
    def auth_enabled(self) -> bool:
        return bool(self.api_tokens)

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @property
    def stripe_key(self) -> Secret:
        return self.stripe_secret_key or Secret(FAKE_STRIPE_KEY)

    @property
    def fake_stripe_url(self) -> str:
        return f"http://127.0.0.1:{self.fake_stripe_port}"

    @property
    def effective_stripe_api_base(self) -> str | None:
        """Where the SDK goes: STRIPE_API_BASE, else the fake in fake mode, else Stripe's own."""
        if self.stripe_api_base:
            return self.stripe_api_base
        return self.fake_stripe_url if self.fake_mode else None

    @property
    def runs_fake_in_process(self) -> bool:
        return self.fake_mode and not self.stripe_api_base

    @property
    def effective_fake_webhook_url(self) -> str:
        return (self.fake_stripe_webhook_url
                or f"http://127.0.0.1:{self.http_port}/api/payment/webhook")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def database_url_redacted(self) -> str:
        """The URL with any password replaced, for logs."""
        scheme, sep, rest = self.database_url.partition("://")
        credentials, at, location = rest.rpartition("@")
        if not sep or not at or ":" not in credentials:
            return self.database_url
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{location}"

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, dotenv_path: str | Path | None = ".env"
    ) -> Settings:
        """Parse the environment over `.env` (when present): the environment wins."""
        values: dict[str, str] = {}
        if dotenv_path is not None and Path(dotenv_path).is_file():
            values.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        values.update(os.environ if environ is None else environ)
        return parse(values)


def parse(env: Mapping[str, str]) -> Settings:
    """Settings from a plain mapping of variables (blank counts as unset)."""
    read = _Reader(env)
    stripe_key = read.optional("STRIPE_SECRET_KEY", _stripe_key)
    secrets = read.optional("STRIPE_WEBHOOK_SECRET", _webhook_secrets)
    if secrets is None:
        if stripe_key is not None:
            raise SettingsError(
                "STRIPE_WEBHOOK_SECRET: required with STRIPE_SECRET_KEY (the endpoint's whsec_ "
                "secret from the Stripe dashboard or `stripe listen`)"
            )
        secrets = (Secret(FAKE_WEBHOOK_SECRET),)
    tls_cert = read.optional("BILLING_TLS_CERT", _existing_file)
    tls_key = read.optional("BILLING_TLS_KEY", _existing_file)
    tls_client_ca = read.optional("BILLING_TLS_CLIENT_CA", _existing_file)
    if (tls_cert is None) != (tls_key is None):
        missing = "BILLING_TLS_KEY" if tls_key is None else "BILLING_TLS_CERT"
        raise SettingsError(f"{missing}: required when the other of BILLING_TLS_CERT/_KEY is set")
    if tls_client_ca is not None and tls_cert is None:
        raise SettingsError("BILLING_TLS_CLIENT_CA: needs BILLING_TLS_CERT and BILLING_TLS_KEY")
    log_level = read.optional("BILLING_LOG_LEVEL", _choice(LOG_LEVELS, upper=True)) or "INFO"
    settings = Settings(
        database_url=read.optional("BILLING_DATABASE_URL", _database_url)
        or "sqlite:///var/billing.db",
        host=read.optional("BILLING_HOST", _host) or "127.0.0.1",
        grpc_port=read.optional("BILLING_GRPC_PORT", _port) or 50051,
        http_port=read.optional("BILLING_HTTP_PORT", _port) or 8080,
        admin_port=read.optional("BILLING_ADMIN_PORT", _port) or 9090,
        api_tokens=read.optional("BILLING_API_TOKENS", parse_api_tokens) or (),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        catalog_path=read.optional("BILLING_CATALOG", _existing_file),
        max_coins=read.optional("BILLING_MAX_COINS", _positive_int) or DEFAULT_MAX_COINS,
        reconcile_interval_s=read.number("BILLING_RECONCILE_INTERVAL_S", 60.0),
        reconcile_after_s=read.number("BILLING_RECONCILE_AFTER_S", 900.0, allow_zero=True),
        event_max_attempts=read.optional("BILLING_EVENT_MAX_ATTEMPTS", _positive_int) or 10,
        shutdown_grace_s=read.number("BILLING_SHUTDOWN_GRACE_S", 10.0, allow_zero=True),
        log_level=log_level,
        log_format=read.optional("BILLING_LOG_FORMAT", _choice(LOG_FORMATS)) or "json",
        stripe_secret_key=stripe_key,
        stripe_webhook_secrets=secrets,
        stripe_api_base=read.optional("STRIPE_API_BASE", _http_url),
        fake_stripe_port=read.optional("BILLING_FAKE_STRIPE_PORT", _port) or 12111,
        fake_stripe_state=read.optional("BILLING_FAKE_STRIPE_STATE", Path)
        or Path("var/stripe-fake.db"),
        fake_stripe_webhook_url=read.optional("BILLING_FAKE_STRIPE_WEBHOOK_URL", _http_url) or "",
        fake_stripe_drop_rate=read.optional("BILLING_FAKE_STRIPE_DROP_RATE", _rate) or 0.0,
        fake_stripe_latency_ms=read.optional("BILLING_FAKE_STRIPE_LATENCY_MS", _non_negative_int)
        or 0,
        workers=read.optional("BILLING_WORKERS", _positive_int) or 1,
        db_pool_size=read.optional("BILLING_DB_POOL_SIZE", _positive_int) or 16,
        stripe_max_concurrency=read.optional("BILLING_STRIPE_MAX_CONCURRENCY", _positive_int)
        or 256,
        stripe_timeout_s=read.number("BILLING_STRIPE_TIMEOUT_S", 30.0),
        webhook_allowed_ips=read.optional("BILLING_WEBHOOK_ALLOWED_IPS", _networks),
        webhook_trusted_proxies=read.optional("BILLING_WEBHOOK_TRUSTED_PROXIES", _networks)
        or (),
        webhook_max_connections=read.optional("BILLING_WEBHOOK_MAX_CONNECTIONS", _positive_int)
        or 512,
        webhook_header_timeout_s=read.number("BILLING_WEBHOOK_HEADER_TIMEOUT_S", 10.0),
        webhook_body_timeout_s=read.number("BILLING_WEBHOOK_BODY_TIMEOUT_S", 10.0),
        webhook_keepalive_s=read.number("BILLING_WEBHOOK_KEEPALIVE_S", 75.0, allow_zero=True),
        webhook_max_refusals_per_s=read.number(
            "BILLING_WEBHOOK_MAX_REFUSALS_PER_S", 500.0, allow_zero=True, unit="refusals a second"
        ),
        max_streams=read.optional("BILLING_MAX_STREAMS", _positive_int) or 10000,
        max_watch_s=read.number("BILLING_MAX_WATCH_S", 3600.0),
        stream_checkpoint_s=read.number("BILLING_STREAM_CHECKPOINT_S", 5.0),
        stream_buffer=read.optional("BILLING_STREAM_BUFFER", _positive_int) or 1000,
        feed_poll_s=read.number("BILLING_FEED_POLL_S", 1.0),
    )
    ports = {"BILLING_GRPC_PORT": settings.grpc_port, "BILLING_HTTP_PORT": settings.http_port,
             "BILLING_ADMIN_PORT": settings.admin_port}
    if settings.runs_fake_in_process:
        ports["BILLING_FAKE_STRIPE_PORT"] = settings.fake_stripe_port
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            raise SettingsError(f"{name}: port {port} is already used by {seen[port]}")
        seen[port] = name
    return settings


def check_startup_safety(settings: Settings) -> list[str]:
    """Refuse unsafe combinations (raises SettingsError); return warnings to log loudly."""
    if settings.auth_enabled:
        return []
    if settings.live_mode:
        raise SettingsError(
            "BILLING_API_TOKENS: required with a live Stripe key (sk_live_/rk_live_): "
            "refusing to serve real money without caller authentication"
        )
    if not is_loopback(settings.host):
        raise SettingsError(
            f"BILLING_HOST: {settings.host!r} is not a loopback address and BILLING_API_TOKENS "
            "is unset: set tokens, or bind to 127.0.0.1"
        )
    return [
        "AUTH IS OFF: BILLING_API_TOKENS is unset, any local process may call every RPC "
        "(accepted only because BILLING_HOST is a loopback address)"
    ]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def rpc_names() -> frozenset[str]:
    """The BillingService method names, from the contract itself."""
    from billing.v1 import billing_pb2

    service = billing_pb2.DESCRIPTOR.services_by_name["BillingService"]
    return frozenset(method.name for method in service.methods)


def parse_api_tokens(text: str) -> tuple[ApiToken, ...]:
    """`name:token[:Rpc+Rpc],…`; the message never repeats a token."""
    known = rpc_names() | {EVERY_USER_SCOPE}
    tokens: list[ApiToken] = []
    seen: set[str] = set()
    for index, entry in enumerate(part.strip() for part in text.split(",")):
        if not entry:
            continue
        where = f"entry #{index + 1}"
        parts = entry.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"{where} must be name:token or name:token:Rpc+Rpc")
        name, token = parts[0].strip(), parts[1].strip()
        if not name or not name.isprintable():
            raise ValueError(f"{where} has an empty or unprintable caller name")
        where = f"entry {name!r}"
        if len(token) < 8 or not token.isascii() or not token.isprintable() or " " in token:
            raise ValueError(f"{where}: the token must be at least 8 printable ASCII characters")
        if token in seen:
            raise ValueError(f"{where}: the same token is given twice")
        seen.add(token)
        rpcs: frozenset[str] | None = None
        if len(parts) == 3:
            rpcs = frozenset(rpc.strip() for rpc in parts[2].split("+") if rpc.strip())
            unknown = sorted(rpcs - known)
            if not rpcs or unknown:
                raise ValueError(
                    f"{where}: unknown RPC names {unknown or ['(none)']}; known: {sorted(known)}"
                )
            if EVERY_USER_SCOPE in rpcs:  # every user's feed implies a user's own
                rpcs |= {"StreamTransactions"}
        tokens.append(ApiToken(name, Secret(token), rpcs))
    if not tokens:
        raise ValueError("no token given (unset the variable to turn auth off)")
    return tuple(tokens)


# -- variable parsers: each raises ValueError with a message that holds no secret ---------------
class _Reader:
    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def optional(self, name: str, convert: Callable[[str], T]) -> T | None:
        raw = self._env.get(name, "").strip()
        if not raw:
            return None
        try:
            return convert(raw)
        except (ValueError, OSError) as error:
            raise SettingsError(f"{name}: {error}") from None

    def number(self, name: str, default: float, *, allow_zero: bool = False,
               unit: str = "seconds") -> float:
        value = self.optional(name, float)
        if value is None:
            return default
        if not (value > 0 or (allow_zero and value == 0)) or value != value or value > 1e9:
            bound = "zero or more" if allow_zero else "more than zero"
            raise SettingsError(f"{name}: must be a number of {unit}, {bound}")
        return value


def _port(raw: str) -> int:
    port = _int(raw)
    if not 1 <= port <= 65535:
        raise ValueError(f"must be a port number 1-65535, got {port}")
    return port


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"must be an integer, got {raw!r}") from None


def _positive_int(raw: str) -> int:
    value = _int(raw)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(raw: str) -> int:
    value = _int(raw)
    if value < 0:
        raise ValueError(f"must be 0 or more, got {value}")
    return value


def _rate(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"must be a number between 0 and 1, got {raw!r}") from None
    if not 0 <= value <= 1:
        raise ValueError(f"must be between 0 and 1, got {value}")
    return value


def _choice(allowed: tuple[str, ...], *, upper: bool = False) -> Callable[[str], str]:
    def convert(raw: str) -> str:
        value = raw.upper() if upper else raw.lower()
        if value not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}, got {raw!r}")
        return value

    return convert


def _host(raw: str) -> str:
    if any(c.isspace() for c in raw) or "/" in raw:
        raise ValueError(f"must be a host name or IP address, got {raw!r}")
    return raw


def _http_url(raw: str) -> str:
    if not raw.startswith(("http://", "https://")) or len(raw) <= len("https://"):
        raise ValueError("must be an http(s) URL")
    return raw.rstrip("/")


def _database_url(raw: str) -> str:
    if "://" not in raw and not raw.startswith("sqlite:"):
        raise ValueError("must be a SQLAlchemy URL such as sqlite:///var/billing.db or "
                         "postgresql+psycopg2://user@host:5432/db")
    return raw


def _existing_file(raw: str) -> Path:
    path = Path(raw).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file: {raw}")
    return path


def _networks(raw: str) -> tuple[Network, ...]:
    """Comma-separated CIDRs (a bare address is its own /32 or /128)."""
    networks = []
    for entry in (part.strip() for part in raw.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry))
        except ValueError as error:
            raise ValueError(f"{error} (expected CIDRs such as 192.0.2.0/24, comma-separated)"
                             ) from None
    if not networks:
        raise ValueError("no CIDR given (unset the variable instead)")
    return tuple(networks)


def _stripe_key(raw: str) -> Secret:
    if not raw.startswith(_KEY_PREFIXES):
        raise ValueError("must be a Stripe secret key (sk_test_…, sk_live_…, rk_test_…, rk_live_…)")
    return Secret(raw)


def _webhook_secrets(raw: str) -> tuple[Secret, ...]:
    secrets = tuple(Secret(part.strip()) for part in raw.split(",") if part.strip())
    if not secrets or not all(s.reveal().startswith("whsec_") for s in secrets):
        raise ValueError("must be one or more comma-separated whsec_ secrets")
    return secrets
