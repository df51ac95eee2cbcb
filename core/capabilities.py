"""What each backend can do with an OpenAI-dialect request: the one table the gateway checks
before queueing a request and the backends check again before running it, keyed by backend name.

`fields_used` names what a request asks of the model beyond plain text generation (a field of
its `Generation` set to a value that changes the answer, a content part that is not text, a tool
call in its conversation), each with the JSON path it came from. `LOCAL_MODELS` lists the models
backend "local" can run. Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from .protocol import ChatMessage, Envelope, Generation

# Fields a backend can honour, or take without changing the answer's shape: the sampling settings
# a deterministic model is unaffected by, and hints about storage or caching.
SAMPLING = frozenset({"temperature", "top_p", "seed", "presence_penalty", "frequency_penalty", "logit_bias", "user"})
HINTS = frozenset(
    {
        "metadata",
        "store",
        "prediction",
        "reasoning_effort",
        "verbosity",
        "prompt_cache_key",
        "prompt_cache_retention",
        "safety_identifier",
        "parallel_tool_calls",
    }
)
# Everything else a request may use: answers of another shape, and what a conversation holds.
SHAPES = frozenset(
    {
        "stop",
        "max_tokens",
        "max_completion_tokens",
        "n",
        "logprobs",
        "top_logprobs",
        "response_format",
        "tools",
        "tool_choice",
        "functions",
        "function_call",
        "modalities",
        "audio",
        "web_search_options",
        "echo",
        "best_of",
        "suffix",
        "messages.content.image_url",
        "messages.content.input_audio",
        "messages.content.file",
        "messages.content.refusal",
        "messages.tool_calls",
        "messages.tool_call_id",
        "messages.function_call",
        "messages.audio",
        "messages.refusal",
    }
)
EVERY = SAMPLING | HINTS | SHAPES

SUPPORTS: dict[str, frozenset[str]] = {
    # An OpenAI-compatible upstream gets every field as the client sent it, and answers it.
    "openai": EVERY,
    # Simulated models echo deterministically: they cut their output at `stop` and `max_tokens`,
    # and generate text only, one choice, without log probabilities.
    "simulated": SAMPLING | HINTS | {"stop", "max_tokens", "max_completion_tokens"},
    # A model run in the worker process (workers/backends/local.py) embeds text; sampling settings
    # and hints leave an embedding as it is.
    "local": SAMPLING | HINTS,
}

# The models backend "local" can run (a model's `local` key), each with its kind and dimensions;
# their weights ship in the `tiergate[local]` extra.
LOCAL_MODELS: dict[str, tuple[str, int]] = {
    "all-MiniLM-L6-v2": ("embed", 384),
}

# Values of an `extra` field that ask for nothing beyond plain text.
_NEUTRAL: dict[str, Any] = {"best_of": 1, "modalities": ["text"]}


class _Part(msgspec.Struct):
    type: str


_parts = msgspec.json.Decoder(list[_Part])
_object = msgspec.json.Decoder(dict[str, Any])


def envelope_fields(env: Envelope) -> dict[str, str]:
    """What `env` uses beyond plain text generation: capability name -> JSON path."""
    return fields_used(env.generation, env.messages)


def fields_used(generation: Generation | None, messages: Sequence[ChatMessage] = ()) -> dict[str, str]:
    """Capability name -> the JSON path of the request's first use of it."""
    used: dict[str, str] = {}
    if generation is not None:
        used |= _generation_fields(generation)
    for i, message in enumerate(messages):
        for name, path in _message_fields(message, f"messages[{i}]").items():
            used.setdefault(name, path)
    return used


def _generation_fields(g: Generation) -> dict[str, str]:
    used = [
        name
        for name in SAMPLING | {"max_tokens", "max_completion_tokens", "top_logprobs"}
        if getattr(g, name) is not None
    ]
    used += [name for name in ("parallel_tool_calls", "logprobs") if getattr(g, name)]
    if g.stops():
        used.append("stop")
    if g.n is not None and g.n != 1:
        used.append("n")
    if g.tools:
        used.append("tools")
    if g.tool_choice:
        used.append("tool_choice")
    if g.response_format and msgspec.json.decode(g.response_format) != {"type": "text"}:
        used.append("response_format")
    if g.extra:
        used += [name for name, value in _object.decode(g.extra).items() if _asks(name, value)]
    return {name: name for name in sorted(used)}


def _asks(name: str, value: Any) -> bool:
    """Whether an `extra` field's value asks for something (null, false and neutral values do not)."""
    return value is not None and value is not False and _NEUTRAL.get(name) != value


def _message_fields(m: ChatMessage, path: str) -> dict[str, str]:
    used: dict[str, str] = {}
    if m.parts:
        for j, part in enumerate(_parts.decode(m.parts)):
            if part.type != "text":
                used.setdefault(f"messages.content.{part.type}", f"{path}.content[{j}]")
    if m.tool_calls:
        used["messages.tool_calls"] = f"{path}.tool_calls"
    if m.tool_call_id:
        used["messages.tool_call_id"] = f"{path}.tool_call_id"
    if m.extra:
        for name, value in _object.decode(m.extra).items():
            if name != "content" and _asks(name, value):
                used[f"messages.{name}"] = f"{path}.{name}"
    return used


def unsupported(backend: str, used: dict[str, str]) -> tuple[str, str] | None:
    """The first (capability, path) of `used` that `backend` cannot do; None when it can do all."""
    supported = SUPPORTS.get(backend, frozenset())
    return next(((name, path) for name, path in used.items() if name not in supported), None)
