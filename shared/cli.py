"""The stylebase command: up, serve, migrate, downgrade, seed-demo, import, export, status,
backup, backups, restore."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import cast

from pydantic import ValidationError

from shared import transfer_parser
from shared.backup import parser as backup_parser
from shared.logging import configure_logging
from shared.settings import (
    SERVICES,
    CommandLogSettings,
    DatabaseSettings,
    ServiceName,
    StackSettings,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stylebase", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the database, migrate, and run every service")
    serve = sub.add_parser("serve", help="run one service in this process")
    serve.add_argument("service", choices=(*SERVICES, "http_api"))
    mig = sub.add_parser("migrate", help="upgrade the database schema")
    mig.add_argument("--revision", default="head")
    down = sub.add_parser("downgrade", help="downgrade the database schema")
    down.add_argument("--revision", default="base")
    sub.add_parser("seed-demo", help="load the demo drummers and producers (idempotent)")
    transfer_parser.add_commands(sub)
    status_parser = sub.add_parser("status", help="health, version and load of every service")
    status_parser.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    status_parser.add_argument("--timeout", type=float, default=2.0, help="seconds per probe")
    backup_parser.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        if args.service == "http_api":
            # An HTTP server, not a gRPC one: it has its own entry point.
            import importlib

            code: int = importlib.import_module("services.http_api.server").main()
            return code
        from shared.runner import run_service

        return run_service(cast(ServiceName, args.service))
    try:
        logs = CommandLogSettings()
    except ValidationError as exc:
        print(f"stylebase {args.command}: invalid configuration: {exc}", file=sys.stderr)
        return 2
    configure_logging("stylebase", logs.log_level, logs.log_format)
    log = logging.getLogger("stylebase")
    if args.command in backup_parser.COMMANDS:
        from shared.backup.cli import run

        return run(args)
    if args.command == "status":
        from shared.status import run as run_status

        return run_status(args)
    try:
        if args.command == "up":
            from shared.stack import StackError, up

            try:
                return up(StackSettings())
            except StackError as exc:
                log.error("stylebase up: %s", exc)
                return 2
        if args.command == "seed-demo":
            return _seed_demo(log)
        if args.command in transfer_parser.COMMANDS:
            import importlib

            # The store's modules import alembic, whose plugin set-up logs at INFO.
            logging.getLogger("alembic").setLevel(logging.WARNING)

            commands = importlib.import_module("services.profile_store.commands")
            result: int = getattr(commands, f"run_{args.command}")(args)
            return result
        from shared.db import migrate

        url = DatabaseSettings().require_database_url()
        if args.command == "migrate":
            migrate.upgrade(url, args.revision)
        else:
            migrate.downgrade(url, args.revision)
        log.info("%s to %s done", args.command, args.revision)
        return 0
    except (ValidationError, ValueError) as exc:
        log.error("stylebase %s: %s", args.command, exc)
        return 2


def _seed_demo(log: logging.Logger) -> int:
    import asyncio

    from services.profile_store.app import Settings
    from services.profile_store.seed import seed

    settings = Settings()
    settings.require_database_url()
    loaded = asyncio.run(seed(settings, only_if_empty=False))
    log.info("loaded %d demo artists with their style profiles", loaded)
    return 0


if __name__ == "__main__":
    sys.exit(main())
