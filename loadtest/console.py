"""What the load tester shows on the terminal: the live progress bar (elapsed time, achieved
rate, p99 per tier) while a run lasts, and the per-tier table or JSON at its end. Writes to
stdout only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .stats import Recorder

REFRESH_S = 0.5


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def live_line(recorder: Recorder, elapsed_s: float) -> str:
    sent = sum(recorder.fired.values())
    parts = [f"{sent / elapsed_s if elapsed_s > 0 else 0.0:.1f} req/s"]
    for tier, stats in recorder.tiers.items():
        if recorder.fired.get(tier):
            parts.append(f"{tier} p99 {_ms(stats.percentile_ms(99.0))} ms")
    return "  ".join(parts)


async def show_progress(recorder: Recorder, total: int, stop: asyncio.Event, console: Console | None = None) -> None:
    """A live bar until `stop` is set; does nothing unless stdout is a terminal."""
    console = console or Console()
    if not console.is_terminal:
        return
    columns = (TextColumn("sending"), BarColumn(), TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.fields[line]}"), console=console, transient=True) as progress:
        task = progress.add_task("load", total=total, line="")
        loop = asyncio.get_running_loop()
        started = loop.time()
        while not stop.is_set():
            elapsed_s = loop.time() - started
            progress.update(task, completed=sum(recorder.fired.values()), line=live_line(recorder, elapsed_s))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REFRESH_S)


def table(summary: Mapping[str, Any], title: str = "tiergate loadtest") -> Table:
    caption = f"{summary['sent']} requests in {summary['duration_s']:g} s ({summary['achieved_rate']} req/s)"
    t = Table(title=title, caption=caption)
    columns = ["tier", "sent", "ok", "shed", "deadline", "errors", "p50", "p90", "p99", "p99.9", "max"]
    has_ttft = any("ttft_p50_ms" in row for row in summary["tiers"].values())
    columns += ["ttft p50", "ttft p99"] if has_ttft else []
    columns += ["SLO", "attained", "met"]
    for column in columns:
        t.add_column(column, justify="left" if column == "tier" else "right")
    for tier, row in summary["tiers"].items():
        cells = [tier, *(str(row[k]) for k in ("sent", "ok", "shed", "deadline", "errors"))]
        cells += [_ms(row[k]) for k in ("p50_ms", "p90_ms", "p99_ms", "p99.9_ms", "max_ms")]
        if has_ttft:
            cells += [_ms(row.get("ttft_p50_ms")), _ms(row.get("ttft_p99_ms"))]
        objective = row["slo_objective_pct"]
        cells += [f"{row['slo_latency_ms']:g}ms@{objective:g}%", _pct(row["slo_attainment_pct"])]
        cells.append("yes" if row["slo_met"] else "NO")
        t.add_row(*cells)
    return t


def capacity_table(steps: Sequence[Mapping[str, Any]], best: float | None) -> Table:
    t = Table(title="capacity search", caption=f"highest rate meeting every SLO: {best if best else 'none'}")
    for column in ("rate", "sent", "achieved", "attained per tier", "all met"):
        t.add_column(column, justify="right")
    for step in steps:
        summary = step["summary"]
        attained = ", ".join(f"{tier} {_pct(row['slo_attainment_pct'])}" for tier, row in summary["tiers"].items())
        met = "yes" if summary["slo_met"] else "NO"
        t.add_row(f"{step['rate']:g}", str(summary["sent"]), str(summary["achieved_rate"]), attained, met)
    return t


def print_result(result: Mapping[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
        return
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)  # a pipe or file: room for every column
    if "steps" in result:
        console.print(capacity_table(result["steps"], result["capacity_rate"]))
    else:
        console.print(table(result))
    if result.get("report"):
        console.print(f"report: {result['report']}")
