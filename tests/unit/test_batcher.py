"""Dynamic batching: a full batch goes at once, a partial one after max_wait from its oldest item."""

from __future__ import annotations

import asyncio

from workers.batcher import Batcher


async def test_a_full_batch_is_handed_out_without_waiting() -> None:
    batcher: Batcher[int] = Batcher(max_batch=4, max_wait_s=3600)
    for i in range(6):
        batcher.put(i)
    assert await asyncio.wait_for(batcher.next_batch(), 1) == [0, 1, 2, 3]
    assert len(batcher) == 2


async def test_a_partial_batch_closes_after_max_wait() -> None:
    batcher: Batcher[int] = Batcher(max_batch=10, max_wait_s=0.05)
    loop = asyncio.get_running_loop()
    before = loop.time()
    batcher.put(1)
    after = loop.time()
    close_at = batcher.close_at()
    assert before + 0.05 <= close_at <= after + 0.05  # the oldest item's arrival + max_wait
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)  # the task is now waiting for company
    assert not task.done()
    batcher.put(2)  # joins the batch that is forming: neither full nor due yet
    await asyncio.sleep(0)
    assert not task.done() and batcher.close_at() == close_at  # a newer item does not move the close
    assert await asyncio.wait_for(task, 1) == [1, 2]
    assert loop.time() >= close_at  # it closed on the max-wait rule, not because it filled or earlier


async def test_waits_for_the_first_item_then_fills_as_items_arrive() -> None:
    batcher: Batcher[str] = Batcher(max_batch=2, max_wait_s=3600)
    task = asyncio.create_task(batcher.next_batch())
    await asyncio.sleep(0)
    assert not task.done()
    batcher.put("a")
    await asyncio.sleep(0)
    assert not task.done()
    batcher.put("b")
    assert await asyncio.wait_for(task, 1) == ["a", "b"]


async def test_one_at_a_time_when_max_batch_is_one() -> None:
    batcher: Batcher[int] = Batcher(max_batch=1, max_wait_s=0)
    for i in range(3):
        batcher.put(i)
    assert [await batcher.next_batch() for _ in range(3)] == [[0], [1], [2]]


async def test_close_drains_what_is_left_then_returns_empty() -> None:
    batcher: Batcher[int] = Batcher(max_batch=5, max_wait_s=3600)
    batcher.put(7)
    batcher.close()
    assert await asyncio.wait_for(batcher.next_batch(), 1) == [7]
    assert await asyncio.wait_for(batcher.next_batch(), 1) == []


async def test_room_bounds_what_a_reader_fetches() -> None:
    batcher: Batcher[int] = Batcher(max_batch=2, max_wait_s=0)
    assert batcher.room == 4
    for i in range(4):
        batcher.put(i)
    assert batcher.room == 0
    waiter = asyncio.create_task(batcher.wait_for_room())
    await asyncio.sleep(0)
    assert not waiter.done()
    await batcher.next_batch()
    await asyncio.wait_for(waiter, 1)
    assert batcher.room == 2


async def test_a_batch_closes_when_its_tightest_item_must_start() -> None:
    batcher: Batcher[str] = Batcher(max_batch=10, max_wait_s=3600)
    loop = asyncio.get_running_loop()
    batcher.put("relaxed")
    start_by = loop.time() + 0.05
    batcher.put("tight", start_by=start_by)
    # max_wait is an hour: the tight item's start-by time is when this batch must close.
    assert batcher.close_at() == start_by
    assert await asyncio.wait_for(batcher.next_batch(), 5) == ["relaxed", "tight"]
    assert loop.time() >= start_by  # closed by that rule, not earlier


async def test_an_item_already_past_its_start_by_closes_the_batch_at_once() -> None:
    batcher: Batcher[int] = Batcher(max_batch=10, max_wait_s=3600)
    batcher.put(1, start_by=asyncio.get_running_loop().time() - 1)
    assert await asyncio.wait_for(batcher.next_batch(), 1) == [1]


async def test_stricter_tier_goes_first() -> None:
    batcher: Batcher[str] = Batcher(max_batch=2, max_wait_s=0, priorities=3)
    batcher.put("batch-1", priority=2)
    batcher.put("interactive-1", priority=1)
    batcher.put("realtime-1", priority=0)
    batcher.put("realtime-2", priority=0)
    assert await batcher.next_batch() == ["realtime-1", "realtime-2"]
    assert await batcher.next_batch() == ["interactive-1", "batch-1"]


async def test_lower_tier_gets_its_minimum_share_under_constant_pressure() -> None:
    batcher: Batcher[str] = Batcher(max_batch=1, max_wait_s=0, priorities=2, min_share=0.25)
    handed_out = []
    for i in range(40):
        batcher.put(f"low-{i}", priority=1)
    for i in range(40):
        batcher.put(f"high-{i}", priority=0)
        handed_out += await batcher.next_batch()
    low = [x for x in handed_out if x.startswith("low")]
    assert len(low) == 10  # a quarter of the slots while both had work
    assert [x for x in handed_out if x.startswith("high")] == [f"high-{i}" for i in range(30)]


async def test_without_min_share_a_busy_strict_tier_takes_every_slot() -> None:
    batcher: Batcher[str] = Batcher(max_batch=1, max_wait_s=0, priorities=2)
    batcher.put("low", priority=1)
    for i in range(5):
        batcher.put(f"high-{i}", priority=0)
    assert [(await batcher.next_batch())[0] for _ in range(6)] == [*(f"high-{i}" for i in range(5)), "low"]


async def test_room_is_counted_per_priority() -> None:
    batcher: Batcher[int] = Batcher(max_batch=1, max_wait_s=0, priorities=2)
    batcher.put(1, priority=1)
    batcher.put(2, priority=1)
    assert (batcher.room_for(0), batcher.room_for(1), batcher.room) == (2, 0, 2)


def _tenant(item: str) -> tuple[str, float]:
    """Items named TENANT+N, with weights: 'h' (heavy) 3, 'z' 0 (counts as 1), any other 1."""
    return item[0], {"h": 3.0, "z": 0.0}.get(item[0], 1.0)


def _fair(max_batch: int, priorities: int = 1, min_share: float = 0.0) -> Batcher[str]:
    return Batcher(max_batch, max_wait_s=3600, priorities=priorities, min_share=min_share, share=_tenant)


async def test_a_light_tenants_item_goes_in_the_next_batch_not_behind_a_flooders_backlog() -> None:
    batcher = _fair(max_batch=4)
    for i in range(6):
        batcher.put(f"a{i}")
    batcher.put("b0")
    assert await batcher.next_batch() == ["a0", "b0", "a1", "a2"]  # first come, first served: a0 ... a3
    batcher.put("b1")  # a has had its turn (a2): b's comes next
    assert await batcher.next_batch() == ["b1", "a3", "a4", "a5"]


async def test_tenants_take_turns_by_weight_and_each_keeps_its_own_order() -> None:
    batcher = _fair(max_batch=8)
    for i in range(8):
        batcher.put(f"a{i}")
        batcher.put(f"h{i}")
    assert await batcher.next_batch() == ["a0", "h0", "h1", "h2", "a1", "h3", "h4", "h5"]  # 1 : 3
    assert await batcher.next_batch() == ["a2", "h6", "h7", "a3", "a4", "a5", "a6", "a7"]  # h ran out


async def test_a_weight_of_zero_counts_as_one() -> None:
    batcher = _fair(max_batch=4)
    for i in range(4):
        batcher.put(f"a{i}")
        batcher.put(f"z{i}")
    assert await batcher.next_batch() == ["a0", "z0", "a1", "z1"]


async def test_a_tenant_that_ran_dry_saves_no_turns_and_rejoins_at_the_end_of_the_ring() -> None:
    batcher = _fair(max_batch=2)
    for item in ("a0", "b0", "a1", "b1"):
        batcher.put(item)
    assert await batcher.next_batch() == ["a0", "b0"]
    assert await batcher.next_batch() == ["a1", "b1"]
    for item in ("c0", "c1", "c2", "a2"):  # b is gone; a comes back after c
        batcher.put(item)
    assert await batcher.next_batch() == ["c0", "a2"]
    assert await batcher.next_batch() == ["c1", "c2"]


async def test_tiers_come_before_tenants_and_min_share_still_holds() -> None:
    batcher = _fair(max_batch=4, priorities=2, min_share=0.25)
    for i in range(4):
        batcher.put(f"a{i}", priority=0)
        batcher.put(f"b{i}", priority=1)
    batcher.put("c0", priority=0)
    # The lower tier's one earned slot (min_share 0.25 of 4) goes first, then the stricter tier,
    # tenant by tenant; the lower tier never jumps the stricter one otherwise.
    assert await batcher.next_batch() == ["b0", "a0", "c0", "a1"]
    assert await batcher.next_batch() == ["b1", "a2", "a3", "b2"]


async def test_without_a_share_function_a_tier_is_first_come_first_served() -> None:
    batcher: Batcher[str] = Batcher(max_batch=4, max_wait_s=3600)
    for item in ("a0", "a1", "a2", "b0"):
        batcher.put(item)
    assert await batcher.next_batch() == ["a0", "a1", "a2", "b0"]
