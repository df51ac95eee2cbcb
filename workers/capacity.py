"""How much a worker can do, for its heartbeats: a pure meter of requests finished per busy
second over a sliding window, falling back to its processor profile before it has run anything.
"""

from __future__ import annotations

from collections import deque

from gateway.settings import LatencyModel

from .models import tokens

WINDOW_S = 10.0


def expected_batch_ms(latency: LatencyModel, batch_size: int) -> float:
    """The mean service time of one batch the profile predicts (token time not included)."""
    extra = latency.per_item_ms * (batch_size - 1)
    if latency.kind == "variable" and latency.max_ms is not None:
        mode = latency.mode_ms if latency.mode_ms is not None else latency.min_ms
        return (latency.min_ms + mode + latency.max_ms) / 3 + extra
    return latency.min_ms + extra


def request_ms(latency: LatencyModel, generates: bool, text: str, max_tokens: int) -> float:
    """The profile's service time of one request alone, token generation included: `generates`
    says whether its model writes text token by token (echo models), `max_tokens` 0 is no limit."""
    generated = 0
    if generates:
        generated = tokens(text) if max_tokens <= 0 else min(max_tokens, tokens(text))
    return expected_batch_ms(latency, 1) + latency.per_token_ms * max(0, generated - 1)


class CapacityMeter:
    def __init__(self, latency: LatencyModel, max_batch: int, window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        full_ms = expected_batch_ms(latency, max_batch)
        self._profile = (max_batch * 1000.0 / full_ms, expected_batch_ms(latency, 1))
        self._batches: deque[tuple[float, int, float]] = deque()  # (finished at, requests, busy s)

    def record(self, now_s: float, requests: int, busy_s: float) -> None:
        self._batches.append((now_s, requests, busy_s))

    def snapshot(self, now_s: float) -> tuple[float, float]:
        """(requests per busy second, mean batch service ms) over the window, else the profile's."""
        while self._batches and self._batches[0][0] < now_s - self.window_s:
            self._batches.popleft()
        busy_s = sum(b[2] for b in self._batches)
        if busy_s <= 0:
            return self._profile
        requests = sum(b[1] for b in self._batches)
        return requests / busy_s, busy_s * 1000.0 / len(self._batches)
