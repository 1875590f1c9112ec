"""A full disk, for real: a small tmpfs as BACKUP_DIR or as the restore target (needs root to
mount; skipped otherwise)."""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.backup import catalog
from tests.backup_support import Source, run_cli, source

__all__ = ["source"]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs; the test resizes it with resize()."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def resize(mount: Path, megabytes: int) -> None:
    subprocess.run(
        ["mount", "-o", f"remount,size={megabytes}m", str(mount)], check=True, capture_output=True
    )


def test_a_full_disk_is_named_and_leaves_no_partial_backup(
    source: Source, small_disk: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mount = small_disk
    settings = source.settings_with(backup_dir=str(mount / "backups"))
    database = int(source.sql("SELECT sum(pg_database_size(oid)) FROM pg_database"))

    # Far too small: refused before pg_basebackup starts.
    code, _, err = run_cli(settings, ["backup"], capsys)
    assert code == 1
    assert "no space left for a backup" in err and "BACKUP_DIR" in err

    # Just past the check (the database and a tenth) but short of the 16 MB WAL segment that
    # travels with the copy: the copy itself runs out of space.
    resize(mount, math.ceil(database * 1.1 / 1_048_576) + 1)
    code, _, err = run_cli(settings, ["backup"], capsys)
    assert code == 1
    assert "no space left on device" in err, err
    assert len(err.strip().splitlines()) == 1
    assert not list((mount / "backups" / "base").iterdir()), "the partial copy is removed"

    # A restore into a disk too small for the copy is refused before it starts.
    code, _, err = run_cli(source.settings, ["backup"], capsys)
    assert code == 0, err
    resize(mount, 1)
    code, _, err = run_cli(
        source.settings, ["restore", "--latest", "--target", str(mount / "restored")], capsys
    )
    assert code == 1
    assert "no space left for the restore" in err
    assert len(catalog.load_all(source.settings.base_dir)) == 1
