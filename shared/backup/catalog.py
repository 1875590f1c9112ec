"""What is known about each base backup (a JSON file beside it) and about the WAL archive."""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

WAL_SEGMENT_SIZE = 16 * 1024 * 1024
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})(\.partial)?$")


def parse_lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_id(segment_size: int = WAL_SEGMENT_SIZE) -> int:
    return 0x100000000 // segment_size


def wal_file_name(timeline: int, lsn: int, segment_size: int = WAL_SEGMENT_SIZE) -> str:
    segno = lsn // segment_size
    per_id = segments_per_id(segment_size)
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segment_number(name: str, segment_size: int = WAL_SEGMENT_SIZE) -> tuple[int, int] | None:
    """(timeline, segment number) of a WAL file name, None for anything else."""
    match = _SEGMENT.match(name)
    if match is None:
        return None
    timeline, high, low = (int(part, 16) for part in match.groups()[:3])
    return timeline, high * segments_per_id(segment_size) + low


def now() -> datetime:
    return datetime.now(UTC)


def parse_time(text: str) -> datetime:
    """ISO 8601; a time without a zone is UTC (the catalog and the docs speak UTC)."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime, *, precise: bool = False) -> str:
    """UTC with a Z; precise (milliseconds) where a reader may pass the time back to --to."""
    spec = "milliseconds" if precise else "seconds"
    return value.astimezone(UTC).isoformat(timespec=spec).replace("+00:00", "Z")


@dataclass
class BackupRecord:
    id: str
    start_time: str
    end_time: str
    start_lsn: str
    end_lsn: str
    timeline: int
    start_wal: str
    end_wal: str
    size_bytes: int
    duration_seconds: float
    system_identifier: str
    server_version: int
    verified: bool = False
    verified_at: str | None = None
    verify_error: str | None = None
    # False when the server's major version differs from the tools' (pg_waldump reads only
    # its own), so the WAL inside the backup was checked for presence, not parsed.
    wal_parsed: bool = True
    # The backup this one is an increment on (pg_basebackup --incremental); None: a full one.
    parent: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "incremental" if self.parent else "full"

    @property
    def end(self) -> datetime:
        return parse_time(self.end_time)

    @property
    def start(self) -> datetime:
        return parse_time(self.start_time)


def backup_path(base_dir: Path, backup_id: str) -> Path:
    return base_dir / backup_id


def record_path(base_dir: Path, backup_id: str) -> Path:
    return base_dir / f"{backup_id}.json"


def save(base_dir: Path, record: BackupRecord) -> None:
    # Written beside, then renamed: a crash leaves the old record or the new one, never half.
    path = record_path(base_dir, record.id)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(temporary, path)


def load_all(base_dir: Path) -> list[BackupRecord]:
    """Every completed backup, oldest first; a record whose directory is gone is skipped."""
    if not base_dir.is_dir():
        return []
    records = []
    for path in base_dir.glob("*.json"):
        if not (base_dir / path.stem).is_dir():
            continue
        records.append(BackupRecord(**json.loads(path.read_text())))
    return sorted(records, key=lambda r: r.end_time)


def chain(records: list[BackupRecord], record: BackupRecord) -> list[BackupRecord]:
    """The full backup and the increments up to record, oldest first: what a restore of it
    combines."""
    by_id = {r.id: r for r in records}
    links = [record]
    while links[0].parent is not None:
        parent = by_id.get(links[0].parent)
        if parent is None:
            raise ValueError(
                f"base backup {links[0].id} builds on {links[0].parent}, which is gone"
            )
        links.insert(0, parent)
    return links


@dataclass(frozen=True)
class Archive:
    """The WAL archive: segment numbers present per timeline, and the current partial."""

    directory: Path
    segments: dict[int, set[int]]
    partial: Path | None
    newest_write: datetime | None

    @classmethod
    def scan(cls, directory: Path) -> Archive:
        segments: dict[int, set[int]] = {}
        partial: Path | None = None
        newest: float | None = None
        if directory.is_dir():
            for path in directory.iterdir():
                parsed = segment_number(path.name)
                if parsed is None:
                    continue
                mtime = path.stat().st_mtime
                newest = mtime if newest is None else max(newest, mtime)
                if path.name.endswith(".partial"):
                    if partial is None or path.name > partial.name:
                        partial = path
                    continue
                segments.setdefault(parsed[0], set()).add(parsed[1])
        return cls(
            directory,
            segments,
            partial,
            datetime.fromtimestamp(newest, UTC) if newest is not None else None,
        )

    def all_segments(self) -> set[int]:
        present = set().union(*self.segments.values()) if self.segments else set()
        if self.partial is not None:
            parsed = segment_number(self.partial.name)
            assert parsed is not None
            present.add(parsed[1])
        return present

    def first_gap_after(self, segno: int) -> int | None:
        """The first missing segment after segno, below the newest present; None: no gap."""
        present = self.all_segments()
        newer = [s for s in present if s > segno]
        if not newer:
            return None
        for candidate in range(segno + 1, max(newer)):
            if candidate not in present:
                return candidate
        return None

    def newest_segment(self) -> int | None:
        present = self.all_segments()
        return max(present) if present else None
