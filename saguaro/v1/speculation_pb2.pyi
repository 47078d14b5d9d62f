from saguaro.v1 import inference_pb2 as _inference_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ProtocolVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROTOCOL_VERSION_UNSPECIFIED: _ClassVar[ProtocolVersion]
    PROTOCOL_VERSION_1: _ClassVar[ProtocolVersion]

class Transport(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSPORT_UNSPECIFIED: _ClassVar[Transport]
    TRANSPORT_GRPC: _ClassVar[Transport]
    TRANSPORT_TORCH_DISTRIBUTED: _ClassVar[Transport]
    TRANSPORT_SHARED_MEMORY: _ClassVar[Transport]
    TRANSPORT_UNIX_SOCKET: _ClassVar[Transport]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[DType]
    DTYPE_FLOAT32: _ClassVar[DType]
    DTYPE_BFLOAT16: _ClassVar[DType]
    DTYPE_FLOAT16: _ClassVar[DType]

class FanOutPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAN_OUT_POLICY_UNSPECIFIED: _ClassVar[FanOutPolicy]
    FAN_OUT_POLICY_LIST: _ClassVar[FanOutPolicy]
    FAN_OUT_POLICY_GEOMETRIC: _ClassVar[FanOutPolicy]

class BackupPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKUP_POLICY_UNSPECIFIED: _ClassVar[BackupPolicy]
    BACKUP_POLICY_JIT: _ClassVar[BackupPolicy]
    BACKUP_POLICY_FAST: _ClassVar[BackupPolicy]
    BACKUP_POLICY_ADAPTIVE: _ClassVar[BackupPolicy]

class BackupKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BACKUP_KIND_NONE: _ClassVar[BackupKind]
    BACKUP_KIND_JIT: _ClassVar[BackupKind]
    BACKUP_KIND_FAST: _ClassVar[BackupKind]

class RowStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROW_STATUS_OK: _ClassVar[RowStatus]
    ROW_STATUS_UNKNOWN_SEQUENCE: _ClassVar[RowStatus]
    ROW_STATUS_DESYNC: _ClassVar[RowStatus]
    ROW_STATUS_OUT_OF_MEMORY: _ClassVar[RowStatus]
    ROW_STATUS_INVALID: _ClassVar[RowStatus]

class ErrorCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ERROR_CODE_UNSPECIFIED: _ClassVar[ErrorCode]
    ERROR_CODE_INVALID_REQUEST: _ClassVar[ErrorCode]
    ERROR_CODE_NO_SESSION: _ClassVar[ErrorCode]
    ERROR_CODE_OUT_OF_MEMORY: _ClassVar[ErrorCode]
    ERROR_CODE_INTERNAL: _ClassVar[ErrorCode]
    ERROR_CODE_SHUTTING_DOWN: _ClassVar[ErrorCode]
PROTOCOL_VERSION_UNSPECIFIED: ProtocolVersion
PROTOCOL_VERSION_1: ProtocolVersion
TRANSPORT_UNSPECIFIED: Transport
TRANSPORT_GRPC: Transport
TRANSPORT_TORCH_DISTRIBUTED: Transport
TRANSPORT_SHARED_MEMORY: Transport
TRANSPORT_UNIX_SOCKET: Transport
DTYPE_UNSPECIFIED: DType
DTYPE_FLOAT32: DType
DTYPE_BFLOAT16: DType
DTYPE_FLOAT16: DType
FAN_OUT_POLICY_UNSPECIFIED: FanOutPolicy
FAN_OUT_POLICY_LIST: FanOutPolicy
FAN_OUT_POLICY_GEOMETRIC: FanOutPolicy
BACKUP_POLICY_UNSPECIFIED: BackupPolicy
BACKUP_POLICY_JIT: BackupPolicy
BACKUP_POLICY_FAST: BackupPolicy
BACKUP_POLICY_ADAPTIVE: BackupPolicy
BACKUP_KIND_NONE: BackupKind
BACKUP_KIND_JIT: BackupKind
BACKUP_KIND_FAST: BackupKind
ROW_STATUS_OK: RowStatus
ROW_STATUS_UNKNOWN_SEQUENCE: RowStatus
ROW_STATUS_DESYNC: RowStatus
ROW_STATUS_OUT_OF_MEMORY: RowStatus
ROW_STATUS_INVALID: RowStatus
ERROR_CODE_UNSPECIFIED: ErrorCode
ERROR_CODE_INVALID_REQUEST: ErrorCode
ERROR_CODE_NO_SESSION: ErrorCode
ERROR_CODE_OUT_OF_MEMORY: ErrorCode
ERROR_CODE_INTERNAL: ErrorCode
ERROR_CODE_SHUTTING_DOWN: ErrorCode

class ModelFacts(_message.Message):
    __slots__ = ("model_name", "architecture", "vocab_size", "tokenizer_fingerprint", "dtype", "max_model_len", "revision", "eos_token_ids")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    EOS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    architecture: str
    vocab_size: int
    tokenizer_fingerprint: str
    dtype: DType
    max_model_len: int
    revision: str
    eos_token_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model_name: _Optional[str] = ..., architecture: _Optional[str] = ..., vocab_size: _Optional[int] = ..., tokenizer_fingerprint: _Optional[str] = ..., dtype: _Optional[_Union[DType, str]] = ..., max_model_len: _Optional[int] = ..., revision: _Optional[str] = ..., eos_token_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class HostIdentity(_message.Message):
    __slots__ = ("hostname", "boot_id", "ipc_namespace", "gpu_uuids", "pod_uid")
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    IPC_NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    GPU_UUIDS_FIELD_NUMBER: _ClassVar[int]
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    hostname: str
    boot_id: str
    ipc_namespace: str
    gpu_uuids: _containers.RepeatedScalarFieldContainer[str]
    pod_uid: str
    def __init__(self, hostname: _Optional[str] = ..., boot_id: _Optional[str] = ..., ipc_namespace: _Optional[str] = ..., gpu_uuids: _Optional[_Iterable[str]] = ..., pod_uid: _Optional[str] = ...) -> None: ...

class SpeculationConfig(_message.Message):
    __slots__ = ("lookahead_k", "fan_out", "fan_out_budget", "fan_out_list_hit", "fan_out_list_miss", "backup_policy", "jit_max_batch_size", "saguaro_downweight", "probs_dtype", "max_batch_size", "max_model_len", "fan_out_policy")
    LOOKAHEAD_K_FIELD_NUMBER: _ClassVar[int]
    FAN_OUT_FIELD_NUMBER: _ClassVar[int]
    FAN_OUT_BUDGET_FIELD_NUMBER: _ClassVar[int]
    FAN_OUT_LIST_HIT_FIELD_NUMBER: _ClassVar[int]
    FAN_OUT_LIST_MISS_FIELD_NUMBER: _ClassVar[int]
    BACKUP_POLICY_FIELD_NUMBER: _ClassVar[int]
    JIT_MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    SAGUARO_DOWNWEIGHT_FIELD_NUMBER: _ClassVar[int]
    PROBS_DTYPE_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    FAN_OUT_POLICY_FIELD_NUMBER: _ClassVar[int]
    lookahead_k: int
    fan_out: int
    fan_out_budget: int
    fan_out_list_hit: _containers.RepeatedScalarFieldContainer[int]
    fan_out_list_miss: _containers.RepeatedScalarFieldContainer[int]
    backup_policy: BackupPolicy
    jit_max_batch_size: int
    saguaro_downweight: float
    probs_dtype: DType
    max_batch_size: int
    max_model_len: int
    fan_out_policy: FanOutPolicy
    def __init__(self, lookahead_k: _Optional[int] = ..., fan_out: _Optional[int] = ..., fan_out_budget: _Optional[int] = ..., fan_out_list_hit: _Optional[_Iterable[int]] = ..., fan_out_list_miss: _Optional[_Iterable[int]] = ..., backup_policy: _Optional[_Union[BackupPolicy, str]] = ..., jit_max_batch_size: _Optional[int] = ..., saguaro_downweight: _Optional[float] = ..., probs_dtype: _Optional[_Union[DType, str]] = ..., max_batch_size: _Optional[int] = ..., max_model_len: _Optional[int] = ..., fan_out_policy: _Optional[_Union[FanOutPolicy, str]] = ...) -> None: ...

class HandshakeRequest(_message.Message):
    __slots__ = ("protocol_version", "target_model", "config", "transports_offered", "host", "target_instance_id")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODEL_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    TRANSPORTS_OFFERED_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TARGET_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    target_model: ModelFacts
    config: SpeculationConfig
    transports_offered: _containers.RepeatedScalarFieldContainer[Transport]
    host: HostIdentity
    target_instance_id: str
    def __init__(self, protocol_version: _Optional[int] = ..., target_model: _Optional[_Union[ModelFacts, _Mapping]] = ..., config: _Optional[_Union[SpeculationConfig, _Mapping]] = ..., transports_offered: _Optional[_Iterable[_Union[Transport, str]]] = ..., host: _Optional[_Union[HostIdentity, _Mapping]] = ..., target_instance_id: _Optional[str] = ...) -> None: ...

class HandshakeResponse(_message.Message):
    __slots__ = ("accepted", "chosen_transport", "error_message", "draft_model", "protocol_version", "host", "transport_params", "session_id", "draft_instance_id")
    class TransportParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    CHOSEN_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DRAFT_MODEL_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_PARAMS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DRAFT_INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    chosen_transport: Transport
    error_message: str
    draft_model: ModelFacts
    protocol_version: int
    host: HostIdentity
    transport_params: _containers.ScalarMap[str, str]
    session_id: str
    draft_instance_id: str
    def __init__(self, accepted: _Optional[bool] = ..., chosen_transport: _Optional[_Union[Transport, str]] = ..., error_message: _Optional[str] = ..., draft_model: _Optional[_Union[ModelFacts, _Mapping]] = ..., protocol_version: _Optional[int] = ..., host: _Optional[_Union[HostIdentity, _Mapping]] = ..., transport_params: _Optional[_Mapping[str, str]] = ..., session_id: _Optional[str] = ..., draft_instance_id: _Optional[str] = ...) -> None: ...

class SpeculationRequest(_message.Message):
    __slots__ = ("round_id", "prefill", "speculate", "release")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    SPECULATE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    prefill: PrefillRequest
    speculate: SpeculateRequest
    release: ReleaseRequest
    def __init__(self, round_id: _Optional[int] = ..., prefill: _Optional[_Union[PrefillRequest, _Mapping]] = ..., speculate: _Optional[_Union[SpeculateRequest, _Mapping]] = ..., release: _Optional[_Union[ReleaseRequest, _Mapping]] = ...) -> None: ...

class SpeculationResponse(_message.Message):
    __slots__ = ("round_id", "prefill", "speculate", "release", "error")
    ROUND_ID_FIELD_NUMBER: _ClassVar[int]
    PREFILL_FIELD_NUMBER: _ClassVar[int]
    SPECULATE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    round_id: int
    prefill: PrefillReply
    speculate: SpeculateReply
    release: ReleaseReply
    error: SpeculationError
    def __init__(self, round_id: _Optional[int] = ..., prefill: _Optional[_Union[PrefillReply, _Mapping]] = ..., speculate: _Optional[_Union[SpeculateReply, _Mapping]] = ..., release: _Optional[_Union[ReleaseReply, _Mapping]] = ..., error: _Optional[_Union[SpeculationError, _Mapping]] = ...) -> None: ...

class SpeculationError(_message.Message):
    __slots__ = ("code", "message", "fatal")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FATAL_FIELD_NUMBER: _ClassVar[int]
    code: ErrorCode
    message: str
    fatal: bool
    def __init__(self, code: _Optional[_Union[ErrorCode, str]] = ..., message: _Optional[str] = ..., fatal: _Optional[bool] = ...) -> None: ...

class PrefillRequest(_message.Message):
    __slots__ = ("sequences",)
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[PrefillSequence]
    def __init__(self, sequences: _Optional[_Iterable[_Union[PrefillSequence, _Mapping]]] = ...) -> None: ...

class PrefillSequence(_message.Message):
    __slots__ = ("seq_id", "prompt_token_ids", "reset", "seed", "processing", "structured_output", "prompt_len")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    RESET_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PROCESSING_FIELD_NUMBER: _ClassVar[int]
    STRUCTURED_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LEN_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    prompt_token_ids: _containers.RepeatedScalarFieldContainer[int]
    reset: bool
    seed: int
    processing: LogitsProcessing
    structured_output: _inference_pb2.StructuredOutput
    prompt_len: int
    def __init__(self, seq_id: _Optional[int] = ..., prompt_token_ids: _Optional[_Iterable[int]] = ..., reset: _Optional[bool] = ..., seed: _Optional[int] = ..., processing: _Optional[_Union[LogitsProcessing, _Mapping]] = ..., structured_output: _Optional[_Union[_inference_pb2.StructuredOutput, _Mapping]] = ..., prompt_len: _Optional[int] = ...) -> None: ...

class LogitsProcessing(_message.Message):
    __slots__ = ("presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "min_tokens", "min_tokens_stop_ids", "prompt_len")
    class LogitBiasEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: float
        def __init__(self, key: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    LOGIT_BIAS_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MIN_TOKENS_STOP_IDS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_LEN_FIELD_NUMBER: _ClassVar[int]
    presence_penalty: float
    frequency_penalty: float
    repetition_penalty: float
    logit_bias: _containers.ScalarMap[int, float]
    min_tokens: int
    min_tokens_stop_ids: _containers.RepeatedScalarFieldContainer[int]
    prompt_len: int
    def __init__(self, presence_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., logit_bias: _Optional[_Mapping[int, float]] = ..., min_tokens: _Optional[int] = ..., min_tokens_stop_ids: _Optional[_Iterable[int]] = ..., prompt_len: _Optional[int] = ...) -> None: ...

class PrefillReply(_message.Message):
    __slots__ = ("rows", "prefill_us")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_US_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[PrefillRowReply]
    prefill_us: int
    def __init__(self, rows: _Optional[_Iterable[_Union[PrefillRowReply, _Mapping]]] = ..., prefill_us: _Optional[int] = ...) -> None: ...

class PrefillRowReply(_message.Message):
    __slots__ = ("seq_id", "status", "committed_len")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    status: RowStatus
    committed_len: int
    def __init__(self, seq_id: _Optional[int] = ..., status: _Optional[_Union[RowStatus, str]] = ..., committed_len: _Optional[int] = ...) -> None: ...

class SpeculateRequest(_message.Message):
    __slots__ = ("rows", "trace_context", "synchronous", "lookahead", "build_budget_us")
    class TraceContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROWS_FIELD_NUMBER: _ClassVar[int]
    TRACE_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    SYNCHRONOUS_FIELD_NUMBER: _ClassVar[int]
    LOOKAHEAD_FIELD_NUMBER: _ClassVar[int]
    BUILD_BUDGET_US_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[SpeculateRow]
    trace_context: _containers.ScalarMap[str, str]
    synchronous: bool
    lookahead: int
    build_budget_us: int
    def __init__(self, rows: _Optional[_Iterable[_Union[SpeculateRow, _Mapping]]] = ..., trace_context: _Optional[_Mapping[str, str]] = ..., synchronous: _Optional[bool] = ..., lookahead: _Optional[int] = ..., build_budget_us: _Optional[int] = ...) -> None: ...

class SpeculateRow(_message.Message):
    __slots__ = ("seq_id", "n_prev", "recovery_token", "committed_len", "committed_tokens", "draft_temperature", "target_temperature")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    N_PREV_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_TOKEN_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_LEN_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DRAFT_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TARGET_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    n_prev: int
    recovery_token: int
    committed_len: int
    committed_tokens: _containers.RepeatedScalarFieldContainer[int]
    draft_temperature: float
    target_temperature: float
    def __init__(self, seq_id: _Optional[int] = ..., n_prev: _Optional[int] = ..., recovery_token: _Optional[int] = ..., committed_len: _Optional[int] = ..., committed_tokens: _Optional[_Iterable[int]] = ..., draft_temperature: _Optional[float] = ..., target_temperature: _Optional[float] = ...) -> None: ...

class SpeculateReply(_message.Message):
    __slots__ = ("rows", "probs_dtype", "timings")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PROBS_DTYPE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[SpeculateRowReply]
    probs_dtype: DType
    timings: DraftTimings
    def __init__(self, rows: _Optional[_Iterable[_Union[SpeculateRowReply, _Mapping]]] = ..., probs_dtype: _Optional[_Union[DType, str]] = ..., timings: _Optional[_Union[DraftTimings, _Mapping]] = ...) -> None: ...

class SpeculateRowReply(_message.Message):
    __slots__ = ("seq_id", "status", "hit", "backup", "tokens", "proposal_is_sample", "probs")
    SEQ_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    HIT_FIELD_NUMBER: _ClassVar[int]
    BACKUP_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROPOSAL_IS_SAMPLE_FIELD_NUMBER: _ClassVar[int]
    PROBS_FIELD_NUMBER: _ClassVar[int]
    seq_id: int
    status: RowStatus
    hit: bool
    backup: BackupKind
    tokens: _containers.RepeatedScalarFieldContainer[int]
    proposal_is_sample: bool
    probs: bytes
    def __init__(self, seq_id: _Optional[int] = ..., status: _Optional[_Union[RowStatus, str]] = ..., hit: _Optional[bool] = ..., backup: _Optional[_Union[BackupKind, str]] = ..., tokens: _Optional[_Iterable[int]] = ..., proposal_is_sample: _Optional[bool] = ..., probs: _Optional[bytes] = ...) -> None: ...

class DraftTimings(_message.Message):
    __slots__ = ("lookup_us", "backup_us", "prev_build_us", "idle_us", "wait_us", "prev_build_branches")
    LOOKUP_US_FIELD_NUMBER: _ClassVar[int]
    BACKUP_US_FIELD_NUMBER: _ClassVar[int]
    PREV_BUILD_US_FIELD_NUMBER: _ClassVar[int]
    IDLE_US_FIELD_NUMBER: _ClassVar[int]
    WAIT_US_FIELD_NUMBER: _ClassVar[int]
    PREV_BUILD_BRANCHES_FIELD_NUMBER: _ClassVar[int]
    lookup_us: int
    backup_us: int
    prev_build_us: int
    idle_us: int
    wait_us: int
    prev_build_branches: int
    def __init__(self, lookup_us: _Optional[int] = ..., backup_us: _Optional[int] = ..., prev_build_us: _Optional[int] = ..., idle_us: _Optional[int] = ..., wait_us: _Optional[int] = ..., prev_build_branches: _Optional[int] = ...) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("seq_ids",)
    SEQ_IDS_FIELD_NUMBER: _ClassVar[int]
    seq_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class ReleaseReply(_message.Message):
    __slots__ = ("released",)
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    released: int
    def __init__(self, released: _Optional[int] = ...) -> None: ...
