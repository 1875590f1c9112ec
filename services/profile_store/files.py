"""Reading and writing profile files: JSON Lines always, Parquet when pyarrow is installed."""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any

from services.profile_store.lines import ProfileLine

PARQUET_SUFFIXES = (".parquet", ".pq")
_CHUNK = 1 << 20
# Rows per Parquet row group; the reader yields them a batch at a time.
_PARQUET_ROWS = 1000


class MissingPyArrow(RuntimeError):
    def __init__(self) -> None:
        super().__init__(
            "Parquet needs pyarrow, which is not installed: pip install 'stylebase[parquet]' "
            "(or use a .jsonl file)"
        )


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _pyarrow(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        raise MissingPyArrow() from None


@dataclass(frozen=True)
class Row:
    """One line of the file: its number (from 1), the offset after it, its content."""

    number: int
    next_offset: int
    # The line's bytes (JSON Lines) or the row as a dict (Parquet).
    content: bytes | dict[str, Any]

    def parse(self) -> ProfileLine:
        if isinstance(self.content, bytes):
            return ProfileLine.model_validate_json(self.content)
        # Parquet stores a struct's missing keys as nulls.
        row = {
            key: {k: v for k, v in value.items() if v is not None}
            if isinstance(value, dict)
            else value
            for key, value in self.content.items()
        }
        return ProfileLine.model_validate(row)


def count_rows(path: Path) -> int:
    """Lines that hold something (JSON Lines) or rows (Parquet): the progress bar's total."""
    if is_parquet(path):
        parquet = _pyarrow("pyarrow.parquet")
        rows: int = parquet.ParquetFile(path).metadata.num_rows
        return rows
    count = 0
    last = b"\n"
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def read_rows(path: Path, *, after_line: int = 0, offset: int = 0) -> Iterator[Row]:
    """Rows after line after_line; offset is where that line ended (JSON Lines seek to it)."""
    if is_parquet(path):
        yield from _parquet_rows(path, after_line)
        return
    with path.open("rb") as handle:
        handle.seek(offset)
        number = after_line
        for raw in handle:
            number += 1
            offset += len(raw)
            if raw.strip():
                yield Row(number, offset, raw)


def _parquet_rows(path: Path, after_line: int) -> Iterator[Row]:
    parquet = _pyarrow("pyarrow.parquet")
    number = 0
    for batch in parquet.ParquetFile(path).iter_batches(batch_size=_PARQUET_ROWS):
        if number + batch.num_rows <= after_line:
            number += batch.num_rows
            continue
        for item in batch.to_pylist():
            number += 1
            if number > after_line:
                yield Row(number, number, item)


class _JsonLinesWriter:
    def __init__(self, handle: IO[str]) -> None:
        self._handle = handle

    def write(self, lines: list[ProfileLine]) -> None:
        self._handle.writelines(line.dump() + "\n" for line in lines)


class _ParquetWriter:
    def __init__(self, path: Path) -> None:
        self._arrow = _pyarrow("pyarrow")
        self._parquet = _pyarrow("pyarrow.parquet")
        self._path = path
        self._writer: Any = None

    def write(self, lines: list[ProfileLine]) -> None:
        if not lines:
            return
        table = self._arrow.Table.from_pylist([line.model_dump() for line in lines])
        if self._writer is None:
            self._writer = self._parquet.ParquetWriter(self._path, table.schema)
        self._writer.write_table(table.cast(self._writer.schema))

    def close(self) -> None:
        if self._writer is None:  # no rows: the columns still say what the file holds
            sample = ProfileLine(artist_name="-", quantitative_params={"tempo_avg": 0.0})
            table = self._arrow.Table.from_pylist([sample.model_dump()]).slice(0, 0)
            self._writer = self._parquet.ParquetWriter(self._path, table.schema)
        self._writer.close()


@contextmanager
def writer(path: Path) -> Iterator[_JsonLinesWriter | _ParquetWriter]:
    """Writes to a temporary file renamed over path at the end: no half-written export."""
    partial = path.with_name(path.name + ".partial")
    try:
        if is_parquet(path):
            out = _ParquetWriter(partial)
            yield out
            out.close()
        else:
            with partial.open("w", encoding="utf-8") as handle:
                yield _JsonLinesWriter(handle)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
