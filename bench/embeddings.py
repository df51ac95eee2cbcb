"""What dynamic batching buys a real model on this host: all-MiniLM-L6-v2 (backend local) through
the whole gateway, against the model alone in a loop, at each `max_batch`.

For each batch size, alternating so that both see the same machine: the model alone (one thread,
the same texts, `--alone-s` seconds, before and after), then `tiergate up` on config/local.toml
with `pools.minilm.max_batch` set to it, offered open-loop Poisson load at increasing rates,
shares of the model's own pace (a client process of its own, native `/v1/infer`, one text a
request), up to past the model's own pace. Per step: embeddings a second answered, p50/p99 latency
at the client, errors, the mean batch size, and from the worker's /metrics the worker's own CPU
time per batch (its process's CPU less the forward thread's) against the forward pass's, CPU and
wall time. Prints the host's load average with each setting: compare by ratio on a shared host.
The table: each setting's peak and its gain over batch 1 against the model's own, and the highest
rate whose p99 is within the interactive SLO.
Run: `python -m bench.embeddings [--batches 1,8,32,64] [--fractions 0.25,0.5,...] [--step-s 6]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.scenarios import start_stack
from core.settings import load_settings

CONFIG = Path(__file__).resolve().parent.parent / "config" / "local.toml"
MODEL = "all-MiniLM-L6-v2"
OVERLOAD_MS = 2000.0
SUBJECTS = ["The committee", "A small bakery", "Our new intern", "The northern railway", "Every patient"]
VERBS = ["approved", "rebuilt", "questioned", "delayed", "celebrated", "measured"]
OBJECTS = ["the annual budget", "its sourdough recipe", "the quarterly report", "the timetable", "the results"]
TAILS = ["after a long debate.", "before the holidays.", "with some reluctance.", "in record time.", "yesterday."]


def texts(count: int, seed: int = 7) -> list[str]:
    """Distinct sentences of about 12 to 16 tokens, as a client's inputs might be."""
    rng = random.Random(seed)
    return [
        f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)} ({n})"
        for n in range(count)
    ]


def config_with(max_batch: int, folder: Path) -> Path:
    """config/local.toml with the minilm pool's max_batch (and no batching wait at batch 1)."""
    text = CONFIG.read_text()
    head, pool = text.split("[pools.minilm]")
    pool = re.sub(r"(?m)^max_batch = \d+", f"max_batch = {max_batch}", pool)
    if max_batch == 1:
        pool = re.sub(r"(?m)^max_wait_ms = [\d.]+", "max_wait_ms = 0", pool)
    path = folder / f"local-{max_batch}.toml"
    path.write_text(head + "[pools.minilm]" + pool)
    load_settings(path)  # fails here, naming the key, if the substitution broke it
    return path


# ---------------------------------------------------------------- the model alone


def alone(model: Any, batch: int, seconds: float, inputs: list[str]) -> float:
    """Embeddings a second of the model alone, one forward pass per `batch` texts, as the worker runs it."""
    from workers.backends.local import embed

    embed(model, inputs[:batch])  # warm
    done, n, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        chunk = [inputs[(n + i) % len(inputs)] for i in range(batch)]
        embed(model, chunk)
        done, n = done + batch, n + batch
    return done / (time.perf_counter() - start)


# ---------------------------------------------------------------- the client process


async def _send(session: aiohttp.ClientSession, url: str, text: str, start: float, rows: list[Any]) -> None:
    sent = time.perf_counter() - start
    status, size = -1, 0
    try:
        async with session.post(f"{url}/v1/infer", json={"model": "minilm", "input": text}) as response:
            status = response.status
            answer = await response.json()
            if status == 200 and len(answer["output"]) != 384:
                status = 0  # a wrong answer: counted as an error
            size = answer.get("batch_size", 0) if status == 200 else 0
    except aiohttp.ClientError:
        pass
    rows.append((sent, time.perf_counter() - start, status, size))


async def open_loop(url: str, rate: float, seconds: float, seed: int) -> list[Any]:
    rng, rows, tasks = random.Random(seed), [], []
    inputs = texts(4096, seed)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        start, at, n = time.perf_counter(), 0.0, 0
        while (at := at + rng.expovariate(rate)) < seconds:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            tasks.append(asyncio.create_task(_send(session, url, inputs[n % len(inputs)], start, rows)))
            n += 1
        await asyncio.gather(*tasks)
    return rows


def client_main(spec: dict[str, Any]) -> None:
    """The client process: one step, its rows as JSON on stdout."""
    import uvloop

    rows = uvloop.run(open_loop(spec["url"], spec["rate"], spec["seconds"], spec["seed"]))
    print(json.dumps(rows))


def step(url: str, rate: float, seconds: float, seed: int) -> list[Any]:
    spec = json.dumps({"url": url, "rate": rate, "seconds": seconds, "seed": seed})
    out = subprocess.run([sys.executable, "-m", "bench.embeddings", "--client", spec], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the client failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# ---------------------------------------------------------------- the worker's metrics


async def scrape(url: str) -> dict[str, float]:
    names = (
        "process_cpu_seconds_total",
        "tiergate_worker_model_seconds_total",
        "tiergate_worker_model_cpu_seconds_total",
        "tiergate_worker_batches_total",
        "tiergate_worker_batch_size_sum",
    )
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        text = await response.text()
    values = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in names:
            values[name] = float(line.rsplit(" ", 1)[1])
    return values


def worker_times(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per batch of the step: the forward pass's wall and CPU ms, the worker's own CPU ms, the mean size."""
    d = {k: after[k] - before.get(k, 0.0) for k in after}
    batches = d["tiergate_worker_batches_total"] or 1.0
    own_s = d["process_cpu_seconds_total"] - d["tiergate_worker_model_cpu_seconds_total"]
    return {
        "forward_ms": d["tiergate_worker_model_seconds_total"] / batches * 1000,
        "forward_cpu_ms": d["tiergate_worker_model_cpu_seconds_total"] / batches * 1000,
        "own_ms": own_s / batches * 1000,
        "size": d["tiergate_worker_batch_size_sum"] / batches,
    }


# ---------------------------------------------------------------- one setting


def summary(rows: list[Any], seconds: float, slo_ms: float, percentile: float) -> dict[str, Any]:
    ok = sorted((done - sent) * 1000 for sent, done, status, _ in rows if status == 200)
    errors = sum(1 for row in rows if row[2] != 200)
    finished = max((row[1] for row in rows), default=seconds)  # past `seconds` when a backlog drained
    pct = _pct(ok, percentile)
    return {
        "sent": len(rows),
        "errors": errors,
        "per_s": len(ok) / max(seconds, finished),
        "p50_ms": _pct(ok, 50),
        "p99_ms": _pct(ok, 99),
        "within_slo": errors == 0 and pct is not None and pct <= slo_ms,
    }


def _pct(values: list[float], p: float) -> float | None:
    return values[min(len(values) - 1, int(len(values) * p / 100))] if values else None


def setting(config: Path, rates: list[float], step_s: float) -> list[dict[str, Any]]:
    """Each rate in turn on one fresh stack, until a step is deep in overload (p50 over
    `OVERLOAD_MS`: a higher rate would only lengthen the queue); the best step is the peak."""
    slo = load_settings(config).tiers["interactive"].slo
    process, ready = start_stack(config)
    rows_out = []
    try:
        metrics = ready["metrics"]["minilm"][0]
        for n, rate in enumerate(rates):
            before = asyncio.run(scrape(metrics))
            result = summary(step(ready["url"], rate, step_s, seed=n + 1), step_s, slo.latency_ms, slo.percentile)
            result |= {"rate": rate} | worker_times(before, asyncio.run(scrape(metrics)))
            rows_out.append(result)
            print_step(result, flush=True)
            if (result["p50_ms"] or 0.0) > OVERLOAD_MS:
                break
    finally:
        process.terminate()
        process.wait(30)
    return rows_out


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_step(r: dict[str, Any], flush: bool = False) -> None:
    print(
        f"    offered {r['rate']:>5g}/s: {r['per_s']:6.1f} emb/s  p50 {_f(r['p50_ms']):>6} ms"
        f"  p99 {_f(r['p99_ms']):>7} ms"
        f"  errors {r['errors']:>3}  batch {r['size']:5.1f}  forward {r['forward_ms']:6.1f} ms"
        f" (CPU {r['forward_cpu_ms']:6.1f} ms)  worker's own CPU {r['own_ms']:5.2f} ms"
        f" ({r['own_ms'] / max(r['forward_cpu_ms'], 1e-9) * 100:4.1f} %)"
        f"  {'ok' if r['within_slo'] else 'misses SLO'}",
        flush=flush,
    )


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main_run(args: argparse.Namespace) -> None:
    from workers.backends import local

    local.set_threads(1)
    model = local.load(MODEL)
    inputs = texts(512)
    fractions = [float(f) for f in args.fractions.split(",")]
    table = []
    with tempfile.TemporaryDirectory() as folder:
        for batch in [int(b) for b in args.batches.split(",")]:
            print(f"max_batch {batch} (load average {load_average()}, {os.cpu_count()} CPUs)", flush=True)
            first = alone(model, batch, args.alone_s, inputs)
            print(f"    model alone: {first:.1f} emb/s", flush=True)
            rates = [round(first * f) for f in fractions]  # open-loop rates: shares of the model's own pace
            steps = setting(config_with(batch, Path(folder)), rates, args.step_s)
            second = alone(model, batch, args.alone_s, inputs)
            print(f"    model alone again: {second:.1f} emb/s", flush=True)
            table.append(Row(batch, (first + second) / 2, steps, load_average()))
    print_table(table)


@dataclass
class Row:
    batch: int
    alone_per_s: float  # the model alone, before and after the gateway's steps
    steps: list[dict[str, Any]]
    load_after: str

    def peak(self) -> dict[str, Any]:
        return max(self.steps, key=lambda s: s["per_s"])

    def within(self) -> dict[str, Any] | None:
        ok = [s for s in self.steps if s["within_slo"]]
        return max(ok, key=lambda s: s["rate"]) if ok else None


def print_table(table: list[Row]) -> None:
    print()
    print("| max_batch | model alone, emb/s | its gain | gateway peak, emb/s | its gain | share of the model's gain"
          " | batch at peak | worker's own CPU / forward pass's CPU, per batch | highest rate within SLO"
          " | p50 / p99 ms there | load average after |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    base = table[0]
    for row in table:
        peak, within = row.peak(), row.within()
        gain = row.alone_per_s / base.alone_per_s
        gw_gain = peak["per_s"] / base.peak()["per_s"]
        share = f"{gw_gain / gain * 100:.0f} %" if row is not base else "-"
        own = peak["own_ms"] / peak["forward_cpu_ms"] * 100
        worker = f"{peak['own_ms']:.2f} / {peak['forward_cpu_ms']:.1f} ms ({own:.1f} %)"
        slo = f"{within['rate']:g}/s | {_f(within['p50_ms'])} / {_f(within['p99_ms'])}" if within else "none | -"
        print(
            f"| {row.batch} | {row.alone_per_s:.1f} | {gain:.2f}x | {peak['per_s']:.1f} | {gw_gain:.2f}x | {share}"
            f" | {peak['size']:.1f} | {worker} | {slo} | {row.load_after} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--batches", default="1,8,32,64")
    parser.add_argument("--fractions", default="0.25,0.5,0.65,0.8,0.9,1.0,1.2,1.5")
    parser.add_argument("--step-s", type=float, default=6.0)
    parser.add_argument("--alone-s", type=float, default=4.0)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        client_main(json.loads(args.client))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main_run(args)


if __name__ == "__main__":
    main()
