"""The benchmarks' chart helper writes a real PNG image."""

from __future__ import annotations

import struct
from pathlib import Path

from bench.figures import Panel, write_chart

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_chart_helper_writes_a_png_of_the_figure_size(tmp_path: Path) -> None:
    panels = [
        Panel("latency", "ms", {"1 in flight": {"p50": 1.9, "p99": 4.3}, "16": {"p50": 12.6}}),
        Panel("throughput", "req/s", {"1": {"measured": 484.0}, "16": {"measured": 770.0}}),
        Panel("ratio to floor", "x", {"16": {"ratio": 1.3}}),
    ]
    path = write_chart("example", "Example benchmark", panels, folder=tmp_path)
    assert path == tmp_path / "example.png"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    # IHDR, the first chunk: width and height in pixels (4.5 x 3.6 inches a panel, 100 dpi).
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1350, 360)
    assert len(data) > 10_000
