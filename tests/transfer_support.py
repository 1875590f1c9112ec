"""Builders of profile lines and a runner of the stylebase command, for the import/export tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tests.harness import ROOT


def unit_vector(seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    vector = rng.normal(size=384).astype(np.float32)
    return [float(v) for v in vector / np.linalg.norm(vector)]


def line(i: int, **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "artist_name": f"import-artist-{i:05d}",
        "research_status": "cached",
        "text_description": f"Drummer number {i}, behind the beat.",
        "quantitative_params": {
            "tempo_min": 80.0,
            "tempo_max": 120.0,
            "tempo_avg": 100.0,
            "swing_percent": 20.0,
            "ghost_note_prob": 0.25,
            "syncopation_level": 0.5,
            "velocity_mean": 90.0,
            "velocity_std": 12.0,
        },
        "midi_templates": [f"templates/{i % 7}.mid"],
        "embedding": unit_vector(i),
        "confidence_score": 0.75,
        "sources_count": {"papers": 1, "articles": 2, "audio": 0, "midi": 3},
    }
    data.update(overrides)
    return data


def write_lines(path: Path, lines: Sequence[dict[str, Any] | str]) -> Path:
    with path.open("w") as handle:
        for item in lines:
            handle.write((item if isinstance(item, str) else json.dumps(item)) + "\n")
    return path


def stylebase_env(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env.update(POSTGRES_DATABASE_URL=database_url, LOG_LEVEL="WARNING", **extra)
    return env


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "shared.cli", *args]


def stylebase(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command(*args), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
