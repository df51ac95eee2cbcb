"""The design floor: the smallest aiohttp apps that do what tiergate does, for comparison.

`hello` answers a constant; `roundtrip` sends each request through a Redis stream to an echo
consumer and back through a reply stream, with one XADD per request or (`--pipelined`) one
pipeline per event-loop tick. Run as `python -m bench.floor APP --port P --redis-url URL`.
"""

from __future__ import annotations

import argparse
import asyncio
import os

import uvloop
from aiohttp import web
from redis.asyncio import Redis

REQUESTS = "bench:{floor}:requests"
REPLIES = "bench:{floor}:replies"


async def hello(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=b'{"output":"hello"}', content_type="application/json")


class RoundTrip:
    def __init__(self, redis: Redis, pipelined: bool) -> None:
        self.redis = redis
        self.pipelined = pipelined
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self.pending: list[tuple[bytes, bytes]] = []
        self.counter = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.counter += 1
        rid = b"%d-%d" % (os.getpid(), self.counter)
        future = asyncio.get_running_loop().create_future()
        self.waiting[rid] = future
        if self.pipelined:
            if not self.pending:
                asyncio.get_running_loop().call_soon(self.flush)
            self.pending.append((rid, body))
        else:
            await self.redis.xadd(REQUESTS, {b"id": rid, b"m": body})
        return web.Response(body=await future, content_type="application/json")

    def flush(self) -> None:
        batch, self.pending = self.pending, []
        pipe = self.redis.pipeline(transaction=False)
        for rid, body in batch:
            pipe.xadd(REQUESTS, {b"id": rid, b"m": body})
        asyncio.get_running_loop().create_task(pipe.execute())

    async def read_replies(self) -> None:
        last = b"0-0"
        while True:
            response = await self.redis.xread({REPLIES: last}, count=1000, block=1000)
            for _, entries in response or ():
                for entry_id, fields in entries:
                    last = entry_id
                    future = self.waiting.pop(fields[b"id"], None)
                    if future is not None:
                        future.set_result(fields[b"m"])


async def echo_worker(redis: Redis) -> None:
    """Consume requests and reply at once, one pipeline per read."""
    try:
        await redis.xgroup_create(REQUESTS, "g", id="0", mkstream=True)
    except Exception:
        pass
    while True:
        response = await redis.xreadgroup("g", "c", {REQUESTS: ">"}, count=1000, block=1000)
        for _, entries in response or ():
            pipe = redis.pipeline(transaction=False)
            for _entry_id, fields in entries:
                pipe.xadd(REPLIES, {b"id": fields[b"id"], b"m": fields[b"m"][::-1]}, maxlen=100000, approximate=True)
            pipe.xack(REQUESTS, "g", *(e for e, _ in entries))
            pipe.xdel(REQUESTS, *(e for e, _ in entries))
            await pipe.execute()


async def main(args: argparse.Namespace) -> None:
    if args.app == "echo-worker":
        print("ready", flush=True)
        await echo_worker(Redis.from_url(args.redis_url))
        return
    app = web.Application()
    if args.app == "hello":
        app.router.add_post("/v1/infer", hello)
    else:
        redis = Redis.from_url(args.redis_url, max_connections=256)  # one XADD in flight per connection
        rt = RoundTrip(redis, pipelined=args.app == "roundtrip-pipelined")
        app.router.add_post("/v1/infer", rt.handle)
        asyncio.get_running_loop().create_task(rt.read_replies())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("app", choices=["hello", "roundtrip", "roundtrip-pipelined", "echo-worker"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--redis-url", default="")
    uvloop.run(main(parser.parse_args()))
