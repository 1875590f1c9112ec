"""Where an import stands: a small JSON file beside the input, rewritten after each commit.

Beside the input rather than in the database: it belongs to that file (it records the file's
size and modification time, and --resume refuses a file that changed), it needs no table
outside the migrated schema, and an import into a database restored from a backup does not
inherit an old position. A kill between a batch's commit and the rewrite of this file makes
--resume send that batch again; its lines are then stored already and count as unchanged,
so no line is written twice.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


class ResumeError(RuntimeError):
    pass


def state_path(source: Path) -> Path:
    return source.with_name(source.name + ".import-state")


@dataclass
class Position:
    size: int
    mtime_ns: int
    # The last line whose batch committed, and the byte offset where it ends.
    line: int = 0
    offset: int = 0
    # The fast path's dropped index, to build at the end (also after a resume).
    index_definition: str | None = None

    @classmethod
    def fresh(cls, source: Path) -> Position:
        stat = source.stat()
        return cls(size=stat.st_size, mtime_ns=stat.st_mtime_ns)

    @classmethod
    def stored(cls, source: Path) -> Position | None:
        path = state_path(source)
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise ResumeError(f"{path} is unreadable ({exc}); delete it to start over") from None

    @classmethod
    def for_resume(cls, source: Path) -> Position:
        position = cls.stored(source)
        if position is None:
            raise ResumeError(f"no interrupted import of {source} to resume ({state_path(source)})")
        stat = source.stat()
        if (stat.st_size, stat.st_mtime_ns) != (position.size, position.mtime_ns):
            raise ResumeError(
                f"{source} changed since the interrupted import; delete "
                f"{state_path(source)} and import it again"
            )
        return position

    def save(self, source: Path) -> None:
        """Atomically: a kill mid-write leaves the previous position."""
        path = state_path(source)
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(asdict(self)))
        os.replace(partial, path)

    @staticmethod
    def clear(source: Path) -> None:
        state_path(source).unlink(missing_ok=True)
