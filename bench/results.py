"""What a `make bench` run found: its figures, the failures it carried on past, and what the
machine was doing meanwhile; the results table and the closing
`bench: NAME value=V limit=L ratio=R bar=B ok|short` lines.

Each figure is a value (the median of its runs), the same-run limit or reference it is divided
by, and the bar that ratio must meet. The limit is measured in the same run as the value (a bare
server, pgbench, the peer, the same scenario with the fake Stripe at 0 ms), so a burst of load
from elsewhere on this shared machine moves both sides of the ratio alike; a figure whose bar is
absolute (CPU per operation, round trips, start-up) has that bar as its limit. A figure that could
not be measured prints nan, says why, and counts as short.
"""

from __future__ import annotations

import math
import os
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from bench import util
from bench.util import fmt, log


def round_trips(values: Sequence[float]) -> float:
    """Round trips per operation, to two decimals: the service's count also holds its health
    probe's one round trip a second (0.001 per GetBalance at 1,000 calls/s), which is not the
    operation's."""
    return round(util.median(values), 2)


@dataclass
class Figure:
    name: str
    unit: str
    sections: tuple[str, ...]  # the `python -m bench` sections that measure it
    bar: float  # what value / limit must be (>=, <= or == `bar`, as `comparison` says)
    comparison: str = ">="  # or <=, < or ==
    values: list[float] = field(default_factory=list)
    limits: list[float] = field(default_factory=list)  # the same-run reference, per run
    fixed_limit: float | None = None  # an absolute bar: the limit is the bar's figure itself
    # Turns the reference (the median of `limits`) into the limit, for bars such as
    # "<= 1.5 x the p99 at 0 ms + 10 ms".
    allowance: Callable[[float], float] | None = None
    limit_name: str = ""
    note: str = ""
    aggregate: Callable[[Sequence[float]], float] = util.median
    unmeasured: str = ""  # why there is no value, when there is none

    @property
    def value(self) -> float:
        return self.aggregate(self.values) if self.values else float("nan")

    @property
    def reference(self) -> float:
        return self.fixed_limit if self.fixed_limit is not None else util.median(self.limits)

    @property
    def limit(self) -> float:
        reference = self.reference
        if self.allowance is None or math.isnan(reference):
            return reference
        return self.allowance(reference)

    @property
    def ratio(self) -> float:
        value, limit = self.value, self.limit
        if math.isnan(value) or math.isnan(limit):
            return float("nan")
        if limit == 0:  # a bar of zero (no double credit): 0 meets it, anything more misses
            return 0.0 if value == 0 else math.inf
        return value / limit

    @property
    def ok(self) -> bool:
        ratio = self.ratio
        if math.isnan(ratio):
            return False
        checks = {">=": ratio >= self.bar, "<=": ratio <= self.bar, "<": ratio < self.bar,
                  "==": math.isclose(ratio, self.bar)}
        return checks[self.comparison]

    def not_measurable(self, reason: str) -> None:
        """Say why the figure has no value (kept only while it has none)."""
        if not self.values and not self.unmeasured:
            self.unmeasured = reason

    @property
    def remark(self) -> str:
        if not self.values and self.unmeasured:
            return f"not measurable: {self.unmeasured}" + (f"; {self.note}" if self.note else "")
        return self.note

    def line(self) -> str:
        return (f"bench: {self.name} value={_num(self.value)} limit={_num(self.limit)}"
                f" ratio={_num(self.ratio, 3)} bar={_num(self.bar)}"
                f" {'ok' if self.ok else 'short'}"
                + (f" (not measurable: {self.unmeasured})" if not self.values and self.unmeasured
                   else ""))


def _num(value: float, digits: int = 3) -> str:
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf"
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return text or "0"


def _figures(*figures: Figure) -> dict[str, Figure]:
    return {figure.name: figure for figure in figures}


THROUGHPUT = ("webhook", "balance", "spend")
INTEGRITY = (*THROUGHPUT, "stripe")  # checked on each database a load wrote to

FIGURES = _figures(
    # -- issue 11: the hot paths -----------------------------------------------------------
    Figure("webhook_credits_per_s", "credits/s", ("webhook",), 0.25,
           limit_name="min(HTTP limit, Postgres limit)"),
    Figure("webhook_credits_vs_peer", "credits/s", ("webhook",), 2.0,
           limit_name="the peer (Flask + gunicorn -w 5), same run"),
    Figure("cpu_ms_per_credit", "ms", ("webhook",), 1.0, "<=", fixed_limit=1.2,
           limit_name="bar"),
    Figure("db_round_trips_per_credit", "", ("webhook",), 1.0, "<=", fixed_limit=4.0,
           limit_name="bar", aggregate=round_trips),
    Figure("get_balance_per_s", "calls/s", ("balance",), 0.7, limit_name="gRPC read limit"),
    Figure("cpu_ms_per_get_balance", "ms", ("balance",), 1.0, "<=", fixed_limit=0.5,
           limit_name="bar"),
    Figure("db_round_trips_per_get_balance", "", ("balance",), 1.0, "<=", fixed_limit=1.0,
           limit_name="bar", aggregate=round_trips),
    Figure("spend_per_s", "calls/s", ("spend",), 0.5, limit_name="gRPC write limit"),
    Figure("spend_p99_ms", "ms", ("spend",), 2.0, "<=", limit_name="gRPC write limit p99"),
    Figure("cpu_ms_per_spend", "ms", ("spend",), 1.0, "<=", fixed_limit=1.0, limit_name="bar"),
    Figure("db_round_trips_per_spend", "", ("spend",), 1.0, "<=", fixed_limit=4.0,
           limit_name="bar", aggregate=round_trips),
    Figure("double_credits", "", INTEGRITY, 1.0, "<=", fixed_limit=0.0, limit_name="bar",
           aggregate=max),
    Figure("negative_balances", "", INTEGRITY, 1.0, "<=", fixed_limit=0.0, limit_name="bar",
           aggregate=max),
    Figure("audit_exit_code", "", INTEGRITY, 1.0, "<=", fixed_limit=0.0, limit_name="bar",
           aggregate=max),
    # -- issue 10: a slow Stripe (bench/stripe.py) ----------------------------------------------
    Figure("stripe_probe_p99_ms", "ms", ("stripe",), 1.0, "<=",
           limit_name="1.5 x GetBalance p99 at 0 ms + 10 ms"),
    Figure("stripe_spend_probe_p99_ms", "ms", ("stripe",), 1.0, "<=",
           limit_name="1.5 x SpendCoins p99 at 0 ms + 10 ms"),
    Figure("stripe_webhook_credits_per_s", "credits/s", ("stripe",), 0.8,
           limit_name="credits/s at 0 ms"),
    Figure("stripe_burst_s", "s", ("stripe",), 1.0, "<=",
           limit_name="burst at 0 ms + 1.5 x ideal"),
    Figure("stripe_burst_probe_p99_ms", "ms", ("stripe",), 1.0, "<", fixed_limit=100.0,
           limit_name="bar"),
    Figure("stripe_shed_calls", "calls", ("stripe",), 1.0, "==",
           limit_name="the excess over BILLING_STRIPE_MAX_CONCURRENCY"),
    Figure("stripe_shed_ms", "ms", ("stripe",), 1.0, "<=", fixed_limit=50.0, limit_name="bar"),
    Figure("stripe_shed_rows", "rows", ("stripe",), 1.0, "<=", fixed_limit=0.0,
           limit_name="bar"),
    Figure("stripe_shed_not_serving", "checks", ("stripe",), 1.0, "<=", fixed_limit=0.0,
           limit_name="bar"),
    Figure("stripe_deadline_exceeded", "", ("stripe",), 1.0, "==", fixed_limit=1.0,
           limit_name="bar (1 = the client saw DEADLINE_EXCEEDED)"),
    Figure("stripe_deadline_in_flight_zero_s", "s", ("stripe",), 1.0, "<=", fixed_limit=5.0,
           limit_name="bar (the wait)"),
    Figure("stripe_deadline_retry_ok", "", ("stripe",), 1.0, "==", fixed_limit=1.0,
           limit_name="bar (1 = the retry succeeded)"),
    Figure("stripe_deadline_sessions", "sessions", ("stripe",), 1.0, "==", fixed_limit=1.0,
           limit_name="bar (exactly one Checkout Session)"),
    # -- issue 7: start-up, the ledger, memory -----------------------------------------------------
    Figure("ledger_first_page_ms_1m", "ms", ("ledger",), 1.5, "<=",
           limit_name="same page at 10k rows"),
    Figure("ledger_deep_page_ms_1m", "ms", ("ledger",), 1.5, "<=",
           limit_name="same page at 10k rows"),
    Figure("rss_mb", "MB", ("memory",), 1.0, "<=", fixed_limit=250.0, limit_name="bar"),
    Figure("rss_growth_pct", "%", ("memory",), 1.0, "<=", fixed_limit=5.0, limit_name="bar"),
    Figure("startup_s", "s", ("startup",), 1.0, "<=", fixed_limit=2.0, limit_name="bar"),
    # -- issue 12: live updates (bench/streams.py) ---------------------------------------------
    Figure("watch_cross_replica_p99_ms", "ms", ("streams",), 1.0, "<", fixed_limit=100.0,
           limit_name="bar; 200 on replica A -> COMPLETED on replica B"),
    Figure("idle_streams_rss_growth_mb", "MB", ("streams",), 1.5, "<=",
           limit_name="bare grpc.aio server, as many idle streams"),
    Figure("idle_streams_wake_p99_ms", "ms", ("streams",), 1.0, "<", fixed_limit=250.0,
           limit_name="bar; 200 -> COMPLETED"),
    Figure("idle_streams_balance_p99_ms", "ms", ("streams",), 1.0, "<=",
           limit_name="2 x GetBalance p99 without streams + 10 ms"),
    Figure("feed_lag_p99_ms", "ms", ("streams",), 1.0, "<", fixed_limit=250.0,
           limit_name="bar; create_time -> delivery"),
    Figure("feed_credits_per_s", "credits/s", ("streams",), 0.85,
           limit_name="credits/s without a consumer"),
    # Issue 13: a forged flood beside a legitimate webhook stream (bench/abuse.py).
    Figure("flood_log_growth_kb", "KB", ("abuse",), 1.0, "<=", fixed_limit=20.0,
           limit_name="bar"),
    Figure("flood_legit_p99_ms", "ms", ("abuse",), 3.0, "<=",
           limit_name="same stream's quiet p99"),
    Figure("flood_cpu_ms_per_refused", "ms", ("abuse",), 1.0, "<=", fixed_limit=1.0,
           limit_name="printed (no bar; 1 ms shown for scale)"),
)


def selected(sections: Iterable[str]) -> list[Figure]:
    """The figures the given sections measure, in the table's order."""
    chosen = set(sections)
    return [figure for figure in FIGURES.values() if chosen & set(figure.sections)]


def bar_text(figure: Figure) -> str:
    return f"{figure.comparison} {fmt(figure.bar)}"


def table(figures: Sequence[Figure]) -> None:
    """Every run's value beside every run's limit, the medians, the ratio and the verdict."""
    header = (f"{'figure':<33} {'runs':<24} {'value':>9} {'limit runs':<24} {'limit':>9}"
              f" {'ratio':>7} {'bar':>7}  verdict")
    log(header)
    log("-" * len(header))
    for figure in figures:
        limit_runs = _runs(figure.limits) if figure.limits else (
            "(bar)" if figure.fixed_limit is not None else "-")
        log(f"{figure.name:<33} {_runs(figure.values):<24} {fmt(figure.value):>9}"
            f" {limit_runs:<24} {fmt(figure.limit):>9} {fmt(figure.ratio):>7}"
            f" {bar_text(figure):>7}  {'ok' if figure.ok else 'SHORT'}"
            + (f"  ({figure.remark})" if figure.remark else ""))


def section_table(section: str) -> None:
    """A section's own table (stripe, streams): each figure of that section alone, its value,
    its same-run reference, the threshold its bar sets, the verdict and the remark."""
    for figure in (f for f in FIGURES.values() if f.sections == (section,)):
        reference = ("-" if figure.fixed_limit is not None
                     else f"{fmt(figure.reference)} {figure.unit}")
        threshold = figure.bar * figure.limit
        log(f"  {figure.name:<34} {fmt(figure.value) + ' ' + figure.unit:<16}"
            f" {reference:<16} {figure.comparison} {fmt(threshold)} ("
            + (f"{fmt(figure.bar)} x " if figure.bar != 1 else "") + f"{figure.limit_name})"
            f"  {'ok' if figure.ok else 'SHORT'}" + (f"  [{figure.remark}]" if figure.remark
                                                     else ""))


def _runs(values: Sequence[float]) -> str:
    """Each run's value, or their range when there are too many to list (bursts)."""
    if len(values) <= 4:
        return util.join(values)
    return f"{len(values)}: {fmt(min(values))}..{fmt(max(values))}"


def summary(figures: Sequence[Figure]) -> None:
    for figure in figures:
        log(figure.line())


# -- the run's side notes ------------------------------------------------------------------------
FAILURES: list[str] = []
BACKGROUND: list[float] = []  # CPU % used by processes outside the benchmark, per measured window
SATURATED: dict[str, list[str]] = {}  # label -> processes near 100 % of a core


def guarded(label: str, action: Callable[[], None]) -> bool:
    """Run one benchmark step; a failure is reported and the others go on. True if it ran."""
    try:
        action()
    except Exception as error:  # report and carry on: every other figure is still useful
        FAILURES.append(f"{label}: {type(error).__name__}: {error}")
        log(f"  !! {label} failed: {type(error).__name__}: {error}")
        traceback.print_exc(limit=3)
        return False
    return True


def note_cpu(label: str, cpu: util.CpuWindow | None, costs: util.OpCosts | None = None,
             group: str = "") -> None:
    """Log a window's CPU (and the cost per operation of `group`), and keep the side notes."""
    if cpu is None:
        return
    log(f"    {cpu.describe()}")
    if costs is not None:
        log(f"    {costs.describe(group)}")
    BACKGROUND.append(cpu.others)
    hot = cpu.saturated()
    if hot:
        SATURATED.setdefault(label, []).extend(hot)


def side_notes() -> None:
    if BACKGROUND:
        log(f"other work on the machine during the runs: median {util.median(BACKGROUND):.0f}%,"
            f" max {max(BACKGROUND):.0f}% of {(os.cpu_count() or 1) * 100}% CPU"
            " (it slows limits and service alike; the ratios are what compare)")
    if SATURATED:
        log("processes at ~100 % of a core (>= 85 %) during the runs:")
        for label, hot in SATURATED.items():
            log(f"  {label}: {', '.join(sorted(set(hot)))}")
    for failure in FAILURES:
        log(f"FAILED: {failure.splitlines()[0]}")
