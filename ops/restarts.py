"""When the supervisor restarts a child that exited, and when it gives up: a pure policy object
(systemd's `Restart=on-failure` with a doubling, capped delay) driven with plain numbers, and the
line of a child's stderr that says why it failed. No I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from core.settings import SupervisorSettings


@dataclass(slots=True, frozen=True)
class Restart:
    delay_s: float  # wait this long, then start the child again


@dataclass(slots=True, frozen=True)
class GiveUp:
    start_failures: int  # exits before the ready line, in a row


class RestartPolicy:
    """One child's restart decisions. `exited(ran_s)` is told how long the child ran after its
    ready line (None: it exited before it, a start failure) and answers `Restart` or `GiveUp`.

    The delay doubles with each restart, from `restart_backoff_s` up to `restart_backoff_max_s`;
    a child that ran `restart_reset_s` or longer starts over at `restart_backoff_s`.
    `start_failures_max` start failures in a row give up: that child cannot start.
    """

    def __init__(self, settings: SupervisorSettings) -> None:
        self.settings = settings
        self.restarts_in_a_row = 0  # restarts since the child last ran long enough
        self.start_failures = 0  # exits before the ready line since the child was last ready

    def exited(self, ran_s: float | None) -> Restart | GiveUp:
        s = self.settings
        if ran_s is None:
            self.start_failures += 1
            if self.start_failures >= s.start_failures_max:
                return GiveUp(self.start_failures)
        else:
            self.start_failures = 0
            if ran_s >= s.restart_reset_s:
                self.restarts_in_a_row = 0
        delay_s = min(s.restart_backoff_max_s, s.restart_backoff_s * 2.0 ** min(self.restarts_in_a_row, 64))
        self.restarts_in_a_row += 1
        return Restart(delay_s)


def last_error(stderr_lines: Sequence[str]) -> str:
    """The last thing a child said on stderr: a plain line as it is, a JSON log line as its
    message and its `error` field (or its traceback's last line), or "" when it said nothing."""
    for line in reversed(stderr_lines):
        text = line.strip()
        if not text:
            continue
        try:
            record = msgspec.json.decode(text)
        except msgspec.DecodeError:
            return text
        if not isinstance(record, dict) or "msg" not in record:
            return text
        error = record.get("error") or str(record.get("exc") or "").strip().rpartition("\n")[2]
        return f"{record['msg']}: {error}" if error else str(record["msg"])
    return ""
