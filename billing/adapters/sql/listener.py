"""One LISTEN connection per process: other replicas' wake-ups, handed to the live hub.

The connection is psycopg2's, outside the pools, watched by the event loop (`add_reader`): an
idle listener costs no thread. A notification on FEED_CHANNEL means the sequencer made new
positions visible (the hub's tail reads them, and wakes the watches of the sessions they touch);
one on STATUS_CHANNEL names a session whose status changed without a ledger row. Notifications
sent while the connection is down are lost: after every (re)connect the hub re-reads everything
it serves, and its slow poll covers the rest, so a lost notification costs latency, never a row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.engine import Engine

from billing.adapters.sql.errors import brief
from billing.adapters.sql.notifications import FEED_CHANNEL, STATUS_CHANNEL
from billing.adapters.sql.sequencer import connect

log = logging.getLogger("billing.live")

class FeedListener:
    def __init__(
        self,
        engine: Engine,
        *,
        on_feed: Callable[[], None],
        on_sessions: Callable[[Sequence[str]], None],
        on_connected: Callable[[], None],
        on_notification: Callable[[str], None] = lambda channel: None,
        retry_s: float = 1.0,
    ) -> None:
        self._engine = engine
        self._on_feed = on_feed
        self._on_sessions = on_sessions
        self._on_connected = on_connected
        self._on_notification = on_notification
        self._retry_s = retry_s

    async def run(self) -> None:
        """Listen until cancelled; reconnect (with backoff) whenever the connection fails."""
        loop = asyncio.get_running_loop()
        failures = 0
        while True:
            connection: Any = None
            try:
                connection = await loop.run_in_executor(None, self._connect)
                if failures:
                    log.info("feed listener connected again")
                failures = 0
                self._on_connected()  # whatever was sent while we were away is lost
                await self._listen(loop, connection)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                failures += 1
                if failures == 1 or failures % 60 == 0:
                    log.warning("feed listener lost its connection (%s); retrying",
                                brief(error))
            finally:
                if connection is not None:
                    with contextlib.suppress(Exception):
                        loop.remove_reader(connection.fileno())
                    with contextlib.suppress(Exception):
                        connection.close()
            await asyncio.sleep(min(self._retry_s * failures, 5.0))

    def _connect(self) -> Any:
        connection = connect(self._engine, "billing-listener")
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {FEED_CHANNEL}; LISTEN {STATUS_CHANNEL}")
        return connection

    async def _listen(self, loop: asyncio.AbstractEventLoop, connection: Any) -> None:
        readable = asyncio.Event()
        loop.add_reader(connection.fileno(), readable.set)
        while True:
            await readable.wait()
            readable.clear()
            connection.poll()  # raises once the server has gone away
            feed = False
            sessions: list[str] = []
            for notification in connection.notifies:
                self._on_notification(notification.channel)
                if notification.channel == FEED_CHANNEL:
                    feed = True
                elif notification.channel == STATUS_CHANNEL and notification.payload:
                    sessions.append(notification.payload)
            connection.notifies.clear()
            if sessions:
                self._on_sessions(sessions)
            if feed:
                self._on_feed()
