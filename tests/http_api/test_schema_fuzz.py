"""schemathesis against the live /openapi.json: every operation, 200 examples each, its
default checks (no 5xx, responses that match the schema, only documented status codes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONFIG = Path(__file__).with_name("schemathesis.toml")
EXAMPLES = int(os.environ.get("HTTP_API_FUZZ_EXAMPLES", "200"))


def test_every_operation_survives_schema_fuzzing(base_url: str, tmp_path: Path) -> None:
    st = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st),
            "--config-file",
            str(CONFIG),
            "--no-color",
            "run",
            f"{base_url}/openapi.json",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "20261202",
            "--workers",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
        check=False,
    )
    print(result.stdout[-6000:])
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
