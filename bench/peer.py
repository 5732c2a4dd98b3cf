"""The peer: the guide's Flask app (`../shared/peer_flask`, gunicorn with 5 sync workers), the
code this service replaces, measured in the same `make bench` run as the service's webhook
credits, with the same load: the same wrk script and connections, the same duration, and
same-shaped ~2 KB signed `checkout.session.completed` bodies (here with the guide's
metadata.user_id/coins/bonus, signed with its secret), one distinct paid session per request.
Its PENDING `payment_sessions` rows are inserted first, as its checkout would have; its credits
are read back from `users.coin_balance`.

It runs on a free port, with its own run directory and a throwaway database owned by its role
`peer`, so other runs of the peer on this machine are left alone.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from bench import util, wrk

PEER_DIR = Path(os.environ.get("BENCH_PEER_DIR", util.ROOT.parent / "shared" / "peer_flask"))
ROLE = "peer"
COINS, BONUS, PRICE_MINOR = 1000, 100, 999  # one package, as the service's first one


class Peer:
    secret = "whsec_peer_test"

    def __init__(self, database: str, folder: Path) -> None:
        self.database = database
        self.http_port = util.free_port()
        self._run_dir = folder / "peer-run"
        self.pid = 0
        self._env = {**os.environ, "BIND": f"{util.HOST}:{self.http_port}",
                     "PEER_RUN_DIR": str(self._run_dir), "PGHOST": util.PG_HOST,
                     "PGPORT": str(util.PG_PORT), "PGUSER": ROLE, "PGPASSWORD": ROLE,
                     "PGDATABASE": database, "DATABASE_URL": "", "STRIPE_API_BASE": "",
                     "STRIPE_WEBHOOK_SECRET": self.secret}

    @staticmethod
    def setup() -> None:
        """The peer's virtualenv and role (its setup.sh, idempotent); before the database."""
        _script("setup.sh", dict(os.environ))

    def start(self, users: int) -> None:
        """run.sh (applies the schema, starts gunicorn), then `users` users with 0 coins."""
        out = _script("run.sh", self._env)
        self.pid = int(out.split()[-1])
        util.execute(self.database, "INSERT INTO users (id, coin_balance)"
                                    " SELECT n, 0 FROM generate_series(1, %s) AS n", (users,))

    def stop(self) -> None:
        if self.pid:
            _script("stop.sh", self._env)
            self.pid = 0

    def pids(self) -> list[int]:
        return util.process_tree(self.pid)

    def credits(self) -> int:
        total = util.execute(self.database, "SELECT coalesce(sum(coin_balance), 0) FROM users")
        return int(total) // (COINS + BONUS)

    def webhook_bodies(self, count: int, tag: str) -> list[bytes]:
        """`count` PENDING sessions spread over the users, and the signed paid event of each."""
        users = int(util.execute(self.database, "SELECT count(*) FROM users"))
        util.execute(
            self.database,
            "INSERT INTO payment_sessions (session_id, user_id, amount_usd, coins, bonus, status)"
            " SELECT 'cs_test_' || %(tag)s || '_' || n, 1 + n %% %(users)s, %(price)s, %(coins)s,"
            " %(bonus)s, 'pending' FROM generate_series(1, %(count)s) AS n",
            {"tag": tag, "users": users, "price": PRICE_MINOR / 100, "coins": COINS,
             "bonus": BONUS, "count": count})
        now = int(time.time())
        return [
            wrk.checkout_completed_event(
                event_id=f"evt_{tag}{n:010d}", session_id=f"cs_test_{tag}_{n}",
                payment_id="", amount=PRICE_MINOR, currency="USD", user_id=str(1 + n % users),
                created=now, pad_to=2048,
                metadata={"user_id": str(1 + n % users), "coins": str(COINS),
                          "bonus": str(BONUS), "total_coins": str(COINS + BONUS)})
            for n in range(1, count + 1)
        ]


def _script(name: str, env: dict[str, str]) -> str:
    done = subprocess.run([str(PEER_DIR / name)], env=env, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"peer {name} exited {done.returncode}:\n{done.stdout[-1500:]}"
                           f"\n{done.stderr[-1500:]}")
    return done.stdout
