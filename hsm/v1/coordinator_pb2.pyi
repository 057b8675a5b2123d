from hsm.v1 import types_pb2 as _types_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SplitOp(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SPLIT_OP_UNSPECIFIED: _ClassVar[SplitOp]
    SPLIT_OP_OPEN: _ClassVar[SplitOp]
    SPLIT_OP_PROPOSE: _ClassVar[SplitOp]
    SPLIT_OP_EXPORT: _ClassVar[SplitOp]
    SPLIT_OP_FACTS: _ClassVar[SplitOp]
    SPLIT_OP_RING: _ClassVar[SplitOp]

class SubmitOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUBMIT_OUTCOME_UNSPECIFIED: _ClassVar[SubmitOutcome]
    CREATED: _ClassVar[SubmitOutcome]
    JOINED: _ClassVar[SubmitOutcome]
    NOT_NEEDED: _ClassVar[SubmitOutcome]
    REJECTED: _ClassVar[SubmitOutcome]

class CancelOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CANCEL_OUTCOME_UNSPECIFIED: _ClassVar[CancelOutcome]
    CANCEL_DONE: _ClassVar[CancelOutcome]
    CANCEL_SENT: _ClassVar[CancelOutcome]
    ALREADY_ENDED: _ClassVar[CancelOutcome]
    NOT_FOUND: _ClassVar[CancelOutcome]
SPLIT_OP_UNSPECIFIED: SplitOp
SPLIT_OP_OPEN: SplitOp
SPLIT_OP_PROPOSE: SplitOp
SPLIT_OP_EXPORT: SplitOp
SPLIT_OP_FACTS: SplitOp
SPLIT_OP_RING: SplitOp
SUBMIT_OUTCOME_UNSPECIFIED: SubmitOutcome
CREATED: SubmitOutcome
JOINED: SubmitOutcome
NOT_NEEDED: SubmitOutcome
REJECTED: SubmitOutcome
CANCEL_OUTCOME_UNSPECIFIED: CancelOutcome
CANCEL_DONE: CancelOutcome
CANCEL_SENT: CancelOutcome
ALREADY_ENDED: CancelOutcome
NOT_FOUND: CancelOutcome

class ReshardRequest(_message.Message):
    __slots__ = ("add", "abort")
    ADD_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    add: int
    abort: bool
    def __init__(self, add: _Optional[int] = ..., abort: _Optional[bool] = ...) -> None: ...

class ReshardResponse(_message.Message):
    __slots__ = ("split", "shards", "ring_version", "waiting", "phase")
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    RING_VERSION_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    split: str
    shards: int
    ring_version: int
    waiting: str
    phase: str
    def __init__(self, split: _Optional[str] = ..., shards: _Optional[int] = ..., ring_version: _Optional[int] = ..., waiting: _Optional[str] = ..., phase: _Optional[str] = ...) -> None: ...

class SplitRequest(_message.Message):
    __slots__ = ("op", "shard", "command", "ring")
    OP_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    RING_FIELD_NUMBER: _ClassVar[int]
    op: SplitOp
    shard: int
    command: bytes
    ring: str
    def __init__(self, op: _Optional[_Union[SplitOp, str]] = ..., shard: _Optional[int] = ..., command: _Optional[bytes] = ..., ring: _Optional[str] = ...) -> None: ...

class SplitFacts(_message.Message):
    __slots__ = ("ring_version", "out_version", "out_active", "busy", "in_version", "pending")
    RING_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUT_VERSION_FIELD_NUMBER: _ClassVar[int]
    OUT_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    IN_VERSION_FIELD_NUMBER: _ClassVar[int]
    PENDING_FIELD_NUMBER: _ClassVar[int]
    ring_version: int
    out_version: int
    out_active: bool
    busy: int
    in_version: int
    pending: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ring_version: _Optional[int] = ..., out_version: _Optional[int] = ..., out_active: _Optional[bool] = ..., busy: _Optional[int] = ..., in_version: _Optional[int] = ..., pending: _Optional[_Iterable[int]] = ...) -> None: ...

class SplitResponse(_message.Message):
    __slots__ = ("count", "error", "facts")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    count: int
    error: str
    facts: SplitFacts
    def __init__(self, count: _Optional[int] = ..., error: _Optional[str] = ..., facts: _Optional[_Union[SplitFacts, _Mapping]] = ...) -> None: ...

class RebalanceRequest(_message.Message):
    __slots__ = ("drain", "undrain", "enabled")
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    UNDRAIN_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    drain: str
    undrain: str
    enabled: int
    def __init__(self, drain: _Optional[str] = ..., undrain: _Optional[str] = ..., enabled: _Optional[int] = ...) -> None: ...

class ReplicaLoad(_message.Message):
    __slots__ = ("id", "shards", "leads", "drained")
    ID_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    LEADS_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    id: str
    shards: int
    leads: int
    drained: bool
    def __init__(self, id: _Optional[str] = ..., shards: _Optional[int] = ..., leads: _Optional[int] = ..., drained: _Optional[bool] = ...) -> None: ...

class RebalanceResponse(_message.Message):
    __slots__ = ("enabled", "drained", "replicas", "next")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DRAINED_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    drained: _containers.RepeatedScalarFieldContainer[str]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaLoad]
    next: str
    def __init__(self, enabled: _Optional[bool] = ..., drained: _Optional[_Iterable[str]] = ..., replicas: _Optional[_Iterable[_Union[ReplicaLoad, _Mapping]]] = ..., next: _Optional[str] = ...) -> None: ...

class MoveShardRequest(_message.Message):
    __slots__ = ("shard", "source", "target", "abort", "lead")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ABORT_FIELD_NUMBER: _ClassVar[int]
    LEAD_FIELD_NUMBER: _ClassVar[int]
    shard: int
    source: str
    target: str
    abort: bool
    lead: bool
    def __init__(self, shard: _Optional[int] = ..., source: _Optional[str] = ..., target: _Optional[str] = ..., abort: _Optional[bool] = ..., lead: _Optional[bool] = ...) -> None: ...

class MoveShardResponse(_message.Message):
    __slots__ = ("shard", "members", "move", "leader")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    MOVE_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    shard: int
    members: _containers.RepeatedScalarFieldContainer[str]
    move: str
    leader: str
    def __init__(self, shard: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ..., move: _Optional[str] = ..., leader: _Optional[str] = ...) -> None: ...

class JoinShardRequest(_message.Message):
    __slots__ = ("shard", "members")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    shard: int
    members: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, shard: _Optional[int] = ..., members: _Optional[_Iterable[str]] = ...) -> None: ...

class JoinShardResponse(_message.Message):
    __slots__ = ("held",)
    HELD_FIELD_NUMBER: _ClassVar[int]
    held: bool
    def __init__(self, held: _Optional[bool] = ...) -> None: ...

class LeaveShardRequest(_message.Message):
    __slots__ = ("shard", "prepare")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    PREPARE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    prepare: bool
    def __init__(self, shard: _Optional[int] = ..., prepare: _Optional[bool] = ...) -> None: ...

class Relocation(_message.Message):
    __slots__ = ("file", "archive_id", "from_container", "to_container", "to_slot")
    FILE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_CONTAINER_FIELD_NUMBER: _ClassVar[int]
    TO_CONTAINER_FIELD_NUMBER: _ClassVar[int]
    TO_SLOT_FIELD_NUMBER: _ClassVar[int]
    file: FidSelector
    archive_id: int
    from_container: str
    to_container: str
    to_slot: int
    def __init__(self, file: _Optional[_Union[FidSelector, _Mapping]] = ..., archive_id: _Optional[int] = ..., from_container: _Optional[str] = ..., to_container: _Optional[str] = ..., to_slot: _Optional[int] = ...) -> None: ...

class RelocateCopiesRequest(_message.Message):
    __slots__ = ("moves",)
    MOVES_FIELD_NUMBER: _ClassVar[int]
    moves: _containers.RepeatedCompositeFieldContainer[Relocation]
    def __init__(self, moves: _Optional[_Iterable[_Union[Relocation, _Mapping]]] = ...) -> None: ...

class MoveCopiesRequest(_message.Message):
    __slots__ = ("to",)
    FROM_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    to: FidSelector
    def __init__(self, to: _Optional[_Union[FidSelector, _Mapping]] = ..., **kwargs) -> None: ...

class EditCatalogRequest(_message.Message):
    __slots__ = ("file", "copies", "forget")
    FILE_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    file: FidSelector
    copies: _containers.RepeatedCompositeFieldContainer[_types_pb2.Copy]
    forget: bool
    def __init__(self, file: _Optional[_Union[FidSelector, _Mapping]] = ..., copies: _Optional[_Iterable[_Union[_types_pb2.Copy, _Mapping]]] = ..., forget: _Optional[bool] = ...) -> None: ...

class EditCatalogResponse(_message.Message):
    __slots__ = ("changed",)
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    changed: int
    def __init__(self, changed: _Optional[int] = ...) -> None: ...

class ListCopiesRequest(_message.Message):
    __slots__ = ("fid", "shard", "after", "page_size", "archive_id", "archived_before", "archived_after", "min_size", "max_size", "uid", "path_prefix")
    FID_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ID_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_BEFORE_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_AFTER_FIELD_NUMBER: _ClassVar[int]
    MIN_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    fid: FidSelector
    shard: int
    after: FidSelector
    page_size: int
    archive_id: int
    archived_before: float
    archived_after: float
    min_size: int
    max_size: int
    uid: int
    path_prefix: str
    def __init__(self, fid: _Optional[_Union[FidSelector, _Mapping]] = ..., shard: _Optional[int] = ..., after: _Optional[_Union[FidSelector, _Mapping]] = ..., page_size: _Optional[int] = ..., archive_id: _Optional[int] = ..., archived_before: _Optional[float] = ..., archived_after: _Optional[float] = ..., min_size: _Optional[int] = ..., max_size: _Optional[int] = ..., uid: _Optional[int] = ..., path_prefix: _Optional[str] = ...) -> None: ...

class CatalogEntry(_message.Message):
    __slots__ = ("fsname", "fid", "copy")
    FSNAME_FIELD_NUMBER: _ClassVar[int]
    FID_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    fsname: str
    fid: _types_pb2.Fid
    copy: _types_pb2.Copy
    def __init__(self, fsname: _Optional[str] = ..., fid: _Optional[_Union[_types_pb2.Fid, _Mapping]] = ..., copy: _Optional[_Union[_types_pb2.Copy, _Mapping]] = ...) -> None: ...

class ListCopiesResponse(_message.Message):
    __slots__ = ("copies", "next", "files", "total")
    COPIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    copies: _containers.RepeatedCompositeFieldContainer[CatalogEntry]
    next: FidSelector
    files: int
    total: int
    def __init__(self, copies: _Optional[_Iterable[_Union[CatalogEntry, _Mapping]]] = ..., next: _Optional[_Union[FidSelector, _Mapping]] = ..., files: _Optional[int] = ..., total: _Optional[int] = ...) -> None: ...

class EventConsumerRequest(_message.Message):
    __slots__ = ("name", "deregister", "shards")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEREGISTER_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    deregister: bool
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., deregister: _Optional[bool] = ..., shards: _Optional[_Iterable[int]] = ...) -> None: ...

class EventCursor(_message.Message):
    __slots__ = ("shard", "acked", "missed", "lag")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    ACKED_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    shard: int
    acked: int
    missed: int
    lag: int
    def __init__(self, shard: _Optional[int] = ..., acked: _Optional[int] = ..., missed: _Optional[int] = ..., lag: _Optional[int] = ...) -> None: ...

class EventConsumerResponse(_message.Message):
    __slots__ = ("cursors",)
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    cursors: _containers.RepeatedCompositeFieldContainer[EventCursor]
    def __init__(self, cursors: _Optional[_Iterable[_Union[EventCursor, _Mapping]]] = ...) -> None: ...

class HsmEvent(_message.Message):
    __slots__ = ("shard", "recno", "time", "type", "flags", "event", "errno", "fsname", "fid", "archive_id", "action_id")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    RECNO_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    FSNAME_FIELD_NUMBER: _ClassVar[int]
    FID_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    shard: int
    recno: int
    time: float
    type: int
    flags: int
    event: str
    errno: int
    fsname: str
    fid: _types_pb2.Fid
    archive_id: int
    action_id: int
    def __init__(self, shard: _Optional[int] = ..., recno: _Optional[int] = ..., time: _Optional[float] = ..., type: _Optional[int] = ..., flags: _Optional[int] = ..., event: _Optional[str] = ..., errno: _Optional[int] = ..., fsname: _Optional[str] = ..., fid: _Optional[_Union[_types_pb2.Fid, _Mapping]] = ..., archive_id: _Optional[int] = ..., action_id: _Optional[int] = ...) -> None: ...

class ReadEventsRequest(_message.Message):
    __slots__ = ("consumer", "max_events", "wait_seconds", "shards")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    MAX_EVENTS_FIELD_NUMBER: _ClassVar[int]
    WAIT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    max_events: int
    wait_seconds: float
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, consumer: _Optional[str] = ..., max_events: _Optional[int] = ..., wait_seconds: _Optional[float] = ..., shards: _Optional[_Iterable[int]] = ...) -> None: ...

class ReadEventsResponse(_message.Message):
    __slots__ = ("events", "cursors")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[HsmEvent]
    cursors: _containers.RepeatedCompositeFieldContainer[EventCursor]
    def __init__(self, events: _Optional[_Iterable[_Union[HsmEvent, _Mapping]]] = ..., cursors: _Optional[_Iterable[_Union[EventCursor, _Mapping]]] = ...) -> None: ...

class AckEventsRequest(_message.Message):
    __slots__ = ("consumer", "upto")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    UPTO_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    upto: _containers.RepeatedCompositeFieldContainer[EventCursor]
    def __init__(self, consumer: _Optional[str] = ..., upto: _Optional[_Iterable[_Union[EventCursor, _Mapping]]] = ...) -> None: ...

class AckEventsResponse(_message.Message):
    __slots__ = ("cursors",)
    CURSORS_FIELD_NUMBER: _ClassVar[int]
    cursors: _containers.RepeatedCompositeFieldContainer[EventCursor]
    def __init__(self, cursors: _Optional[_Iterable[_Union[EventCursor, _Mapping]]] = ...) -> None: ...

class ConsumerStatus(_message.Message):
    __slots__ = ("name", "lag", "missed", "since")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LAG_FIELD_NUMBER: _ClassVar[int]
    MISSED_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    lag: int
    missed: int
    since: float
    def __init__(self, name: _Optional[str] = ..., lag: _Optional[int] = ..., missed: _Optional[int] = ..., since: _Optional[float] = ...) -> None: ...

class LeaseRequest(_message.Message):
    __slots__ = ("name", "holder", "ttl_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    TTL_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    holder: str
    ttl_ms: int
    def __init__(self, name: _Optional[str] = ..., holder: _Optional[str] = ..., ttl_ms: _Optional[int] = ...) -> None: ...

class LeaseResponse(_message.Message):
    __slots__ = ("granted", "holder", "remaining_ms")
    GRANTED_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    REMAINING_MS_FIELD_NUMBER: _ClassVar[int]
    granted: bool
    holder: str
    remaining_ms: int
    def __init__(self, granted: _Optional[bool] = ..., holder: _Optional[str] = ..., remaining_ms: _Optional[int] = ...) -> None: ...

class DrainAgentRequest(_message.Message):
    __slots__ = ("agent_id", "drain", "shards", "force")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DRAIN_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    drain: bool
    shards: _containers.RepeatedScalarFieldContainer[int]
    force: bool
    def __init__(self, agent_id: _Optional[str] = ..., drain: _Optional[bool] = ..., shards: _Optional[_Iterable[int]] = ..., force: _Optional[bool] = ...) -> None: ...

class DrainAgentResponse(_message.Message):
    __slots__ = ("agent_id", "draining", "running")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    draining: bool
    running: Slots
    def __init__(self, agent_id: _Optional[str] = ..., draining: _Optional[bool] = ..., running: _Optional[_Union[Slots, _Mapping]] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class SetPolicyRequest(_message.Message):
    __slots__ = ("text", "dry_run", "expect_version", "shards", "version", "set_by")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    EXPECT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    text: str
    dry_run: bool
    expect_version: int
    shards: _containers.RepeatedScalarFieldContainer[int]
    version: int
    set_by: str
    def __init__(self, text: _Optional[str] = ..., dry_run: _Optional[bool] = ..., expect_version: _Optional[int] = ..., shards: _Optional[_Iterable[int]] = ..., version: _Optional[int] = ..., set_by: _Optional[str] = ...) -> None: ...

class ShardPolicy(_message.Message):
    __slots__ = ("shard", "version")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    shard: int
    version: int
    def __init__(self, shard: _Optional[int] = ..., version: _Optional[int] = ...) -> None: ...

class PolicyResponse(_message.Message):
    __slots__ = ("version", "text", "set_at", "set_by", "changes", "shards", "warnings")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SET_AT_FIELD_NUMBER: _ClassVar[int]
    SET_BY_FIELD_NUMBER: _ClassVar[int]
    CHANGES_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    version: int
    text: str
    set_at: float
    set_by: str
    changes: _containers.RepeatedScalarFieldContainer[str]
    shards: _containers.RepeatedCompositeFieldContainer[ShardPolicy]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, version: _Optional[int] = ..., text: _Optional[str] = ..., set_at: _Optional[float] = ..., set_by: _Optional[str] = ..., changes: _Optional[_Iterable[str]] = ..., shards: _Optional[_Iterable[_Union[ShardPolicy, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ...) -> None: ...

class ControlRequest(_message.Message):
    __slots__ = ("mode", "shards")
    MODE_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    mode: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, mode: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ...) -> None: ...

class ControlResponse(_message.Message):
    __slots__ = ("mode",)
    MODE_FIELD_NUMBER: _ClassVar[int]
    mode: str
    def __init__(self, mode: _Optional[str] = ...) -> None: ...

class ChangeMembershipRequest(_message.Message):
    __slots__ = ("add", "raft", "shards", "force")
    ADD_FIELD_NUMBER: _ClassVar[int]
    RAFT_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    add: bool
    raft: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    force: bool
    def __init__(self, add: _Optional[bool] = ..., raft: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ..., force: _Optional[bool] = ...) -> None: ...

class ChangeMembershipResponse(_message.Message):
    __slots__ = ("shards",)
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, shards: _Optional[_Iterable[int]] = ...) -> None: ...

class SubmitItem(_message.Message):
    __slots__ = ("fsname", "fid", "kind", "archive_id", "extent", "data", "flags", "priority", "requester", "idempotency_key", "hsm", "path", "size")
    FSNAME_FIELD_NUMBER: _ClassVar[int]
    FID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ID_FIELD_NUMBER: _ClassVar[int]
    EXTENT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    HSM_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    fsname: str
    fid: _types_pb2.Fid
    kind: _types_pb2.ActionKind
    archive_id: int
    extent: _types_pb2.Extent
    data: bytes
    flags: int
    priority: int
    requester: _types_pb2.Requester
    idempotency_key: str
    hsm: _types_pb2.HsmState
    path: str
    size: int
    def __init__(self, fsname: _Optional[str] = ..., fid: _Optional[_Union[_types_pb2.Fid, _Mapping]] = ..., kind: _Optional[_Union[_types_pb2.ActionKind, str]] = ..., archive_id: _Optional[int] = ..., extent: _Optional[_Union[_types_pb2.Extent, _Mapping]] = ..., data: _Optional[bytes] = ..., flags: _Optional[int] = ..., priority: _Optional[int] = ..., requester: _Optional[_Union[_types_pb2.Requester, _Mapping]] = ..., idempotency_key: _Optional[str] = ..., hsm: _Optional[_Union[_types_pb2.HsmState, _Mapping]] = ..., path: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class SubmitRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[SubmitItem]
    def __init__(self, items: _Optional[_Iterable[_Union[SubmitItem, _Mapping]]] = ...) -> None: ...

class SubmitResult(_message.Message):
    __slots__ = ("outcome", "action_id", "errno", "reason")
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    outcome: SubmitOutcome
    action_id: int
    errno: int
    reason: str
    def __init__(self, outcome: _Optional[_Union[SubmitOutcome, str]] = ..., action_id: _Optional[int] = ..., errno: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[SubmitResult]
    def __init__(self, results: _Optional[_Iterable[_Union[SubmitResult, _Mapping]]] = ...) -> None: ...

class FidSelector(_message.Message):
    __slots__ = ("fsname", "fid", "kind")
    FSNAME_FIELD_NUMBER: _ClassVar[int]
    FID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    fsname: str
    fid: _types_pb2.Fid
    kind: _types_pb2.ActionKind
    def __init__(self, fsname: _Optional[str] = ..., fid: _Optional[_Union[_types_pb2.Fid, _Mapping]] = ..., kind: _Optional[_Union[_types_pb2.ActionKind, str]] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("action_ids", "fids", "all", "reason", "shards", "cookies")
    ACTION_IDS_FIELD_NUMBER: _ClassVar[int]
    FIDS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    COOKIES_FIELD_NUMBER: _ClassVar[int]
    action_ids: _containers.RepeatedScalarFieldContainer[int]
    fids: _containers.RepeatedCompositeFieldContainer[FidSelector]
    all: bool
    reason: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    cookies: _containers.RepeatedCompositeFieldContainer[_types_pb2.Requester]
    def __init__(self, action_ids: _Optional[_Iterable[int]] = ..., fids: _Optional[_Iterable[_Union[FidSelector, _Mapping]]] = ..., all: _Optional[bool] = ..., reason: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ..., cookies: _Optional[_Iterable[_Union[_types_pb2.Requester, _Mapping]]] = ...) -> None: ...

class CancelResult(_message.Message):
    __slots__ = ("action_id", "outcome", "state")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    action_id: int
    outcome: CancelOutcome
    state: _types_pb2.ActionState
    def __init__(self, action_id: _Optional[int] = ..., outcome: _Optional[_Union[CancelOutcome, str]] = ..., state: _Optional[_Union[_types_pb2.ActionState, str]] = ...) -> None: ...

class CancelResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[CancelResult]
    def __init__(self, results: _Optional[_Iterable[_Union[CancelResult, _Mapping]]] = ...) -> None: ...

class GetActionRequest(_message.Message):
    __slots__ = ("action_id",)
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    action_id: int
    def __init__(self, action_id: _Optional[int] = ...) -> None: ...

class ListActionsRequest(_message.Message):
    __slots__ = ("states", "kinds", "fid", "agent", "include_terminal", "page_size", "page_token", "shards")
    STATES_FIELD_NUMBER: _ClassVar[int]
    KINDS_FIELD_NUMBER: _ClassVar[int]
    FID_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TERMINAL_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[_types_pb2.ActionState]
    kinds: _containers.RepeatedScalarFieldContainer[_types_pb2.ActionKind]
    fid: FidSelector
    agent: str
    include_terminal: bool
    page_size: int
    page_token: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, states: _Optional[_Iterable[_Union[_types_pb2.ActionState, str]]] = ..., kinds: _Optional[_Iterable[_Union[_types_pb2.ActionKind, str]]] = ..., fid: _Optional[_Union[FidSelector, _Mapping]] = ..., agent: _Optional[str] = ..., include_terminal: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ...) -> None: ...

class ListActionsResponse(_message.Message):
    __slots__ = ("actions", "next_page_token")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[_types_pb2.Action]
    next_page_token: str
    def __init__(self, actions: _Optional[_Iterable[_Union[_types_pb2.Action, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("action_ids",)
    ACTION_IDS_FIELD_NUMBER: _ClassVar[int]
    action_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, action_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class WatchEvent(_message.Message):
    __slots__ = ("action",)
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: _types_pb2.Action
    def __init__(self, action: _Optional[_Union[_types_pb2.Action, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("digest", "shards")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    digest: bool
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, digest: _Optional[bool] = ..., shards: _Optional[_Iterable[int]] = ...) -> None: ...

class KindCount(_message.Message):
    __slots__ = ("kind", "state", "count")
    KIND_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    kind: _types_pb2.ActionKind
    state: _types_pb2.ActionState
    count: int
    def __init__(self, kind: _Optional[_Union[_types_pb2.ActionKind, str]] = ..., state: _Optional[_Union[_types_pb2.ActionState, str]] = ..., count: _Optional[int] = ...) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("agent_id", "host", "archive_ids", "slots", "running", "version", "connected_since", "last_seen", "replica", "draining", "tags")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_SINCE_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    DRAINING_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    host: str
    archive_ids: _containers.RepeatedScalarFieldContainer[int]
    slots: Slots
    running: Slots
    version: str
    connected_since: float
    last_seen: float
    replica: str
    draining: bool
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, agent_id: _Optional[str] = ..., host: _Optional[str] = ..., archive_ids: _Optional[_Iterable[int]] = ..., slots: _Optional[_Union[Slots, _Mapping]] = ..., running: _Optional[_Union[Slots, _Mapping]] = ..., version: _Optional[str] = ..., connected_since: _Optional[float] = ..., last_seen: _Optional[float] = ..., replica: _Optional[str] = ..., draining: _Optional[bool] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class Slots(_message.Message):
    __slots__ = ("archive", "restore", "remove")
    ARCHIVE_FIELD_NUMBER: _ClassVar[int]
    RESTORE_FIELD_NUMBER: _ClassVar[int]
    REMOVE_FIELD_NUMBER: _ClassVar[int]
    archive: int
    restore: int
    remove: int
    def __init__(self, archive: _Optional[int] = ..., restore: _Optional[int] = ..., remove: _Optional[int] = ...) -> None: ...

class ShardStatus(_message.Message):
    __slots__ = ("shard", "leader", "commit_index", "applied_index", "counts", "digest", "term", "role", "problem", "members", "replica", "move", "move_source", "move_target", "move_phase")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    LEADER_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    TERM_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    MOVE_FIELD_NUMBER: _ClassVar[int]
    MOVE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MOVE_TARGET_FIELD_NUMBER: _ClassVar[int]
    MOVE_PHASE_FIELD_NUMBER: _ClassVar[int]
    shard: int
    leader: str
    commit_index: int
    applied_index: int
    counts: _containers.RepeatedCompositeFieldContainer[KindCount]
    digest: str
    term: int
    role: str
    problem: str
    members: _containers.RepeatedScalarFieldContainer[str]
    replica: str
    move: str
    move_source: str
    move_target: str
    move_phase: int
    def __init__(self, shard: _Optional[int] = ..., leader: _Optional[str] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., counts: _Optional[_Iterable[_Union[KindCount, _Mapping]]] = ..., digest: _Optional[str] = ..., term: _Optional[int] = ..., role: _Optional[str] = ..., problem: _Optional[str] = ..., members: _Optional[_Iterable[str]] = ..., replica: _Optional[str] = ..., move: _Optional[str] = ..., move_source: _Optional[str] = ..., move_target: _Optional[str] = ..., move_phase: _Optional[int] = ...) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("counts", "agents", "shards", "replica", "version", "control", "cluster_id", "consumers")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTROL_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMERS_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[KindCount]
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    shards: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    replica: str
    version: str
    control: str
    cluster_id: str
    consumers: _containers.RepeatedCompositeFieldContainer[ConsumerStatus]
    def __init__(self, counts: _Optional[_Iterable[_Union[KindCount, _Mapping]]] = ..., agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ..., shards: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ..., replica: _Optional[str] = ..., version: _Optional[str] = ..., control: _Optional[str] = ..., cluster_id: _Optional[str] = ..., consumers: _Optional[_Iterable[_Union[ConsumerStatus, _Mapping]]] = ...) -> None: ...

class ClusterInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Replica(_message.Message):
    __slots__ = ("id", "address")
    ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    id: str
    address: str
    def __init__(self, id: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class ClusterInfoResponse(_message.Message):
    __slots__ = ("shard_count", "vnodes", "replicas", "shards", "cluster_id", "replica", "ring_version")
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    VNODES_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    RING_VERSION_FIELD_NUMBER: _ClassVar[int]
    shard_count: int
    vnodes: int
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    shards: _containers.RepeatedCompositeFieldContainer[ShardStatus]
    cluster_id: str
    replica: str
    ring_version: int
    def __init__(self, shard_count: _Optional[int] = ..., vnodes: _Optional[int] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., shards: _Optional[_Iterable[_Union[ShardStatus, _Mapping]]] = ..., cluster_id: _Optional[str] = ..., replica: _Optional[str] = ..., ring_version: _Optional[int] = ...) -> None: ...
