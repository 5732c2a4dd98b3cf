"""The Postgres limit: pgbench running a script shaped like one webhook credit, on the real schema
(`billing migrate` on a throwaway database), in one transaction:

    insert an inbox event row with a unique id (and a ~2 KB payload, as the webhook stores)
    update a payment (session) row
    update a balance row (RETURNING the new balance)
    insert a ledger row

Prepared statements, the same 32 clients as the webhook load.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench import util

PGBENCH = "/usr/bin/pgbench"
PAYMENTS = 10_000
USERS = 1000

SCRIPT = r"""
\set p random(1, %(payments)d)
\set u random(0, %(users_minus_one)d)
BEGIN;
INSERT INTO webhook_inbox (event_id, type, payload, received_at, processed_at, attempts,
    outcome, error)
  VALUES (concat('evt_', gen_random_uuid()), 'checkout.session.completed', :payload::text,
    now(), now(), 1, 'APPLIED', '');
UPDATE payments SET status = 'COMPLETED', coins_credited = 1100, updated_at = now()
  WHERE payment_id = concat('pay_', :p::int);
UPDATE accounts SET balance = balance + 1100 WHERE user_id = concat('u', lpad(:u::int::text, 4,
  '0')) RETURNING balance AS new_balance \gset
INSERT INTO ledger (key, user_id, type, coins, balance_after, shortfall, description, session_id,
    payment_id, caller, request_id, created_at)
  VALUES (concat('Purchase:', gen_random_uuid()), concat('u', lpad(:u::int::text, 4, '0')),
    'PURCHASE', 1100, :new_balance::bigint, 0, 'coins bought', concat('cs_', :p::int),
    concat('pay_', :p::int), 'stripe', 'evt_bench', now());
COMMIT;
"""


def seed_payments(database: str) -> None:
    import psycopg2

    connection = psycopg2.connect(util.pg_dsn(database))
    try:
        with connection, connection.cursor() as cursor:
            cursor.execute(
                "INSERT INTO payments (payment_id, user_id, request_id, package_id, coins, bonus,"
                " amount_minor, currency, success_url, cancel_url, expires_at, created_at,"
                " updated_at, status, stripe_session_id, checkout_url, payment_intent_id,"
                " coins_credited, coins_refunded)"
                " SELECT 'pay_' || n, 'u' || lpad((n %% %s)::text, 4, '0'), 'req_' || n,"
                " 'coins_1000', 1000, 100, 999, 'USD', 'https://example.com/s', 'https://example.com/c',"
                " now() + interval '30 minutes', now(), now(), 'PENDING', 'cs_' || n,"
                " 'https://checkout.example.com/' || n, NULL, 0, 0"
                " FROM generate_series(1, %s) AS n", (USERS, PAYMENTS))
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("VACUUM ANALYZE")
    finally:
        connection.close()


@dataclass
class PgbenchResult:
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    cpu: util.CpuWindow

    def describe(self) -> str:
        return (f"{self.transactions} tx = {self.tps:.0f} tx/s, mean latency "
                f"{self.latency_ms:.1f} ms" + (f", failed {self.failed}" if self.failed else ""))


def run(database: str, payload: str, *, clients: int, duration_s: float) -> PgbenchResult:
    with tempfile.TemporaryDirectory(prefix="bench-pgbench-") as folder:
        script = Path(folder) / "credit.sql"
        script.write_text(SCRIPT % {"payments": PAYMENTS, "users_minus_one": USERS - 1})
        args = [PGBENCH, "-h", util.PG_HOST, "-p", str(util.PG_PORT), "-U", util.PG_USER, "-n",
                "-M", "prepared", "-c", str(clients), "-j", "2",
                "-T", str(max(1, round(duration_s))), "-f", str(script),
                "-D", f"payload={payload}", database]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        cpu = util.CpuWindow(groups={"pgbench": [proc.pid]}, database=database)
        cpu.over_middle(duration_s)
        try:
            out, err = proc.communicate(timeout=duration_s + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    text = out.decode(errors="replace")
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", text)
    if proc.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed ({proc.returncode}):\n{text}\n{err.decode()[-2000:]}")
    latency = re.search(r"latency average = ([\d.]+) ms", text)
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    failed = re.search(r"number of failed transactions: (\d+)", text)
    return PgbenchResult(
        tps=float(tps.group(1)), latency_ms=float(latency.group(1)) if latency else float("nan"),
        transactions=int(processed.group(1)) if processed else 0,
        failed=int(failed.group(1)) if failed else 0, cpu=cpu,
    )
