"""Judging a batch's input file and reading its completion window: pure functions, plain values."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from core.settings import Settings
from gateway.batch_lines import CHAT, idempotency_key, parse
from gateway.batch_runner import window_s
from gateway.routing import Router


def line(custom_id: str, url: str = CHAT, **body: object) -> bytes:
    chat = {"model": "sim-echo", "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": chat}).encode()


async def test_a_good_file_gives_its_lines_in_order(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    lines, errors = await parse(settings, Router(settings), CHAT, b"\n".join([line("a"), b"", line("b")]) + b"\n")
    assert errors == []
    assert [(x.number, x.custom_id) for x in lines] == [(0, "a"), (2, "b")]
    assert json.loads(lines[1].body)["model"] == "sim-echo"


async def test_each_bad_line_is_named_with_its_reason(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batches__max_line_bytes=400)
    data = [
        line("a"), b"[1, 2", line("b", url="/v1/completions"), line("a"), line("c", max_tokens=0),
        line("d", messages=[{"role": "user", "content": "x" * 500}]),
        json.dumps({"custom_id": "e", "method": "GET", "url": CHAT, "body": {}}).encode(),
    ]  # fmt: skip
    _, errors = await parse(settings, Router(settings), CHAT, b"\n".join(data))
    assert [(e.line, e.code) for e in errors] == [
        (2, "invalid_json"), (3, "invalid_url"), (4, "duplicate_custom_id"), (5, "invalid_request"),
        (6, "line_too_large"), (7, "invalid_method"),
    ]  # fmt: skip
    assert "max_tokens" in errors[3].message


async def test_an_empty_file_and_too_many_lines_are_refused(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batches__max_lines=2)
    router = Router(settings)
    _, empty = await parse(settings, router, CHAT, b"\n\n")
    assert [e.code for e in empty] == ["empty_file"]
    _, too_many = await parse(settings, router, CHAT, b"\n".join(line(i) for i in "abc"))
    assert [e.code for e in too_many] == ["too_many_lines"]


def test_completion_windows() -> None:
    assert [window_s(w) for w in ("24h", "90m", "30s", "1s")] == [86_400, 5_400, 30, 1]
    assert [window_s(w) for w in ("25h", "0s", "2d", "24", "", "1.5h")] == [None] * 6


def test_a_line_idempotency_key_is_its_batch_and_custom_id_and_free_of_hash_tags() -> None:
    key = idempotency_key("batch_1", "{odd}")
    assert key == idempotency_key("batch_1", "{odd}") != idempotency_key("batch_2", "{odd}")
    assert "{" not in key and "}" not in key


async def test_judging_a_large_file_lets_the_event_loop_run_other_tasks(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    passes = 0
    judging = True

    async def tick() -> None:  # counts the event loop's passes while the file is judged
        nonlocal passes
        while judging:
            passes += 1
            await asyncio.sleep(0)

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    start = passes
    lines, errors = await parse(settings, Router(settings), CHAT, b"\n".join(line(f"c{i}") for i in range(20_000)))
    judging = False
    await ticker
    assert (len(lines), errors) == (20_000, [])
    assert passes - start > 10  # a file judged in one go would leave the ticker no pass until the end
