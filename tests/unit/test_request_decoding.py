"""The request decoders and the OpenAPI document agree on the cases the fuzzer first found: a
whole number written with a fraction is an integer, and the bodies' one required list or text may
not be left out or empty."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.errors import InvalidRequest
from core.settings import Settings
from gateway.handlers import decode_body
from gateway.openai_schema import decode_chat, decode_completion, decode_embedding
from gateway.openapi import document


def test_a_whole_number_with_a_fraction_is_an_integer() -> None:
    assert decode_body(b'{"model": "m", "input": "x", "deadline_ms": 2564.0}').deadline_ms == 2564
    with pytest.raises(InvalidRequest, match=r"got `float` - at `\$.deadline_ms`"):
        decode_body(b'{"model": "m", "input": "x", "deadline_ms": 2564.5}')


def test_messages_prompt_and_input_are_required_and_not_empty(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    for decode, body in (
        (decode_chat, b'{"model": "sim-echo"}'),
        (decode_chat, b'{"model": "sim-echo", "messages": []}'),
        (decode_completion, b'{"model": "sim-echo"}'),
        (decode_completion, b'{"model": "sim-echo", "prompt": ""}'),
        (decode_completion, b'{"model": "sim-echo", "prompt": ["a", "b"]}'),
        (decode_embedding, b'{"model": "sim-embed", "input": []}'),
        (decode_embedding, b'{"model": "sim-embed", "input": ["a", ""]}'),
    ):
        with pytest.raises(InvalidRequest):
            decode(settings, body)  # type: ignore[operator]
    assert decode_chat(settings, b'{"model": "sim-echo", "messages": [{"role": "user"}], "max_tokens": 3.0}')
    schemas = document(settings)["components"]["schemas"]
    assert {"model", "messages"} <= set(schemas["ChatRequest"]["required"])
    assert {"model", "prompt"} <= set(schemas["CompletionRequest"]["required"])
    assert schemas["EmbeddingRequest"]["properties"]["model"] == {"enum": ["sim-embed"]}
