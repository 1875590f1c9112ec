"""The import's COPY fast path, its resume after a kill, and its progress output."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db.engine import Database
from shared.embedded.redis import RedisServer
from tests.harness import ROOT
from tests.transfer_support import command, line, stylebase, stylebase_env, write_lines

pytestmark = pytest.mark.usefixtures("clean_db")

_SCHEMA = text(
    """
    SELECT 'index ' || indexname || ': ' || indexdef AS item FROM pg_indexes
    WHERE schemaname = 'public'
    UNION ALL
    SELECT 'constraint ' || conname || ': ' || pg_get_constraintdef(oid) FROM pg_constraint
    WHERE connamespace = 'public'::regnamespace
    UNION ALL
    SELECT 'column ' || table_name || '.' || column_name || ' ' || data_type || ' '
           || is_nullable || ' ' || coalesce(column_default, '')
    FROM information_schema.columns WHERE table_schema = 'public'
    ORDER BY 1
    """
)


async def _schema(db: Database) -> list[str]:
    async with db.transaction() as session:
        return [r.item for r in await session.execute(_SCHEMA)]


async def _uses_index(db: Database) -> str:
    async with db.transaction() as session:
        await session.execute(text("SET LOCAL enable_seqscan = off"))
        plan = await session.execute(
            text(
                "EXPLAIN SELECT artist_id FROM style_profiles ORDER BY embedding <=> "
                "(SELECT embedding FROM style_profiles LIMIT 1) LIMIT 5"
            )
        )
        return "\n".join(r[0] for r in plan)


async def test_fast_path_stores_the_same_rows_and_the_migrated_schema(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    migrated = await _schema(db)
    lines = [line(i) for i in range(60)] + [line(60, research_status="pending")]
    source = write_lines(tmp_path / "in.jsonl", lines)
    env = stylebase_env(database_url)
    normal = stylebase(env, "import", str(source))
    assert "path: normal" in normal.stderr
    assert stylebase(env, "export", str(tmp_path / "normal.jsonl")).returncode == 0
    async with db.transaction() as session:
        await session.execute(text("TRUNCATE artists CASCADE"))

    fast_env = stylebase_env(database_url, IMPORT_FAST_PATH_MIN_LINES="20")
    fast = stylebase(fast_env, "import", str(source), "--batch-size", "25")
    assert fast.returncode == 0, fast.stderr
    assert "path: fast" in fast.stderr
    assert "imported 61, unchanged 0, refused 0 (path: fast)" in fast.stdout
    assert stylebase(env, "export", str(tmp_path / "fast.jsonl")).returncode == 0
    assert (tmp_path / "fast.jsonl").read_bytes() == (tmp_path / "normal.jsonl").read_bytes()
    assert await _schema(db) == migrated
    assert "ix_style_profiles_embedding" in await _uses_index(db)
    async with db.transaction() as session:
        # Every row took a version from the save sequence and left an invalidation (of a
        # gateway's cached "not found") that, without REDIS_URL here, the store's relay runs.
        versions = (await session.execute(text("SELECT version FROM style_profiles"))).scalars()
        assert len(set(versions)) == 61
        outbox = await session.scalar(text("SELECT count(*) FROM profile_invalidation_outbox"))
        assert outbox == 61


async def test_import_with_redis_runs_the_invalidations_itself(
    database_url: str, db: Database, redis_server: RedisServer, tmp_path: Path
) -> None:
    source = write_lines(tmp_path / "in.jsonl", [line(i) for i in range(30)])
    for threshold in ("10", "100000"):  # the fast path, then the normal one over the same rows
        env = stylebase_env(
            database_url, REDIS_URL=redis_server.url, IMPORT_FAST_PATH_MIN_LINES=threshold
        )
        if threshold == "100000":
            source = write_lines(source, [line(i, confidence_score=0.5) for i in range(30)])
        result = stylebase(env, "import", str(source))
        assert "imported 30" in result.stdout, result.stderr
        async with db.transaction() as session:
            left = await session.scalar(text("SELECT count(*) FROM profile_invalidation_outbox"))
        assert left == 0


def _wait_for_position(state: Path, process: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            position = json.loads(state.read_text())["line"]
        except (FileNotFoundError, ValueError):
            position = 0
        if position >= 300:
            return int(position)
        time.sleep(0.01)
    raise AssertionError(f"no committed batch seen before exit {process.returncode}")


def _stop_mid_import(
    env: dict[str, str], source: Path, state: Path, how: signal.Signals
) -> tuple[int, int]:
    """The signal once a few batches committed; the last position the import recorded and
    its exit code."""
    process = subprocess.Popen(
        command("import", str(source), "--batch-size", "50"),
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_position(state, process)
        process.send_signal(how)
    finally:
        process.wait(60)
    return int(json.loads(state.read_text())["line"]), process.returncode


@pytest.mark.parametrize(
    ("fast", "how", "code", "resume"),
    [
        (False, signal.SIGKILL, -9, True),
        (True, signal.SIGKILL, -9, True),
        (False, signal.SIGINT, 130, True),
        # Starting over instead: the committed lines are unchanged, the index still built.
        (True, signal.SIGKILL, -9, False),
    ],
    ids=["normal-kill", "fast-kill", "normal-ctrl-c", "fast-kill-start-over"],
)
async def test_resume_after_an_interruption_imports_the_rest_exactly_once(
    database_url: str,
    db: Database,
    tmp_path: Path,
    fast: bool,
    how: signal.Signals,
    code: int,
    resume: bool,
) -> None:
    count = 2000
    source = write_lines(tmp_path / "in.jsonl", [line(i) for i in range(count)])
    state = tmp_path / "in.jsonl.import-state"
    env = stylebase_env(database_url, IMPORT_FAST_PATH_MIN_LINES="100" if fast else "100000")
    committed, exit_code = _stop_mid_import(env, source, state, how)
    assert exit_code == code
    assert committed < count
    again = ("--resume",) if resume else ()
    resumed = stylebase(env, "import", str(source), *again, "--batch-size", "50")
    assert resumed.returncode == 0, resumed.stderr
    done = json.loads(resumed.stdout.split("imported ", 1)[1].split(",")[0])
    unchanged = int(resumed.stdout.split("unchanged ", 1)[1].split(",")[0])
    last = json.loads(state.read_text())["line"] if state.exists() else None
    assert last is None  # a finished import leaves no position behind
    if resume:
        assert unchanged <= 50 and done + unchanged == count - committed
    else:
        assert unchanged >= committed and done + unchanged == count
    async with db.transaction() as session:
        stored = await session.scalar(text("SELECT count(*) FROM style_profiles"))
        rewritten = await session.scalar(
            text("SELECT count(*) FROM style_profiles WHERE updated_at <> created_at")
        )
        indexdef = await session.scalar(
            text("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_style_profiles_embedding'")
        )
    assert (stored, rewritten) == (count, 0)
    assert indexdef is not None and "hnsw" in indexdef


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_through_a_pipe(
    database_url: str, tmp_path: Path
) -> None:
    source = write_lines(tmp_path / "in.jsonl", [line(i) for i in range(40)])
    env = stylebase_env(database_url, COLUMNS="100")
    piped = stylebase(env, "import", str(source), "--batch-size", "10")
    assert "import in.jsonl: 40/40" in piped.stderr
    assert "━" not in piped.stderr

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command("import", str(source), "--batch-size", "10"),
        env={**env, "TERM": "xterm"},
        cwd=ROOT,
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
    )
    os.close(terminal)
    output = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1)
        if ready:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            output += chunk
    process.wait(30)
    os.close(controller)
    shown = output.decode(errors="replace")
    assert process.returncode == 0, shown
    assert "━" in shown and "40/40" in shown
    assert "import in.jsonl: 40/40" not in shown
