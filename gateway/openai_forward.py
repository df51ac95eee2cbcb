"""What of an OpenAI-dialect request travels to the model: its conversation and its generation
fields, carried in the envelope as the client sent them, and the check that every pool that could
receive the request can use what it asks for (core/capabilities.py), made before it is queued.
Pure; no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from core import capabilities
from core.errors import InvalidRequest
from core.protocol import GENERATION_VALUE_FIELDS, ChatMessage, Generation
from core.settings import Settings

from .openai_schema import ChatRequest, CompletionRequest, EmbeddingRequest, Message, Sampling, message_text

_json = msgspec.json.Encoder()

# Request fields carried as `Generation` fields of the same name: all of them for chat, the
# sampling fields shared with chat for completions (whose `logprobs` is another field: an int).
_CHAT = GENERATION_VALUE_FIELDS
_COMPLETION = tuple(name for name in _CHAT if name in Sampling.__struct_fields__)
_CHAT_JSON = ("response_format", "tools", "tool_choice")
# The rarer fields, carried together in `Generation.extra`.
_CHAT_EXTRA: tuple[str, ...] = ("functions", "function_call", "metadata", "store", "modalities", "audio", "prediction")
_CHAT_EXTRA += ("reasoning_effort", "verbosity", "web_search_options", "prompt_cache_key")
_CHAT_EXTRA += ("prompt_cache_retention", "safety_identifier")
_COMPLETION_EXTRA = ("echo", "best_of", "logprobs", "suffix")
_MESSAGE_EXTRA = ("refusal", "function_call", "audio")


def _sent(body: object, names: Sequence[str]) -> dict[str, Any]:
    """The fields of `body` among `names` that the client sent (not null)."""
    return {name: value for name in names if (value := getattr(body, name)) is not None}


def _json_object(values: dict[str, Any]) -> bytes:
    return _json.encode(values) if values else b""


def _generation(fields: dict[str, Any]) -> Generation | None:
    """None for a request that sent none of them: its envelope encodes as a plain one."""
    return Generation(**fields) if fields else None


def chat_generation(body: ChatRequest) -> Generation | None:
    fields = _sent(body, _CHAT)
    fields |= {name: _json.encode(value) for name, value in _sent(body, _CHAT_JSON).items()}
    if extra := _sent(body, _CHAT_EXTRA):
        fields["extra"] = _json.encode(extra)
    return _generation(fields)


def completion_generation(body: CompletionRequest) -> Generation | None:
    fields = _sent(body, _COMPLETION)
    if extra := _sent(body, _COMPLETION_EXTRA):
        fields["extra"] = _json.encode(extra)
    return _generation(fields)


def embedding_generation(body: EmbeddingRequest) -> Generation | None:
    """`user` goes upstream; `dimensions` the gateway has checked against the model's own."""
    return _generation(_sent(body, ("user",)))


def chat_message(m: Message) -> ChatMessage:
    """One message, its text for models that read text and the rest as the client sent it."""
    extra = _sent(m, _MESSAGE_EXTRA)
    if isinstance(m.content, str) and m.tool_calls is None and m.tool_call_id is None and not extra:
        return ChatMessage(m.role, m.content, m.name or "")  # the common case: a plain text message
    if m.content is None:
        extra["content"] = None
    return ChatMessage(
        m.role,
        message_text(m.content),
        m.name or "",
        parts=_json.encode(m.content) if isinstance(m.content, list) else b"",
        tool_calls=b"" if m.tool_calls is None else _json.encode(m.tool_calls),
        tool_call_id=m.tool_call_id or "",
        extra=_json_object(extra),
    )


def refuse_unsupported(settings: Settings, pools: Sequence[str], used: dict[str, str]) -> None:
    """A 400 naming the field and the pool when one of `pools` cannot use what a request uses
    (`used`: capability -> JSON path, from `capabilities.fields_used`)."""
    if not used:
        return
    for pool in pools:
        backend = settings.pools[pool].backend
        missing = capabilities.unsupported(backend, used)
        if missing is not None:
            name, path = missing
            raise InvalidRequest(
                f"{_describe(name)} is not supported by pool {pool!r}, which may receive this request "
                f"(backend {backend!r}) - at `$.{path}`"
            )


def _describe(name: str) -> str:
    if name.startswith("messages.content."):
        return f"a content part of type {name.removeprefix('messages.content.')}"
    if name.startswith("messages."):
        return f"{name.removeprefix('messages.')} in a message"
    return name
