"""python -m bench.backup [--profiles 100000] [--generations 1000000] [--saves 10000]:
base backup and restore times and sizes, and the WAL that style-profile saves write.

Each dataset gets a cluster of its own: loaded fast (fsync off), then restarted durable
(full_page_writes back on) for everything measured, as production runs.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import asyncpg

from bench.analytics.load import load as load_generations
from bench.similarity.__main__ import build_index
from bench.similarity.data import DIM, clustered_unit_vectors, load_with_copy
from shared.backup import base, restore
from shared.backup.archiver import Archiver
from shared.backup.settings import BackupSettings
from shared.db import migrate
from shared.embedded.postgres import DATABASE, EmbeddedPostgres


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.backup", description=__doc__)
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--generations", type=int, default=1_000_000)
    parser.add_argument(
        "--saves", type=int, default=10_000, help="saves (and records) whose WAL is measured"
    )
    parser.add_argument("--artists", type=int, default=2000, help="artists generations spread over")
    return parser.parse_args(argv)


def mb(size: int) -> str:
    return f"{size / 1e6:,.1f} MB"


async def _saves(url: str, count: int) -> int:
    """count SaveStyleProfile-like updates, each its own transaction; the WAL they wrote."""
    connection = await asyncpg.connect(url)
    try:
        ids = [r["id"] for r in await connection.fetch("SELECT id FROM style_profiles")]
        rng = random.Random(7)
        before = await connection.fetchval("SELECT pg_current_wal_lsn()::text")
        for i in range(count):
            vector = "[" + ",".join(f"{rng.gauss(0, 1):.5f}" for _ in range(DIM)) + "]"
            await connection.execute(
                "UPDATE style_profiles SET text_description = $2, embedding = $3::vector,"
                " quantitative_params = jsonb_set(quantitative_params, '{tempo_avg}', $4::jsonb),"
                " updated_at = now() WHERE id = $1",
                ids[i % len(ids)],
                f"saved again ({i})",
                vector,
                str(90 + i % 60),
            )
        written: int = await connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint", before
        )
    finally:
        await connection.close()
    return written


async def _records(url: str, count: int) -> int:
    """count RecordGeneration-like inserts, each its own transaction; the WAL they wrote."""
    connection = await asyncpg.connect(url)
    try:
        artists = [r["id"] for r in await connection.fetch("SELECT id FROM artists LIMIT 500")]
        before = await connection.fetchval("SELECT pg_current_wal_lsn()::text")
        for i in range(count):
            await connection.execute(
                "INSERT INTO generation_history (id, artist_id, provider_used,"
                " generation_time_ms, tokens_used, cost_usd, user_params, output_files)"
                " VALUES (uuidv7(), $1, 'template', $2, 1200, 0.002,"
                ' \'{"bars": 8, "tempo": 120.0}\'::jsonb, \'["out/pattern.mid"]\'::jsonb)',
                artists[i % len(artists)],
                1000 + i % 900,
            )
        written: int = await connection.fetchval(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint", before
        )
    finally:
        await connection.close()
    return written


Writer = Callable[[str, int], Coroutine[Any, Any, int]]


def measure(
    name: str, server: EmbeddedPostgres, workdir: Path, saves: int, writer: Writer, what: str
) -> None:
    settings = BackupSettings(
        backup_dir=str(workdir / f"backups-{name}"),
        POSTGRES_DATABASE_URL=server.url,
        stylebase_data_dir=str(workdir),
        backup_metrics_port=0,
    )
    size = server.psql("SELECT pg_database_size('stylebase')", DATABASE).strip()
    print(f"  database size: {mb(int(size))}", flush=True)
    record = base.take(settings, server.url, incremental=False)
    print(
        f"  full base backup: {mb(record.size_bytes)} in {record.duration_seconds:.1f} s "
        f"(pg_basebackup and pg_verifybackup)",
        flush=True,
    )
    started = time.perf_counter()
    base.verify(settings, record)
    print(f"  pg_verifybackup alone: {time.perf_counter() - started:.2f} s", flush=True)
    target = workdir / f"restored-{name}" / "postgres"
    result = restore.restore(settings, to=None, target=target)
    print(f"  restore (base backup only): {result.duration_seconds:.1f} s", flush=True)
    shutil.rmtree(target.parent)
    if saves:
        archiver = Archiver(server.url, settings.wal_dir, settings.backup_slot_name)
        archiver.start()
        try:
            started = time.perf_counter()
            written = asyncio.run(writer(server.url, saves))
            elapsed = time.perf_counter() - started
            archiver.wait_archived(120)
        finally:
            archiver.stop()
        archived = sum(p.stat().st_size for p in settings.wal_dir.iterdir() if p.is_file())
        print(
            f"  {saves:,} {what} (one transaction each, archiver on): {elapsed:.1f} s; "
            f"WAL written {mb(written)} ({written / saves / 1000:.1f} kB each); "
            f"archive files {mb(archived)} (whole 16 MB segments)",
            flush=True,
        )
        target = workdir / f"restored-{name}-latest" / "postgres"
        result = restore.restore(settings, to=None, target=target)
        print(
            f"  restore --latest (full base + replay of that WAL): {result.duration_seconds:.1f} s",
            flush=True,
        )
        shutil.rmtree(target.parent)
        increment = base.take(settings, server.url, incremental=True)
        print(
            f"  incremental base backup after them: {mb(increment.size_bytes)} in "
            f"{increment.duration_seconds:.1f} s",
            flush=True,
        )
        target = workdir / f"restored-{name}-increment" / "postgres"
        result = restore.restore(settings, to=None, target=target)
        print(
            f"  restore --latest from the increment (pg_combinebackup): "
            f"{result.duration_seconds:.1f} s",
            flush=True,
        )
        shutil.rmtree(target.parent)


def cluster(workdir: Path, name: str) -> tuple[EmbeddedPostgres, EmbeddedPostgres]:
    fast = EmbeddedPostgres(workdir / name / "postgres", durable=False)
    fast.start()
    fast.psql("ALTER SYSTEM SET max_wal_size = '4GB'")
    fast.psql("ALTER SYSTEM SET shared_buffers = '512MB'")
    fast.stop()
    fast.start()
    migrate.upgrade(fast.url)
    return fast, EmbeddedPostgres(fast.pgdata, fast.port, durable=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="stylebase-bench-backup-") as tmp:
        workdir = Path(tmp)
        if args.profiles:
            print(f"\n== {args.profiles:,} style profiles (384-d embeddings, HNSW) ==", flush=True)
            fast, durable = cluster(workdir, "profiles")
            try:
                fast.psql("DROP INDEX ix_style_profiles_embedding", DATABASE)
                started = time.perf_counter()
                asyncio.run(load_with_copy(fast.url, clustered_unit_vectors(args.profiles)))
                asyncio.run(build_index(fast.url))
                print(f"  load and index: {time.perf_counter() - started:.1f} s", flush=True)
                fast.stop()
                durable.start()
                measure("profiles", durable, workdir, args.saves, _saves, "profile saves")
            finally:
                durable.stop()
                fast.stop()
        if args.generations:
            print(f"\n== {args.generations:,} generations ==", flush=True)
            fast, durable = cluster(workdir, "generations")
            try:

                async def fill() -> None:
                    connection = await asyncpg.connect(fast.url)
                    try:
                        await load_generations(connection, args.generations, args.artists)
                    finally:
                        await connection.close()

                started = time.perf_counter()
                asyncio.run(fill())
                print(f"  load: {time.perf_counter() - started:.1f} s", flush=True)
                fast.stop()
                durable.start()
                measure(
                    "generations", durable, workdir, args.saves, _records, "generations recorded"
                )
            finally:
                durable.stop()
                fast.stop()


if __name__ == "__main__":
    main()
