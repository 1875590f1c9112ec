"""'stylebase import' and 'stylebase export' as a subprocess against the session's PostgreSQL."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.db.engine import Database
from tests.transfer_support import line, stylebase, stylebase_env, write_lines

pytestmark = pytest.mark.usefixtures("clean_db")


async def _names(db: Database) -> list[str]:
    async with db.transaction() as session:
        rows = await session.execute(
            text(
                "SELECT a.name FROM artists a JOIN style_profiles p ON p.artist_id = a.id"
                " ORDER BY a.name"
            )
        )
        return [r.name for r in rows]


def _refused(stdout: str) -> dict[int, str]:
    return {int(m[1]): m[2] for m in re.finditer(r"^  line (\d+): (.*)$", stdout, re.M)}


async def test_import_reports_each_refused_line_and_writes_only_the_valid_ones(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    bad_params = dict(line(0)["quantitative_params"], tempo_min=-5.0)
    source = write_lines(
        tmp_path / "in.jsonl",
        [
            line(1),
            line(2, embedding=[math.nan] * 384),
            line(3, embedding=[0.1] * 383),
            line(4, text_description="x" * 1_000_000),
            line(5, text_description="nul \x00 inside"),
            line(6, quantitative_params=bad_params),
            "{not json",
            line(8, research_status="done"),
            line(9, unknown_field=1),
            line(10),
            line(11, artist_name=line(1)["artist_name"]),
        ],
    )
    env = stylebase_env(database_url)
    first = stylebase(env, "import", str(source))
    assert first.returncode == 1, first.stderr
    assert "imported 2, unchanged 0, refused 9 (path: normal)" in first.stdout
    refused = _refused(first.stdout)
    assert sorted(refused) == [2, 3, 4, 5, 6, 7, 8, 9, 11]
    assert "embedding[0]" in refused[2] and "finite" in refused[2]
    assert "384" in refused[3]
    assert "text_description" in refused[4]
    assert "text_description" in refused[5]
    assert "tempo_min" in refused[6]
    assert "research_status" in refused[8]
    assert "unknown_field" in refused[9]
    assert "line 1" in refused[11]
    assert await _names(db) == [line(1)["artist_name"], line(10)["artist_name"]]

    again = stylebase(env, "import", str(source))
    assert "imported 0, unchanged 2, refused 9" in again.stdout

    changed = write_lines(tmp_path / "changed.jsonl", [line(1, confidence_score=0.5), line(10)])
    third = stylebase(env, "import", str(changed))
    assert third.returncode == 0, third.stderr
    assert "imported 1, unchanged 1, refused 0" in third.stdout


async def test_export_then_import_into_an_empty_store_exports_the_same_file(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    lines = [line(i) for i in range(5)]
    lines += [line(5, research_status="pending", embedding=[], midi_templates=[])]
    lines += [line(6, research_status="failed", text_description="Ünïcode — “quoted”")]
    env = stylebase_env(database_url)
    assert stylebase(env, "import", str(write_lines(tmp_path / "in.jsonl", lines))).returncode == 0
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    exported = stylebase(env, "export", str(first))
    assert exported.returncode == 0, exported.stderr
    assert "exported 7 profiles" in exported.stdout
    async with db.transaction() as session:
        await session.execute(text("TRUNCATE artists CASCADE"))
    assert stylebase(env, "import", str(first)).returncode == 0
    assert stylebase(env, "export", str(second)).returncode == 0
    assert first.read_bytes() == second.read_bytes()
    rows = [json.loads(x) for x in first.read_text().splitlines()]
    assert [r["artist_name"] for r in rows] == sorted(r["artist_name"] for r in lines)
    assert rows[5]["research_status"] == "pending" and rows[5]["embedding"] == []

    pending = tmp_path / "pending.jsonl"
    assert stylebase(env, "export", str(pending), "--status", "pending").returncode == 0
    assert [json.loads(x)["artist_name"] for x in pending.read_text().splitlines()] == [
        line(5)["artist_name"]
    ]


async def test_parquet_round_trip(database_url: str, tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    env = stylebase_env(database_url)
    lines = [line(i) for i in range(3)] + [line(3, embedding=[])]
    assert stylebase(env, "import", str(write_lines(tmp_path / "in.jsonl", lines))).returncode == 0
    jsonl, parquet = tmp_path / "a.jsonl", tmp_path / "a.parquet"
    assert stylebase(env, "export", str(jsonl)).returncode == 0
    assert stylebase(env, "export", str(parquet)).returncode == 0
    again = stylebase(env, "import", str(parquet))
    assert "imported 0, unchanged 4, refused 0" in again.stdout, again.stderr
