"""Judging a batch's input file and reading its completion window: pure functions, plain values."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable

from core.settings import Settings
from gateway.batch_lines import CHAT, _lines, idempotency_key, parse
from gateway.batch_runner import window_s
from gateway.routing import Router


async def pieces(data: bytes, cuts: list[int] | None = None) -> AsyncIterator[bytes]:
    """`data` as a store gives it: in pieces, ended at each of `cuts` (one piece if none)."""
    start = 0
    for end in [*(cuts or []), len(data)]:
        yield data[start:end]
        start = end


def line(custom_id: str, url: str = CHAT, **body: object) -> bytes:
    chat = {"model": "sim-echo", "messages": [{"role": "user", "content": "hi"}], **body}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": chat}).encode()


async def test_a_good_file_gives_its_lines_in_order(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    data = b"\n".join([line("a"), b"", line("b")]) + b"\n"
    lines, errors = await parse(settings, Router(settings), CHAT, pieces(data))
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
    _, errors = await parse(settings, Router(settings), CHAT, pieces(b"\n".join(data), [50, 51]))
    assert [(e.line, e.code) for e in errors] == [
        (2, "invalid_json"), (3, "invalid_url"), (4, "duplicate_custom_id"), (5, "invalid_request"),
        (6, "line_too_large"), (7, "invalid_method"),
    ]  # fmt: skip
    assert "max_tokens" in errors[3].message


async def test_an_empty_file_and_too_many_lines_are_refused(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(batches__max_lines=2)
    router = Router(settings)
    _, empty = await parse(settings, router, CHAT, pieces(b"\n\n"))
    assert [e.code for e in empty] == ["empty_file"]
    _, too_many = await parse(settings, router, CHAT, pieces(b"\n".join(line(i) for i in "abc")))
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
    data = b"\n".join(line(f"c{i}") for i in range(20_000))
    lines, errors = await parse(settings, Router(settings), CHAT, pieces(data))
    judging = False
    await ticker
    assert (len(lines), errors) == (20_000, [])
    assert passes - start > 10  # a file judged in one go would leave the ticker no pass until the end


async def test_lines_cut_across_pieces_come_out_as_the_whole_file_would_split() -> None:
    rng = random.Random(7)
    alphabet = [b"a", b"b", b"{", b" ", b"\n", b"\r", b"\r\n", b"\n\n"]
    for _ in range(300):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        cuts = sorted(rng.sample(range(len(data) + 1), k=min(len(data) + 1, rng.randrange(0, 8))))
        got = [raw async for raw in _lines(pieces(data, cuts))]
        assert got == data.splitlines(), (data, cuts)


async def test_a_line_cut_between_pieces_is_judged_whole_and_numbered_in_the_file(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    data = b"\r\n".join([line("a"), line("b"), b"[1, 2", line("c")]) + b"\r\n"
    cuts = [len(line("a")) + 1, len(line("a")) + 10, len(data) - 3]  # inside a CRLF, inside "b", near the end
    lines, errors = await parse(settings, Router(settings), CHAT, pieces(data, cuts))
    assert [(x.number, x.custom_id) for x in lines] == [(0, "a"), (1, "b"), (3, "c")]
    assert [(e.line, e.code) for e in errors] == [(3, "invalid_json")]
