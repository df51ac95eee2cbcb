"""What each simulated model computes, and how many FLOPs it costs: pure functions, no I/O.

`sim-echo` answers its input reversed, so every answer can be checked against its request;
`sim-embed` answers a deterministic unit vector derived from a hash of the input.
"""

from __future__ import annotations

import hashlib
import math
import struct

from core.settings import ModelSettings

Output = str | list[float]


def compute(model: ModelSettings, text: str) -> Output:
    if model.kind == "echo":
        return text[::-1]
    return embed(text, model.dimensions)


def embed(text: str, dimensions: int) -> list[float]:
    """A unit vector from the bytes of a SHAKE-256 digest of the input."""
    digest = hashlib.shake_256(text.encode()).digest(4 * dimensions)
    raw = [v / 2**32 - 0.5 for v in struct.unpack(f"<{dimensions}I", digest)]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 6) for v in raw]


def tokens(text: str) -> int:
    """A token count estimate: about four characters a token, at least one."""
    return max(1, math.ceil(len(text) / 4))


def flops(model: ModelSettings, text: str, output: Output) -> float:
    """Forward-pass FLOPs: 2 x parameters x tokens processed (input plus generated text)."""
    generated = tokens(output) if isinstance(output, str) else 0
    return 2.0 * model.params * (tokens(text) + generated)
