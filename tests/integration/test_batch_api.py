"""The OpenAI Batch API with the official `openai` SDK against a gateway on a real port, its
workers in-process, on the session's real Redis: upload, create, poll, download; every line
answered exactly once in the output or the error file."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import botocore.exceptions
import msgspec
import openai
import pytest
import redis

from core import protocol
from core.settings import Settings
from gateway import batch_api, batch_store
from gateway.batch_lines import idempotency_key
from gateway.batch_runner import BatchRunner
from tests.integration.conftest import Stack, wait_until
from tests.integration.test_tenants import make_key
from workers.models import embed

pytestmark = pytest.mark.redis_server

StartStack = Callable[..., Any]
BATCH = ["cerebras-batch"]
CHAT = "/v1/chat/completions"


def client(s: Stack) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=20)


def chat_line(custom_id: str, text: str, **body: object) -> dict[str, object]:
    messages = [{"role": "user", "content": text}]
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": "sim-echo", "messages": messages, **body},
    }


def jsonl(lines: list[dict[str, object]] | list[str]) -> bytes:
    return "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines).encode()


async def run_batch(
    aio: openai.AsyncOpenAI, data: bytes, endpoint: str = CHAT, window: str = "24h", **extra: Any
) -> Any:
    uploaded = await aio.files.create(file=("input.jsonl", data), purpose="batch")
    assert uploaded.bytes == len(data) and uploaded.purpose == "batch"
    return await aio.batches.create(
        input_file_id=uploaded.id,
        endpoint=endpoint,
        completion_window=window,
        **extra,  # type: ignore[arg-type]
    )


async def until(aio: openai.AsyncOpenAI, batch_id: str, holds: Callable[[Any], bool], timeout_s: float = 60) -> Any:
    """The batch, polled as a client does, once `holds` is true of it."""
    async with asyncio.timeout(timeout_s):
        while True:
            batch = await aio.batches.retrieve(batch_id)
            if holds(batch):
                return batch
            await asyncio.sleep(0.05)


async def until_status(aio: openai.AsyncOpenAI, batch_id: str, *statuses: str, timeout_s: float = 60) -> Any:
    return await until(aio, batch_id, lambda batch: batch.status in statuses, timeout_s)


async def lines_of(aio: openai.AsyncOpenAI, file_id: str | None) -> list[dict[str, Any]]:
    if file_id is None:
        return []
    content = await aio.files.content(file_id)
    return [json.loads(line) for line in content.text.splitlines()]


def settings_for_batches(make_settings: Callable[..., Settings], **batches: object) -> Settings:
    return make_settings(batches__poll_interval_s=0.1, **{f"batches__{k}": v for k, v in batches.items()})


async def test_a_batch_of_chat_lines_completes_with_every_answer_once(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(settings_for_batches(make_settings, max_in_flight_per_batch=16), pools=BATCH)
    aio = client(s)
    texts = {f"line-{i}": f"batch question number {i}" for i in range(120)}
    batch = await run_batch(aio, jsonl([chat_line(k, v) for k, v in texts.items()]), metadata={"job": "nightly"})
    assert (batch.status, batch.endpoint, batch.metadata) == ("validating", CHAT, {"job": "nightly"})
    done = await until_status(aio, batch.id, "completed", "failed")
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (120, 120, 0)
    assert done.error_file_id is None and done.in_progress_at and done.finalizing_at and done.completed_at
    output = await lines_of(aio, done.output_file_id)
    assert sorted(line["custom_id"] for line in output) == sorted(texts)  # each once
    for line in output:
        response = line["response"]
        assert response["status_code"] == 200 and line["error"] is None
        answer = response["body"]
        assert answer["object"] == "chat.completion" and answer["tiergate"]["tier"] == "batch"
        assert answer["choices"][0]["message"]["content"] == texts[line["custom_id"]][::-1]
    listed = await aio.batches.list(limit=5)
    assert [b.id for b in listed.data] == [batch.id]
    async with s.http.get(f"{s.url}/metrics") as response:
        metrics = await response.text()
    assert 'tiergate_batches_total{status="completed"} 1.0' in metrics
    assert 'tiergate_batch_lines_total{outcome="completed"} 120.0' in metrics
    assert "tiergate_batches_running 0.0" in metrics
    await aio.close()


async def test_a_batch_starts_at_once_on_the_gateway_it_was_created_through(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(make_settings(batches__poll_interval_s=3600.0), pools=BATCH)
    aio = client(s)
    batch = await run_batch(aio, jsonl([chat_line(f"line-{i}", f"question {i}") for i in range(5)]))
    done = await until_status(aio, batch.id, "completed", "failed", timeout_s=30)  # no look within the hour
    assert (done.status, done.request_counts.completed) == ("completed", 5)
    await aio.close()


async def test_completion_and_embedding_batches(stack: StartStack, make_settings: Callable[..., Settings]) -> None:
    s: Stack = await stack(settings_for_batches(make_settings), pools=BATCH)
    aio = client(s)
    prompts = [{"custom_id": f"p{i}", "method": "POST", "url": "/v1/completions",
                "body": {"model": "sim-echo", "prompt": f"prompt {i}"}} for i in range(10)]  # fmt: skip
    inputs = [{"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
               "body": {"model": "sim-embed", "input": [f"a{i}", f"b{i}"], "encoding_format": "float"}}
              for i in range(10)]  # fmt: skip
    first = await run_batch(aio, jsonl(prompts), endpoint="/v1/completions")
    second = await run_batch(aio, jsonl(inputs), endpoint="/v1/embeddings")
    for batch in (first, second):
        assert (await until_status(aio, batch.id, "completed", "failed")).status == "completed"
    completed = await lines_of(aio, (await aio.batches.retrieve(first.id)).output_file_id)
    assert {line["custom_id"]: line["response"]["body"]["choices"][0]["text"] for line in completed} == {
        f"p{i}": f"prompt {i}"[::-1] for i in range(10)
    }
    embedded = await lines_of(aio, (await aio.batches.retrieve(second.id)).output_file_id)
    for line in embedded:
        i = line["custom_id"][1:]
        vectors = [d["embedding"] for d in line["response"]["body"]["data"]]
        assert vectors == [pytest.approx(embed(f"a{i}", 16)), pytest.approx(embed(f"b{i}", 16))]
    await aio.close()


async def test_a_batch_with_bad_lines_fails_naming_each(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(settings_for_batches(make_settings), pools=BATCH)
    aio = client(s)
    lines = [
        json.dumps(chat_line("fine", "hello")),
        "{not json",
        json.dumps({**chat_line("elsewhere", "x"), "url": "/v1/embeddings"}),
        json.dumps(chat_line("who", "x", model="no-such-model")),
        json.dumps(chat_line("fine", "again")),
        json.dumps(chat_line("streams", "x", stream=True)),
    ]
    batch = await run_batch(aio, jsonl(lines))
    failed = await until_status(aio, batch.id, "failed", "completed")
    assert failed.status == "failed" and failed.failed_at
    errors = {(e.line, e.code) for e in failed.errors.data}
    assert errors == {
        (2, "invalid_json"), (3, "invalid_url"), (4, "model_not_found"), (5, "duplicate_custom_id"),
        (6, "invalid_request"),
    }  # fmt: skip
    assert "no-such-model" in next(e.message for e in failed.errors.data if e.line == 4)
    assert failed.output_file_id is None and failed.request_counts.total == 0
    await aio.close()


async def test_cancel_mid_way_ends_cancelled_with_a_partial_output(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(settings_for_batches(make_settings, max_in_flight_per_batch=2), pools=BATCH)
    aio = client(s)
    texts = {f"c{i}": f"to cancel {i}" for i in range(200)}
    batch = await run_batch(aio, jsonl([chat_line(k, v) for k, v in texts.items()]))
    await until(aio, batch.id, lambda batch: batch.request_counts.completed >= 10)
    cancelling = await aio.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    ended = await until_status(aio, batch.id, "cancelled")
    assert ended.cancelled_at and ended.request_counts.completed >= 10
    output, errors = await lines_of(aio, ended.output_file_id), await lines_of(aio, ended.error_file_id)
    assert 10 <= len(output) < 200
    assert all(line["response"]["body"]["choices"][0]["message"]["content"] == texts[line["custom_id"]][::-1]
               for line in output)  # fmt: skip
    assert {line["error"]["code"] for line in errors} == {"batch_cancelled"}
    ids = [line["custom_id"] for line in output + errors]
    assert sorted(ids) == sorted(texts)  # every line once, in one file or the other
    assert (ended.request_counts.completed, ended.request_counts.failed) == (len(output), len(errors))
    await aio.close()


async def test_a_window_that_runs_out_expires_the_rest(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(settings_for_batches(make_settings, max_in_flight_per_batch=1), pools=BATCH)
    aio = client(s)
    texts = {f"x{i}": f"slow {i}" for i in range(400)}
    batch = await run_batch(aio, jsonl([chat_line(k, v) for k, v in texts.items()]), window="2s")
    ended = await until_status(aio, batch.id, "expired")
    output, errors = await lines_of(aio, ended.output_file_id), await lines_of(aio, ended.error_file_id)
    assert output and errors and {line["error"]["code"] for line in errors} == {"batch_expired"}
    assert sorted(line["custom_id"] for line in output + errors) == sorted(texts)
    assert ended.expired_at and ended.expires_at == ended.created_at + 2
    await aio.close()


async def test_files_are_listed_read_deleted_and_limited(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(settings_for_batches(make_settings, max_file_bytes=2000), pools=[])
    aio = client(s)
    small = [await aio.files.create(file=(f"f{i}.jsonl", b"{}\n" * (i + 1)), purpose="batch") for i in range(3)]
    listed = await aio.files.list(limit=2)
    assert [f.id for f in listed.data] == [small[2].id, small[1].id] and listed.has_more
    rest = await aio.files.list(limit=2, after=small[1].id)
    assert [f.id for f in rest.data] == [small[0].id]
    assert (await aio.files.retrieve(small[0].id)).filename == "f0.jsonl"
    assert (await aio.files.content(small[1].id)).content == b"{}\n{}\n"
    assert (await aio.files.delete(small[0].id)).deleted
    with pytest.raises(openai.NotFoundError, match=small[0].id):
        await aio.files.retrieve(small[0].id)
    with pytest.raises(openai.APIStatusError, match="exceeds the limit of 2000 bytes") as too_big:
        await aio.files.create(file=("big.jsonl", b"x" * 2001), purpose="batch")
    assert too_big.value.status_code == 413
    for fields, with_file, message in (
        ({"purpose": "assistants"}, True, "purpose is 'assistants'"),
        ({"purpose": "b" * 65}, True, "purpose is over 64 bytes"),  # not a 413 naming the file
        ({"purpose": "batch", "extra": "x"}, True, "unexpected field 'extra'"),
        ({"purpose": "batch"}, False, "no `file` field"),
    ):
        form = aiohttp.FormData(fields, default_to_multipart=True)
        if with_file:
            form.add_field("file", b"{}\n", filename="in.jsonl")
        async with s.http.post(f"{s.url}/v1/files", data=form) as response:
            assert (response.status, message in (await response.json())["error"]["message"]) == (400, True)
    with pytest.raises(openai.BadRequestError, match="completion_window"):
        await aio.batches.create(input_file_id=small[1].id, endpoint=CHAT, completion_window="2d")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError, match="endpoint"):
        await aio.batches.create(input_file_id=small[1].id, endpoint="/v1/responses", completion_window="24h")  # type: ignore[arg-type]
    await aio.close()


async def test_files_larger_than_a_piece_are_judged_run_and_sent_back_whole(
    stack: StartStack, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_store, "FILE_PIECE_BYTES", 700)  # each line is cut by a piece's end somewhere
    s: Stack = await stack(settings_for_batches(make_settings, max_in_flight_per_batch=16), pools=BATCH)
    aio = client(s)
    texts = {f"line-{i}": f"question {i} " + "x" * (i % 13) for i in range(60)}
    data = b"".join(json.dumps(chat_line(k, v)).encode() + b"\r\n" for k, v in texts.items())
    batch = await run_batch(aio, data)
    assert (await aio.files.content(batch.input_file_id)).content == data
    done = await until_status(aio, batch.id, "completed", "failed")
    assert (done.status, done.request_counts.completed) == ("completed", 60), done
    output = await lines_of(aio, done.output_file_id)
    assert {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in output} == {
        k: v[::-1] for k, v in texts.items()
    }
    stored = await aio.files.retrieve(done.output_file_id)
    async with s.http.get(f"{s.url}/v1/files/{done.output_file_id}/content") as response:
        body = await response.read()
        assert (response.content_length, len(body), stored.bytes) == (len(body), stored.bytes, len(body))
        assert response.headers["X-Tiergate-Gateway"]
    await aio.close()


def multipart(content: bytes, boundary: str = "tgboundary") -> tuple[bytes, str]:
    """A multipart upload body of `content` with purpose `batch`, and its Content-Type."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + content + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def open_upload(url: str, body: bytes, content_type: str, send: int) -> tuple[Any, Any]:
    """An upload on its own connection with only its first `send` bytes sent: (reader, writer)."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = f"POST /v1/files HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
    writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:send])
    await writer.drain()
    return reader, writer


async def held_bytes(s: Stack, holds: Callable[[float], bool]) -> bool:
    """Whether the gateway's bytes of uploads held (`tiergate_uploads_in_bytes`) satisfy `holds`."""
    async with s.http.get(f"{s.url}/metrics") as response:
        text = await response.text()
    (line,) = [line for line in text.splitlines() if line.startswith("tiergate_uploads_in_bytes ")]
    return holds(float(line.split()[1]))


async def answer_of(reader: Any) -> tuple[int, dict[str, str], dict[str, Any]]:
    """(status, headers, JSON body) of an HTTP/1.1 answer with a Content-Length."""
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) != b"\r\n":
        name, value = line.decode().split(":", 1)
        headers[name.lower()] = value.strip()
    return status, headers, json.loads(await reader.readexactly(int(headers["content-length"])))


async def test_uploads_beyond_what_a_gateway_takes_in_at_once_are_refused_at_once(
    stack: StartStack, make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(batch_api, "UPLOAD_CHUNK_BYTES", 4096)  # the reader holds back a chunk or two, not 512 kB
    settings = settings_for_batches(make_settings, max_file_bytes=100_000, max_uploading_bytes=130_000)
    s: Stack = await stack(settings, pools=[])
    aio = client(s)
    big, content_type = multipart(b"{}\n" * 30_000)  # 90 kB
    reader, writer = await open_upload(s.url, big, content_type, send=len(big) - 100)  # its end still to come
    await wait_until(lambda: held_bytes(s, lambda held: held >= 80_000))
    small = b"{}\n" * 20_000  # 60 kB more would pass 130 kB
    async with asyncio.timeout(10):  # refused at once, not after the first upload ends
        with pytest.raises(openai.RateLimitError, match="max_uploading_bytes") as refused:
            await aio.files.create(file=("small.jsonl", small), purpose="batch")
    assert refused.value.response.headers["Retry-After"] == "1"
    assert refused.value.body["code"] == "uploads_full"  # type: ignore[index]
    writer.write(big[-100:])
    status, _, stored = await answer_of(reader)
    assert (status, stored["bytes"]) == (200, 90_000)
    writer.close()
    assert await held_bytes(s, lambda held: held == 0)  # let go once stored
    assert (await aio.files.create(file=("small.jsonl", small), purpose="batch")).bytes == 60_000  # room again
    slow, content_type = multipart(b"{}\n" * 40_000)  # says 120 kB, sends 1 kB: holds only that
    reader, writer = await open_upload(s.url, slow, content_type, send=1_000)
    assert (await aio.files.create(file=("small.jsonl", small), purpose="batch")).bytes == 60_000
    writer.close()
    too_big, content_type = multipart(b"x" * 200_000)
    reader, writer = await open_upload(s.url, too_big, content_type, send=0)  # judged by its Content-Length
    status, _, error = await answer_of(reader)
    assert (status, error["error"]["code"]) == (413, "payload_too_large")
    assert "limit of 100000 bytes" in error["error"]["message"]
    writer.close()
    await aio.close()


async def test_batches_take_turns_and_files_may_live_in_a_directory(
    stack: StartStack, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_for_batches(
        make_settings, max_in_flight=2, max_in_flight_per_batch=2, storage="directory", directory=str(tmp_path)
    )
    s: Stack = await stack(settings, pools=BATCH)
    aio = client(s)
    first, second = [
        await run_batch(aio, jsonl([chat_line(f"{name}{i}", f"{name} {i}") for i in range(60)]))
        for name in ("first", "second")
    ]
    ahead = await until(aio, first.id, lambda batch: batch.request_counts.completed >= 30)
    behind = await aio.batches.retrieve(second.id)
    assert ahead.status == "in_progress" and behind.request_counts.completed >= 20  # the two take turns
    for batch in (first, second):
        done = await until_status(aio, batch.id, "completed")
        assert len(await lines_of(aio, done.output_file_id)) == 60
    kept = set(await asyncio.to_thread(os.listdir, tmp_path))
    assert kept >= {first.input_file_id, f"file-{first.id[6:]}-output"}
    await aio.close()


async def test_a_line_whose_first_copy_was_never_queued_runs_under_its_next_key(
    stack: StartStack, make_settings: Callable[..., Settings], redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runner that died between claiming a line's idempotency key and queueing it left the key
    naming a request that never ran: the line waits for it one deadline, then runs anew."""
    settings = make_settings(batches__poll_interval_s=0.5, tiers__batch__default_deadline_ms=1500)

    async def created_elsewhere(self: BatchRunner, batch_id: str) -> None:
        """As if created through another gateway: a look takes it up, after the key below is set."""

    monkeypatch.setattr(BatchRunner, "take", created_elsewhere)
    s: Stack = await stack(settings, pools=BATCH)
    aio = client(s)
    texts = {f"k{i}": f"key {i}" for i in range(5)}
    batch = await run_batch(aio, jsonl([chat_line(k, v) for k, v in texts.items()]))
    held = redis.Redis.from_url(redis_url)
    await asyncio.to_thread(held.set, protocol.idempotency_key(idempotency_key(batch.id, "k0")), "never-queued")
    done = await until_status(aio, batch.id, "completed", "failed")
    assert (done.status, done.request_counts.completed) == ("completed", 5)
    output = {line["custom_id"]: line for line in await lines_of(aio, done.output_file_id)}
    assert {k: v["response"]["body"]["choices"][0]["message"]["content"] for k, v in output.items()} == {
        k: v[::-1] for k, v in texts.items()
    }
    assert output["k0"]["response"]["request_id"] != "never-queued"
    next_key = protocol.idempotency_key(idempotency_key(batch.id, "k0", attempt=1))
    assert await asyncio.to_thread(held.get, next_key) == output["k0"]["response"]["request_id"].encode()
    held.close()
    await aio.close()


@pytest.fixture
def s3_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3-compatible server (a dev dependency) on a free port, with a bucket `files`."""
    beside = Path(sys.executable).with_name("moto_server")
    binary = str(beside) if beside.exists() else shutil.which("moto_server")
    assert binary is not None, "moto_server (moto[server], a dev dependency) is not installed"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [binary, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                boto3.client("s3", endpoint_url=url).create_bucket(Bucket="files")
                break
            except botocore.exceptions.EndpointConnectionError:
                assert time.monotonic() < deadline, "moto_server did not start"
                time.sleep(0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


async def test_files_may_live_in_an_s3_bucket(
    stack: StartStack, make_settings: Callable[..., Settings], s3_server: str
) -> None:
    settings = settings_for_batches(make_settings, storage="s3", s3_bucket="files", s3_endpoint_url=s3_server)
    s: Stack = await stack(settings, pools=BATCH)
    aio = client(s)
    texts = {f"s{i}": f"bucket line {i}" for i in range(10)}
    batch = await run_batch(aio, jsonl([chat_line(k, v) for k, v in texts.items()]))
    done = await until_status(aio, batch.id, "completed", "failed")
    output = await lines_of(aio, done.output_file_id)
    assert {x["custom_id"]: x["response"]["body"]["choices"][0]["message"]["content"] for x in output} == {
        k: v[::-1] for k, v in texts.items()
    }
    bucket = boto3.client("s3", endpoint_url=s3_server)
    listed = await asyncio.to_thread(bucket.list_objects_v2, Bucket="files", Prefix="tiergate/files/")
    assert {o["Key"] for o in listed["Contents"]} == {
        f"tiergate/files/{batch.input_file_id}",
        f"tiergate/files/{done.output_file_id}",
    }
    await aio.files.delete(batch.input_file_id)
    listed = await asyncio.to_thread(bucket.list_objects_v2, Bucket="files", Prefix="tiergate/files/")
    assert {o["Key"] for o in listed["Contents"]} == {f"tiergate/files/{done.output_file_id}"}
    await aio.close()


async def test_a_batchs_lines_are_sent_with_the_key_that_created_it(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    keyed = make_settings(auth__mode="keys", batches__poll_interval_s=0.1)
    s: Stack = await stack(keyed, pools=BATCH)
    allowed, _ = await make_key(s.redis_url, keyed, "acme", tiers=("batch",))
    barred, _ = await make_key(s.redis_url, keyed, "globex", tiers=("interactive",))
    texts = {f"q{i}": f"keyed question {i}" for i in range(6)}
    data = jsonl([chat_line(k, v) for k, v in texts.items()])
    async with openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key=allowed, max_retries=0, timeout=20) as acme:
        ok = await until_status(acme, (await run_batch(acme, data)).id, "completed", "failed")
        output = await lines_of(acme, ok.output_file_id)
    assert (ok.status, ok.request_counts.completed) == ("completed", 6), ok
    answers = {line["custom_id"]: line["response"]["body"]["choices"][0]["message"]["content"] for line in output}
    assert answers == {k: v[::-1] for k, v in texts.items()}  # sim-echo answers a text reversed
    async with openai.AsyncOpenAI(base_url=f"{s.url}/v1", api_key=barred, max_retries=0, timeout=20) as globex:
        with pytest.raises(openai.NotFoundError):  # another tenant's batch is not there for it
            await globex.batches.retrieve(ok.id)
        refused = await until_status(globex, (await run_batch(globex, data)).id, "completed", "failed")
        errors = await lines_of(globex, refused.error_file_id)
    # Its key may not use the batch tier: every line is refused as the endpoint would refuse it.
    assert (refused.request_counts.completed, refused.request_counts.failed) == (0, 6), refused
    assert {line["response"]["status_code"] for line in errors} == {403}
    assert {line["response"]["body"]["error"]["code"] for line in errors} == {"forbidden"}
    assert "may not use the tier 'batch'" in errors[0]["response"]["body"]["error"]["message"]


async def pace_of(s: Stack) -> float:
    """The pace the gateway feeds batch lines at, from its /metrics."""
    async with s.http.get(f"{s.url}/metrics") as response:
        metrics = await response.text()
    (line,) = [line for line in metrics.splitlines() if line.startswith("tiergate_batch_pace_lines_per_s ")]
    return float(line.split()[1])


async def until_pace(s: Stack, holds: Callable[[float], bool], timeout_s: float) -> float:
    """The gateway's pace, polled from /metrics, once `holds` is true of it."""
    async with asyncio.timeout(timeout_s):
        while True:
            pace = await pace_of(s)
            if holds(pace):
                return pace
            await asyncio.sleep(0.05)


async def test_the_adaptive_pace_climbs_from_its_floor_while_nothing_stricter_runs_and_rests_there_after(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    settings = settings_for_batches(
        make_settings, min_lines_per_s=5.0, max_lines_per_s=100.0, pace_step_lines_per_s=5.0, pace_interval_s=0.05
    )
    s: Stack = await stack(settings, pools=BATCH)
    aio = client(s)
    assert await pace_of(s) == 5.0
    batch = await run_batch(aio, jsonl([chat_line(f"line-{i}", f"question {i}") for i in range(150)]))
    await until_pace(s, lambda pace: pace > 20.0, 30)  # no realtime or interactive request: no cut
    done = await until_status(aio, batch.id, "completed")
    assert done.request_counts.completed == 150
    await until_pace(s, lambda pace: pace == 5.0, 10)  # no batch fed: back at the floor for the next one
    await aio.close()


async def test_a_fixed_pace_feeds_at_max_lines_per_s(stack: StartStack, make_settings: Callable[..., Settings]) -> None:
    s: Stack = await stack(settings_for_batches(make_settings, pace="fixed", max_lines_per_s=250.0), pools=BATCH)
    aio = client(s)
    batch = await run_batch(aio, jsonl([chat_line(f"line-{i}", f"question {i}") for i in range(20)]))
    assert (await until_status(aio, batch.id, "completed")).request_counts.completed == 20
    assert await pace_of(s) == 250.0
    await aio.close()


async def test_lines_refused_by_a_full_batch_queue_are_deferred_not_shed(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    settings = settings_for_batches(
        make_settings, max_in_flight_per_batch=32, retry_after_max_s=0.05, pace="fixed", max_lines_per_s=0.0
    )
    settings = msgspec.structs.replace(
        settings, tiers={**settings.tiers, "batch": msgspec.structs.replace(settings.tiers["batch"], max_queue=4)}
    )
    s: Stack = await stack(settings, pools=BATCH)
    aio = client(s)
    batch = await run_batch(aio, jsonl([chat_line(f"line-{i}", f"question {i}") for i in range(60)]))
    done = await until_status(aio, batch.id, "completed")
    assert (done.request_counts.completed, done.request_counts.failed) == (60, 0)
    async with s.http.get(f"{s.url}/metrics") as response:
        metrics = await response.text()
    (deferred,) = [line for line in metrics.splitlines() if line.startswith("tiergate_batch_lines_deferred_total ")]
    assert float(deferred.split()[1]) > 0  # the queue of 4 refused some of 32 lines offered at once
    assert 'tiergate_shed_total{tier="batch"}' not in metrics and 'outcome="shed"' not in metrics
    async with asyncio.timeout(20):  # the SLO counts each line once, answered: none lost
        while True:
            async with s.http.get(f"{s.url}/v1/slo") as response:
                window = (await response.json())["tiers"]["batch"]["windows"]["1m"]
            if window["count"] >= 60:
                break
            await asyncio.sleep(0.2)
    assert (window["count"], window["errors"]) == (60, 0)
    await aio.close()


async def test_files_listed_by_purpose_come_in_full_pages(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(settings_for_batches(make_settings), pools=BATCH)
    aio = client(s)
    first = await run_batch(aio, jsonl([chat_line("only", "one line")]))
    output_id = (await until_status(aio, first.id, "completed")).output_file_id
    inputs = [first.input_file_id]
    inputs += [(await aio.files.create(file=(f"f{i}.jsonl", b"{}\n"), purpose="batch")).id for i in range(5)]
    newest_first = inputs[::-1]
    outputs = await aio.files.list(purpose="batch_output", limit=1)  # five newer inputs stand before it
    assert ([f.id for f in outputs.data], outputs.has_more) == ([output_id], False)
    pages = []
    page = await aio.files.list(purpose="batch", limit=2)
    while True:
        pages.append([f.id for f in page.data])
        if not page.has_more:
            break
        page = await aio.files.list(purpose="batch", limit=2, after=page.data[-1].id)
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:6]]  # the output between skipped
    held = redis.Redis.from_url(s.redis_url)
    held.delete(protocol.file_key(newest_first[1]))  # its record expired; the index still names it
    page = await aio.files.list(limit=2)
    assert ([f.id for f in page.data], page.has_more) == ([newest_first[0], newest_first[2]], True)
    index = [i.decode() for i in held.zrange(protocol.file_index_key(protocol.OPEN_GRANT.tenant), 0, -1)]
    assert newest_first[2] in index and newest_first[1] not in index  # the expired one dropped from it
    held.close()
    await aio.files.delete(newest_first[2])
    with pytest.raises(openai.NotFoundError, match=f"after is '{newest_first[2]}', which is not in this list"):
        await aio.files.list(limit=2, after=newest_first[2])  # not the first page again: a client would loop
    await aio.close()


async def test_batches_listed_past_expired_records_come_in_full_pages(
    stack: StartStack, make_settings: Callable[..., Settings]
) -> None:
    s: Stack = await stack(settings_for_batches(make_settings), pools=[])
    aio = client(s)
    data = jsonl([chat_line("only", "one line")])
    newest_first = [(await run_batch(aio, data)).id for _ in range(5)][::-1]
    held = redis.Redis.from_url(s.redis_url)
    held.delete(protocol.batch_key(newest_first[1]), protocol.batch_key(newest_first[2]))  # expired
    pages = []
    page = await aio.batches.list(limit=2)
    while True:
        pages.append([b.id for b in page.data])
        if not page.has_more:
            break
        page = await aio.batches.list(limit=2, after=page.data[-1].id)
    assert pages == [[newest_first[0], newest_first[3]], [newest_first[4]]]
    index = held.zrange(protocol.batch_index_key(protocol.OPEN_GRANT.tenant), 0, -1)
    assert sorted(i.decode() for i in index) == sorted([newest_first[0], newest_first[3], newest_first[4]])
    held.close()
    await aio.close()
