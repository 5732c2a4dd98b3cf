"""Log output: JSON lines with `extra` fields, text for people, secrets redacted whoever logs."""

import io
import json
import logging

import pytest

from billing.logging_setup import configure_logging, redact


@pytest.fixture
def output():
    stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield stream
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_carry_the_extra_fields(output):
    configure_logging("INFO", "json", output)
    logging.getLogger("billing.test").info("paid %s", "cs_1", extra={"user_id": "u1", "coins": 5})
    line = json.loads(output.getvalue())
    assert line["message"] == "paid cs_1"
    assert (line["level"], line["logger"], line["user_id"], line["coins"]) == (
        "INFO",
        "billing.test",
        "u1",
        5,
    )


def test_text_format_shows_the_extra_fields(output):
    configure_logging("DEBUG", "text", output)
    logging.getLogger("billing.test").debug("hello", extra={"caller": "shop"})
    assert output.getvalue().rstrip().endswith("hello [caller=shop]")


@pytest.mark.parametrize(
    "secret",
    [
        "Bearer abc.def-123",
        "bearer token123",
        "sk_live_51Habc",
        "sk_test_fake",
        "rk_live_xyz",
        "whsec_dev_only_not_secret",
    ],
)
def test_secrets_are_redacted_in_messages_arguments_extras_and_tracebacks(output, secret):
    configure_logging("INFO", "json", output)
    log = logging.getLogger("billing.test")
    log.info("key %s", secret, extra={"header": f"x {secret}"})
    try:
        raise ValueError(f"failed with {secret}")
    except ValueError:
        log.exception("boom")
    text = output.getvalue()
    assert secret.split()[-1] not in text
    assert text.count("[REDACTED]") == 3


def test_redact_leaves_ordinary_ids_alone():
    assert redact("cs_test_123 pi_3 evt_9 user skate_boarder") == (
        "cs_test_123 pi_3 evt_9 user skate_boarder"
    )
