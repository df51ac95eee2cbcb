"""The request bodies of the OpenAI-compatible API as msgspec Structs, and the pure checks a
decoded body must pass before it is routed (the gateway's limits, a model of the right kind).
`gateway/openapi.py` generates the published schemas from these Structs. No I/O.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from core.errors import InvalidRequest
from core.settings import Settings

from .http_shared import decode_json


class _Body(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Request bodies: every field OpenAI documents is accepted, anything else is a 400."""


class ContentPart(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One part of a message's content; parts other than text go to backends that take them."""

    type: Literal["text", "image_url", "input_audio", "file", "refusal"]
    text: str | None = None
    image_url: Any = None
    input_audio: Any = None
    file: Any = None
    refusal: str | None = None


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    refusal: str | None = None
    tool_calls: Any = None
    tool_call_id: str | None = None
    function_call: Any = None
    audio: Any = None


class StreamOptions(_Body):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


MaxTokens = Annotated[int, Meta(gt=0)]


class Sampling(_Body):
    """Fields shared by chat and text completions; each reaches the model, or the request is
    refused when a pool that could receive it cannot use it (gateway/openai_forward.py)."""

    model: Annotated[str, Meta(min_length=1, max_length=128)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    max_tokens: MaxTokens | None = None
    n: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    service_tier: str | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


NonEmptyText = Annotated[str, Meta(min_length=1)]


class ChatRequest(Sampling, kw_only=True):
    messages: Annotated[list[Message], Meta(min_length=1)]
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: Any = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    modalities: list[str] | None = None
    audio: Any = None
    prediction: Any = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: Any = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None
    safety_identifier: str | None = None


class CompletionRequest(Sampling, kw_only=True):
    prompt: NonEmptyText | Annotated[list[NonEmptyText], Meta(min_length=1, max_length=1)]  # one prompt
    echo: bool | None = None
    best_of: int | None = None
    logprobs: int | None = None
    suffix: str | None = None


class EmbeddingRequest(_Body):
    model: Annotated[str, Meta(min_length=1, max_length=128)]
    input: NonEmptyText | Annotated[list[NonEmptyText], Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    user: str | None = None


_chat_decoder = msgspec.json.Decoder(ChatRequest)
_completion_decoder = msgspec.json.Decoder(CompletionRequest)
_embedding_decoder = msgspec.json.Decoder(EmbeddingRequest)


def _decode(decoder: msgspec.json.Decoder[Any], raw: bytes) -> Any:
    return decode_json(decoder, raw)


def message_text(content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.text or "" for part in content if part.type == "text")


def check_model(settings: Settings, model: str, kind: str) -> None:
    """A chat or completion model on the embeddings endpoint (or the reverse) is a 400."""
    spec = settings.models.get(model)
    if spec is None:
        return  # the router names the known models
    if (spec.kind == "embed") != (kind == "embed"):
        endpoint = "/v1/embeddings" if spec.kind == "embed" else "/v1/chat/completions or /v1/completions"
        raise InvalidRequest(f"model {model!r} is a {spec.kind} model; use {endpoint} - at `$.model`")


def _check_sampling(settings: Settings, body: Sampling) -> None:
    """The gateway's limits on output tokens and conversation length."""
    if body.n is not None and body.n < 1:
        raise InvalidRequest(f"n is {body.n}; it must be at least 1 - at `$.n`")
    limits = settings.gateway
    for field in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, field, None)
        if value is not None and value > limits.max_tokens:
            raise InvalidRequest(f"{field} is {value}; the limit is {limits.max_tokens} - at `$.{field}`")
    count = len(getattr(body, "messages", ()))
    if count > limits.max_messages:
        raise InvalidRequest(f"messages holds {count} messages; the limit is {limits.max_messages} - at `$.messages`")


def decode_chat(settings: Settings, raw: bytes) -> ChatRequest:
    body: ChatRequest = _decode(_chat_decoder, raw)
    _check_sampling(settings, body)
    if not body.messages:
        raise InvalidRequest("messages must hold at least one message - at `$.messages`")
    check_model(settings, body.model, "chat")
    return body


def decode_completion(settings: Settings, raw: bytes) -> tuple[CompletionRequest, str]:
    """The body and its one prompt."""
    body: CompletionRequest = _decode(_completion_decoder, raw)
    _check_sampling(settings, body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if len(prompts) != 1 or not prompts[0]:
        raise InvalidRequest("prompt must be one non-empty string - at `$.prompt`")
    check_model(settings, body.model, "completion")
    return body, prompts[0]


def decode_embedding(settings: Settings, raw: bytes) -> tuple[EmbeddingRequest, list[str]]:
    """The body and its inputs, each one request."""
    body: EmbeddingRequest = _decode(_embedding_decoder, raw)
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts or not all(texts):
        raise InvalidRequest("input must be a non-empty string or a list of non-empty strings - at `$.input`")
    check_model(settings, body.model, "embed")
    spec = settings.models.get(body.model)  # an unknown model is the router's 404
    if spec is not None and body.dimensions is not None and body.dimensions != spec.dimensions:
        raise InvalidRequest(f"model {body.model!r} has {spec.dimensions} dimensions - at `$.dimensions`")
    return body, texts
