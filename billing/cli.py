"""The `billing` command (DESIGN.md): serve, migrate, operations, and the fake Stripe's helpers.

Exit codes: 0 done, 1 failed, 2 bad usage or configuration (the message names the variable).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from billing.settings import Settings, SettingsError

if TYPE_CHECKING:
    from billing.container import Container

log = logging.getLogger("billing.cli")

FAKE_ACTIONS = ("pay", "decline", "expire", "refund", "dispute")
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="billing",
        description="Sells in-app coins through Stripe Checkout and keeps every user's ledger. "
        "Configured by environment variables (and ./.env); see .env.example.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run gRPC, the webhook, the admin port (and fake Stripe)")
    commands.add_parser("migrate", help="apply database migrations (BILLING_DATABASE_URL)")
    commands.add_parser("reconcile", help="one reconciliation pass against Stripe")
    commands.add_parser("audit", help="check every ledger invariant on the live database")

    events = commands.add_parser("events", help="inspect and replay received Stripe events")
    events_commands = events.add_subparsers(dest="events_command", required=True,
                                            metavar="SUBCOMMAND")
    listing = events_commands.add_parser("list", help="recent inbox events")
    listing.add_argument("--failed", action="store_true",
                         help="only unmatched, rejected and parked events")
    listing.add_argument("--limit", type=int, default=100, help="newest N (default 100)")
    replay = events_commands.add_parser("replay", help="re-apply one stored event")
    replay.add_argument("event_id", metavar="EVENT_ID")

    trigger = commands.add_parser(
        "trigger", help="make the fake Stripe send an event for a session (fake mode)"
    )
    trigger.add_argument("event_type", metavar="EVENT_TYPE",
                         help="e.g. checkout.session.completed")
    trigger.add_argument("--session", required=True, metavar="SESSION_ID")

    fake = commands.add_parser("stripe-fake", help="the local fake Stripe")
    fake_commands = fake.add_subparsers(dest="fake_command", required=True, metavar="SUBCOMMAND")
    fake_commands.add_parser("serve", help="run the fake Stripe on BILLING_FAKE_STRIPE_PORT")
    for action in FAKE_ACTIONS:
        command = fake_commands.add_parser(action, help=f"{action} a checkout session")
        command.add_argument("session_id", metavar="SESSION_ID")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"billing: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    from billing.logging_setup import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    command = _command(args)
    try:
        return command(settings, args)
    except SettingsError as error:
        print(f"billing: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


Command = Callable[[Settings, argparse.Namespace], int]


def _command(args: argparse.Namespace) -> Command:
    if args.command == "events":
        return _events_list if args.events_command == "list" else _events_replay
    if args.command == "stripe-fake":
        return _fake_serve if args.fake_command == "serve" else _fake_action
    commands: dict[str, Command] = {
        "serve": _serve,
        "migrate": _migrate,
        "trigger": _trigger,
        "reconcile": _reconcile,
        "audit": _audit,
    }
    return commands[args.command]


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from billing.container import build_container
    from billing.server import serve

    return serve(build_container(settings))


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from billing.container import migrate_database

    migrate_database(settings)
    print(f"billing: database at the latest schema ({settings.database_url_redacted})")
    return 0


def _with_store(settings: Settings, work: Callable[[Container], int]) -> int:
    """Run an operations command against the configured database (migrated, or refused)."""
    from billing.container import StartupError, build_container
    from billing.domain.errors import BillingError

    container = build_container(settings)
    try:
        container.prepare_store()
        return work(container)
    except (StartupError, BillingError) as error:
        print(f"billing: {error}", file=sys.stderr)
        return 1
    finally:
        container.store().dispose()


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    def run(container: Container) -> int:
        report = asyncio.run(_reconcile_once(container))
        print(json.dumps({"fixes": dict(report.fixes), "errors": report.errors}, indent=2))
        return 1 if report.errors else 0

    return _with_store(settings, run)


async def _reconcile_once(container: Container) -> Any:
    from billing.container import close_stripe

    try:
        return await container.reconcile()()
    finally:
        await close_stripe(container)  # its HTTP session lives on this run's loop


def _audit(settings: Settings, args: argparse.Namespace) -> int:
    def run(container: Container) -> int:
        report = container.audit()()
        print(f"audited {report.accounts} accounts, {report.ledger_rows} ledger rows, "
              f"{report.sessions} payment sessions")
        if report.ok:
            print("OK: every invariant holds")
            return 0
        print(f"{len(report.violations)} VIOLATION(S):")
        for violation in report.violations:
            print(f"  - {violation}")
        return 1

    return _with_store(settings, run)


def _events_list(settings: Settings, args: argparse.Namespace) -> int:
    def run(container: Container) -> int:
        rows = container.list_inbox_events()(failed_only=args.failed, limit=args.limit)
        print(f"{'EVENT':<32} {'TYPE':<42} {'OUTCOME':<10} {'TRIES':>5}  RECEIVED  ERROR")
        for row in rows:
            print(f"{row.event_id:<32} {row.type:<42} {row.outcome.value:<10} "
                  f"{row.attempts:>5}  {row.received_at:%Y-%m-%d %H:%M:%S}  {row.error}")
        return 0

    return _with_store(settings, run)


def _events_replay(settings: Settings, args: argparse.Namespace) -> int:
    def run(container: Container) -> int:
        result = container.replay_inbox_event()(args.event_id)
        print(json.dumps({"event_id": args.event_id, "outcome": result.outcome.value,
                          "error": result.error}))
        return 0

    return _with_store(settings, run)


def _fake_api_base(settings: Settings) -> str:
    if not settings.fake_mode:
        raise SettingsError(
            "STRIPE_SECRET_KEY: set, so Stripe is real: the fake's helpers do not apply "
            "(use the Stripe CLI: `stripe trigger …`)"
        )
    base = settings.effective_stripe_api_base
    assert base is not None
    return base


def _trigger(settings: Settings, args: argparse.Namespace) -> int:
    from billing.devtools.stripe_fake import trigger_event

    return _print_result(lambda: trigger_event(_fake_api_base(settings), args.event_type,
                                               args.session))


def _fake_action(settings: Settings, args: argparse.Namespace) -> int:
    from billing.devtools.stripe_fake import fake_action

    return _print_result(lambda: fake_action(_fake_api_base(settings), args.fake_command,
                                             args.session_id))


def _print_result(call: Callable[[], object]) -> int:
    try:
        result = call()
    except SettingsError:
        raise
    except Exception as error:  # the fake unreachable, or refusing: say so, no traceback
        print(f"billing: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def _fake_serve(settings: Settings, args: argparse.Namespace) -> int:
    _fake_api_base(settings)  # refuses with a real key
    return asyncio.run(_run_fake_until_signal(settings))


async def _run_fake_until_signal(settings: Settings) -> int:
    import signal

    from billing.container import build_fake_stripe_config
    from billing.devtools.stripe_fake import run_fake

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    settings.fake_stripe_state.parent.mkdir(parents=True, exist_ok=True)
    try:
        runner = await run_fake(build_fake_stripe_config(settings), settings.host,
                                settings.fake_stripe_port)
    except OSError as error:
        log.error("cannot listen on port %s: %s", settings.fake_stripe_port, error.strerror)
        return 1
    log.info("fake Stripe listening on %s (state %s), sending webhooks to %s",
             settings.fake_stripe_url, settings.fake_stripe_state,
             settings.effective_fake_webhook_url)
    await stop.wait()
    await runner.cleanup()
    return 0
