"""'stylebase import' and 'stylebase export': wiring, progress and the printed summary."""

from __future__ import annotations

import argparse
import asyncio
import sys

from asyncpg import PostgresError
from pydantic import Field

from services.profile_store import export, files, transfer
from services.profile_store.app import Settings, connect_database, invalidator
from services.profile_store.resume import ResumeError, state_path
from shared.backup import progress
from shared.errors import StylebaseError
from shared.settings import to_libpq_url

_SLOW_BATCH_MS = 60_000


class ImportSettings(Settings):
    """The import's fast path; each is also an option of the command."""

    import_fast_path_min_lines: int = Field(default=10_000, ge=1)
    import_fast_path_max_rows: int = Field(default=1_000, ge=0)
    import_maintenance_work_mem: str = Field(default="1GB", pattern=r"^\d+\s*(kB|MB|GB)$")
    # Helpers of the index build beside the leader; 1 fits this 2-core machine.
    import_parallel_workers: int = Field(default=1, ge=0, le=64)
    # Processes that parse and check lines while the import writes; 0: all in one process.
    import_check_workers: int = Field(default=2, ge=0, le=64)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _import(settings: ImportSettings, args: argparse.Namespace) -> transfer.Summary:
    options = transfer.Options(
        batch_size=args.batch_size,
        resume=args.resume,
        fast_min_lines=args.fast_path_min_lines or settings.import_fast_path_min_lines,
        fast_max_rows=(
            settings.import_fast_path_max_rows
            if args.fast_path_max_rows is None
            else args.fast_path_max_rows
        ),
        maintenance_work_mem=settings.import_maintenance_work_mem,
        parallel_workers=settings.import_parallel_workers,
        check_workers=settings.import_check_workers,
    )
    # A batch of a thousand rows takes longer than DB_SLOW_QUERY_MS means for an RPC.
    db = connect_database(settings.model_copy(update={"db_slow_query_ms": _SLOW_BATCH_MS}))
    gateway = invalidator(settings, db)
    try:
        with progress.counter(f"import {args.file.name}") as update:
            return await transfer.import_file(
                db,
                gateway,
                args.file,
                options,
                dsn=to_libpq_url(settings.require_database_url()),
                progress=update,
                say=_say,
            )
    finally:
        await gateway.close()
        await db.dispose()


def run_import(args: argparse.Namespace) -> int:
    settings = ImportSettings()
    if not 1 <= args.batch_size <= 10_000:
        _say("stylebase import: --batch-size must be 1 to 10000")
        return 2
    try:
        summary = asyncio.run(_import(settings, args))
    except (ResumeError, files.MissingPyArrow, StylebaseError, OSError, PostgresError) as exc:
        # OSError: the file, or a database that cannot be reached.
        _say(f"stylebase import: {exc}")
        return 2
    except KeyboardInterrupt:
        _say(
            f"stylebase import: interrupted; committed batches stay, and "
            f"'stylebase import --resume {args.file}' continues after them "
            f"({state_path(args.file)})"
        )
        return 130
    print(
        f"imported {summary.imported}, unchanged {summary.unchanged}, "
        f"refused {len(summary.refused)} (path: {summary.path})"
    )
    for refused in summary.refused:
        print(f"  line {refused.line}: {refused.reason}")
    return 1 if summary.refused else 0


def run_export(args: argparse.Namespace) -> int:
    settings = Settings()
    dsn = to_libpq_url(settings.require_database_url())
    try:
        with progress.counter(f"export {args.file.name}") as update:
            written = asyncio.run(
                export.export_file(dsn, args.file, status=args.status, progress=update)
            )
    except (files.MissingPyArrow, OSError, PostgresError) as exc:
        _say(f"stylebase export: {exc}")
        return 2
    print(f"exported {written} profiles to {args.file}")
    return 0
