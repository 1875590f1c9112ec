"""The arguments of the backup commands; light to import, as every 'stylebase' run builds them."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMANDS = ("backup", "backups", "restore")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser(
        "backup",
        help="take a verified base backup into BACKUP_DIR",
        description="Take a base backup (pg_basebackup) of POSTGRES_DATABASE_URL or the "
        "embedded server, check it with pg_verifybackup, and record it in BACKUP_DIR.",
    )
    backup.add_argument(
        "--prune",
        action="store_true",
        help="then prune to BACKUP_RETENTION_DAYS",
    )
    kind = backup.add_mutually_exclusive_group()
    kind.add_argument(
        "--incremental",
        action="store_true",
        help="only the blocks changed since the newest verified backup (pg_basebackup "
        "--incremental; needs summarize_wal=on)",
    )
    kind.add_argument("--full", action="store_true", help="a full backup whatever the schedule")
    backups = sub.add_parser("backups", help="list, verify or prune base backups")
    actions = backups.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="each base backup and the window a restore can reach")
    listing.add_argument(
        "--verify", action="store_true", help="re-run pg_verifybackup on each backup first"
    )
    check = actions.add_parser("verify", help="re-run pg_verifybackup on stored backups")
    check.add_argument("id", nargs="?", help="one backup (default: all)")
    actions.add_parser(
        "prune",
        help="keep BACKUP_RETENTION_DAYS of recovery window, delete older backups and WAL",
    )
    actions.add_parser(
        "run",
        help="archive WAL and take scheduled backups until SIGTERM (beside an external server)",
    )
    rest = sub.add_parser(
        "restore",
        help="restore a base backup and the WAL archive into a new data directory",
        description="Restore to a point in time (or the latest archived WAL) into a new data "
        "directory, start it until it has promoted, then stop it. Start the stack on it with "
        "STYLEBASE_DATA_DIR=<parent of the restored directory> stylebase up.",
    )
    point = rest.add_mutually_exclusive_group(required=True)
    point.add_argument("--to", metavar="TIME", help="ISO 8601 time, e.g. 2026-12-02T10:15:00Z")
    point.add_argument("--latest", action="store_true", help="as far as the archive reaches")
    rest.add_argument(
        "--target",
        type=Path,
        help="the new data directory (default: <STYLEBASE_DATA_DIR>-restored-<time>/postgres)",
    )
    rest.add_argument(
        "--in-place",
        action="store_true",
        help="replace the embedded data directory (the stack must be stopped; the old "
        "directory is kept beside it)",
    )
