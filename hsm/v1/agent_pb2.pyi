from hsm.v1 import types_pb2 as _types_pb2
from hsm.v1 import coordinator_pb2 as _coordinator_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReportRequest(_message.Message):
    __slots__ = ("agent_id", "progress", "done")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    progress: _containers.RepeatedCompositeFieldContainer[Progress]
    done: _containers.RepeatedCompositeFieldContainer[Done]
    def __init__(self, agent_id: _Optional[str] = ..., progress: _Optional[_Iterable[_Union[Progress, _Mapping]]] = ..., done: _Optional[_Iterable[_Union[Done, _Mapping]]] = ...) -> None: ...

class ReportResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Hello(_message.Message):
    __slots__ = ("agent_id", "host", "archive_ids", "slots", "version", "running", "cluster_id", "tags", "stripes")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_IDS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    STRIPES_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    host: str
    archive_ids: _containers.RepeatedScalarFieldContainer[int]
    slots: _coordinator_pb2.Slots
    version: str
    running: _containers.RepeatedCompositeFieldContainer[RunningAction]
    cluster_id: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    stripes: bool
    def __init__(self, agent_id: _Optional[str] = ..., host: _Optional[str] = ..., archive_ids: _Optional[_Iterable[int]] = ..., slots: _Optional[_Union[_coordinator_pb2.Slots, _Mapping]] = ..., version: _Optional[str] = ..., running: _Optional[_Iterable[_Union[RunningAction, _Mapping]]] = ..., cluster_id: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., stripes: _Optional[bool] = ...) -> None: ...

class RunningAction(_message.Message):
    __slots__ = ("action_id", "attempt")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    action_id: int
    attempt: int
    def __init__(self, action_id: _Optional[int] = ..., attempt: _Optional[int] = ...) -> None: ...

class Ready(_message.Message):
    __slots__ = ("credits", "absolute", "seen")
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    ABSOLUTE_FIELD_NUMBER: _ClassVar[int]
    SEEN_FIELD_NUMBER: _ClassVar[int]
    credits: _coordinator_pb2.Slots
    absolute: bool
    seen: _coordinator_pb2.Slots
    def __init__(self, credits: _Optional[_Union[_coordinator_pb2.Slots, _Mapping]] = ..., absolute: _Optional[bool] = ..., seen: _Optional[_Union[_coordinator_pb2.Slots, _Mapping]] = ...) -> None: ...

class Progress(_message.Message):
    __slots__ = ("action_id", "attempt", "bytes_done", "bytes_total")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    action_id: int
    attempt: int
    bytes_done: int
    bytes_total: int
    def __init__(self, action_id: _Optional[int] = ..., attempt: _Optional[int] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("action_id", "attempt", "errno", "message", "retry", "bytes_done", "handback", "copy", "anchored")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    HANDBACK_FIELD_NUMBER: _ClassVar[int]
    COPY_FIELD_NUMBER: _ClassVar[int]
    ANCHORED_FIELD_NUMBER: _ClassVar[int]
    action_id: int
    attempt: int
    errno: int
    message: str
    retry: bool
    bytes_done: int
    handback: bool
    copy: _types_pb2.Copy
    anchored: bool
    def __init__(self, action_id: _Optional[int] = ..., attempt: _Optional[int] = ..., errno: _Optional[int] = ..., message: _Optional[str] = ..., retry: _Optional[bool] = ..., bytes_done: _Optional[int] = ..., handback: _Optional[bool] = ..., copy: _Optional[_Union[_types_pb2.Copy, _Mapping]] = ..., anchored: _Optional[bool] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "ready", "progress", "done", "heartbeat", "running", "lease_token")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    LEASE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    ready: Ready
    progress: _containers.RepeatedCompositeFieldContainer[Progress]
    done: _containers.RepeatedCompositeFieldContainer[Done]
    heartbeat: bool
    running: RunningReport
    lease_token: int
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., ready: _Optional[_Union[Ready, _Mapping]] = ..., progress: _Optional[_Iterable[_Union[Progress, _Mapping]]] = ..., done: _Optional[_Iterable[_Union[Done, _Mapping]]] = ..., heartbeat: _Optional[bool] = ..., running: _Optional[_Union[RunningReport, _Mapping]] = ..., lease_token: _Optional[int] = ...) -> None: ...

class RunningReport(_message.Message):
    __slots__ = ("actions", "token")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[RunningAction]
    token: int
    def __init__(self, actions: _Optional[_Iterable[_Union[RunningAction, _Mapping]]] = ..., token: _Optional[int] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("action_id", "attempt", "fsname", "fid", "dfid", "kind", "archive_id", "extent", "data", "flags", "data_version", "requesters", "object_key", "copies_left", "packed", "object_offset", "object_length", "object_checksum", "stripe", "shard")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    FSNAME_FIELD_NUMBER: _ClassVar[int]
    FID_FIELD_NUMBER: _ClassVar[int]
    DFID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ID_FIELD_NUMBER: _ClassVar[int]
    EXTENT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUESTERS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_KEY_FIELD_NUMBER: _ClassVar[int]
    COPIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    PACKED_FIELD_NUMBER: _ClassVar[int]
    OBJECT_OFFSET_FIELD_NUMBER: _ClassVar[int]
    OBJECT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    OBJECT_CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    STRIPE_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    action_id: int
    attempt: int
    fsname: str
    fid: _types_pb2.Fid
    dfid: _types_pb2.Fid
    kind: _types_pb2.ActionKind
    archive_id: int
    extent: _types_pb2.Extent
    data: bytes
    flags: int
    data_version: int
    requesters: _containers.RepeatedCompositeFieldContainer[_types_pb2.Requester]
    object_key: str
    copies_left: int
    packed: bool
    object_offset: int
    object_length: int
    object_checksum: str
    stripe: StripeOrder
    shard: int
    def __init__(self, action_id: _Optional[int] = ..., attempt: _Optional[int] = ..., fsname: _Optional[str] = ..., fid: _Optional[_Union[_types_pb2.Fid, _Mapping]] = ..., dfid: _Optional[_Union[_types_pb2.Fid, _Mapping]] = ..., kind: _Optional[_Union[_types_pb2.ActionKind, str]] = ..., archive_id: _Optional[int] = ..., extent: _Optional[_Union[_types_pb2.Extent, _Mapping]] = ..., data: _Optional[bytes] = ..., flags: _Optional[int] = ..., data_version: _Optional[int] = ..., requesters: _Optional[_Iterable[_Union[_types_pb2.Requester, _Mapping]]] = ..., object_key: _Optional[str] = ..., copies_left: _Optional[int] = ..., packed: _Optional[bool] = ..., object_offset: _Optional[int] = ..., object_length: _Optional[int] = ..., object_checksum: _Optional[str] = ..., stripe: _Optional[_Union[StripeOrder, _Mapping]] = ..., shard: _Optional[int] = ...) -> None: ...

class StripeOrder(_message.Message):
    __slots__ = ("above", "part", "parts", "data_version", "size", "seal", "part_length", "part_checksums")
    ABOVE_FIELD_NUMBER: _ClassVar[int]
    PART_FIELD_NUMBER: _ClassVar[int]
    PARTS_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SEAL_FIELD_NUMBER: _ClassVar[int]
    PART_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PART_CHECKSUMS_FIELD_NUMBER: _ClassVar[int]
    above: int
    part: int
    parts: int
    data_version: int
    size: int
    seal: bool
    part_length: int
    part_checksums: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, above: _Optional[int] = ..., part: _Optional[int] = ..., parts: _Optional[int] = ..., data_version: _Optional[int] = ..., size: _Optional[int] = ..., seal: _Optional[bool] = ..., part_length: _Optional[int] = ..., part_checksums: _Optional[_Iterable[str]] = ...) -> None: ...

class CancelOrder(_message.Message):
    __slots__ = ("action_id", "attempt", "reason")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    action_id: int
    attempt: int
    reason: str
    def __init__(self, action_id: _Optional[int] = ..., attempt: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("replica", "heartbeat_interval", "cluster_id", "lease_seconds", "acks_done")
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ACKS_DONE_FIELD_NUMBER: _ClassVar[int]
    replica: str
    heartbeat_interval: float
    cluster_id: str
    lease_seconds: float
    acks_done: bool
    def __init__(self, replica: _Optional[str] = ..., heartbeat_interval: _Optional[float] = ..., cluster_id: _Optional[str] = ..., lease_seconds: _Optional[float] = ..., acks_done: _Optional[bool] = ...) -> None: ...

class LeaseGrant(_message.Message):
    __slots__ = ("token", "shards")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    token: int
    shards: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, token: _Optional[int] = ..., shards: _Optional[_Iterable[int]] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("welcome", "assign", "cancel", "request_running", "backlog", "lease", "applied")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_RUNNING_FIELD_NUMBER: _ClassVar[int]
    BACKLOG_FIELD_NUMBER: _ClassVar[int]
    LEASE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    assign: _containers.RepeatedCompositeFieldContainer[Assignment]
    cancel: _containers.RepeatedCompositeFieldContainer[CancelOrder]
    request_running: int
    backlog: _coordinator_pb2.Slots
    lease: LeaseGrant
    applied: _containers.RepeatedCompositeFieldContainer[RunningAction]
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., assign: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., cancel: _Optional[_Iterable[_Union[CancelOrder, _Mapping]]] = ..., request_running: _Optional[int] = ..., backlog: _Optional[_Union[_coordinator_pb2.Slots, _Mapping]] = ..., lease: _Optional[_Union[LeaseGrant, _Mapping]] = ..., applied: _Optional[_Iterable[_Union[RunningAction, _Mapping]]] = ...) -> None: ...
