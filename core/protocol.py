"""The contracts between processes: what travels through Redis, and the names of Redis keys.

Both the gateway and the workers import this module. Messages are MessagePack-encoded msgspec
Structs in the `PAYLOAD_FIELD` field of a stream entry or in a plain string key. Every key name
is built here and carries a Redis Cluster hash tag (`{...}`) so keys can spread across shards.
No I/O happens here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any, TypeAlias

import msgspec

KEY_PREFIX = "tg"
GROUP = "workers"  # one consumer group per request stream, shared by every pool reading it
PAYLOAD_FIELD = b"m"


def lane_name(tier: str, region: str, pools: Iterable[str]) -> str:
    """A request stream's name: its tier, its data region and the pools that read it, which are
    the pools of that tier and region serving the stream's models (`core.settings.lanes`)."""
    return f"{tier}.{region}.{'+'.join(sorted(pools))}"


def stream_key(lane: str) -> str:
    """The request stream of one lane (`lane_name`)."""
    return f"{KEY_PREFIX}:{{{lane}}}:requests"


def dead_letter_key(lane: str) -> str:
    """Entries no worker could use; same hash slot as their request stream."""
    return f"{KEY_PREFIX}:{{{lane}}}:dead"


def heartbeat_key(lane: str) -> str:
    """Live workers of one request stream (a hash: consumer name -> `Heartbeat`); its stream's slot."""
    return f"{KEY_PREFIX}:{{{lane}}}:workers"


def cancel_channel(lane: str) -> str:
    """The Pub/Sub channel a request stream's cancellations go out on (`Cancel`); its stream's tag."""
    return f"{KEY_PREFIX}:{{{lane}}}:cancel"


def idempotency_key(key: str) -> str:
    """The request id first sent with a client's idempotency key (a string with the result TTL)."""
    return f"{KEY_PREFIX}:{{idem.{key}}}"


def reply_key(gateway_id: str) -> str:
    """The stream a gateway process reads every reply addressed to it from."""
    return f"{KEY_PREFIX}:{{gw.{gateway_id}}}:replies"


def request_key(request_id: str) -> str:
    """A request's answer, its `Result` or `Failure`, with a TTL. Written with SET NX: the first
    answer stays, even when a reclaimed request ran twice."""
    return f"{KEY_PREFIX}:{{req.{request_id}}}"


def accepted_key(request_id: str) -> str:
    """An async request's `Accepted` record, while it waits; its answer's hash slot."""
    return f"{KEY_PREFIX}:{{req.{request_id}}}:accepted"


def slo_second_key(epoch_s: int) -> str:
    """Per-second SLO counters merged from every gateway (a hash); one slot for all of them."""
    return f"{KEY_PREFIX}:{{slo}}:s:{epoch_s}"


def slo_minute_key(epoch_min: int) -> str:
    """Per-minute SLO counters merged from every gateway (a hash), for the longer windows."""
    return f"{KEY_PREFIX}:{{slo}}:m:{epoch_min}"


def slo_max_key(epoch_s: int) -> str:
    """Per-second maximum latency of each tier|processor (a sorted set, ZADD GT)."""
    return f"{KEY_PREFIX}:{{slo}}:x:{epoch_s}"


def slo_minute_max_key(epoch_min: int) -> str:
    """Per-minute maximum latency of each tier|processor (a sorted set, ZADD GT)."""
    return f"{KEY_PREFIX}:{{slo}}:xm:{epoch_min}"


# A field of an SLO hash is `<tier>|<processor>|<stat>`; a member of an SLO maximum's sorted set is
# `<tier>|<processor>`. Per-tier totals are kept under the processor name SLO_TOTAL.
SLO_SEPARATOR = "|"
SLO_TOTAL = "*"


def slo_member(tier: str, processor: str) -> str:
    """A (tier, processor)'s member of an SLO maximum's sorted set, and its hash fields' prefix."""
    return f"{tier}{SLO_SEPARATOR}{processor}"


def slo_field(tier: str, processor: str, stat: str) -> str:
    """One counter of an SLO hash: `stat` of `tier` on `processor` (or SLO_TOTAL)."""
    return f"{tier}{SLO_SEPARATOR}{processor}{SLO_SEPARATOR}{stat}"


def parse_slo_field(name: bytes | str) -> tuple[str, str, str] | None:
    """(tier, processor, stat) of an SLO hash field; None for a field of another shape."""
    parts = (name.decode() if isinstance(name, bytes) else name).split(SLO_SEPARATOR)
    return (parts[0], parts[1], parts[2]) if len(parts) >= 3 else None


def parse_slo_member(name: bytes | str) -> tuple[str, str]:
    """(tier, processor) of an SLO maximum's sorted-set member."""
    tier, _, processor = (name.decode() if isinstance(name, bytes) else name).partition(SLO_SEPARATOR)
    return tier, processor


def audit_key() -> str:
    """The audit stream: where each request a worker answered ran, one stream entry per
    published batch (an `AuditEntry`, or an `AuditBatch` of several); bounded by `[audit]` maxlen
    (in stream entries) and max_age_s. One slot: `tiergate audit tail` reads it in order."""
    return f"{KEY_PREFIX}:{{audit}}:placements"


def usage_hour_key(epoch_h: int) -> str:
    """Usage counted in one hour (a hash of `usage_field`s), merged from every gateway."""
    return f"{KEY_PREFIX}:{{usage}}:h:{epoch_h}"


def usage_day_key(epoch_d: int) -> str:
    """Usage counted in one UTC day (a hash of `usage_field`s), merged from every gateway."""
    return f"{KEY_PREFIX}:{{usage}}:d:{epoch_d}"


# A field of a usage hash is `<tenant>|<tier>|<model>|<stat>` (tenant "" with `[auth] mode = "open"`).
USAGE_STATS = ("requests", "tokens", "energy_j", "cost")


def usage_field(tenant: str, tier: str, model: str, stat: str) -> str:
    return f"{tenant}{SLO_SEPARATOR}{tier}{SLO_SEPARATOR}{model}{SLO_SEPARATOR}{stat}"


def parse_usage_field(name: bytes | str) -> tuple[str, str, str, str] | None:
    """(tenant, tier, model, stat) of a usage hash field; None for a field of another shape. A
    tenant name may hold the separator: the last three parts are tier, model and stat."""
    parts = (name.decode() if isinstance(name, bytes) else name).rsplit(SLO_SEPARATOR, 3)
    return (parts[0], parts[1], parts[2], parts[3]) if len(parts) == 4 else None


def loadtest_agents_key() -> str:
    """Load-test agents waiting for a plan (a sorted set: agent id -> last seen, ms)."""
    return f"{KEY_PREFIX}:{{loadtest}}:agents"


def loadtest_plans_key() -> str:
    """The stream a load-test leader publishes its plans on; every waiting agent reads it."""
    return f"{KEY_PREFIX}:{{loadtest}}:plans"


def loadtest_claims_key(run_id: str) -> str:
    """A counter agents INCR to claim a share of one run (a share each, in claim order)."""
    return f"{KEY_PREFIX}:{{loadtest.{run_id}}}:claims"


def loadtest_results_key(run_id: str) -> str:
    """The stream agents publish their part of one run's measurements on."""
    return f"{KEY_PREFIX}:{{loadtest.{run_id}}}:results"


def loadtest_record_key(name: str) -> str:
    """A recorded arrival schedule: a `LoadRecordHeader` entry, then one `LoadArrival` per request."""
    return f"{KEY_PREFIX}:{{rec.{name}}}:arrivals"


def api_keys_key() -> str:
    """Every API key created with `tiergate keys create` (a hash: the key's SHA-256 -> `KeyRecord`);
    the key itself is never stored."""
    return f"{KEY_PREFIX}:{{auth}}:keys"


def api_keys_version_key() -> str:
    """A counter raised by every key created or revoked: gateways poll it each second and forget
    the keys they cached when it moves."""
    return f"{KEY_PREFIX}:{{auth}}:version"


def rate_key(key_id: str, limit: str, epoch_min: int) -> str:
    """One API key's count of `limit` ("rpm": requests, "tpm": tokens) in the minute `epoch_min`
    (a string counter that expires after the minute). One slot per key with `inflight_key`."""
    return f"{KEY_PREFIX}:{{key.{key_id}}}:{limit}:{epoch_min}"


def inflight_key(key_id: str) -> str:
    """One API key's requests in flight (a sorted set: request id -> its deadline, ms), so that a
    slot a dead gateway never released frees itself at the request's deadline."""
    return f"{KEY_PREFIX}:{{key.{key_id}}}:inflight"


def file_key(file_id: str) -> str:
    """A stored file's `FileRecord` (the OpenAI Files API); its content's hash slot."""
    return f"{KEY_PREFIX}:{{file.{file_id}}}"


def file_data_key(file_id: str) -> str:
    """A stored file's content, where files are kept in Redis."""
    return f"{KEY_PREFIX}:{{file.{file_id}}}:data"


def file_upload_key(file_id: str, writer: str) -> str:
    """A file's content while one writer stores it, a piece at a time; renamed to `file_data_key`
    once whole (its hash slot), so a reader never sees part of it."""
    return f"{KEY_PREFIX}:{{file.{file_id}}}:partial.{writer}"


def file_index_key(tenant: str) -> str:
    """One tenant's files, newest last (a sorted set: file id -> its place in `file_sequence_key`)."""
    return f"{KEY_PREFIX}:{{files.{tenant}}}:index"


def file_sequence_key(tenant: str) -> str:
    """The counter that orders one tenant's files in its index (its index's hash slot)."""
    return f"{KEY_PREFIX}:{{files.{tenant}}}:seq"


def batch_key(batch_id: str) -> str:
    """A batch's `BatchRecord`. Every key of one batch shares its hash tag, so one script may touch them."""
    return f"{KEY_PREFIX}:{{batch.{batch_id}}}"


def batch_outcomes_key(batch_id: str) -> str:
    """A batch's recorded line outcomes (a hash: custom_id -> `LineOutcome`), each written once."""
    return f"{KEY_PREFIX}:{{batch.{batch_id}}}:outcomes"


def batch_counts_key(batch_id: str) -> str:
    """A batch's counts of recorded outcomes (a hash: `completed`, `failed`), moved with them."""
    return f"{KEY_PREFIX}:{{batch.{batch_id}}}:counts"


def batch_lease_key(batch_id: str) -> str:
    """The gateway running a batch (a string with a TTL, renewed while it runs)."""
    return f"{KEY_PREFIX}:{{batch.{batch_id}}}:lease"


def batch_cancel_key(batch_id: str) -> str:
    """Set when a client cancels a batch: its runner stops feeding it."""
    return f"{KEY_PREFIX}:{{batch.{batch_id}}}:cancel"


def batch_index_key(tenant: str) -> str:
    """One tenant's batches, newest last (a sorted set: batch id -> its place in `batch_sequence_key`)."""
    return f"{KEY_PREFIX}:{{batches.{tenant}}}:index"


def batch_sequence_key(tenant: str) -> str:
    """The counter that orders one tenant's batches in its index (its index's hash slot)."""
    return f"{KEY_PREFIX}:{{batches.{tenant}}}:seq"


def batch_active_key() -> str:
    """Batches not yet finished (a set): every gateway's runner looks here for one to take over."""
    return f"{KEY_PREFIX}:{{batches}}:active"


# What XREAD/XREADGROUP answer (redis-py, bytes responses): [(stream, [(entry_id, fields)])].
StreamEntries: TypeAlias = list[tuple[bytes, dict[bytes, bytes]]]
StreamReply: TypeAlias = list[tuple[bytes, StreamEntries]]


def new_request_id() -> str:
    """128 random bits as 32 hex digits (uuid4's randomness without building a UUID object)."""
    return os.urandom(16).hex()


def entry_ms(entry_id: bytes | str) -> int:
    """Redis's own clock (ms) at the moment it appended the entry: `1700000000000-0`."""
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[0])


def queued_at_ms(envelope: Envelope, entry_id: bytes | str) -> float:
    """When a request was queued, on Redis's clock: its sender's stamp, which is finer than the
    entry id's whole milliseconds but cannot be later than Redis appending it (so a sender whose
    clock runs ahead is held to the entry id); the entry id alone for an envelope without one."""
    entry = float(entry_ms(entry_id))
    stamp = envelope.sent_at_ms
    return min(stamp, entry + 1.0) if stamp > 0 else entry


class ChatMessage(msgspec.Struct, omit_defaults=True, frozen=True):
    """One message of a chat conversation (the OpenAI API's `messages` items). `content` is its
    text (a list of content parts: their text parts joined); what else it held travels as the
    JSON text the client sent, for backends that forward it unchanged."""

    role: str
    content: str
    name: str = ""
    parts: bytes = b""  # JSON array: the content parts, when the content was a list of them
    tool_calls: bytes = b""  # JSON array: an assistant message's tool calls
    tool_call_id: str = ""  # a tool message: the call it answers
    extra: bytes = b""  # JSON object: its other fields (refusal, audio, ...; `"content": null`)


class Generation(msgspec.Struct, omit_defaults=True, frozen=True):
    """How an OpenAI-dialect request asks its answer to be generated: each field as the client
    sent it (None: not sent). Values that are arbitrary JSON travel as the JSON text the client
    sent, so neither side decodes them unless it must. `extra` holds the request's rarer fields
    (a JSON object: `functions`, `metadata`, `modalities`, a completion's `echo` ...)."""

    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: str | list[str] | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    parallel_tool_calls: bool | None = None
    response_format: bytes = b""  # JSON
    tools: bytes = b""  # JSON array
    tool_choice: bytes = b""  # JSON
    extra: bytes = b""  # JSON object

    def stops(self) -> list[str]:
        """The stop sequences, as a list."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]


# `Generation` fields sent upstream under their own names: plain values, and JSON text.
GENERATION_JSON_FIELDS = ("response_format", "tools", "tool_choice")
GENERATION_VALUE_FIELDS = tuple(
    name for name in Generation.__struct_fields__ if name not in (*GENERATION_JSON_FIELDS, "extra")
)


# Data sensitivity classes, lowest first: a pool cleared for one may run every lower one.
SENSITIVITY_CLASSES = ("public", "internal", "restricted")


class Grant(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """What one API key lets its tenant do, as an authenticated request carries it through the
    gateway: the key's id and tenant, the tiers, models and regions it may use (empty: any), the
    highest data class it may send, its limits (0: none), its share weight in a tier, and the
    region and data class its requests get when they name none ("": the gateway's, the lowest).
    With `[auth] mode = "open"` every request carries `OPEN_GRANT`."""

    key_id: str
    tenant: str
    tiers: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    max_sensitivity: str = "restricted"
    rpm: int = 0
    tpm: int = 0
    max_concurrency: int = 0
    weight: float = 1.0
    region: str = ""
    sensitivity: str = ""


OPEN_GRANT = Grant(key_id="", tenant="")


class KeyRecord(msgspec.Struct, frozen=True, omit_defaults=True, kw_only=True):
    """An API key as `api_keys_key` stores it, under the SHA-256 of the key: its Grant and when
    it was created (Redis's clock, ms)."""

    grant: Grant
    created_at_ms: int = 0


class Envelope(msgspec.Struct, tag="request", omit_defaults=True, frozen=True):
    """One inference request as queued in a tier stream."""

    id: str
    model: str
    input: str
    tier: str
    region: str
    reply_to: str  # gateway id: the result goes to reply_key(reply_to)
    deadline_at_ms: int  # absolute, on Redis's clock
    stream: bool = False  # publish a `Chunk` to reply_to for each piece of output as it is made
    max_tokens: int = 0  # 0: no limit
    messages: tuple[ChatMessage, ...] = ()  # the whole conversation of a chat request; `input` is its last turn
    # Redis clock (ms, to a µs) when the sender queued it; 0 from senders older than this field.
    sent_at_ms: float = 0.0
    generation: Generation | None = None  # an OpenAI-dialect request's generation fields
    # The W3C trace context of the gateway's span of this request (core/tracing.py); empty untraced.
    traceparent: str = ""
    # Who sent it (`Grant.tenant`, `Grant.key_id`; empty with `[auth] mode = "open"`) and its
    # data class (one of SENSITIVITY_CLASSES; empty: the lowest), which only pools cleared for
    # it may run.
    tenant: str = ""
    key_id: str = ""
    sensitivity: str = ""
    # The tenant's weight in its tier's share (`Grant.weight`) when it is not 1; 0: 1. Workers take
    # a tier's buffered entries tenant by tenant, by these weights (workers/batcher.py).
    weight: float = 0.0


class Accepted(msgspec.Struct, tag="accepted", omit_defaults=True, frozen=True):
    """Stored under accepted_key while an async request waits for a worker; it says where the
    request is queued, which is what cancelling it needs (`entry_id` once its XADD answered)."""

    id: str
    model: str
    tier: str
    deadline_at_ms: int
    region: str = ""
    reply_to: str = ""  # the gateway that accepted it, which counts its outcome
    entry_id: str = ""  # its entry in stream_key(lane); empty until the XADD answered
    lane: str = ""  # the lane_name of the stream it is queued on
    tenant: str = ""  # who sent it: only that tenant may read or cancel it

    @property
    def stream(self) -> str:
        return stream_key(self.lane)


class Result(msgspec.Struct, tag="result", omit_defaults=True, frozen=True):
    id: str
    model: str
    output: str | list[float]
    tier: str
    processor: str
    pool: str
    worker: str
    batch_size: int
    enqueued_at_ms: int  # Redis clock, from the stream entry id (whole ms)
    queue_ms: float  # from the envelope's `sent_at_ms` (else the entry id) to the batch's start
    service_ms: float
    finished_at_ms: int  # Redis clock
    energy_j: float
    cost: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = ""  # "stop", or "length" when max_tokens cut the output
    # JSON array: OpenAI `choices` as an upstream answered them, when they hold more than one
    # text (tool calls, several choices, log probabilities); `output` is the first one's text.
    choices: bytes = b""
    tenant: str = ""  # who sent it (the envelope's), for usage per tenant


class Chunk(msgspec.Struct, tag="chunk", omit_defaults=True, frozen=True):
    """A piece of a streaming request's output, sent to its gateway as soon as it is made;
    the request's `Result` (the whole output) follows its last chunk on the same stream."""

    id: str
    seq: int  # 0, 1, 2 ... per request
    text: str
    produced_at_ms: float  # Redis clock, when the backend produced it
    queue_ms: float = 0.0
    tier: str = ""
    pool: str = ""
    # JSON array: an upstream's streamed OpenAI `choices` (deltas) that hold more than one text
    # piece (tool call deltas, other choices, log probabilities), forwarded as it sent them.
    choices: bytes = b""


class Failure(msgspec.Struct, tag="failure", omit_defaults=True, frozen=True):
    id: str
    code: str  # an errors.RequestError code
    message: str
    tier: str = ""
    pool: str = ""
    worker: str = ""
    enqueued_at_ms: int = 0
    finished_at_ms: int = 0


class Cancel(msgspec.Struct, tag="cancel", frozen=True):
    """Published on cancel_channel: workers answer request `id` without running it, until its
    deadline (after which their deadline check refuses it anyway)."""

    id: str
    deadline_at_ms: int  # Redis clock


class DeadLetter(msgspec.Struct, tag="dead", omit_defaults=True, frozen=True):
    """An entry no worker could complete, moved out of its request stream with its history."""

    stream: str
    entry_id: str
    reason: str
    payload: bytes  # the original stream entry's payload, as it was
    worker: str
    request_id: str = ""  # empty when the payload could not be decoded
    deliveries: int = 0
    dead_at_ms: int = 0  # Redis clock


class Heartbeat(msgspec.Struct, tag="heartbeat", omit_defaults=True, frozen=True):
    """A worker's word that it is alive, and what it can do, refreshed every HEARTBEAT_S."""

    worker: str  # its consumer name
    pool: str
    at_ms: int  # Redis clock
    capacity_per_s: float  # requests a second it drains this stream's backlog at (workers.capacity)
    service_ms: float  # its mean time of one full batch


class AuditEntry(msgspec.Struct, tag="audit", omit_defaults=True, frozen=True):
    """Where one request ran, appended to `audit_key()` by the worker that answered it, in the
    pipeline of its reply (alone, or in its batch's `AuditBatch`): who sent it, the region and
    data class it asked for, and the pool (with that pool's region and clearance) and worker that
    took it."""

    id: str
    tier: str
    model: str
    region: str  # the request's data region
    pool: str
    pool_region: str
    clearance: str  # the pool's
    worker: str
    at_ms: int  # Redis clock, when it was answered
    outcome: str  # "done", or the failure code of its answer
    tenant: str = ""
    key_id: str = ""
    sensitivity: str = ""  # its data class; empty: the lowest


class AuditBatch(msgspec.Struct, tag="audits", frozen=True):
    """The `AuditEntry` of each request of one batch a worker answered, in the order it
    published their replies: one stream entry, so that the audit costs one command a batch.
    A batch of one is appended as its bare `AuditEntry` (as before this type existed)."""

    entries: tuple[AuditEntry, ...]


HEARTBEAT_S = 1.0
HEARTBEAT_STALE_MS = 5_000  # a worker silent this long is presumed dead


Reply = Result | Failure
Incoming = Result | Failure | Chunk  # what a gateway reads from its reply stream
Stored = Accepted | Result | Failure

encoder = msgspec.msgpack.Encoder()
envelope_decoder = msgspec.msgpack.Decoder(Envelope)
reply_decoder = msgspec.msgpack.Decoder(Reply)
incoming_decoder = msgspec.msgpack.Decoder(Incoming)
stored_decoder = msgspec.msgpack.Decoder(Stored)
dead_letter_decoder = msgspec.msgpack.Decoder(DeadLetter)
heartbeat_decoder = msgspec.msgpack.Decoder(Heartbeat)
cancel_decoder = msgspec.msgpack.Decoder(Cancel)
key_record_decoder = msgspec.msgpack.Decoder(KeyRecord)
audit_decoder = msgspec.msgpack.Decoder(AuditEntry | AuditBatch)


# ---------------------------------------------------------------- the Batch API's records


class FileRecord(msgspec.Struct, tag="file", omit_defaults=True, frozen=True):
    """A file of the OpenAI Files API: an uploaded batch input, or a batch's output or errors."""

    id: str
    bytes: int
    created_at: int  # Unix seconds
    filename: str
    purpose: str  # "batch", "batch_output"
    tenant: str = ""


class BatchError(msgspec.Struct, omit_defaults=True, frozen=True):
    """One reason a batch's input was refused: the line (1-based) and what is wrong with it."""

    code: str
    message: str
    line: int | None = None
    param: str | None = None


class BatchRecord(msgspec.Struct, tag="batch", omit_defaults=True, frozen=True):
    """A batch of the OpenAI Batch API as stored; its counts of done lines are kept apart
    (`batch_counts_key`). Timestamps are Unix seconds, 0 until they happen."""

    id: str
    endpoint: str
    input_file_id: str
    completion_window: str
    status: str  # validating, in_progress, finalizing, completed, failed, expired, cancelled
    created_at: int
    expires_at: int
    total: int = 0
    in_progress_at: int = 0
    finalizing_at: int = 0
    completed_at: int = 0
    failed_at: int = 0
    expired_at: int = 0
    cancelling_at: int = 0
    cancelled_at: int = 0
    output_file_id: str = ""
    error_file_id: str = ""
    errors: tuple[BatchError, ...] = ()
    metadata: dict[str, str] | None = None
    tenant: str = ""
    # The key that created it, as it was then: its lines are sent with it (limits and rules
    # included); None from an open gateway.
    grant: Grant | None = None


class LineOutcome(msgspec.Struct, tag="line", omit_defaults=True, frozen=True):
    """The one recorded outcome of a batch line: its output line (JSON) and whether it failed."""

    line: int  # 0-based position in the input file: the output files keep the input's order
    failed: bool
    json: bytes


file_decoder = msgspec.msgpack.Decoder(FileRecord)
batch_decoder = msgspec.msgpack.Decoder(BatchRecord)
outcome_decoder = msgspec.msgpack.Decoder(LineOutcome)


# ---------------------------------------------------------------- the load tester's messages


class LoadArrival(msgspec.Struct, tag="arrival", frozen=True):
    """One request of a load-test schedule: its intended send time after the start, and what it is."""

    offset_s: float
    tier: str
    model: str
    input_chars: int


class LoadRecordHeader(msgspec.Struct, tag="record", frozen=True):
    duration_s: float
    count: int


class LoadPlan(msgspec.Struct, tag="plan", omit_defaults=True, frozen=True):
    """A leader's plan: agent number i of `agents` sends arrivals[i::agents] from `start_at_ms`."""

    run_id: str
    agents: int
    start_at_ms: int  # Redis clock
    duration_s: float
    arrivals: list[LoadArrival]
    url: str = ""
    direct: str = ""
    stream: bool = False
    deadline_ms: int = 0


class LoadAgentResult(msgspec.Struct, tag="agent-result", frozen=True):
    run_id: str
    agent: str
    share: int
    stats: dict[str, Any]  # loadtest.stats.Recorder.to_wire(): counts and HDR histograms (hdrh encoding)


LoadMessage = LoadRecordHeader | LoadArrival | LoadPlan | LoadAgentResult
load_decoder = msgspec.msgpack.Decoder(LoadMessage)
