"""Run `tiergate up` as a real process: wait for its ready line, always stop it afterwards."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.processes import Proc, start


@pytest.fixture
def tiergate_up() -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def up(*args: str, env: dict[str, str] | None = None) -> Proc:
        proc = start("up", "--port", "0", *args, env=env)
        started.append(proc)
        return proc

    yield up
    for proc in started:
        proc.stop()
