"""Span names and attribute keys, in one place.

Why a module of constants: the services set these, the tests assert on them, the dashboards'
TraceQL queries filter on them and docs/observability.md lists them. One spelling, checked by
the tests against the dashboards, keeps the four from drifting apart.

Standard request fields use the OpenTelemetry GenAI semantic conventions (``gen_ai.*``); no
convention covers speculation, so rounds use the project namespace ``ssd.*`` (as llm-d does
with ``llm_d.*``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# -- span names ------------------------------------------------------------------------------
ROUND_SPAN = "ssd.round"  # target: one decode round (verify) of a batch
SPECULATE_SPAN = "ssd.speculate"  # draft: answer one round, then build the next round's cache
LOOKUP_SPAN = "ssd.lookup"  # draft child: sync committed tokens, speculation-cache lookups
BACKUP_SPAN = "ssd.backup"  # draft child: JIT drafting / placeholders for the misses
GLUE_SPAN = "ssd.glue"  # draft child: glue forward over [r, s_1..s_K]
FORK_SPAN = "ssd.fork"  # draft child: top-F_j fork candidates
TREE_SPAN = "ssd.tree"  # draft child: K-step tree decode of the forks and cache store
DRAFT_CHILD_SPANS = (LOOKUP_SPAN, BACKUP_SPAN, GLUE_SPAN, FORK_SPAN, TREE_SPAN)
# gen_ai.operation.name: "chat" for an OpenAI chat completion (messages in), "text_completion"
# for a completion or a Generate call (a prompt or token ids in).
CHAT = "chat"
TEXT_COMPLETION = "text_completion"
OPERATIONS = (CHAT, TEXT_COMPLETION)
# gRPC metadata that carries the operation from the gateway's HTTP handler to the target, whose
# request span cannot tell a rendered chat prompt from a completion prompt.
OPERATION_METADATA = "saguaro-gen-ai-operation"


def request_span_name(operation: str, model: str) -> str:
    """GenAI convention: ``{gen_ai.operation.name} {gen_ai.request.model}``."""
    return f"{operation} {model}"


def operation_from_metadata(metadata: Iterable[tuple[str, Any]] | None) -> str:
    """The operation a caller named in ``OPERATION_METADATA`` (only a known one), else text_completion."""
    for key, value in metadata or ():
        if key == OPERATION_METADATA and value in OPERATIONS:
            return value
    return TEXT_COMPLETION


# -- GenAI semantic conventions (request spans) ------------------------------------------------
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_TOP_P = "gen_ai.request.top_p"
GEN_AI_TOP_K = "gen_ai.request.top_k"
GEN_AI_SEED = "gen_ai.request.seed"
GEN_AI_RESPONSE_ID = "gen_ai.response.id"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
# vLLM's latency extensions (no GenAI span attribute exists for these yet)
GEN_AI_TTFT = "gen_ai.latency.time_to_first_token"
GEN_AI_E2E = "gen_ai.latency.e2e"
GEN_AI_QUEUE = "gen_ai.latency.time_in_queue"
ERROR_TYPE = "error.type"
SERVER_ADDRESS = "server.address"  # server spans: the address the request was sent to
SERVER_PORT = "server.port"
FIRST_TOKEN_EVENT = "gen_ai.first_token"

# -- ssd.* : per-request totals on the request span ---------------------------------------------
SSD_MODE = "ssd.mode"  # ar | sd | ssd
SSD_ROUNDS = "ssd.rounds"  # decode rounds of the request
SSD_SPEC_ROUNDS = "ssd.spec_rounds"  # rounds that carried a proposal
SSD_DRAFT_TOKENS = "ssd.draft_tokens"
SSD_ACCEPTED_TOKENS = "ssd.accepted_tokens"
SSD_CACHE_HITS = "ssd.cache.hits"
SSD_CACHE_MISSES = "ssd.cache.misses"
SSD_BACKUPS_JIT = "ssd.backups.jit"
SSD_BACKUPS_FAST = "ssd.backups.fast"
SSD_FALLBACK_ROUNDS = "ssd.fallback_rounds"
SSD_TOKENS_PER_ROUND = "ssd.tokens_per_round"

# -- ssd.* : one round (target ssd.round; the scalar row fields describe the primary request) ----
SSD_ROUND_INDEX = "ssd.round.index"  # 0-based decode round of the primary request
SSD_ENGINE_ROUND = "ssd.engine.round"  # the engine's own round counter (all requests)
SSD_K = "ssd.k"  # the round's depth: tokens proposed per row (K, or fewer chosen by a lookahead model)
SSD_ARM = "ssd.arm"  # how the round ran: ar | sd (synchronous) | ssd (the speculation governor's arm)
SSD_FAN_OUT = "ssd.fan_out"  # per-depth fan-out list F_0..F_K (hit rows)
SSD_FAN_OUT_MISS = "ssd.fan_out.miss"  # per-depth fan-out list after a miss (draft)
SSD_TRANSPORT = "ssd.transport"  # inprocess | grpc | torch.distributed | none
SSD_SEQ_ID = "ssd.seq_id"
SSD_ACCEPTED = "ssd.accepted"  # n: draft tokens accepted (absent when the row had no proposal)
SSD_BONUS = "ssd.bonus"  # all K accepted: the round's extra token is the bonus token
SSD_CACHE_HIT = "ssd.cache.hit"
SSD_BACKUP = "ssd.backup"  # jit | fast | none
SSD_FALLBACK = "ssd.fallback"  # the row decoded without a proposal although speculation is on
SSD_BATCH_SIZE = "ssd.batch.size"
SSD_BATCH_SPECULATIVE = "ssd.batch.speculative"  # rows that asked the draft
SSD_BATCH_ACCEPTED = "ssd.batch.accepted"
SSD_BATCH_HITS = "ssd.batch.cache_hits"
SSD_BATCH_MISSES = "ssd.batch.cache_misses"
SSD_BATCH_FALLBACKS = "ssd.batch.fallback_rows"
SSD_ROWS_SEQ_ID = "ssd.rows.seq_id"  # per-row arrays, in batch order
SSD_ROWS_ACCEPTED = "ssd.rows.accepted"  # -1: no proposal
SSD_ROWS_HIT = "ssd.rows.cache_hit"
SSD_ROWS_BACKUP = "ssd.rows.backup"
SSD_DRAFT_TIME = "ssd.draft_time_s"  # target waited for the draft's reply (critical path)
SSD_VERIFY_TIME = "ssd.verify_time_s"  # verify forward + acceptance + commit
SSD_DRAFT_LOOKUP = "ssd.draft.lookup_s"  # draft: arrival -> reply ready, without backup
SSD_DRAFT_BACKUP = "ssd.draft.backup_s"  # draft: JIT drafting on the critical path
SSD_DRAFT_BUILD = "ssd.draft.build_s"  # draft: this round's glue + fork + tree
SSD_DRAFT_PREV_BUILD = "ssd.draft.prev_build_s"  # target: the draft's build of the previous round
SSD_DRAFT_IDLE = "ssd.draft.idle_s"  # draft: idle between its last build and this request
SSD_TRANSPORT_TIME = "ssd.transport_s"  # target: draft wait not spent in the draft's lookup and backup
SSD_OVERLAP = "ssd.overlap_s"  # the previous build's time hidden behind the target's own work
SSD_OVERLAP_RATIO = "ssd.overlap_ratio"  # ssd.overlap_s / ssd.draft.prev_build_s
SSD_TARGET_GAP = "ssd.target_gap_s"  # target: previous reply received -> this request sent
SSD_TREE_BRANCHES = "ssd.tree.branches"  # M: branches built per sequence
SSD_LINK_ROLE = "ssd.link.role"  # on links of a round span: "batched_request"

# -- gateway request span (saguaro.services.gateway.telemetry) ----------------------------------
GATEWAY_API = "saguaro.gateway.api"  # grpc | http
GATEWAY_TARGET = "saguaro.gateway.target"  # host:port of the target that served the request
GATEWAY_POLICY = "saguaro.gateway.policy"  # routing policy
GATEWAY_REASON = "saguaro.gateway.reason"  # why that target (prefix hit, least load, ...)
GATEWAY_PREFIX_BLOCKS = "saguaro.gateway.prefix_hit_blocks"  # cached leading blocks on that target
GATEWAY_ATTEMPTS = "saguaro.gateway.attempts"  # targets tried (retries before the first token + 1)
GRPC_STATUS = "rpc.grpc.status_code"
