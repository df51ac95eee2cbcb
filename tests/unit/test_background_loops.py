"""`core.background.every`: a step that fails never ends the loop."""

from __future__ import annotations

import asyncio
import logging

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from core.background import every
from core.errors import BackendUnavailable


async def test_a_failing_step_is_skipped_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    stop = asyncio.Event()
    failures = [BackendUnavailable("Redis is unreachable"), RedisConnectionError("reset"), ValueError("a bug")]
    ran: list[str] = []

    async def step() -> None:
        if failures:
            error = failures.pop(0)
            ran.append(type(error).__name__)
            raise error
        ran.append("ok")
        if ran.count("ok") == 2:
            stop.set()

    with caplog.at_level(logging.WARNING, logger="core.background"):
        await asyncio.wait_for(every(0.001, stop, step), 5)
    assert ran == ["BackendUnavailable", "ConnectionError", "ValueError", "ok", "ok"]
    # One warning for the outage (two unreachable steps in a row), the bug with its traceback.
    records = [(r.levelname, r.getMessage(), r.exc_info is not None) for r in caplog.records]
    assert records == [
        ("WARNING", "background step failed, retrying", False),
        ("ERROR", "background step raised", True),
    ]
