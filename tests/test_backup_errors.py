"""Corruption and bad input: one clear line on stderr naming what is wrong, exit 1."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest

from shared.backup import catalog
from tests.backup_support import Source, run_cli, source

__all__ = ["source"]


def flip_a_byte(backup: Path) -> Path:
    """In the largest table file: a page of real data, as a disk error would hit it."""
    victim = max((backup / "base").rglob("*"), key=lambda p: p.stat().st_size if p.is_file() else 0)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return victim


def test_a_flipped_byte_is_caught_by_verify_list_and_restore(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    source.write("x", 50)
    code, _, err = run_cli(source.settings, ["backup"], capsys)
    assert code == 0, err
    (record,) = catalog.load_all(source.settings.base_dir)
    victim = flip_a_byte(catalog.backup_path(source.settings.base_dir, record.id))
    name = str(victim.relative_to(catalog.backup_path(source.settings.base_dir, record.id)))

    code, _, err = run_cli(source.settings, ["backups", "verify"], capsys)
    assert code == 1
    assert name in err and "failed verification" in err
    assert len(err.strip().splitlines()) == 1

    code, out, _ = run_cli(source.settings, ["backups", "list", "--verify"], capsys)
    assert code == 1
    assert "CORRUPT" in out and name in out
    assert "nothing can be restored" in out

    # The record said corrupt, but restore checks again itself: mark it verified to prove it.
    (record,) = catalog.load_all(source.settings.base_dir)
    record.verified = True
    catalog.save(source.settings.base_dir, record)
    target = source.tmp / "restored"
    code, _, err = run_cli(
        source.settings, ["restore", "--latest", "--target", str(target)], capsys
    )
    assert code == 1
    assert name in err
    assert not target.exists()


def test_bad_input_is_refused_with_the_reason(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = source.tmp / "a-file"
    blocker.write_text("not a directory")
    code, _, err = run_cli(source.settings_with(backup_dir=str(blocker)), ["backup"], capsys)
    assert code == 1
    assert f"{blocker} is a file, not a directory" in err

    code, _, err = run_cli(source.settings, ["backup"], capsys)
    assert code == 0, err
    (record,) = catalog.load_all(source.settings.base_dir)

    busy = source.tmp / "busy"
    busy.mkdir()
    (busy / "something").write_text("keep me")
    code, _, err = run_cli(source.settings, ["restore", "--latest", "--target", str(busy)], capsys)
    assert code == 1
    assert f"target {busy} is not empty" in err
    assert (busy / "something").read_text() == "keep me"

    code, _, err = run_cli(
        source.settings,
        ["restore", "--to", "2020-01-01T00:00:00Z", "--target", str(source.tmp / "new")],
        capsys,
    )
    assert code == 1
    assert "2020-01-01T00:00:00Z is before the earliest reachable point" in err
    assert catalog.iso(record.end, precise=True) in err

    code, _, err = run_cli(
        source.settings, ["restore", "--to", "yesterday", "--target", str(source.tmp / "n")], capsys
    )
    assert code == 1 and "yesterday" in err

    # In place while the server runs on the data directory: refused, nothing touched.
    settings = source.settings_with(stylebase_data_dir=str(source.server.pgdata.parent))
    code, _, err = run_cli(settings, ["restore", "--latest", "--in-place"], capsys)
    assert code == 1 and "stop the stack" in err


def test_a_time_beyond_the_archive_is_refused_and_in_place_keeps_the_old_directory(
    source: Source, capsys: pytest.CaptureFixture[str]
) -> None:
    source.write("kept")
    code, _, err = run_cli(source.settings, ["backup"], capsys)
    assert code == 0, err
    source.write("never-archived")
    time.sleep(0.3)
    # No archiver ran: the backup's own WAL ends before this time.
    after = catalog.now() - timedelta(seconds=0.1)
    code, _, err = run_cli(
        source.settings,
        ["restore", "--to", catalog.iso(after, precise=True), "--target", str(source.tmp / "t")],
        capsys,
    )
    assert code == 1
    assert "the WAL archive ends before" in err

    live = source.server.pgdata
    source.server.stop()
    code, _, err = run_cli(source.settings, ["restore", "--latest", "--in-place"], capsys)
    assert code == 0, err
    (aside,) = live.parent.glob("postgres.before-restore-*")
    assert (aside / "PG_VERSION").exists()
    source.server.start()
    names = source.sql("SELECT string_agg(DISTINCT split_part(name, '-', 1), ',') FROM artists")
    assert names == "kept", "the base backup's rows, without the later ones"
