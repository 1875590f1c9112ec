"""The handlers of the backup commands (their arguments: shared.backup.parser)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from pydantic import ValidationError

from shared.backup import base, catalog, prune, restore
from shared.backup.progress import bar
from shared.backup.settings import BackupSettings
from shared.backup.source import database_url
from shared.backup.tools import BackupError

# The command's logger: its failures are log lines, JSON ones under LOG_FORMAT=json; what it
# reports (listings, results) goes to stdout.
log = logging.getLogger("stylebase")


def run(args: argparse.Namespace) -> int:
    name = args.command if args.command != "backups" else f"backups {args.action}"
    try:
        settings = BackupSettings()
        if args.command == "backup":
            kind = True if args.incremental else (False if args.full else None)
            return _backup(settings, args.prune, kind)
        if args.command == "restore":
            return _restore(settings, args)
        handler = {"list": _list, "verify": _verify, "prune": _prune, "run": _daemon}
        return handler[args.action](settings, args)
    except (BackupError, ValidationError, ValueError) as exc:
        message = str(exc).splitlines()[0] if not isinstance(exc, ValidationError) else exc
        log.error("stylebase %s: %s", name, message)
        return 1
    except OSError as exc:
        log.error("stylebase %s: %s", name, exc)
        return 1


def human(size: int) -> str:
    amount = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if amount < 1000 or unit == "TB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{size} B"


def _backup(settings: BackupSettings, then_prune: bool, incremental: bool | None) -> int:
    url = database_url(settings)
    with bar("base backup") as progress:
        record = base.take(settings, url, progress=progress, incremental=incremental)
    on = f" on {record.parent}" if record.parent else ""
    print(
        f"{record.kind} base backup {record.id}{on}: {human(record.size_bytes)} in "
        f"{record.duration_seconds:.1f} s, "
        f"verified; needs WAL {record.start_wal} to {record.end_wal} "
        f"({record.start_lsn} to {record.end_lsn})"
    )
    if then_prune:
        _prune(settings, argparse.Namespace())
    return 0


def _list(settings: BackupSettings, args: argparse.Namespace) -> int:
    records = catalog.load_all(settings.base_dir)
    if not records:
        print(f"no base backups in {settings.base_dir}")
        return 0
    failed = False
    if args.verify:
        for record in records:
            try:
                base.verify(settings, record)
            except BackupError:
                failed = True
    print(f"{'id':<20} {'kind':<12} {'ended':<20} {'size':>10}  {'WAL range':<51} status")
    for record in records:
        status = "verified" if record.verified else f"CORRUPT: {record.verify_error}"
        print(
            f"{record.id:<20} {record.kind:<12} {catalog.iso(record.end):<20} "
            f"{human(record.size_bytes):>10}  "
            f"{record.start_wal + ' - ' + record.end_wal:<51} {status}"
        )
    reach = restore.window(settings)
    if reach.earliest is None or reach.latest is None:
        print("no verified backup: nothing can be restored")
    else:
        print(f"earliest restore point: {catalog.iso(reach.earliest, precise=True)}")
        print(f"latest restore point:   {catalog.iso(reach.latest, precise=True)}")
    return 1 if failed else 0


def _verify(settings: BackupSettings, args: argparse.Namespace) -> int:
    records = catalog.load_all(settings.base_dir)
    if args.id:
        records = [r for r in records if r.id == args.id]
        if not records:
            raise BackupError(f"no base backup {args.id} in {settings.base_dir}")
    errors = []
    for record in records:
        try:
            base.verify(settings, record)
            print(f"{record.id}: verified")
        except BackupError as exc:
            errors.append(str(exc))
    if errors:
        raise BackupError(errors[0])
    return 0


def _prune(settings: BackupSettings, _args: argparse.Namespace) -> int:
    result = prune.prune(settings)
    print(
        f"pruned {len(result.deleted_backups)} base backups and {result.deleted_wal} WAL "
        f"segments ({human(result.freed_bytes)}); {len(result.kept)} base backups kept"
    )
    return 0


def _restore(settings: BackupSettings, args: argparse.Namespace) -> int:
    try:
        to = None if args.latest else catalog.parse_time(args.to)
    except ValueError:
        raise BackupError(
            f"--to {args.to!r} is not an ISO 8601 time (e.g. 2026-12-02T10:15:00Z)"
        ) from None
    with bar("restore") as progress:
        result = restore.restore(
            settings, to=to, target=args.target, in_place=args.in_place, progress=progress
        )
    reached = result.restored_to or "the end of the base backup (no later transactions)"
    print(
        f"restored base backup {result.base.id} and the WAL after it into {result.target} "
        f"in {result.duration_seconds:.1f} s; last transaction: {reached}"
    )
    if result.target.name == "postgres":
        print(f"start it with: STYLEBASE_DATA_DIR={result.target.parent} stylebase up")
    if to is not None:
        print(
            "before archiving from it, point BACKUP_DIR at a new directory: the old archive "
            "holds WAL written after this point, of the timeline the restore left"
        )
    return 0


def _daemon(settings: BackupSettings, _args: argparse.Namespace) -> int:
    from shared.backup.schedule import BackupDaemon

    url = database_url(settings)
    stopped = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopped.set())
    daemon = BackupDaemon(settings, url)
    daemon.start()
    print(f"archiving WAL and taking scheduled base backups into {settings.root}", flush=True)
    stopped.wait()
    daemon.stop()
    return 0
