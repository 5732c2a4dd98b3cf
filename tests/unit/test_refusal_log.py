"""RefusalLog: a few lines per reason and window, then one summary; a manual clock, no waiting."""

from __future__ import annotations

import logging
import threading

import pytest

from billing.adapters.refusal_log import MAX_ADDRESSES, OTHER_ADDRESSES, RefusalLog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def messages(self) -> list[str]:
        return [record.getMessage() for record in self.records]


@pytest.fixture
def lines():
    logger = logging.getLogger("billing.test.refusals")
    handler = Lines()
    logger.addHandler(handler)
    logger.propagate = False
    yield handler
    logger.removeHandler(handler)
    logger.propagate = True


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def refusals(lines, clock) -> RefusalLog:
    return RefusalLog(logging.getLogger("billing.test.refusals"), lines_per_window=3,
                      window_s=60.0, clock=clock)


def admitted(refusals: RefusalLog, count: int, reason: str, address: str | None) -> int:
    return sum(refusals.admit(reason, address) for _ in range(count))


def test_the_first_lines_of_a_window_are_admitted_and_the_rest_only_counted(refusals, lines):
    assert admitted(refusals, 1000, "rejected_signature", "203.0.113.9") == 3
    assert lines.records == []  # the summary waits for the window's end


def test_one_summary_per_window_names_the_count_the_reason_and_the_top_addresses(
    refusals, lines, clock
):
    admitted(refusals, 3, "rejected_signature", "203.0.113.9")
    admitted(refusals, 700, "rejected_signature", "203.0.113.9")
    admitted(refusals, 200, "rejected_signature", "198.51.100.7")
    admitted(refusals, 50, "rejected_signature", "192.0.2.1")
    admitted(refusals, 1, "rejected_signature", "192.0.2.2")
    clock.now += 59.9
    refusals.tick()
    assert lines.records == []
    clock.now += 0.1
    refusals.tick()
    [summary] = lines.records
    assert summary.getMessage() == (
        "951 more refused in the last minute, reason rejected_signature, top remote addresses "
        "203.0.113.9 (700), 198.51.100.7 (200), 192.0.2.1 (50)")
    assert summary.levelno == logging.WARNING
    assert (summary.reason, summary.suppressed) == ("rejected_signature", 951)
    refusals.tick()
    assert len(lines.records) == 1  # summarized once


def test_the_next_refusal_after_the_window_summarizes_it_and_opens_a_new_one(
    refusals, lines, clock
):
    admitted(refusals, 10, "INVALID_TOKEN", "10.0.0.1")
    clock.now += 61
    assert refusals.admit("INVALID_TOKEN", "10.0.0.1")  # a new window: logged in full again
    assert lines.messages == [
        "7 more refused in the last minute, reason INVALID_TOKEN, top remote addresses "
        "10.0.0.1 (7)"]


def test_reasons_have_their_own_windows(refusals, lines, clock):
    assert admitted(refusals, 10, "rejected_signature", "a") == 3
    assert admitted(refusals, 10, "rejected_source", "b") == 3
    clock.now += 60
    refusals.tick()
    assert sorted(lines.messages) == [
        "7 more refused in the last minute, reason rejected_signature, top remote addresses a (7)",
        "7 more refused in the last minute, reason rejected_source, top remote addresses b (7)",
    ]


def test_a_window_without_suppressed_refusals_ends_without_a_summary(refusals, lines, clock):
    admitted(refusals, 3, "rejected", "a")
    clock.now += 120
    refusals.tick()
    assert lines.records == []
    assert refusals.admit("rejected", "a")


def test_flush_writes_the_last_summary_whatever_the_window_s_age(refusals, lines, clock):
    admitted(refusals, 5, "header_timeout", None)
    clock.now += 12
    refusals.flush()
    assert lines.messages == [
        "2 more refused in the last 12 s, reason header_timeout, top remote addresses unknown (2)"]
    refusals.flush()
    assert len(lines.records) == 1


def test_the_addresses_tallied_are_bounded_whatever_senders_claim(refusals, lines, clock):
    admitted(refusals, 3, "rejected_source", "x")
    for n in range(MAX_ADDRESSES + 500):
        refusals.admit("rejected_source", f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
    refusals.admit("rejected_source", "10.0.0.0")
    refusals.flush()
    [summary] = lines.records
    assert summary.suppressed == MAX_ADDRESSES + 501
    assert summary.top_remotes[OTHER_ADDRESSES] == 500
    assert summary.top_remotes["10.0.0.0"] == 2


def test_concurrent_refusals_are_each_counted_once(refusals, lines):
    threads = [threading.Thread(target=admitted, args=(refusals, 2500, "INVALID_TOKEN", "a"))
               for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refusals.flush()
    [summary] = lines.records
    assert summary.suppressed == 10_000 - 3
