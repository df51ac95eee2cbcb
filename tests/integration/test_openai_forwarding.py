"""Every field of an OpenAI request reaches the model or is refused: a pool with backend `openai`
gets each one exactly as the official SDK sent it and its tool calls, choices and log probabilities
come back to the SDK, streamed or not; a simulated pool honours `stop`, stays deterministic under
sampling settings, and the gateway refuses what it cannot do with a 400 naming field and pool."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.settings import Settings
from tests.integration.conftest import Stack
from tests.integration.test_openai_schemas import check
from tests.integration.test_openai_upstream import client, upstream_settings

StartStack = Callable[..., Any]

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
ARGUMENTS = ['{"ci', 'ty": "Os', 'lo"}']


def _tool_call(streamed: bool) -> dict[str, Any]:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "".join(ARGUMENTS)}}
    return {"index": 0, **call} if streamed else call


def _logprobs(text: str) -> dict[str, Any]:
    return {"content": [{"token": text, "logprob": -0.25, "bytes": list(text.encode()), "top_logprobs": []}]}


class RecordingUpstream:
    """Records every body; answers a user turn with a call of the first tool when tools are
    offered, else `n` choices of the last message's text in upper case, with log probabilities
    when asked for."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body)
        last = body["messages"][-1]
        calls = bool(body.get("tools")) and last["role"] == "user"
        if body.get("stream"):
            events = self._tool_events() if calls else self._text_events(body, str(last["content"]).upper())
            return await self._stream(request, events)
        n = body.get("n") or 1
        if calls:
            message = {"role": "assistant", "content": None, "tool_calls": [_tool_call(False)]}
            choices = [{"index": 0, "message": message, "finish_reason": "tool_calls", "logprobs": None}]
        else:
            text = str(last["content"]).upper()
            choices = [self._choice(body, i, f"{text} {i}" if n > 1 else text) for i in range(n)]
        usage = {"prompt_tokens": 3, "completion_tokens": 2 * n, "total_tokens": 3 + 2 * n}
        return web.json_response({"id": "x", "object": "chat.completion", "choices": choices, "usage": usage})

    async def completions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.seen.append(body)
        text = body["prompt"] + " DONE" + body.get("suffix", "")
        logprobs = {"tokens": ["DONE"], "token_logprobs": [-0.5], "top_logprobs": None, "text_offset": [0]}
        choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": logprobs}
        usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        return web.json_response({"id": "y", "object": "text_completion", "choices": [choice], "usage": usage})

    def _choice(self, body: dict[str, Any], index: int, text: str) -> dict[str, Any]:
        logprobs = _logprobs(text) if body.get("logprobs") else None
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "finish_reason": "stop", "logprobs": logprobs}

    def _tool_events(self) -> list[list[dict[str, Any]]]:
        first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        deltas = [{"role": "assistant", "content": None, "tool_calls": [first]}]
        deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in ARGUMENTS]
        events = [[{"index": 0, "delta": delta, "finish_reason": None}] for delta in deltas]
        return [*events, [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]]

    def _text_events(self, body: dict[str, Any], text: str) -> list[list[dict[str, Any]]]:
        n = body.get("n") or 1
        events = []
        for word in text.split():
            events.append([{"index": i, "delta": {"content": f"{word}{i} "}, "finish_reason": None} for i in range(n)])
        return [*events, [{"index": i, "delta": {}, "finish_reason": "stop"} for i in range(n)]]

    async def _stream(self, request: web.Request, events: list[list[dict[str, Any]]]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for choices in events:
            await response.write(
                f"data: {json.dumps({'object': 'chat.completion.chunk', 'choices': choices})}\n\n".encode()
            )
        usage = {"prompt_tokens": 4, "completion_tokens": len(events), "total_tokens": 4 + len(events)}
        await response.write(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n".encode())
        return response


@pytest.fixture
async def recording() -> AsyncIterator[tuple[RecordingUpstream, str]]:
    fake = RecordingUpstream()
    server = TestServer(fake.app(), host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("/v1"))
    await server.close()


@pytest.fixture
async def upstream_stack(
    stack: StartStack, make_settings: Callable[..., Settings], recording: tuple[RecordingUpstream, str]
) -> AsyncIterator[tuple[RecordingUpstream, openai.AsyncOpenAI]]:
    """The `vllm` pool (backend openai) on the interactive tier, simulated `rt` on realtime."""
    fake, url = recording
    s: Stack = await stack(settings=upstream_settings(make_settings, url), pools=["vllm", "rt"])
    aio = client(s)
    yield fake, aio
    await aio.close()


CONVERSATION: list[Any] = [
    {"role": "system", "content": "Answer briefly."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "What is the weather where this photo was taken?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        ],
    },
    {"role": "assistant", "content": None, "tool_calls": [_tool_call(False)]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
]
PARAMETERS: dict[str, Any] = {
    "temperature": 0.25,
    "top_p": 0.5,
    "seed": 7,
    "presence_penalty": 0.1,
    "frequency_penalty": -0.2,
    "user": "user-42",
    "response_format": {"type": "json_object"},
    "stop": ["END", "\n\n"],
    "max_completion_tokens": 40,
    "logit_bias": {"50256": -100},
    "tools": [WEATHER_TOOL],
    "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    "parallel_tool_calls": False,
    "metadata": {"run": "forwarding"},
}


async def test_every_parameter_reaches_the_upstream_as_the_sdk_sent_it(
    upstream_stack: tuple[RecordingUpstream, openai.AsyncOpenAI],
) -> None:
    fake, aio = upstream_stack
    answer = await aio.chat.completions.create(model="sim-echo", messages=CONVERSATION, **PARAMETERS)
    assert answer.choices[0].message.content == "SUNNY, 21 C"
    assert fake.seen == [{"model": "fake-llm", "messages": CONVERSATION, **PARAMETERS}]


async def test_completion_fields_reach_the_upstream_and_its_logprobs_come_back(
    upstream_stack: tuple[RecordingUpstream, openai.AsyncOpenAI],
) -> None:
    fake, aio = upstream_stack
    sent = {"echo": True, "logprobs": 2, "suffix": "!", "best_of": 1, "stop": "\n", "max_tokens": 9, "seed": 1}
    answer = await aio.completions.create(model="sim-echo", prompt="go", **sent)
    assert fake.seen == [{"model": "fake-llm", "prompt": "go", **sent}]
    assert answer.choices[0].text == "go DONE!"
    assert answer.choices[0].logprobs is not None and answer.choices[0].logprobs.token_logprobs == [-0.5]


async def test_a_tool_call_reaches_the_sdk_as_message_tool_calls(
    upstream_stack: tuple[RecordingUpstream, openai.AsyncOpenAI],
) -> None:
    _, aio = upstream_stack
    ask = [{"role": "user", "content": "weather in Oslo?"}]
    raw = await aio.chat.completions.with_raw_response.create(model="sim-echo", messages=ask, tools=[WEATHER_TOOL])
    check("CreateChatCompletionResponse", json.loads(raw.text))  # the upstream's choice, in OpenAI's schema
    answer = raw.parse()
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1",
        "get_weather",
        {"city": "Oslo"},
    )


async def test_streamed_tool_call_deltas_accumulate_in_the_sdk(
    upstream_stack: tuple[RecordingUpstream, openai.AsyncOpenAI],
) -> None:
    _, aio = upstream_stack
    ask = [{"role": "user", "content": "weather in Oslo?"}]
    async with aio.beta.chat.completions.stream(model="sim-echo", messages=ask, tools=[WEATHER_TOOL]) as stream:
        deltas = [event async for event in stream if event.type == "tool_calls.function.arguments.delta"]
        final = await stream.get_final_completion()
    assert [d.arguments_delta for d in deltas if d.arguments_delta] == ARGUMENTS
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None
    call = choice.message.tool_calls[0]
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "call_1",
        "get_weather",
        {"city": "Oslo"},
    )


async def test_n_choices_and_logprobs_come_back(upstream_stack: tuple[RecordingUpstream, openai.AsyncOpenAI]) -> None:
    _, aio = upstream_stack
    ask = [{"role": "user", "content": "hi"}]
    raw = await aio.chat.completions.with_raw_response.create(
        model="sim-echo", messages=ask, n=2, logprobs=True, top_logprobs=0
    )
    check("CreateChatCompletionResponse", json.loads(raw.text))
    answer = raw.parse()
    assert [c.message.content for c in answer.choices] == ["HI 0", "HI 1"]
    assert [c.index for c in answer.choices] == [0, 1]
    logprobs = answer.choices[1].logprobs
    assert logprobs is not None and logprobs.content is not None
    assert (logprobs.content[0].token, logprobs.content[0].logprob) == ("HI 1", -0.25)
    one = await aio.chat.completions.create(model="sim-echo", messages=ask, logprobs=True)
    assert one.choices[0].logprobs is not None and one.choices[0].message.content == "HI"


async def test_streamed_choices_arrive_by_index(upstream_stack: tuple[RecordingUpstream, openai.AsyncOpenAI]) -> None:
    _, aio = upstream_stack
    ask = [{"role": "user", "content": "one two"}]
    async with aio.beta.chat.completions.stream(model="sim-echo", messages=ask, n=2) as stream:
        final = await stream.get_final_completion()
    assert [(c.index, c.message.content, c.finish_reason) for c in final.choices] == [
        (0, "ONE0 TWO0 ", "stop"),
        (1, "ONE1 TWO1 ", "stop"),
    ]


async def test_a_simulated_pool_on_another_tier_refuses_tools_by_name(
    upstream_stack: tuple[RecordingUpstream, openai.AsyncOpenAI],
) -> None:
    fake, aio = upstream_stack
    ask = [{"role": "user", "content": "weather in Oslo?"}]
    with pytest.raises(openai.BadRequestError) as bad:
        await aio.chat.completions.create(
            model="sim-echo",
            messages=ask,
            tools=[WEATHER_TOOL],
            extra_headers={"X-Tiergate-Tier": "realtime"},
        )
    assert "tools is not supported by pool 'rt'" in bad.value.message
    assert bad.value.code == "invalid_request" and bad.value.param == "tools"
    assert fake.seen == []


# ---------------------------------------------------------------- simulated pools


def _first_pool(s: Stack) -> str:
    lane = s.settings.lane_for("interactive", s.settings.gateway.region, "sim-echo")
    assert lane is not None
    return lane.pools[0]


async def test_stop_cuts_a_simulated_answer(stack: StartStack) -> None:
    s: Stack = await stack()
    aio = client(s)
    ask = [{"role": "user", "content": "abc def ghi"}]  # sim-echo answers "ihg fed cba"
    answer = await aio.chat.completions.create(model="sim-echo", messages=ask, stop=" f")
    assert (answer.choices[0].message.content, answer.choices[0].finish_reason) == ("ihg", "stop")
    stream = await aio.chat.completions.create(model="sim-echo", messages=ask, stop=["cb", " "], stream=True)
    pieces = [
        chunk.choices[0].delta.content async for chunk in stream if chunk.choices and chunk.choices[0].delta.content
    ]
    assert "".join(pieces) == "ihg"
    text = await aio.completions.create(model="sim-echo", prompt="abc def", stop=["e"])
    assert text.choices[0].text == "f"
    await aio.close()


async def test_sampling_settings_leave_the_simulated_echo_deterministic(stack: StartStack) -> None:
    s: Stack = await stack()
    aio = client(s)
    ask = [{"role": "user", "content": "hello"}]
    answers = await asyncio.gather(
        *(
            aio.chat.completions.create(model="sim-echo", messages=ask, seed=seed, temperature=t, top_p=0.9)
            for seed, t in ((1, 0.0), (2, 1.5), (3, 2.0))
        )
    )
    assert [a.choices[0].message.content for a in answers] == ["olleh"] * 3
    await aio.close()


IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}


@pytest.mark.parametrize(
    ("extra", "messages", "field", "param"),
    [
        ({"tools": [WEATHER_TOOL]}, None, "tools", "tools"),
        ({"n": 2}, None, "n", "n"),
        ({"logprobs": True}, None, "logprobs", "logprobs"),
        ({"response_format": {"type": "json_object"}}, None, "response_format", "response_format"),
        (
            {},
            [{"role": "user", "content": [{"type": "text", "text": "hi"}, IMAGE]}],
            "image_url",
            "messages[0].content[1]",
        ),
    ],
)
async def test_a_simulated_pool_refuses_what_it_cannot_do_before_queueing(
    stack: StartStack, extra: dict[str, Any], messages: list[Any] | None, field: str, param: str
) -> None:
    s: Stack = await stack()
    aio = client(s)
    with pytest.raises(openai.BadRequestError) as bad:
        await aio.chat.completions.create(
            model="sim-echo", messages=messages or [{"role": "user", "content": "hi"}], **extra
        )
    assert f"{field} " in bad.value.message and f"pool {_first_pool(s)!r}" in bad.value.message
    assert (bad.value.code, bad.value.param) == ("invalid_request", param)
    fine = await aio.chat.completions.create(
        model="sim-echo",
        messages=[{"role": "user", "content": "hi"}],
        n=1,
        logprobs=False,
        response_format={"type": "text"},
    )
    assert fine.choices[0].message.content == "ih"
    await aio.close()
