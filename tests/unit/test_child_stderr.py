"""The supervisor forwards each child's stderr in whole lines: two children writing at once never
splice one's line into the middle of the other's, whatever the chunks their pipes are read in."""

from __future__ import annotations

import asyncio
import json

import pytest

from ops import supervisor
from ops.supervisor import Child


def _line(child: str, n: int) -> bytes:
    return json.dumps({"msg": "request done", "child": child, "n": n, "pad": "x" * 300}).encode() + b"\n"


async def _forwarded(pieces: list[tuple[int, bytes | None]], capsysbinary: pytest.CaptureFixture[bytes]) -> bytes:
    """Feed each (child, bytes) piece in order to one of two children's stderr readers, letting
    each pump forward what it can before the next piece (None: that child's stderr ends)."""
    readers = [asyncio.StreamReader(), asyncio.StreamReader()]
    children = [Child("a", ["true"]), Child("b", ["true"])]
    pumps = [
        asyncio.create_task(child._forward_stderr(reader)) for child, reader in zip(children, readers, strict=True)
    ]
    for index, data in pieces:
        if data is None:
            readers[index].feed_eof()
        else:
            readers[index].feed_data(data)
        for _ in range(5):  # the pumps take the piece and write what they will
            await asyncio.sleep(0)
    await asyncio.wait_for(asyncio.gather(*pumps), 5)
    return capsysbinary.readouterr().err


async def test_lines_cut_by_the_pipe_are_forwarded_whole(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    a1, a2, b1 = _line("a", 1), _line("a", 2), _line("b", 1)
    pieces = [
        (0, a1 + a2[:55]),  # a's second line cut after 55 bytes, as in a pipe read
        (1, b1[:100]),
        (1, b1[100:]),  # b's whole line arrives while a's is still open
        (0, a2[55:]),
        (0, None),
        (1, None),
    ]
    out = await _forwarded(pieces, capsysbinary)
    records = [json.loads(line) for line in out.splitlines()]  # each one whole JSON
    assert sorted((r["child"], r["n"]) for r in records) == [("a", 1), ("a", 2), ("b", 1)]
    assert out.index(b1) < out.index(a2)  # b's was not held back behind a's open line


async def test_a_last_line_without_newline_is_ended(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    out = await _forwarded([(0, b"fatal: no newline"), (0, None), (1, None)], capsysbinary)
    assert out == b"fatal: no newline\n"


async def test_a_line_longer_than_held_goes_out_in_pieces(
    capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(supervisor, "MAX_HELD_BYTES", 64)
    pieces: list[tuple[int, bytes | None]] = [(0, b"y" * 50), (0, b"y" * 50), (0, b"end\n"), (0, None), (1, None)]
    out = await _forwarded(pieces, capsysbinary)
    assert out == b"y" * 100 + b"end\n"  # nothing lost, nothing held without bound
