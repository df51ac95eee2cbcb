"""The soak's load, in a process of its own: open-loop Poisson arrivals over the three tiers, each
request a waited `POST /v1/infer`, an OpenAI chat stream, or a `"wait": false` request polled to
completion, and every answer checked against its own request (`sim-echo` reverses its input).
HTTP to the gateway only; prints one JSON line (the ramp's steps, or the run's counts) on stdout.
Run by bench.soak as `python -m bench.soak_client SPEC_JSON`.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
import uvloop

from core.settings import Settings, load_settings
from loadtest import engine, schedule
from loadtest.http_driver import TIER_HEADER, outcome_of, parse_sse_line
from loadtest.runner import new_recorder, objectives
from loadtest.schedule import Arrival, input_text
from loadtest.stats import Sample, summary

KINDS = ("infer", "stream", "async")
POLL_S = 0.1  # how often a `"wait": false` request's status is asked for
CLIENT_SLACK_S = 5.0  # past the tier's default deadline, a request with no answer is lost
RAMP_P99_MS = 1000.0  # a ramp step passes when every answer is right and every kind and tier's p99 is under this


def kinds_of(count: int, stream_share: float, async_share: float, seed: int) -> list[str]:
    """The kind of each of `count` arrivals, drawn with the given shares (the rest are waited infers)."""
    rng = random.Random(seed)
    weights = (1.0 - stream_share - async_share, stream_share, async_share)
    return rng.choices(KINDS, weights, k=count)


class CheckingDriver:
    """Sends each arrival as its kind and checks its answer; counts wrong and lost answers apart."""

    def __init__(self, session: aiohttp.ClientSession, url: str, settings: Settings, kinds: Sequence[str]) -> None:
        self.session = session
        self.url = url.rstrip("/")
        self.deadlines_ms = {tier: t.default_deadline_ms for tier, t in settings.tiers.items()}
        self.kinds = kinds
        self.sent: Counter[str] = Counter()  # per kind
        self.wrong: Counter[str] = Counter()  # a 200 whose answer is not its own request's
        self.lost: Counter[str] = Counter()  # no answer at all: timeout, broken connection or stream, 404
        self.statuses: Counter[str] = Counter()  # "kind status" of every answer other than a right 200

    async def fire(self, index: int, arrival: Arrival, intended: float, started: float) -> Sample:
        loop = asyncio.get_running_loop()
        kind = self.kinds[index]
        self.sent[kind] += 1
        text = f"{kind}-{index}-" + input_text(index, arrival.input_chars)
        budget_s = self.deadlines_ms[arrival.tier] / 1000.0 + CLIENT_SLACK_S
        send = {"infer": self._infer, "stream": self._stream, "async": self._async}[kind]
        try:
            status, output = await asyncio.wait_for(send(arrival, text), budget_s)
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            status, output = 0, None
        if status == 200 and output != text[::-1]:
            self.wrong[kind] += 1
            status = -1
        elif status == 0:
            self.lost[kind] += 1
        if status != 200:
            self.statuses[f"{kind} {status}"] += 1
        done = loop.time()
        outcome = outcome_of(status)
        return Sample(index, arrival.tier, outcome, (done - intended) * 1000.0, done - started, status=status)

    async def _infer(self, arrival: Arrival, text: str) -> tuple[int, object]:
        body = {"model": arrival.model, "input": text, "tier": arrival.tier}
        async with self.session.post(f"{self.url}/v1/infer", json=body) as response:
            data = await response.read()
            return response.status, json.loads(data).get("output") if response.status == 200 else None

    async def _stream(self, arrival: Arrival, text: str) -> tuple[int, object]:
        """A streamed chat completion; its text is the content of every chunk, joined. A stream that
        ends without `data: [DONE]` or carries an error is lost (status 0)."""
        body = {"model": arrival.model, "messages": [{"role": "user", "content": text}], "stream": True}
        headers = {TIER_HEADER: arrival.tier, "Accept": "text/event-stream"}
        parts: list[str] = []
        async with self.session.post(f"{self.url}/v1/chat/completions", json=body, headers=headers) as response:
            if response.status != 200:
                await response.read()
                return response.status, None
            async for raw in response.content:
                event = parse_sse_line(raw)
                if event == "[DONE]":
                    return 200, "".join(parts)
                chunk = json.loads(event) if event else {}
                if "error" in chunk:
                    return 0, None
                parts += [(c.get("delta") or {}).get("content") or "" for c in chunk.get("choices") or ()]
        return 0, None

    async def _async(self, arrival: Arrival, text: str) -> tuple[int, object]:
        """`"wait": false`, then the status URL every POLL_S until the request is done or failed."""
        body = {"model": arrival.model, "input": text, "tier": arrival.tier, "wait": False}
        async with self.session.post(f"{self.url}/v1/infer", json=body) as response:
            data = await response.read()
            if response.status != 202:
                return response.status, None
        status_url = f"{self.url}{json.loads(data)['status_url']}"
        while True:
            await asyncio.sleep(POLL_S)
            async with self.session.get(status_url) as response:
                data = await response.read()
                if response.status == 404:
                    return 0, None  # its record is gone: lost
                if response.status != 200:
                    return response.status, None
            answer = json.loads(data)
            if answer["status"] == "done":
                return 200, answer.get("output")
            if answer["status"] != "queued":
                return 500, None  # failed or cancelled


async def play(spec: dict[str, Any], rate: float, duration_s: float, seed: int) -> dict[str, Any]:
    """One open-loop run at `rate` for `duration_s`; its counts, and latencies per kind and tier.
    Each kind's arrivals are played by an engine of their own, so that each has its own recorder
    (a polled request's time includes up to POLL_S of polling, which would hide the others' tail)."""
    settings = load_settings(spec["config"])
    mix = {tier: 1.0 / len(spec["tiers"]) for tier in spec["tiers"]}
    arrivals = schedule.build(rate, duration_s, mix, ("sim-echo",), "poisson", (64, 64), seed)
    kinds = kinds_of(len(arrivals), spec["stream_share"], spec["async_share"], seed)
    recorders = {kind: new_recorder(settings, keep_samples=False) for kind in KINDS}
    cpu_before = time.process_time()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        driver = CheckingDriver(session, spec["url"], settings, kinds)
        runs = []
        for kind, recorder in recorders.items():
            indices = [i for i, k in enumerate(kinds) if k == kind]
            part = [arrivals[i] for i in indices]
            runs.append(engine.run(part, driver, recorder, duration_s, indices=indices))
        await asyncio.gather(*runs)
    rows = {}
    for kind, recorder in recorders.items():
        for tier, row in summary(recorder, objectives(settings))["tiers"].items():
            rows[f"{kind} {tier}"] = {k: row[k] for k in ("sent", "ok", "p50_ms", "p99_ms", "max_ms")}
    return {
        "rate": rate,
        "sent": len(arrivals),
        "rows": rows,
        "kinds": dict(driver.sent),
        "wrong": sum(driver.wrong.values()),
        "lost": sum(driver.lost.values()),
        "errors": sum(driver.statuses.values()),
        "statuses": dict(driver.statuses),
        "client_cpu_s": round(time.process_time() - cpu_before, 2),
    }


def passed(step: dict[str, Any]) -> bool:
    rows = step["rows"].values()
    return step["errors"] == 0 and all((row["p99_ms"] or 0.0) <= RAMP_P99_MS for row in rows)


async def ramp(spec: dict[str, Any]) -> dict[str, Any]:
    """A ramp of the whole mix from `start_rate`, times `factor` a step: the capacity is the last rate whose step
    passed (every answer right, every kind and tier's p99 under RAMP_P99_MS)."""
    steps, best, rate = [], None, float(spec["start_rate"])
    while rate <= spec["max_rate"]:
        step = await play(spec, rate, spec["step_s"], seed=int(rate))
        steps.append(step)
        p99 = max((row["p99_ms"] or 0.0) for row in step["rows"].values())
        verdict = "pass" if passed(step) else "fail"
        print(
            f"ramp {rate:g} req/s: {step['sent']} sent, {step['errors']} errors, worst p99 {p99:.0f} ms: {verdict}",
            file=sys.stderr,
            flush=True,
        )
        if not passed(step):
            break
        best, rate = rate, round(rate * spec["factor"], 1)
        await asyncio.sleep(2.0)  # the last step's queues drain
    return {"capacity": best, "steps": steps}


def main() -> None:
    spec = json.loads(sys.argv[1])
    if spec["mode"] == "ramp":
        out = uvloop.run(ramp(spec))
    else:
        out = uvloop.run(play(spec, spec["rate"], spec["duration_s"], spec["seed"]))
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
