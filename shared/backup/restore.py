"""Point-in-time recovery into a new data directory: base backup, WAL archive, promote."""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from shared.backup import catalog
from shared.backup.base import TOOLS_MAJOR, verify
from shared.backup.catalog import Archive, BackupRecord
from shared.backup.progress import ProgressFn, quiet
from shared.backup.settings import BackupSettings
from shared.backup.source import running_port
from shared.backup.tools import BackupError, check_directory, no_space, run, server_user, tool
from shared.embedded.postgres import EmbeddedPostgres, EmbeddedPostgresError, package

log = logging.getLogger(__name__)

# Files of the source's running server that pg_basebackup copies and the new one must not see.
_SKIP = re.compile(r"^(server\.log|backup_manifest|\.s\.PGSQL\..*)$")
_STOPPED_AT = re.compile(r"recovery stopping before (?:commit|abort) of transaction \d+, time (.+)")
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_LAST_TX = re.compile(r"last completed transaction was at log time (.+)")
RECOVERY_TIMEOUT_SECONDS = 3600.0


@dataclass(frozen=True)
class RestoreResult:
    target: Path
    base: BackupRecord
    # Commit time of the last transaction the restored cluster holds; None: none after the base.
    restored_to: str | None
    recovery_target: str | None
    duration_seconds: float


@dataclass(frozen=True)
class Window:
    """The span a restore can reach, from the catalog and the archive."""

    earliest: datetime | None
    earliest_backup: BackupRecord | None
    latest: datetime | None


def window(settings: BackupSettings) -> Window:
    verified = [r for r in catalog.load_all(settings.base_dir) if r.verified]
    if not verified:
        return Window(None, None, None)
    archive = Archive.scan(settings.wal_dir)
    latest = verified[-1].end
    end_segment = catalog.parse_lsn(verified[-1].end_lsn) // catalog.WAL_SEGMENT_SIZE
    newest = archive.newest_write
    # The archive's last write is the latest point only if nothing is missing before it.
    if newest is not None and newest > latest and archive.first_gap_after(end_segment) is None:
        latest = newest
    return Window(verified[0].end, verified[0], latest)


def choose_base(settings: BackupSettings, to: datetime | None) -> BackupRecord:
    records = catalog.load_all(settings.base_dir)
    verified = [r for r in records if r.verified]
    if not verified:
        raise BackupError(
            f"no verified base backup in {settings.base_dir}; take one with 'stylebase backup'"
        )
    if to is None:
        return verified[-1]
    earliest = verified[0]
    if to < earliest.end:
        raise BackupError(
            f"{catalog.iso(to)} is before the earliest reachable point "
            f"{catalog.iso(earliest.end, precise=True)} (the end of base backup "
            f"{earliest.id}); choose a later time"
        )
    if to > catalog.now():
        raise BackupError(f"{catalog.iso(to)} is in the future; use --latest")
    return [r for r in verified if r.end <= to][-1]


def _default_target(settings: BackupSettings) -> Path:
    stamp = catalog.now().strftime("%Y%m%dT%H%M%SZ")
    return Path(f"{settings.stylebase_data_dir.rstrip('/')}-restored-{stamp}") / "postgres"


def _check_target(target: Path) -> None:
    check_directory(target, "--target")
    if target.is_dir() and any(target.iterdir()):
        raise BackupError(f"target {target} is not empty; restore into a new directory")


def restore(
    settings: BackupSettings,
    *,
    to: datetime | None,
    target: Path | None = None,
    in_place: bool = False,
    progress: ProgressFn = quiet,
) -> RestoreResult:
    started = time.monotonic()
    live = settings.embedded_pgdata.resolve()
    if in_place:
        if running_port(live) is not None:
            raise BackupError(
                f"PostgreSQL is running on {live}; stop the stack before restoring in place"
            )
        final = live
        target = live.parent / f"{live.name}.restoring"
        if target.exists():
            shutil.rmtree(target)  # a restore in place that was interrupted
    else:
        final = target = (target or _default_target(settings)).resolve()
    _check_target(target)
    base = choose_base(settings, to)
    if base.server_version // 10000 != TOOLS_MAJOR:
        raise BackupError(
            f"base backup {base.id} is of PostgreSQL {base.server_version // 10000}; this "
            f"restore runs PostgreSQL {TOOLS_MAJOR}: restore it with a server of its version"
        )
    archive = Archive.scan(settings.wal_dir)
    end_segment = catalog.parse_lsn(base.end_lsn) // catalog.WAL_SEGMENT_SIZE
    gap = archive.first_gap_after(end_segment)
    if gap is not None and to is None:
        missing = catalog.wal_file_name(base.timeline, gap * catalog.WAL_SEGMENT_SIZE)
        raise BackupError(
            f"the WAL archive misses segment {missing}: the latest point is not reachable; "
            "restore with --to a time before that segment was written"
        )
    try:
        links = catalog.chain(catalog.load_all(settings.base_dir), base)
    except ValueError as exc:
        raise BackupError(str(exc)) from None
    for link in links:
        verify(settings, link)  # raises, naming the file, when a copy no longer matches
    try:
        if len(links) == 1:
            _copy_base(catalog.backup_path(settings.base_dir, base.id), target, progress)
        else:
            _combine(settings, links, target)
        _stage_partial(archive, target, end_segment)
        _configure(target, settings.wal_dir.resolve(), to)
        _hand_to_server_user(target, settings.wal_dir.resolve())
    except OSError as exc:
        shutil.rmtree(target, ignore_errors=True)
        raise no_space(exc, target) from exc
    restored_to = _recover(target, to)
    if to is None:
        _check_reached_the_end(target, archive)
    if in_place:
        aside = live.parent / f"{live.name}.before-restore-{catalog.now():%Y%m%dT%H%M%SZ}"
        if live.exists():
            live.rename(aside)
            log.info("the previous data directory is kept as %s", aside)
        target.rename(final)
    return RestoreResult(
        final,
        base,
        restored_to,
        catalog.iso(to) if to else None,
        round(time.monotonic() - started, 3),
    )


def _copy_base(source: Path, target: Path, progress: ProgressFn) -> None:
    files = [p for p in source.rglob("*") if p.is_file() and not _SKIP.match(p.name)]
    total = sum(p.stat().st_size for p in files)
    free = shutil.disk_usage(_existing_parent(target)).free
    if free < total:
        raise BackupError(
            f"no space left for the restore in {target}: it needs {total / 1e6:.0f} MB, "
            f"{free / 1e6:.0f} MB are free"
        )
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o700)
    done = 0
    for directory in (p for p in source.rglob("*") if p.is_dir()):
        (target / directory.relative_to(source)).mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy2(path, target / path.relative_to(source))
        done += path.stat().st_size
        progress(done, total)


def _combine(settings: BackupSettings, links: list[BackupRecord], target: Path) -> None:
    """pg_combinebackup: the full backup with each increment applied, as one data directory."""
    total = sum(link.size_bytes for link in links)
    free = shutil.disk_usage(_existing_parent(target)).free
    if free < total:
        raise BackupError(
            f"no space left for the restore in {target}: it may need {total / 1e6:.0f} MB, "
            f"{free / 1e6:.0f} MB are free"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.rmdir()  # empty (checked): pg_combinebackup creates it
    directories = [str(catalog.backup_path(settings.base_dir, link.id)) for link in links]
    run([tool("pg_combinebackup"), *directories, "-o", str(target)], timeout=3600)
    for path in list(target.iterdir()):
        if _SKIP.match(path.name) and path.is_file():
            path.unlink()
    target.chmod(0o700)


def _existing_parent(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _stage_partial(archive: Archive, target: Path, end_segment: int) -> None:
    """The archive's newest segment is still .partial: the server asks restore_command for
    the full name only, so it goes into pg_wal under that name (recovery reads pg_wal when
    the archive has nothing)."""
    if archive.partial is None:
        return
    parsed = catalog.segment_number(archive.partial.name)
    assert parsed is not None
    if parsed[1] < end_segment:
        return
    shutil.copy2(archive.partial, target / "pg_wal" / archive.partial.name.removesuffix(".partial"))


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _restore_command(wal_dir: Path) -> str:
    """Copy from the archive. Exit 1 means 'not archived': the end of recovery. A file that
    is there but cannot be copied exits 255, which PostgreSQL takes as fatal: recovery must
    fail loudly rather than stop early and promote without the rest of the WAL."""
    source = shlex.quote(str(wal_dir)) + "/%f"
    return f'if [ -e {source} ]; then cp {source} "%p" || exit 255; else exit 1; fi'


def _configure(target: Path, wal_dir: Path, to: datetime | None) -> None:
    lines = [
        "# Point-in-time recovery, removed again once the server has promoted.",
        f"restore_command = {_quote(_restore_command(wal_dir))}",
        "recovery_target_action = 'promote'",
    ]
    if to is not None:
        lines.append(f"recovery_target_time = {_quote(to.isoformat())}")
    with (target / "postgresql.auto.conf").open("a") as conf:
        conf.write("\n".join(lines) + "\n")
    (target / "recovery.signal").touch()


def _hand_to_server_user(target: Path, wal_dir: Path) -> None:
    """When root, the server runs as its own user (with root's group: subprocess sets the
    uid only): it must own the copy (mode 0700, as PostgreSQL demands) and the archive's
    files to read them. Root, which writes the archive, is not hindered by either."""
    user = server_user()
    if user is None:
        return
    ensure_prefix_permissions = package("utils").ensure_prefix_permissions
    for path in [target, *target.rglob("*")]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    target.chmod(0o700)
    ensure_prefix_permissions(target)
    if not wal_dir.is_dir():
        return  # no archive yet: the backup's own WAL is all there is
    ensure_prefix_permissions(wal_dir)
    for path in [wal_dir, *wal_dir.iterdir()]:
        os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)


def _check_reached_the_end(target: Path, archive: Archive) -> None:
    """--latest must replay everything archived: stopping short would lose commits quietly."""
    done = _REDO_DONE.findall(_log_text(target))
    newest = archive.newest_segment()
    if not done or newest is None:
        return
    reached = catalog.parse_lsn(done[-1]) // catalog.WAL_SEGMENT_SIZE
    if reached < newest:
        raise BackupError(
            f"recovery stopped at {done[-1]}, before the end of the WAL archive (segment "
            f"{newest:X}); see {target / 'server.log'}"
        )


def _log_text(target: Path) -> str:
    try:
        return (target / "server.log").read_text(errors="replace")
    except OSError:
        return ""


def _failure(target: Path, to: datetime | None) -> BackupError:
    text = _log_text(target)
    fatal = [line for line in text.splitlines() if "FATAL" in line or "PANIC" in line]
    if any("recovery ended before configured recovery target" in line for line in fatal):
        assert to is not None
        return BackupError(
            f"the WAL archive ends before {catalog.iso(to)}; restore to an earlier time or "
            "use --latest"
        )
    detail = fatal[-1].split("FATAL:", 1)[-1].strip() if fatal else "see its server.log"
    return BackupError(f"recovery in {target} failed: {detail}")


def _recover(target: Path, to: datetime | None) -> str | None:
    server = EmbeddedPostgres(target)
    try:
        server.start()
    except EmbeddedPostgresError as exc:
        raise _failure(target, to) from exc
    try:
        deadline = time.monotonic() + RECOVERY_TIMEOUT_SECONDS
        while True:
            try:
                if server.psql("SELECT pg_is_in_recovery()").strip() == "f":
                    break
            except EmbeddedPostgresError as exc:
                raise _failure(target, to) from exc
            if time.monotonic() > deadline:
                raise BackupError(f"recovery in {target} did not finish within an hour")
            time.sleep(0.2)
        for setting in ("restore_command", "recovery_target_time", "recovery_target_action"):
            server.psql(f"ALTER SYSTEM RESET {setting}")
    finally:
        server.stop()
    text = _log_text(target)
    for pattern in (_LAST_TX, _STOPPED_AT):
        found = pattern.findall(text)
        if found:
            return str(found[-1]).strip()
    return None
