from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActionKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_KIND_UNSPECIFIED: _ClassVar[ActionKind]
    ARCHIVE: _ClassVar[ActionKind]
    RESTORE: _ClassVar[ActionKind]
    REMOVE: _ClassVar[ActionKind]

class ActionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_STATE_UNSPECIFIED: _ClassVar[ActionState]
    WAITING: _ClassVar[ActionState]
    STARTED: _ClassVar[ActionState]
    CANCELING: _ClassVar[ActionState]
    SUCCEEDED: _ClassVar[ActionState]
    FAILED: _ClassVar[ActionState]
    CANCELED: _ClassVar[ActionState]
ACTION_KIND_UNSPECIFIED: ActionKind
ARCHIVE: ActionKind
RESTORE: ActionKind
REMOVE: ActionKind
ACTION_STATE_UNSPECIFIED: ActionState
WAITING: ActionState
STARTED: ActionState
CANCELING: ActionState
SUCCEEDED: ActionState
FAILED: ActionState
CANCELED: ActionState

class Fid(_message.Message):
    __slots__ = ("seq", "oid", "ver")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    OID_FIELD_NUMBER: _ClassVar[int]
    VER_FIELD_NUMBER: _ClassVar[int]
    seq: int
    oid: int
    ver: int
    def __init__(self, seq: _Optional[int] = ..., oid: _Optional[int] = ..., ver: _Optional[int] = ...) -> None: ...

class Extent(_message.Message):
    __slots__ = ("offset", "length")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    offset: int
    length: int
    def __init__(self, offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class Requester(_message.Message):
    __slots__ = ("initiator", "cookie", "uid", "gid", "projid", "when")
    INITIATOR_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    PROJID_FIELD_NUMBER: _ClassVar[int]
    WHEN_FIELD_NUMBER: _ClassVar[int]
    initiator: str
    cookie: int
    uid: int
    gid: int
    projid: int
    when: float
    def __init__(self, initiator: _Optional[str] = ..., cookie: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., projid: _Optional[int] = ..., when: _Optional[float] = ...) -> None: ...

class HsmState(_message.Message):
    __slots__ = ("flags", "archive_id", "data_version", "ctime_ns")
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CTIME_NS_FIELD_NUMBER: _ClassVar[int]
    flags: int
    archive_id: int
    data_version: int
    ctime_ns: int
    def __init__(self, flags: _Optional[int] = ..., archive_id: _Optional[int] = ..., data_version: _Optional[int] = ..., ctime_ns: _Optional[int] = ...) -> None: ...

class Action(_message.Message):
    __slots__ = ("action_id", "fsname", "fid", "kind", "archive_id", "extent", "data", "flags", "priority", "requesters", "state", "agent", "attempt", "created", "started", "ended", "bytes_done", "bytes_total", "errno", "error", "shard", "data_version", "queue_position", "queue_length", "start_estimate", "copies", "copies_done", "copies_failed")
    ACTION_ID_FIELD_NUMBER: _ClassVar[int]
    FSNAME_FIELD_NUMBER: _ClassVar[int]
    FID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ARCHIVE_ID_FIELD_NUMBER: _ClassVar[int]
    EXTENT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    REQUESTERS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_POSITION_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    START_ESTIMATE_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    COPIES_DONE_FIELD_NUMBER: _ClassVar[int]
    COPIES_FAILED_FIELD_NUMBER: _ClassVar[int]
    action_id: int
    fsname: str
    fid: Fid
    kind: ActionKind
    archive_id: int
    extent: Extent
    data: bytes
    flags: int
    priority: int
    requesters: _containers.RepeatedCompositeFieldContainer[Requester]
    state: ActionState
    agent: str
    attempt: int
    created: float
    started: float
    ended: float
    bytes_done: int
    bytes_total: int
    errno: int
    error: str
    shard: int
    data_version: int
    queue_position: int
    queue_length: int
    start_estimate: float
    copies: int
    copies_done: int
    copies_failed: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, action_id: _Optional[int] = ..., fsname: _Optional[str] = ..., fid: _Optional[_Union[Fid, _Mapping]] = ..., kind: _Optional[_Union[ActionKind, str]] = ..., archive_id: _Optional[int] = ..., extent: _Optional[_Union[Extent, _Mapping]] = ..., data: _Optional[bytes] = ..., flags: _Optional[int] = ..., priority: _Optional[int] = ..., requesters: _Optional[_Iterable[_Union[Requester, _Mapping]]] = ..., state: _Optional[_Union[ActionState, str]] = ..., agent: _Optional[str] = ..., attempt: _Optional[int] = ..., created: _Optional[float] = ..., started: _Optional[float] = ..., ended: _Optional[float] = ..., bytes_done: _Optional[int] = ..., bytes_total: _Optional[int] = ..., errno: _Optional[int] = ..., error: _Optional[str] = ..., shard: _Optional[int] = ..., data_version: _Optional[int] = ..., queue_position: _Optional[int] = ..., queue_length: _Optional[int] = ..., start_estimate: _Optional[float] = ..., copies: _Optional[int] = ..., copies_done: _Optional[int] = ..., copies_failed: _Optional[_Iterable[int]] = ...) -> None: ...

class Copy(_message.Message):
    __slots__ = ("archive_id", "key", "data_version", "size", "checksum", "archived", "offset", "length", "uid", "gid", "mode", "path", "container", "slot")
    ARCHIVE_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DATA_VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CHECKSUM_FIELD_NUMBER: _ClassVar[int]
    ARCHIVED_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_FIELD_NUMBER: _ClassVar[int]
    SLOT_FIELD_NUMBER: _ClassVar[int]
    archive_id: int
    key: str
    data_version: int
    size: int
    checksum: str
    archived: float
    offset: int
    length: int
    uid: int
    gid: int
    mode: int
    path: str
    container: str
    slot: int
    def __init__(self, archive_id: _Optional[int] = ..., key: _Optional[str] = ..., data_version: _Optional[int] = ..., size: _Optional[int] = ..., checksum: _Optional[str] = ..., archived: _Optional[float] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., mode: _Optional[int] = ..., path: _Optional[str] = ..., container: _Optional[str] = ..., slot: _Optional[int] = ...) -> None: ...
