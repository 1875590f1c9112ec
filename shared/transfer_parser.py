"""The arguments of import and export; light to import, as every 'stylebase' run builds them."""

from __future__ import annotations

import argparse
from pathlib import Path

COMMANDS = ("import", "export")


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    imp = sub.add_parser(
        "import",
        help="load profiles from a JSON Lines (or Parquet) file",
        description="Each line is checked by the store's rules; valid lines are written a "
        "batch per transaction, unchanged ones skipped, refused ones listed with their number.",
    )
    imp.add_argument("file", type=Path)
    imp.add_argument("--resume", action="store_true", help="continue an interrupted import")
    imp.add_argument("--batch-size", type=int, default=1000)
    imp.add_argument("--fast-path-min-lines", type=int, help="IMPORT_FAST_PATH_MIN_LINES")
    imp.add_argument("--fast-path-max-rows", type=int, help="IMPORT_FAST_PATH_MAX_ROWS")
    exp = sub.add_parser("export", help="write every profile to a JSON Lines (or Parquet) file")
    exp.add_argument("file", type=Path)
    exp.add_argument("--status", choices=("pending", "researching", "cached", "failed"))
