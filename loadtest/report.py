"""The `--report DIR` output: PNG plots (latency CDF per tier with its SLO line; throughput, p99
and queue depth over time) drawn with matplotlib's Agg backend, the summary as JSON, and one
self-contained report.html with the same plots embedded as base64. Writes files into DIR only.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from core.settings import Settings

from .stats import Recorder, TierStats

CDF_PERCENTILES = [p / 10 for p in range(990)] + [99 + p / 100 for p in range(100)] + [100.0]
NO_DEPTH = (
    "Queue depth is not shown: no Redis URL was given (--direct or --redis), so the tier streams' "
    "lengths could not be sampled."
)


def _figure() -> tuple[Any, Any]:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def plot_cdf(tiers: Mapping[str, TierStats], path: Path) -> Path | None:
    fig, ax = _figure()
    drawn = False
    for tier, stats in tiers.items():
        if not stats.latency.get_total_count():
            continue
        values = [stats.latency.get_value_at_percentile(p) / 1000.0 for p in CDF_PERCENTILES]
        (line,) = ax.plot(values, CDF_PERCENTILES, label=f"{tier}")
        ax.axvline(
            stats.slo_ms, color=line.get_color(), linestyle="--", alpha=0.7, label=f"{tier} SLO {stats.slo_ms:g} ms"
        )
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("latency from intended send time (ms, log scale)")
    ax.set_ylabel("percentile of ok answers")
    ax.set_title("Latency CDF per tier")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_timeline(tiers: Mapping[str, TierStats], path: Path, what: str) -> Path | None:
    """`what`: "throughput" (answers per second) or "p99" (p99 of ok answers per second, ms)."""
    fig, ax = _figure()
    for tier, stats in tiers.items():
        seconds = sorted(stats.timeline)
        if not seconds:
            continue
        values: list[float | None]
        if what == "throughput":
            values = [stats.timeline[s].answered for s in seconds]
        else:
            values = [
                stats.timeline[s].histogram.get_value_at_percentile(99.0) / 1000.0 if stats.timeline[s].ok else None
                for s in seconds
            ]
        ax.plot(seconds, values, marker="o", markersize=3, label=tier)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("answers per second" if what == "throughput" else "p99 latency (ms)")
    ax.set_title("Throughput over time" if what == "throughput" else "p99 latency over time")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_depth(depth: Mapping[str, list[tuple[float, int]]], path: Path) -> Path | None:
    if not any(depth.values()):
        return None
    fig, ax = _figure()
    for tier, points in depth.items():
        ax.plot([t for t, _ in points], [n for _, n in points], label=tier)
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("entries in the tier stream (XLEN)")
    ax.set_title("Queue depth over time")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _summary_table(result: Mapping[str, Any]) -> str:
    columns = ["sent", "ok", "shed", "deadline", "errors", "p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms"]
    columns += ["slo_latency_ms", "slo_objective_pct", "slo_attainment_pct", "slo_met"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["tier", *columns])
    rows = []
    for tier, row in result["tiers"].items():
        cells = "".join(f"<td>{html.escape(_cell(row.get(c)))}</td>" for c in columns)
        rows.append(f"<tr><td>{html.escape(tier)}</td>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _embed(path: Path, title: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'


def write_report(
    directory: Path, settings: Settings, recorder: Recorder, result: Mapping[str, Any], depth_known: bool
) -> Path:
    """Write the PNGs, summary.json and report.html into `directory`; returns the HTML's path."""
    directory.mkdir(parents=True, exist_ok=True)
    tiers = {tier: stats for tier, stats in recorder.tiers.items() if stats.sent}
    plots: list[tuple[Path | None, str]] = [
        (plot_cdf(tiers, directory / "latency_cdf.png"), "Latency CDF per tier (dashed: the tier's SLO latency)"),
        (plot_timeline(tiers, directory / "throughput.png", "throughput"), "Throughput over time"),
        (plot_timeline(tiers, directory / "p99.png", "p99"), "p99 latency over time"),
    ]
    depth_path = plot_depth(recorder.depth, directory / "queue_depth.png") if depth_known else None
    plots.append((depth_path, "Queue depth over time"))
    (directory / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    sections = [_embed(path, title) for path, title in plots if path is not None]
    if depth_path is None:
        sections.append(f"<h2>Queue depth over time</h2><p>{html.escape(NO_DEPTH)}</p>")
    caption = (
        f"{result['sent']} requests in {result['duration_s']:g} s ({result['achieved_rate']} req/s); "
        f"every tier met its SLO objective: {'yes' if result['slo_met'] else 'no'}"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>tiergate loadtest report</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{max-width:100%}}</style></head>
<body><h1>tiergate loadtest report</h1><p>{html.escape(caption)}</p>
<p>Latencies run from each request's intended send time (open loop) and cover ok answers; the SLO
attainment is the share of sent requests answered ok within the tier's SLO latency.</p>
{_summary_table(result)}
{"".join(sections)}
</body></html>
"""
    path = directory / "report.html"
    path.write_text(page)
    return path
