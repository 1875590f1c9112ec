"""Import benchmark: `stylebase import` of 100,000 synthetic profiles on a fresh embedded
PostgreSQL, end to end, then recall@10 of the HNSW index it built against exact search.

python -m bench.import_profiles [--count 100000] [--queries 200] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from bench.figures import Panel, write_chart
from bench.similarity.data import clustered_unit_vectors, name_of, profile
from services.profile_store.lines import ProfileLine
from services.similarity import recall
from shared.db import migrate
from shared.db.engine import Database
from shared.embedded.postgres import EmbeddedPostgres
from shared.settings import ServiceSettings, to_asyncpg_url
from tests.harness import ROOT

K = 10
EF_SEARCH = 40  # the similarity service's default (SIMILARITY_EF_SEARCH)
GOAL_SECONDS = 60.0
GOAL_RECALL = 0.98


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.import_profiles", description=__doc__)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200, help="recall queries")
    parser.add_argument("--workers", type=int, default=1, help="IMPORT_PARALLEL_WORKERS")
    parser.add_argument("--maintenance-work-mem", default="1GB")
    return parser.parse_args(argv)


def write_file(path: Path, count: int) -> None:
    """The line format of the real command, from the similarity benchmark's generator."""
    vectors = clustered_unit_vectors(count)
    with path.open("w") as handle:
        for i in range(count):
            message = profile(i, vectors[i])
            line = ProfileLine(
                artist_name=name_of(i),
                text_description=message.text_description,
                quantitative_params={
                    f.name: getattr(message.quantitative_params, f.name)
                    for f in message.quantitative_params.DESCRIPTOR.fields
                },
                midi_templates=list(message.midi_templates),
                embedding=vectors[i].tolist(),
                confidence_score=message.confidence_score,
                sources_count={"papers": 1, "articles": 2},
            )
            handle.write(line.dump() + "\n")


async def measure_recall(url: str, queries: int, count: int) -> recall.RecallReport:
    settings = ServiceSettings(POSTGRES_DATABASE_URL=url, db_statement_timeout_ms=600_000)
    db = Database.connect(settings, application_name="bench-import")
    try:
        async with db.transaction() as session:
            await session.execute(
                text("SELECT set_config('hnsw.ef_search', :ef, true)"),
                {"ef": str(EF_SEARCH)},
            )
            return await recall.measure(
                session,
                sample_size=queries,
                k=K,
                ef_search=EF_SEARCH,
                max_distances=queries * count,
                time_left=None,
                statement_timeout_ms=600_000,
            )
    finally:
        await db.dispose()


def run(args: argparse.Namespace, workdir: Path) -> int:
    source = workdir / "profiles.jsonl"
    started = time.perf_counter()
    write_file(source, args.count)
    size_mb = source.stat().st_size / 1e6
    print(
        f"generated {args.count:,} profiles ({size_mb:.0f} MB) in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    postgres = EmbeddedPostgres(workdir / "pg", durable=False)
    postgres.start()
    try:
        postgres.psql("ALTER SYSTEM SET shared_buffers = '1GB'")
        postgres.stop()
        postgres.start()
        migrate.upgrade(postgres.url)
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")},
            "POSTGRES_DATABASE_URL": postgres.url,
            "LOG_LEVEL": "WARNING",
            "IMPORT_PARALLEL_WORKERS": str(args.workers),
            "IMPORT_MAINTENANCE_WORK_MEM": args.maintenance_work_mem,
        }
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "shared.cli", "import", str(source)],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        seconds = time.perf_counter() - started
        path = next((x for x in result.stderr.splitlines() if x.startswith("path:")), "?")
        print(result.stdout.strip())
        phases: dict[str, float] = {}
        for phase in result.stderr.splitlines():
            if phase.startswith(("rows written", "vector index built")):
                print(f"  {phase}")
                phases[phase.split(" in ")[0]] = float(phase.split(" in ")[1].split(" s")[0])
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            return 1
        report = asyncio.run(measure_recall(to_asyncpg_url(postgres.url), args.queries, args.count))
        started = time.perf_counter()
        exported = subprocess.run(
            [sys.executable, "-m", "shared.cli", "export", str(workdir / "export.jsonl")],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        export_seconds = time.perf_counter() - started
        print(f"  {exported.stdout.strip()} in {export_seconds:.1f} s", flush=True)
        phases["export"] = export_seconds
    finally:
        postgres.stop()
    rate = args.count / seconds
    print(f"  {path}")
    print(
        f"  import end to end: {seconds:.1f} s, {rate:,.0f} rows/s "
        f"(goal <= {GOAL_SECONDS:.0f} s: {'met' if seconds <= GOAL_SECONDS else 'not met'})"
    )
    print(
        f"  recall@{K} (ef_search {EF_SEARCH}) against exact: {report.recall:.4f} over "
        f"{report.sample_size} queries (goal >= {GOAL_RECALL}: "
        f"{'met' if report.recall >= GOAL_RECALL else 'not met'})"
    )
    chart = write_chart(
        "import_profiles",
        f"stylebase import, {args.count:,} profiles (workers {args.workers})",
        [
            Panel(
                "seconds",
                "s",
                {
                    **{name: {"measured": value} for name, value in phases.items()},
                    "end to end": {"measured": seconds, "goal": GOAL_SECONDS},
                },
            ),
            Panel("rows/s", "rows/s", {"import": {"measured": rate}}),
            Panel(
                f"recall@{K}", "recall", {"index": {"measured": report.recall, "goal": GOAL_RECALL}}
            ),
        ],
    )
    print(f"  chart: {chart}")
    print(
        json.dumps(
            {
                "seconds": round(seconds, 1),
                "rows_per_second": round(rate),
                "recall": round(report.recall, 4),
                "path": path.split(":")[1].strip(),
            }
        )
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        return run(args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
