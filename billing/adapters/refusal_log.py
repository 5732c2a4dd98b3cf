"""Log lines about refusals, rate-limited per reason: counted always, narrated a few times.

Anyone can make the service refuse them (a forged webhook signature, a wrong bearer token), so
one log line per refusal lets a stranger write to our disk at our expense and buries the lines
that matter. The metrics count every refusal; the log says what kinds are happening and from
where. Per reason, the first `lines_per_window` refusals of a window are logged in full by the
caller (`admit` returns True); the rest are tallied, and one summary line per window says how
many there were and from which addresses.

No thread of its own: a window that has run out is summarized by the next refusal of its reason
or by `tick()`, which the server's periodic loop calls; `flush()` summarizes whatever is left on
the way out, so a last summary is never lost. Refusals arrive on the event loop (gRPC and the
webhook alike), the ticks too; it is thread-safe all the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

DEFAULT_LINES_PER_WINDOW = 5
DEFAULT_WINDOW_S = 60.0
TOP_ADDRESSES = 3
# Addresses tallied per reason and window: what a sender puts in X-Forwarded-For must not grow
# our memory. Beyond this many distinct ones, the rest count under OTHER_ADDRESSES.
MAX_ADDRESSES = 1000
OTHER_ADDRESSES = "(others)"
UNKNOWN_ADDRESS = "unknown"


@dataclass(slots=True)
class _Window:
    started: float
    logged: int = 0
    suppressed: int = 0
    addresses: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Summary:
    reason: str
    suppressed: int
    span_s: float
    top: list[tuple[str, int]]


class RefusalLog:
    """Decides which refusal lines are written; writes the summaries itself, to `logger`.

    `reason` must come from our code (a metric outcome, an ErrorInfo reason), never from the
    request: the number of reasons is what bounds the memory used.
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        lines_per_window: int = DEFAULT_LINES_PER_WINDOW,
        window_s: float = DEFAULT_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        level: int = logging.WARNING,
    ) -> None:
        self._logger = logger
        self._lines = lines_per_window
        self._window_s = window_s
        self._clock = clock
        self._level = level
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def admit(self, reason: str, address: str | None) -> bool:
        """Count one refusal; True if the caller should log its line."""
        with self._lock:
            now = self._clock()
            window = self._windows.get(reason)
            ended = None
            if window is not None and now - window.started >= self._window_s:
                ended = self._close(reason, now)
                window = None
            if window is None:
                window = self._windows[reason] = _Window(started=now)
            if window.logged < self._lines:
                window.logged += 1
                admitted = True
            else:
                window.suppressed += 1
                _tally(window.addresses, address or UNKNOWN_ADDRESS)
                admitted = False
        if ended is not None:
            self._write(ended)
        return admitted

    def tick(self) -> None:
        """Summarize the windows that have run out (the server calls this every second)."""
        self._summarize(lambda window, now: now - window.started >= self._window_s)

    def flush(self) -> None:
        """Summarize every window now, whatever its age (on shutdown)."""
        self._summarize(lambda window, now: True)

    def _summarize(self, due: Callable[[_Window, float], bool]) -> None:
        with self._lock:
            now = self._clock()
            reasons = [reason for reason, window in self._windows.items() if due(window, now)]
            ended = [self._close(reason, now) for reason in reasons]
        for summary in ended:
            if summary is not None:
                self._write(summary)

    def _close(self, reason: str, now: float) -> _Summary | None:
        window = self._windows.pop(reason)
        if not window.suppressed:
            return None
        span = min(now - window.started, self._window_s)
        top = window.addresses.most_common(TOP_ADDRESSES)
        return _Summary(reason, window.suppressed, span, top)

    def _write(self, summary: _Summary) -> None:
        top = ", ".join(f"{address} ({count})" for address, count in summary.top)
        self._logger.log(
            self._level,
            "%d more refused in the last %s, reason %s, top remote addresses %s",
            summary.suppressed, _span(summary.span_s), summary.reason, top,
            extra={"reason": summary.reason, "suppressed": summary.suppressed,
                   "span_s": round(summary.span_s, 3),
                   "top_remotes": {address: count for address, count in summary.top}},
        )


def _tally(addresses: Counter[str], address: str) -> None:
    if address in addresses or len(addresses) < MAX_ADDRESSES:
        addresses[address] += 1
    else:
        addresses[OTHER_ADDRESSES] += 1


def _span(seconds: float) -> str:
    if round(seconds) == 60:
        return "minute"
    return f"{seconds:.0f} s" if seconds >= 1 else f"{seconds:.1f} s"
