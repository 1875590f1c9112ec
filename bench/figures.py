"""What the benchmarks share for reporting their figures."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of values sorted ascending."""
    index = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[index]


@dataclass(frozen=True)
class Panel:
    """One chart of a figure: groups (e.g. concurrency levels) of named bars (p50, p95, ...)."""

    title: str
    unit: str
    groups: Mapping[str, Mapping[str, float]]


CHARTS = Path(__file__).resolve().parent / "charts"


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def write_chart(bench: str, title: str, panels: Sequence[Panel], *, folder: Path = CHARTS) -> Path:
    """bench/charts/<bench>.png beside the printed figures: latency percentiles per
    concurrency, throughput, ratio to a floor, as grouped bars, one panel each."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        names = list(dict.fromkeys(n for bars in panel.groups.values() for n in bars))
        width = 0.8 / max(1, len(names))
        for i, name in enumerate(names):
            # A series absent from a group leaves a gap there, not a zero bar.
            present = [
                (g, bars[name]) for g, bars in enumerate(panel.groups.values()) if name in bars
            ]
            xs = [g + i * width for g, _ in present]
            drawn = ax.bar(xs, [v for _, v in present], width, label=name)
            ax.bar_label(drawn, fmt=_number, fontsize=7)
        ax.set_xticks([g + width * (len(names) - 1) / 2 for g in range(len(panel.groups))])
        long = any(len(g) > 14 for g in panel.groups)
        ax.set_xticklabels(
            list(panel.groups),
            rotation=25 if long else 0,
            ha="right" if long else "center",
            fontsize=7 if long else 9,
        )
        ax.set_title(panel.title, fontsize=10)
        ax.set_ylabel(panel.unit)
        if len(names) > 1:
            ax.legend(fontsize=7)
    figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{bench}.png"
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


class Chart:
    """Collects a benchmark's printed figures and writes them as one PNG at the end."""

    def __init__(self, bench: str, title: str, *, ratio_title: str = "ratio to floor") -> None:
        self.bench = bench
        self.title = title
        self.ratio_title = ratio_title
        self._panels: dict[str, tuple[str, dict[str, dict[str, float]]]] = {}

    def _put(self, panel: str, unit: str, group: str, series: str, value: float) -> None:
        self._panels.setdefault(panel, (unit, {}))[1].setdefault(group, {})[series] = value

    def latency(
        self,
        group: str,
        series: str,
        *,
        p50_ms: float,
        p95_ms: float,
        p99_ms: float,
        per_second: float | None = None,
        ratio: float | None = None,
    ) -> None:
        """group: the concurrency (e.g. '16 in flight'); series: what was measured."""
        for name, value in (("p50", p50_ms), ("p95", p95_ms), ("p99", p99_ms)):
            self._put(f"{name} latency", "ms", group, series, value)
        if per_second is not None:
            self.rate(group, series, per_second)
        if ratio is not None:
            self.ratio(group, series, ratio)

    def rate(self, group: str, series: str, per_second: float, unit: str = "per second") -> None:
        self._put("throughput", unit, group, series, per_second)

    def ratio(self, group: str, series: str, value: float) -> None:
        self._put(self.ratio_title, "x", group, series, value)

    def write(self, folder: Path = CHARTS) -> Path:
        panels = [Panel(title, unit, groups) for title, (unit, groups) in self._panels.items()]
        return write_chart(self.bench, self.title, panels, folder=folder)
