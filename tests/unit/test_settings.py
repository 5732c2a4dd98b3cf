"""Settings: every variable of DESIGN.md with its default, errors that name the variable, and
secrets that never show."""

from pathlib import Path

import pytest

from billing.settings import (
    FAKE_STRIPE_KEY,
    FAKE_WEBHOOK_SECRET,
    Secret,
    Settings,
    SettingsError,
    check_startup_safety,
    parse,
)


def test_defaults_follow_the_design_table():
    settings = parse({})
    assert settings.database_url == "sqlite:///var/billing.db"
    assert settings.host == "127.0.0.1"
    assert (settings.grpc_port, settings.http_port, settings.admin_port) == (50051, 8080, 9090)
    assert settings.api_tokens == () and not settings.auth_enabled
    assert settings.tls_cert is settings.tls_key is settings.tls_client_ca is None
    assert settings.catalog_path is None
    assert settings.max_coins == 10_000_000
    assert (settings.reconcile_interval_s, settings.reconcile_after_s) == (60, 900)
    assert settings.event_max_attempts == 10
    assert settings.shutdown_grace_s == 10
    assert (settings.log_level, settings.log_format) == ("INFO", "json")
    assert settings.fake_mode and not settings.live_mode
    assert settings.stripe_key.reveal() == FAKE_STRIPE_KEY
    assert [s.reveal() for s in settings.stripe_webhook_secrets] == [FAKE_WEBHOOK_SECRET]
    assert settings.fake_stripe_port == 12111
    assert settings.fake_stripe_state == Path("var/stripe-fake.db")
    assert settings.fake_stripe_drop_rate == 0
    assert settings.fake_stripe_latency_ms == 0
    assert (settings.workers, settings.db_pool_size) == (1, 16)
    assert (settings.stripe_max_concurrency, settings.stripe_timeout_s) == (256, 30)
    assert settings.webhook_allowed_ips is None and settings.webhook_trusted_proxies == ()
    assert settings.webhook_max_connections == 512
    assert (settings.webhook_header_timeout_s, settings.webhook_body_timeout_s) == (10, 10)
    assert settings.webhook_keepalive_s == 75
    assert settings.webhook_max_refusals_per_s == 500


def test_the_concurrency_variables_are_read():
    settings = parse({"BILLING_FAKE_STRIPE_LATENCY_MS": "400", "BILLING_WORKERS": "2",
                      "BILLING_DB_POOL_SIZE": "8", "BILLING_STRIPE_MAX_CONCURRENCY": "64",
                      "BILLING_STRIPE_TIMEOUT_S": "2.5"})
    assert (settings.fake_stripe_latency_ms, settings.workers, settings.db_pool_size) == (
        400, 2, 8)
    assert (settings.stripe_max_concurrency, settings.stripe_timeout_s) == (64, 2.5)


def test_the_public_port_settings_are_read():
    settings = parse({
        "BILLING_WEBHOOK_ALLOWED_IPS": " 3.18.12.63, 10.0.0.0/8 ,2001:db8::/32,",
        "BILLING_WEBHOOK_TRUSTED_PROXIES": "192.168.0.0/16",
        "BILLING_WEBHOOK_MAX_CONNECTIONS": "64",
        "BILLING_WEBHOOK_HEADER_TIMEOUT_S": "2.5",
        "BILLING_WEBHOOK_BODY_TIMEOUT_S": "5",
        "BILLING_WEBHOOK_KEEPALIVE_S": "0",
        "BILLING_WEBHOOK_MAX_REFUSALS_PER_S": "0",
    })
    assert [str(n) for n in settings.webhook_allowed_ips or ()] == [
        "3.18.12.63/32", "10.0.0.0/8", "2001:db8::/32"]
    assert [str(n) for n in settings.webhook_trusted_proxies] == ["192.168.0.0/16"]
    assert settings.webhook_max_connections == 64
    assert (settings.webhook_header_timeout_s, settings.webhook_body_timeout_s) == (2.5, 5)
    assert settings.webhook_keepalive_s == 0  # close after each answer
    assert settings.webhook_max_refusals_per_s == 0  # no pace


def test_fake_mode_points_the_sdk_at_the_in_process_fake():
    settings = parse({"BILLING_FAKE_STRIPE_PORT": "13000", "BILLING_HTTP_PORT": "8181"})
    assert settings.effective_stripe_api_base == "http://127.0.0.1:13000"
    assert settings.runs_fake_in_process
    assert settings.effective_fake_webhook_url == "http://127.0.0.1:8181/api/payment/webhook"


def test_an_external_fake_is_used_instead_of_starting_one():
    settings = parse({"STRIPE_API_BASE": "http://127.0.0.1:14000/"})
    assert settings.effective_stripe_api_base == "http://127.0.0.1:14000"
    assert settings.fake_mode and not settings.runs_fake_in_process


def test_a_real_key_needs_a_webhook_secret():
    with pytest.raises(SettingsError, match="^STRIPE_WEBHOOK_SECRET: required"):
        parse({"STRIPE_SECRET_KEY": "sk_test_abc"})


def test_a_real_key_talks_to_stripe_itself():
    settings = parse(
        {"STRIPE_SECRET_KEY": "sk_test_abc", "STRIPE_WEBHOOK_SECRET": "whsec_1,whsec_2"}
    )
    assert not settings.fake_mode and not settings.live_mode
    assert settings.effective_stripe_api_base is None
    assert [s.reveal() for s in settings.stripe_webhook_secrets] == ["whsec_1", "whsec_2"]


def test_a_live_key_without_tokens_refuses_to_start():
    settings = parse({"STRIPE_SECRET_KEY": "sk_live_abc", "STRIPE_WEBHOOK_SECRET": "whsec_1"})
    assert settings.live_mode
    with pytest.raises(SettingsError, match="^BILLING_API_TOKENS: required with a live"):
        check_startup_safety(settings)


def test_auth_off_is_accepted_on_loopback_only_and_warned_about():
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        warnings = check_startup_safety(parse({"BILLING_HOST": host}))
        assert any("AUTH IS OFF" in w for w in warnings)
    for host in ("0.0.0.0", "10.0.0.5", "billing.internal", "::"):
        with pytest.raises(SettingsError, match="^BILLING_HOST: .* not a loopback"):
            check_startup_safety(parse({"BILLING_HOST": host}))


def test_tokens_allow_any_host_without_warning():
    settings = parse({"BILLING_HOST": "0.0.0.0", "BILLING_API_TOKENS": "svc:abcdefgh12345"})
    assert check_startup_safety(settings) == []


def test_api_tokens_are_parsed_with_their_rpcs():
    tokens = " shop:tok-shop-123:GetBalance+SpendCoins , support:tok-support-9 "
    settings = parse({"BILLING_API_TOKENS": tokens})
    shop, support = settings.api_tokens
    assert (shop.name, shop.token.reveal()) == ("shop", "tok-shop-123")
    assert shop.rpcs == frozenset({"GetBalance", "SpendCoins"})
    assert shop.allows("SpendCoins") and not shop.allows("GrantCoins")
    assert support.rpcs is None and support.allows("GrantCoins")


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("shop", "name:token"),
        ("shop:a:b:c", "name:token"),
        (":tok-123456", "empty or unprintable caller name"),
        ("shop:short", "at least 8"),
        ("shop:tok-123456:GetBalance+MintMoney", "unknown RPC names \\['MintMoney'\\]"),
        ("shop:tok-123456:", "unknown RPC names"),
        ("a:tok-123456,b:tok-123456", "same token is given twice"),
        (",", "no token given"),
    ],
)
def test_bad_api_tokens_are_refused_naming_the_variable_never_the_token(value, complaint):
    with pytest.raises(SettingsError, match=f"^BILLING_API_TOKENS: .*{complaint}") as error:
        parse({"BILLING_API_TOKENS": value})
    assert "tok-123456" not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("BILLING_GRPC_PORT", "abc"),
        ("BILLING_HTTP_PORT", "0"),
        ("BILLING_ADMIN_PORT", "70000"),
        ("BILLING_FAKE_STRIPE_PORT", "-1"),
        ("BILLING_MAX_COINS", "0"),
        ("BILLING_EVENT_MAX_ATTEMPTS", "ten"),
        ("BILLING_RECONCILE_INTERVAL_S", "0"),
        ("BILLING_RECONCILE_AFTER_S", "nan"),
        ("BILLING_SHUTDOWN_GRACE_S", "-1"),
        ("BILLING_LOG_LEVEL", "LOUD"),
        ("BILLING_LOG_FORMAT", "xml"),
        ("BILLING_FAKE_STRIPE_DROP_RATE", "1.5"),
        ("BILLING_FAKE_STRIPE_WEBHOOK_URL", "ftp://x"),
        ("STRIPE_API_BASE", "localhost:12111"),
        ("BILLING_CATALOG", "/no/such/catalog.toml"),
        ("BILLING_TLS_CERT", "/no/such/cert.pem"),
        ("BILLING_DATABASE_URL", "billing.db"),
        ("BILLING_HOST", "my host"),
        ("BILLING_FAKE_STRIPE_LATENCY_MS", "-5"),
        ("BILLING_WORKERS", "0"),
        ("BILLING_DB_POOL_SIZE", "many"),
        ("BILLING_STRIPE_MAX_CONCURRENCY", "0"),
        ("BILLING_STRIPE_TIMEOUT_S", "0"),
        ("BILLING_WEBHOOK_ALLOWED_IPS", "stripe.com"),
        ("BILLING_WEBHOOK_ALLOWED_IPS", "10.0.0.1/8"),
        ("BILLING_WEBHOOK_ALLOWED_IPS", ","),
        ("BILLING_WEBHOOK_TRUSTED_PROXIES", "10.0.0.0/33"),
        ("BILLING_WEBHOOK_MAX_CONNECTIONS", "0"),
        ("BILLING_WEBHOOK_HEADER_TIMEOUT_S", "0"),
        ("BILLING_WEBHOOK_BODY_TIMEOUT_S", "inf"),
        ("BILLING_WEBHOOK_KEEPALIVE_S", "-1"),
        ("BILLING_WEBHOOK_MAX_REFUSALS_PER_S", "fast"),
    ],
)
def test_a_bad_value_is_refused_naming_the_variable(name, value):
    with pytest.raises(SettingsError, match=f"^{name}: "):
        parse({name: value})


def test_two_listeners_on_one_port_are_refused():
    with pytest.raises(SettingsError, match="^BILLING_ADMIN_PORT: port 8080 is already used"):
        parse({"BILLING_ADMIN_PORT": "8080"})


def test_a_bad_stripe_key_is_refused_without_echoing_it():
    with pytest.raises(SettingsError, match="^STRIPE_SECRET_KEY: ") as error:
        parse({"STRIPE_SECRET_KEY": "pk_live_not_secret_but_wrong"})
    assert "pk_live_not_secret_but_wrong" not in str(error.value)


def test_webhook_secrets_must_look_like_stripe_secrets():
    with pytest.raises(SettingsError, match="^STRIPE_WEBHOOK_SECRET: "):
        parse({"STRIPE_WEBHOOK_SECRET": "hunter2"})


def test_tls_needs_both_halves_and_a_client_ca_needs_tls(tmp_path):
    pem = tmp_path / "x.pem"
    pem.write_text("not checked here")
    with pytest.raises(SettingsError, match="^BILLING_TLS_KEY: required"):
        parse({"BILLING_TLS_CERT": str(pem)})
    with pytest.raises(SettingsError, match="^BILLING_TLS_CLIENT_CA: needs"):
        parse({"BILLING_TLS_CLIENT_CA": str(pem)})
    settings = parse({"BILLING_TLS_CERT": str(pem), "BILLING_TLS_KEY": str(pem)})
    assert settings.tls_enabled


def test_blank_values_count_as_unset():
    assert parse({"BILLING_GRPC_PORT": "  ", "STRIPE_SECRET_KEY": ""}) == parse({})


def test_secrets_never_appear_in_the_repr():
    settings = parse(
        {
            "STRIPE_SECRET_KEY": "sk_" + "live_supersecret",  # split: no key pattern committed
            "STRIPE_WEBHOOK_SECRET": "whsec_supersecret",
            "BILLING_API_TOKENS": "svc:token-supersecret",
            "BILLING_DATABASE_URL": "postgresql+psycopg2://billing:dbsupersecret@db:5432/billing",
        }
    )
    text = repr(settings) + str(settings)
    assert "supersecret" not in text
    assert settings.database_url_redacted == "postgresql+psycopg2://billing:***@db:5432/billing"
    assert repr(Secret("x")) == "Secret('***')"


def test_dotenv_is_read_and_the_environment_wins(tmp_path):
    dotenv = tmp_path / ".env"
    dotenv.write_text("BILLING_GRPC_PORT=6000\nBILLING_HTTP_PORT=6001\n# comment\n")
    settings = Settings.from_env({"BILLING_GRPC_PORT": "7000"}, dotenv_path=dotenv)
    assert (settings.grpc_port, settings.http_port) == (7000, 6001)


def test_a_missing_dotenv_is_fine(tmp_path):
    settings = Settings.from_env({}, dotenv_path=tmp_path / "absent.env")
    assert settings == parse({})
