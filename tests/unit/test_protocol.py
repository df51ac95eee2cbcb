"""Messages survive the trip through MessagePack, and every key name carries a hash tag."""

from __future__ import annotations

import re

import msgspec
import pytest

from core import protocol


def test_envelope_and_replies_round_trip() -> None:
    env = protocol.Envelope(
        id="a", model="sim-echo", input="hi", tier="batch", region="eu", reply_to="gw", deadline_at_ms=5
    )
    assert protocol.envelope_decoder.decode(protocol.encoder.encode(env)) == env
    result = protocol.Result(
        id="a",
        model="sim-embed",
        output=[0.5, -0.5],
        tier="batch",
        processor="h100",
        pool="p",
        worker="w",
        batch_size=3,
        enqueued_at_ms=1,
        queue_ms=1.5,
        service_ms=2.5,
        finished_at_ms=9,
        energy_j=0.1,
        cost=0.2,
    )
    failure = protocol.Failure(id="b", code="deadline_exceeded", message="late")
    for reply in (result, failure):
        assert protocol.reply_decoder.decode(protocol.encoder.encode(reply)) == reply
        assert protocol.stored_decoder.decode(protocol.encoder.encode(reply)) == reply


LANE = protocol.lane_name("realtime", "eu-west", ["groq-b", "groq-a"])


@pytest.mark.parametrize(
    "key",
    [
        protocol.stream_key(LANE),
        protocol.dead_letter_key(LANE),
        protocol.heartbeat_key(LANE),
        protocol.reply_key("host-1-abc"),
        protocol.request_key("0123abcd"),
        protocol.accepted_key("0123abcd"),
        protocol.cancel_channel(LANE),
        protocol.idempotency_key("k"),
        protocol.file_data_key("file-1"),
        protocol.file_upload_key("file-1", "w1"),
    ],
)
def test_every_key_has_one_cluster_hash_tag(key: str) -> None:
    assert key.startswith("tg:")
    assert len(re.findall(r"\{[^{}]+\}", key)) == 1


def test_a_stream_its_dead_letters_heartbeats_and_cancels_share_a_hash_slot() -> None:
    tag = re.compile(r"\{([^{}]+)\}")
    lane = protocol.lane_name("batch", "us", ["wafer", "chip"])
    keys = [protocol.stream_key(lane), protocol.dead_letter_key(lane), protocol.heartbeat_key(lane)]
    tags = {found.group(1) for found in (tag.search(key) for key in [*keys, protocol.cancel_channel(lane)]) if found}
    assert tags == {"batch.us.chip+wafer"}  # the pools sorted: their order in the config does not matter
    assert protocol.stream_key(lane) != protocol.stream_key(protocol.lane_name("batch", "eu", ["wafer", "chip"]))
    assert protocol.stream_key(lane) != protocol.stream_key(protocol.lane_name("batch", "us", ["wafer"]))


def test_an_accepted_record_names_its_stream_and_old_records_still_decode() -> None:
    lane = protocol.lane_name("batch", "us", ["wafer"])
    accepted = protocol.Accepted(
        id="a", model="sim-echo", tier="batch", deadline_at_ms=5, region="us", reply_to="gw", entry_id="1-0", lane=lane
    )
    assert protocol.stored_decoder.decode(protocol.encoder.encode(accepted)) == accepted
    assert accepted.stream == protocol.stream_key(lane)
    old = protocol.encoder.encode(
        {"type": "accepted", "id": "a", "model": "sim-echo", "tier": "batch", "deadline_at_ms": 5}
    )
    assert protocol.stored_decoder.decode(old) == protocol.Accepted(
        id="a", model="sim-echo", tier="batch", deadline_at_ms=5
    )
    notice = protocol.Cancel(id="a", deadline_at_ms=5)
    assert protocol.cancel_decoder.decode(protocol.encoder.encode(notice)) == notice


def test_entry_ms_reads_redis_time_from_an_entry_id() -> None:
    assert protocol.entry_ms(b"1700000000123-7") == 1700000000123
    assert protocol.entry_ms("5-0") == 5


class OldEnvelope(msgspec.Struct, tag="request", omit_defaults=True, frozen=True):
    """An Envelope as senders wrote it before `sent_at_ms` existed."""

    id: str
    model: str
    input: str
    tier: str
    region: str
    reply_to: str
    deadline_at_ms: int


def test_an_envelope_without_a_send_stamp_still_decodes_and_falls_back_to_the_entry_id() -> None:
    old = OldEnvelope(id="a", model="m", input="x", tier="realtime", region="eu", reply_to="gw", deadline_at_ms=5)
    env = protocol.envelope_decoder.decode(protocol.encoder.encode(old))
    assert env.sent_at_ms == 0.0
    assert protocol.queued_at_ms(env, b"1700000000123-4") == 1700000000123.0


def test_the_send_stamp_is_used_to_the_microsecond_and_an_old_reader_ignores_it() -> None:
    env = protocol.Envelope(
        id="a", model="m", input="x", tier="realtime", region="eu", reply_to="gw", deadline_at_ms=5,
        sent_at_ms=1700000000122.625,
    )  # fmt: skip
    assert protocol.queued_at_ms(env, b"1700000000123-0") == 1700000000122.625
    assert msgspec.msgpack.decode(protocol.encoder.encode(env), type=OldEnvelope).id == "a"


def test_a_send_stamp_later_than_the_append_is_held_to_the_entry_id() -> None:
    env = protocol.Envelope(
        id="a", model="m", input="x", tier="realtime", region="eu", reply_to="gw", deadline_at_ms=5,
        sent_at_ms=1700000000130.5,  # a sender whose clock runs 7 ms ahead
    )  # fmt: skip
    assert protocol.queued_at_ms(env, b"1700000000123-0") == 1700000000124.0


def test_slo_fields_and_members_read_back_as_written() -> None:
    field = protocol.slo_field("interactive", "h100", "met")
    assert protocol.parse_slo_field(field.encode()) == ("interactive", "h100", "met")
    assert protocol.parse_slo_field(protocol.slo_field("batch", protocol.SLO_TOTAL, "n")) == ("batch", "*", "n")
    assert protocol.parse_slo_field(b"not-a-field") is None
    assert protocol.parse_slo_member(protocol.slo_member("realtime", "cerebras-cs3").encode()) == (
        "realtime",
        "cerebras-cs3",
    )


def test_a_tenant_weight_travels_only_when_it_is_set() -> None:
    plain = protocol.Envelope(
        id="a", model="m", input="x", tier="realtime", region="eu", reply_to="gw", deadline_at_ms=5
    )
    assert "weight" not in msgspec.msgpack.decode(protocol.encoder.encode(plain))  # an open gateway's: as before
    weighted = msgspec.structs.replace(plain, tenant="t", weight=3.0)
    assert protocol.envelope_decoder.decode(protocol.encoder.encode(weighted)).weight == 3.0
    assert msgspec.msgpack.decode(protocol.encoder.encode(weighted), type=OldEnvelope).id == "a"
