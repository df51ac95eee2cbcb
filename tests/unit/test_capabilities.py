"""The envelope's generation fields cost a plain request nothing, older entries still decode, the
capability check names the field and the pool, and the simulated backend honours `stop` and
refuses, on its own, what it cannot do."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from core import capabilities, protocol
from core.errors import InvalidRequest
from core.settings import Settings
from gateway.openai_forward import chat_generation, chat_message, refuse_unsupported
from gateway.openai_schema import decode_chat
from gateway.routing import Router
from workers.backends.simulated import SimulatedBackend


class OldChatMessage(msgspec.Struct, omit_defaults=True, frozen=True):
    role: str
    content: str
    name: str = ""


class OldEnvelope(msgspec.Struct, tag="request", omit_defaults=True, frozen=True):
    """The envelope as it was before it carried generation fields."""

    id: str
    model: str
    input: str
    tier: str
    region: str
    reply_to: str
    deadline_at_ms: int
    stream: bool = False
    max_tokens: int = 0
    messages: tuple[OldChatMessage, ...] = ()
    sent_at_ms: float = 0.0


PLAIN = {"id": "0" * 32, "model": "sim-echo", "input": "hello", "tier": "interactive", "region": "default"}
PLAIN |= {"reply_to": "gw-1", "deadline_at_ms": 1_700_000_000_000, "sent_at_ms": 1_699_999_999_000.5}


def same_entry(new: protocol.Envelope, old: OldEnvelope) -> bool:
    """The same keys and values on the wire. (A Struct of over 15 fields opens its map with a
    3-byte header where a smaller one needs 1, so the bytes may differ by that much.)"""
    new_bytes, old_bytes = protocol.encoder.encode(new), protocol.encoder.encode(old)
    return (
        msgspec.msgpack.decode(new_bytes) == msgspec.msgpack.decode(old_bytes) and len(new_bytes) <= len(old_bytes) + 2
    )


def test_a_plain_envelope_carries_nothing_new() -> None:
    assert same_entry(protocol.Envelope(**PLAIN), OldEnvelope(**PLAIN))
    chat = {"max_tokens": 8, "messages": (protocol.ChatMessage("user", "hello"),)}
    old_chat = {"max_tokens": 8, "messages": (OldChatMessage("user", "hello"),)}
    assert same_entry(protocol.Envelope(**PLAIN, **chat), OldEnvelope(**PLAIN, **old_chat))


def test_an_older_entry_decodes_with_no_generation() -> None:
    old = OldEnvelope(**PLAIN, messages=(OldChatMessage("user", "hello", "ann"),))
    env = protocol.envelope_decoder.decode(protocol.encoder.encode(old))
    assert env.generation is None and env.messages == (protocol.ChatMessage("user", "hello", "ann"),)


def chat(settings: Settings, **body: Any) -> tuple[protocol.Generation | None, tuple[protocol.ChatMessage, ...]]:
    request = decode_chat(settings, msgspec.json.encode({"model": "sim-echo", **body}))
    return chat_generation(request), tuple(chat_message(m) for m in request.messages)


HI = [{"role": "user", "content": "hi"}]


def test_a_plain_chat_request_carries_no_generation(make_settings: Callable[..., Settings]) -> None:
    generation, messages = chat(make_settings(), messages=HI, stream=True, service_tier="auto")
    assert generation is None and messages == (protocol.ChatMessage("user", "hi"),)


def test_generation_fields_survive_the_trip_through_redis(make_settings: Callable[..., Settings]) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    generation, messages = chat(
        make_settings(), messages=HI, temperature=0.5, stop="x", tools=tools, metadata={"a": "b"}, n=2
    )
    assert generation is not None
    env = protocol.Envelope(**PLAIN, messages=messages, generation=generation)
    back = protocol.envelope_decoder.decode(protocol.encoder.encode(env))
    assert back == env
    assert back.generation is not None and msgspec.json.decode(back.generation.tools) == tools
    assert msgspec.json.decode(back.generation.extra) == {"metadata": {"a": "b"}}
    used = capabilities.envelope_fields(back)
    assert used == {name: name for name in ("temperature", "stop", "tools", "n", "metadata")}
    assert capabilities.unsupported("simulated", used) == ("n", "n")  # metadata is a hint it takes


def test_neutral_values_ask_for_nothing(make_settings: Callable[..., Settings]) -> None:
    generation, messages = chat(
        make_settings(), messages=HI, n=1, logprobs=False, response_format={"type": "text"}, modalities=["text"]
    )
    assert capabilities.fields_used(generation, messages) == {}


def test_message_parts_and_tool_calls_are_named_with_their_path(make_settings: Callable[..., Settings]) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "look "}, image]},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]
    generation, messages = chat(make_settings(), messages=conversation)
    assert messages[0].content == "look " and msgspec.json.decode(messages[0].parts)[1] == image
    assert msgspec.json.decode(messages[1].extra) == {"content": None}
    assert capabilities.fields_used(generation, messages) == {
        "messages.content.image_url": "messages[0].content[1]",
        "messages.tool_calls": "messages[1].tool_calls",
        "messages.tool_call_id": "messages[2].tool_call_id",
    }


def mixed_settings(make_settings: Callable[..., Settings]) -> Settings:
    models = ["sim-echo", "sim-embed"]
    upstream = {"base_url": "http://127.0.0.1:9/v1"}
    pools = {
        "up": {"processor": "h100", "tiers": ["interactive"], "models": models, "backend": "openai"},
        "sim": {"processor": "h100", "tiers": ["realtime", "interactive", "batch"], "models": models},
    }
    pools["up"]["upstream"] = upstream
    return make_settings(pools=pools)


def test_every_pool_that_may_receive_a_request_must_support_what_it_uses(
    make_settings: Callable[..., Settings],
) -> None:
    settings = mixed_settings(make_settings)
    assert Router(settings).route("sim-echo", 1, "interactive").pools == ("sim", "up")
    assert Router(settings).route("sim-echo", 1, "realtime").pools == ("sim",)
    refuse_unsupported(settings, ["up"], {"tools": "tools", "n": "n"})
    refuse_unsupported(settings, ["up", "sim"], {"temperature": "temperature", "stop": "stop"})
    with pytest.raises(InvalidRequest, match=r"^tools is not supported by pool 'sim'.* - at `\$\.tools`$"):
        refuse_unsupported(settings, ["up", "sim"], {"tools": "tools"})
    image = {"messages.content.image_url": "messages[0].content[1]"}
    with pytest.raises(
        InvalidRequest, match=r"image_url is not supported by pool 'sim'.*`\$\.messages\[0\]\.content\[1\]`"
    ):
        refuse_unsupported(settings, ["up", "sim"], image)


def test_each_backend_declares_its_row_of_the_table() -> None:
    from workers.backends.openai import OpenAIBackend

    assert OpenAIBackend.supports == capabilities.EVERY
    assert SimulatedBackend.supports == capabilities.SUPPORTS["simulated"]
    assert {"tools", "n", "logprobs", "response_format", "messages.content.image_url"}.isdisjoint(
        SimulatedBackend.supports
    )


def envelope(text: str, **generation: Any) -> protocol.Envelope:
    fields = PLAIN | {"id": text, "input": text, "deadline_at_ms": 2**62}
    return protocol.Envelope(**fields, generation=protocol.Generation(**generation) if generation else None)


async def test_the_simulated_backend_stops_and_refuses_on_its_own(make_settings: Callable[..., Settings]) -> None:
    backend = SimulatedBackend(make_settings(), "cerebras-batch", random.Random(1))
    seen: list[tuple[int, str]] = []
    batch = [
        envelope("abc def", stop=["e"], seed=3, temperature=1.0),
        envelope("tools", tools=b"[]"),
        envelope("plain one"),
    ]
    batch[2] = msgspec.structs.replace(batch[2], stream=True)
    done = await backend.run(batch, lambda position, text, choices=b"": seen.append((position, text)))
    assert (done[0].output, done[0].finish_reason, done[0].error) == ("f", "stop", "")
    assert done[1].error == "pool cerebras-batch: tools is not supported by a simulated model - at `$.tools`"
    assert done[1].error_code == "invalid_request"
    assert done[2].output == "eno nialp"
    assert {position for position, _ in seen} == {2}  # the streamed one keeps its position in the batch
    assert "".join(text for _, text in seen) == "eno nialp"
