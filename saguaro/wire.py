"""Names on the wire: every enum↔string map of ``inference.proto`` and the stats↔proto mapping.

The target, the gateway, the client SDK and the draft handshake all speak the same protobuf
enums; each used to carry its own copy of the tables. This module is their one home. It
imports only the generated protobuf code, so the gateway (which must not load torch) and the
client SDK can use it as freely as the target.
"""

from __future__ import annotations

from typing import Any

from saguaro.v1 import inference_pb2 as pb
from saguaro.v1 import speculation_pb2 as spb

HEARTBEAT_S = 2.0  # a KV-event watch stream with no events still sends a batch this often

MODES = ("ar", "sd", "ssd")
MODE_TO_PROTO = {"ar": pb.DECODE_MODE_AR, "sd": pb.DECODE_MODE_SD, "ssd": pb.DECODE_MODE_SSD}
PROTO_TO_MODE = {v: k for k, v in MODE_TO_PROTO.items()}

FINISH_TO_PROTO = {"stop": pb.FINISH_REASON_STOP, "length": pb.FINISH_REASON_LENGTH,
                   "abort": pb.FINISH_REASON_ABORT, "error": pb.FINISH_REASON_ERROR}
PROTO_TO_FINISH = {v: k for k, v in FINISH_TO_PROTO.items()}

STATUS_NAMES = {pb.SERVING_STATUS_SERVING: "serving", pb.SERVING_STATUS_DEGRADED: "degraded",
                pb.SERVING_STATUS_NOT_SERVING: "not_serving"}

# str(torch.dtype) -> its name on the wire, so callers need not import torch to compare
DTYPE_NAMES = {"torch.float32": "float32", "torch.bfloat16": "bfloat16", "torch.float16": "float16"}
DTYPE_TO_PROTO = {"torch.float32": spb.DTYPE_FLOAT32, "torch.bfloat16": spb.DTYPE_BFLOAT16,
                  "torch.float16": spb.DTYPE_FLOAT16}  # the draft handshake's enum


def speculation_to_proto(stats: dict) -> pb.SpeculationStats:
    """A request's speculation record (``SpecStats.to_json`` plus the loop's ``lookahead_k`` and
    histogram) as the ``SpeculationStats`` message; ``speculation_from_proto`` inverts it."""
    k = stats.get("lookahead_k", 0)
    accepted = stats.get("accepted_per_position", [])
    mode = stats.get("mode", "ar")
    transport = stats.get("transport", "")
    return pb.SpeculationStats(
        decode_mode=MODE_TO_PROTO.get(mode, pb.DECODE_MODE_AR),
        transport="" if transport == "none" or mode == "ar" else transport,
        rounds=stats.get("rounds", 0),
        lookahead_k=k,
        mean_tokens_per_round=stats.get("tokens_per_round", 0.0),
        tokens_per_round_histogram=stats.get("tokens_per_round_histogram", []),
        accepted_per_position=accepted,
        draft_tokens=stats.get("spec_rounds", 0) * k,
        accepted_draft_tokens=sum(accepted),
        cache_hits=stats.get("cache_hits", 0),
        cache_misses=stats.get("cache_misses", 0),
        jit_backups=stats.get("backups_jit", 0),
        fast_backups=stats.get("backups_fast", 0),
        ar_fallbacks=stats.get("ar_fallbacks", 0),
        ar_fallback_rounds=stats.get("fallback_rounds", 0),
        policy_ar_rounds=stats.get("policy_rounds", 0),
        policy_sd_rounds=stats.get("sync_rounds", 0),
        draft_time_s=stats.get("draft_time_s", 0.0),
        verify_time_s=stats.get("verify_time_s", 0.0),
        draft_build_time_s=stats.get("draft_build_time_s", 0.0),
    )


def speculation_from_proto(spec: pb.SpeculationStats) -> dict[str, Any]:
    """``SpeculationStats`` as a dict, keyed like the engine's per-request record."""
    k = spec.lookahead_k
    accepted = list(spec.accepted_per_position)
    spec_rounds = spec.draft_tokens // k if k else 0
    lookups = spec.cache_hits + spec.cache_misses
    return {
        "mode": PROTO_TO_MODE.get(spec.decode_mode, "ar"),
        "transport": spec.transport,
        "rounds": spec.rounds,
        "spec_rounds": spec_rounds,
        "lookahead_k": k,
        "tokens_per_round": spec.mean_tokens_per_round,
        "tokens_per_round_histogram": list(spec.tokens_per_round_histogram),
        "accepted_per_position": accepted,
        "acceptance_per_position": [a / spec_rounds for a in accepted] if spec_rounds else [],
        "draft_tokens": spec.draft_tokens,
        "accepted_draft_tokens": spec.accepted_draft_tokens,
        "cache_hits": spec.cache_hits,
        "cache_misses": spec.cache_misses,
        "cache_hit_rate": spec.cache_hits / lookups if lookups else 0.0,
        "backups_jit": spec.jit_backups,
        "backups_fast": spec.fast_backups,
        "ar_fallbacks": spec.ar_fallbacks,
        "fallback_rounds": spec.ar_fallback_rounds,
        "policy_rounds": spec.policy_ar_rounds,
        "sync_rounds": spec.policy_sd_rounds,
        "draft_time_s": spec.draft_time_s,
        "verify_time_s": spec.verify_time_s,
        "draft_build_time_s": spec.draft_build_time_s,
    }
