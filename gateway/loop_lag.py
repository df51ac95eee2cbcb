"""How late the gateway's event loop runs: a timer that wakes every PROBE_S keeps the worst
lateness it saw until it is read. Lateness is time every request on the loop waited too, so it
is the first sign of work (a batch's lines) crowding the loop. Its only I/O is the timer.
"""

from __future__ import annotations

import asyncio

PROBE_S = 0.02  # the timer's period: short enough to see a burst, cheap enough to run always


class LoopLag:
    def __init__(self) -> None:
        self.worst_s = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Probe until `stop` is set."""
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            due_s = loop.time() + PROBE_S
            await asyncio.sleep(PROBE_S)
            self.worst_s = max(self.worst_s, loop.time() - due_s)

    def take_ms(self) -> float:
        """The worst lateness since the last take, in milliseconds."""
        worst_s, self.worst_s = self.worst_s, 0.0
        return worst_s * 1000.0
