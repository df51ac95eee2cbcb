"""A worker's set of cancelled request ids: kept until each one's deadline, and bounded."""

from __future__ import annotations

from workers.cancels import CancelledIds


def test_an_id_is_kept_until_its_deadline() -> None:
    ids = CancelledIds()
    ids.add("a", deadline_at_ms=1_000, now_ms=0)
    ids.add("b", deadline_at_ms=2_000, now_ms=0)
    assert "a" in ids and "b" in ids and "c" not in ids
    ids.expire(999)
    assert "a" in ids
    ids.expire(1_000)
    assert "a" not in ids and "b" in ids
    ids.expire(5_000)
    assert len(ids) == 0


def test_an_id_already_past_its_deadline_is_not_kept() -> None:
    ids = CancelledIds()
    ids.add("late", deadline_at_ms=1_000, now_ms=1_000)
    assert "late" not in ids and len(ids) == 0


def test_adding_forgets_what_expired_meanwhile() -> None:
    ids = CancelledIds()
    ids.add("a", deadline_at_ms=1_000, now_ms=0)
    ids.add("b", deadline_at_ms=3_000, now_ms=2_000)
    assert "a" not in ids and "b" in ids and len(ids) == 1


def test_an_id_cancelled_twice_is_kept_once() -> None:
    ids = CancelledIds()
    ids.add("a", deadline_at_ms=1_000, now_ms=0)
    ids.add("a", deadline_at_ms=1_000, now_ms=0)
    assert len(ids) == 1
    ids.expire(1_000)
    assert len(ids) == 0


def test_when_full_the_ids_nearest_their_deadline_go_first() -> None:
    ids = CancelledIds(limit=3)
    for name, deadline_ms in [("d", 4_000), ("a", 1_000), ("c", 3_000), ("b", 2_000)]:
        ids.add(name, deadline_ms, now_ms=0)
    assert len(ids) == 3
    assert "a" not in ids and all(name in ids for name in "bcd")
    ids.add("e", 500, now_ms=0)  # nearest of all: it is the one that goes
    assert "e" not in ids and len(ids) == 3
