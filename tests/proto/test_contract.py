"""The saguaro.v1 gRPC contract: generated code, message round trips, wire sizes, services."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from google.protobuf import descriptor as _descriptor
from google.protobuf import message_factory

from saguaro.v1 import inference_pb2, inference_pb2_grpc, speculation_pb2, speculation_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
GEN_PROTO = ROOT / "scripts" / "gen_proto.py"
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"

FD = _descriptor.FieldDescriptor

# Scenario of docs/protocol.md "Bytes per round" (keep both in sync; the doc table is parsed).
K = 7
V = 128_256  # Llama 3 vocabulary
SEQ_ID = 1
ROUND_ID = 1000
COMMITTED_LEN = 2000
TOKEN_BASE = 100_000  # token ids >= 16384 encode as 3-byte varints (worst case for V=128256)
SAMPLED_TEMPERATURE = 0.7
TIMINGS = dict(lookup_us=60, prev_build_us=20_000, idle_us=5_000)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _run_gen_proto(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(GEN_PROTO), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _all_message_descriptors() -> list[_descriptor.Descriptor]:
    out = []

    def walk(desc: _descriptor.Descriptor) -> None:
        if desc.GetOptions().map_entry:
            return
        out.append(desc)
        for nested in desc.nested_types:
            walk(nested)

    for module in (inference_pb2, speculation_pb2):
        for desc in module.DESCRIPTOR.message_types_by_name.values():
            walk(desc)
    return out


def _scalar_value(field: _descriptor.FieldDescriptor, salt: int):
    """A non-default value of the field's type (salt varies repeated elements)."""
    t = field.type
    if t in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return -3 - salt
    if t in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return -(2**40) - salt
    if t in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return 2**31 + salt
    if t in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return 2**63 + salt
    if t == FD.TYPE_FLOAT:
        return 0.5 + salt  # exactly representable in binary32
    if t == FD.TYPE_DOUBLE:
        return 0.25 + salt
    if t == FD.TYPE_BOOL:
        return True
    if t == FD.TYPE_STRING:
        return f"{field.name}-\u00e9-{salt}"
    if t == FD.TYPE_BYTES:
        return bytes([0, 255, salt % 256, 7])
    if t == FD.TYPE_ENUM:
        return field.enum_type.values[-1].number  # a non-zero value
    raise AssertionError(f"unhandled field type {t} of {field.full_name}")


def _fill(msg, oneof_choice: int = 0, depth: int = 0) -> None:
    """Set every field of msg to a non-default value; in each oneof, member oneof_choice."""
    assert depth < 8, "unexpected recursion depth"
    desc = msg.DESCRIPTOR
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):  # real oneof, not `optional`
            members = list(oneof.fields)
            if members[oneof_choice % len(members)] is not field:
                continue
        is_repeated = field.is_repeated if hasattr(field, "is_repeated") else (
            field.label == FD.LABEL_REPEATED
        )
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f = field.message_type.fields_by_name["key"]
            val_f = field.message_type.fields_by_name["value"]
            container = getattr(msg, field.name)
            for salt in range(2):
                key = _scalar_value(key_f, salt)
                if val_f.message_type is None:
                    container[key] = _scalar_value(val_f, salt)
                else:
                    _fill(container[key], oneof_choice, depth + 1)
        elif field.message_type is not None:
            if is_repeated:
                for _ in range(2):
                    _fill(getattr(msg, field.name).add(), oneof_choice, depth + 1)
            else:
                _fill(getattr(msg, field.name), oneof_choice, depth + 1)
        elif is_repeated:
            getattr(msg, field.name).extend(_scalar_value(field, salt) for salt in range(3))
        else:
            setattr(msg, field.name, _scalar_value(field, 0))


def _expected_set_fields(desc: _descriptor.Descriptor, oneof_choice: int) -> set[str]:
    names = set()
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None and not oneof.name.startswith("_"):
            members = list(oneof.fields)
            if members[oneof_choice % len(members)] is not field:
                continue
        names.add(field.name)
    return names


def _speculate_round(sampled: bool, probs_dtype: int, itemsize: int):
    """The docs/protocol.md scenario: one request and its reply for B=1."""
    temp = SAMPLED_TEMPERATURE if sampled else 0.0
    # Previous round fully accepted (n_prev = K): the committed suffix is [r_prev, s_1..s_K].
    committed = [TOKEN_BASE + i for i in range(K + 1)]
    request = speculation_pb2.SpeculationRequest(
        round_id=ROUND_ID,
        speculate=speculation_pb2.SpeculateRequest(
            rows=[
                speculation_pb2.SpeculateRow(
                    seq_id=SEQ_ID,
                    n_prev=K,
                    recovery_token=TOKEN_BASE + 100,
                    committed_len=COMMITTED_LEN,
                    committed_tokens=committed,
                    draft_temperature=temp,
                    target_temperature=temp,
                )
            ]
        ),
    )
    probs = bytes(K * V * itemsize) if sampled else b""
    reply = speculation_pb2.SpeculationResponse(
        round_id=ROUND_ID,
        speculate=speculation_pb2.SpeculateReply(
            rows=[
                speculation_pb2.SpeculateRowReply(
                    seq_id=SEQ_ID,
                    hit=True,
                    backup=speculation_pb2.BACKUP_KIND_NONE,
                    tokens=[TOKEN_BASE + 200 + i for i in range(K)],
                    proposal_is_sample=True,
                    probs=probs,
                )
            ],
            probs_dtype=probs_dtype,
            timings=speculation_pb2.DraftTimings(**TIMINGS),
        ),
    )
    return request, reply


def bytes_per_round() -> dict[tuple[str, str], tuple[int, int]]:
    """(round kind, probability dtype) -> (request bytes, reply bytes), serialised sizes."""
    out = {}
    for kind, dtype_name, dtype, itemsize in (
        ("greedy", "none", speculation_pb2.DTYPE_FLOAT32, 4),
        ("sampled", "float32", speculation_pb2.DTYPE_FLOAT32, 4),
        ("sampled", "bfloat16", speculation_pb2.DTYPE_BFLOAT16, 2),
    ):
        request, reply = _speculate_round(kind == "sampled", dtype, itemsize)
        req_bytes, rep_bytes = request.SerializeToString(), reply.SerializeToString()
        assert len(req_bytes) == request.ByteSize() and len(rep_bytes) == reply.ByteSize()
        out[(kind, dtype_name)] = (len(req_bytes), len(rep_bytes))
    return out


def _parse_doc_table() -> dict[tuple[str, str], tuple[int, int]]:
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    m = re.search(
        r"<!-- bytes-per-round:begin -->(.*?)<!-- bytes-per-round:end -->", text, re.S
    )
    assert m, "docs/protocol.md lost its bytes-per-round table markers"
    rows = {}
    for line in m.group(1).strip().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not re.fullmatch(r"[\d,]+", cells[2]):
            continue  # header / separator
        kind, dtype = cells[0].lower(), cells[1].lower()
        rows[(kind, dtype)] = (int(cells[2].replace(",", "")), int(cells[3].replace(",", "")))
    return rows


# ---------------------------------------------------------------------------------------------
# generated code
# ---------------------------------------------------------------------------------------------


def test_generated_code_is_up_to_date():
    proc = _run_gen_proto("--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "up to date" in proc.stdout


def test_check_names_stale_and_missing_files(tmp_path):
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(ROOT / "saguaro" / "v1", tmp_path / "saguaro" / "v1")
    assert _run_gen_proto("--check", "--root", str(tmp_path)).returncode == 0

    stale = tmp_path / "saguaro" / "v1" / "speculation_pb2.py"
    stale.write_text(stale.read_text() + "\n# edited by hand\n")
    (tmp_path / "saguaro" / "v1" / "inference_pb2.pyi").unlink()
    (tmp_path / "saguaro" / "v1" / "old_pb2.py").write_text("# orphan\n")
    proc = _run_gen_proto("--check", "--root", str(tmp_path))
    assert proc.returncode == 1
    assert "saguaro/v1/speculation_pb2.py: stale" in proc.stderr
    assert "saguaro/v1/inference_pb2.pyi: missing" in proc.stderr
    assert "saguaro/v1/old_pb2.py: orphaned" in proc.stderr

    # Regenerating repairs the tree (and removes the orphan).
    assert _run_gen_proto("--root", str(tmp_path)).returncode == 0
    assert not (tmp_path / "saguaro" / "v1" / "old_pb2.py").exists()
    assert _run_gen_proto("--check", "--root", str(tmp_path)).returncode == 0


def test_generated_imports_resolve_in_package():
    src = (ROOT / "saguaro" / "v1" / "speculation_pb2_grpc.py").read_text()
    assert "from saguaro.v1 import speculation_pb2" in src
    src = (ROOT / "saguaro" / "v1" / "inference_pb2_grpc.py").read_text()
    assert "from saguaro.v1 import inference_pb2" in src
    for name in ("inference_pb2.pyi", "speculation_pb2.pyi"):
        assert (ROOT / "saguaro" / "v1" / name).is_file()
    assert inference_pb2.DESCRIPTOR.package == speculation_pb2.DESCRIPTOR.package == "saguaro.v1"


# ---------------------------------------------------------------------------------------------
# messages
# ---------------------------------------------------------------------------------------------

EXPECTED_MESSAGES = {
    "saguaro.v1.GenerateRequest", "saguaro.v1.GenerateResponse", "saguaro.v1.TokenDelta",
    "saguaro.v1.GenerateFinal", "saguaro.v1.SamplingParams", "saguaro.v1.Usage",
    "saguaro.v1.Timings", "saguaro.v1.SpeculationStats", "saguaro.v1.AbortRequest",
    "saguaro.v1.AbortResponse", "saguaro.v1.HealthRequest", "saguaro.v1.HealthResponse",
    "saguaro.v1.ModelInfoRequest", "saguaro.v1.ModelInfoResponse", "saguaro.v1.TokenIds", "saguaro.v1.Resume",
    "saguaro.v1.TokenLogprob", "saguaro.v1.StructuredOutput", "saguaro.v1.StructuredOutput.Choices",
    "saguaro.v1.HandshakeRequest", "saguaro.v1.HandshakeResponse", "saguaro.v1.ModelFacts",
    "saguaro.v1.HostIdentity", "saguaro.v1.SpeculationConfig",
    "saguaro.v1.SpeculationRequest", "saguaro.v1.SpeculationResponse",
    "saguaro.v1.PrefillRequest", "saguaro.v1.PrefillSequence", "saguaro.v1.PrefillReply", "saguaro.v1.LogitsProcessing",
    "saguaro.v1.PrefillRowReply", "saguaro.v1.SpeculateRequest", "saguaro.v1.SpeculateRow",
    "saguaro.v1.SpeculateReply", "saguaro.v1.SpeculateRowReply", "saguaro.v1.DraftTimings",
    "saguaro.v1.ReleaseRequest", "saguaro.v1.ReleaseReply", "saguaro.v1.SpeculationError",
}


def test_every_message_type_is_covered():
    names = {d.full_name for d in _all_message_descriptors()}
    assert names == EXPECTED_MESSAGES


@pytest.mark.parametrize("full_name", sorted(EXPECTED_MESSAGES))
def test_round_trip_every_message_type(full_name):
    desc = next(d for d in _all_message_descriptors() if d.full_name == full_name)
    cls = message_factory.GetMessageClass(desc)
    n_choices = max([len(o.fields) for o in desc.oneofs if not o.name.startswith("_")] + [1])
    for choice in range(n_choices):
        msg = cls()
        _fill(msg, choice)
        assert {f.name for f, _ in msg.ListFields()} == _expected_set_fields(desc, choice)
        data = msg.SerializeToString(deterministic=True)
        back = cls.FromString(data)
        assert back == msg
        assert back.SerializeToString(deterministic=True) == data
        assert {f.name for f, _ in back.ListFields()} == _expected_set_fields(desc, choice)


def test_round_trip_realistic_round():
    req = speculation_pb2.SpeculationRequest(
        round_id=42,
        speculate=speculation_pb2.SpeculateRequest(
            rows=[
                speculation_pb2.SpeculateRow(
                    seq_id=2**64 - 1, n_prev=3, recovery_token=128_255, committed_len=17,
                    committed_tokens=[5, 6, 7, 8], draft_temperature=0.6,
                    target_temperature=0.8,
                ),
                speculation_pb2.SpeculateRow(seq_id=9, n_prev=-1, recovery_token=0,
                                             committed_len=3),
            ]
        ),
    )
    back = speculation_pb2.SpeculationRequest.FromString(req.SerializeToString())
    assert back.WhichOneof("kind") == "speculate"
    a, b = back.speculate.rows
    assert (a.seq_id, a.n_prev, a.recovery_token, a.committed_len) == (2**64 - 1, 3, 128_255, 17)
    assert list(a.committed_tokens) == [5, 6, 7, 8]
    assert a.draft_temperature == pytest.approx(0.6) and a.target_temperature == pytest.approx(0.8)
    assert (b.n_prev, list(b.committed_tokens), b.draft_temperature) == (-1, [], 0.0)

    gen = inference_pb2.GenerateRequest(
        prompt_token_ids=inference_pb2.TokenIds(ids=[1, 2, 3]),
        sampling=inference_pb2.SamplingParams(max_tokens=0, seed=0, stop_token_ids=[128_009]),
        decode_mode=inference_pb2.DECODE_MODE_AR,
    )
    back = inference_pb2.GenerateRequest.FromString(gen.SerializeToString())
    assert back.WhichOneof("prompt") == "prompt_token_ids"
    assert back.request_id == ""  # server assigns
    # `optional` keeps explicit zeros distinguishable from "absent".
    assert back.sampling.HasField("max_tokens") and back.sampling.max_tokens == 0
    assert back.sampling.HasField("seed") and not back.sampling.HasField("draft_temperature")
    assert back.decode_mode == inference_pb2.DECODE_MODE_AR
    text = inference_pb2.GenerateRequest(prompt_text="héllo")
    assert inference_pb2.GenerateRequest.FromString(text.SerializeToString()).prompt_text == "héllo"


def test_sentinel_n_prev_minus_one_survives():
    field = speculation_pb2.SpeculateRow.DESCRIPTOR.fields_by_name["n_prev"]
    assert field.type == FD.TYPE_SINT32
    row = speculation_pb2.SpeculateRow(n_prev=-1)
    data = row.SerializeToString()
    assert data == b"\x10\x01"  # field 2, varint, zigzag(-1) = 1: one byte of payload
    assert speculation_pb2.SpeculateRow.FromString(data).n_prev == -1
    # 0 (nothing accepted) stays distinct from the sentinel.
    assert speculation_pb2.SpeculateRow.FromString(
        speculation_pb2.SpeculateRow(n_prev=0).SerializeToString()
    ).n_prev == 0
    env = speculation_pb2.SpeculationRequest(
        round_id=1, speculate=speculation_pb2.SpeculateRequest(rows=[row])
    )
    back = speculation_pb2.SpeculationRequest.FromString(env.SerializeToString())
    assert back.speculate.rows[0].n_prev == -1
    for n in range(-1, 33):
        r = speculation_pb2.SpeculateRow(n_prev=n)
        assert speculation_pb2.SpeculateRow.FromString(r.SerializeToString()).n_prev == n


def test_top_p_top_k_are_not_draft_fields():
    fields = speculation_pb2.SpeculateRow.DESCRIPTOR.fields_by_name
    assert "top_p" not in fields and "top_k" not in fields
    assert set(fields) == {
        "seq_id", "n_prev", "recovery_token", "committed_len", "committed_tokens",
        "draft_temperature", "target_temperature",
    }
    assert set(speculation_pb2.SpeculateRowReply.DESCRIPTOR.fields_by_name) == {
        "seq_id", "status", "hit", "backup", "tokens", "proposal_is_sample", "probs",
    }
    probs = speculation_pb2.SpeculateRowReply.DESCRIPTOR.fields_by_name["probs"]
    assert probs.type == FD.TYPE_BYTES
    for name in ("committed_tokens",):
        f = speculation_pb2.SpeculateRow.DESCRIPTOR.fields_by_name[name]
        assert f.type == FD.TYPE_INT32 and f.is_packed


# ---------------------------------------------------------------------------------------------
# probabilities
# ---------------------------------------------------------------------------------------------


def _reply_with(probs: bytes, dtype: int) -> speculation_pb2.SpeculateReply:
    msg = speculation_pb2.SpeculateReply(
        rows=[speculation_pb2.SpeculateRowReply(
            seq_id=1, tokens=list(range(K)), proposal_is_sample=True, probs=probs)],
        probs_dtype=dtype,
    )
    return speculation_pb2.SpeculateReply.FromString(msg.SerializeToString())


def test_probabilities_float32_round_trip_numpy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((K, V)).astype(np.float32)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    back = _reply_with(probs.astype("<f4").tobytes(), speculation_pb2.DTYPE_FLOAT32)
    assert back.probs_dtype == speculation_pb2.DTYPE_FLOAT32
    raw = back.rows[0].probs
    assert len(raw) == K * V * 4
    decoded = np.frombuffer(raw, dtype="<f4").reshape(K, V)
    np.testing.assert_array_equal(decoded, probs)
    assert decoded.tobytes() == probs.tobytes()  # bit-exact, not just close


def test_probabilities_bfloat16_round_trip_torch():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(K, V, generator=gen), dim=-1).to(torch.bfloat16)
    raw = probs.view(torch.int16).numpy().astype("<i2").tobytes()
    back = _reply_with(raw, speculation_pb2.DTYPE_BFLOAT16)
    assert back.probs_dtype == speculation_pb2.DTYPE_BFLOAT16
    assert len(back.rows[0].probs) == K * V * 2
    decoded = (
        torch.from_numpy(np.frombuffer(back.rows[0].probs, dtype="<i2").copy())
        .view(torch.bfloat16)
        .reshape(K, V)
    )
    assert decoded.dtype == torch.bfloat16
    assert torch.equal(decoded, probs)


def test_probabilities_float16_and_float32_torch_round_trip():
    gen = torch.Generator().manual_seed(1)
    p32 = torch.softmax(torch.randn(K, V, generator=gen), dim=-1)
    for tensor, np_dtype, enum in (
        (p32, "<f4", speculation_pb2.DTYPE_FLOAT32),
        (p32.to(torch.float16), "<f2", speculation_pb2.DTYPE_FLOAT16),
    ):
        back = _reply_with(tensor.numpy().astype(np_dtype).tobytes(), enum)
        decoded = torch.from_numpy(np.frombuffer(back.rows[0].probs, dtype=np_dtype).copy())
        assert torch.equal(decoded.reshape(K, V), tensor)


def test_greedy_rows_carry_no_probabilities():
    _, reply = _speculate_round(sampled=False, probs_dtype=speculation_pb2.DTYPE_FLOAT32,
                                itemsize=4)
    row = reply.speculate.rows[0]
    assert row.probs == b"" and len(row.tokens) == K
    assert reply.ByteSize() < 100


# ---------------------------------------------------------------------------------------------
# bytes per round (docs/protocol.md)
# ---------------------------------------------------------------------------------------------


def test_bytes_per_round_table_matches_serialisation():
    computed = bytes_per_round()
    documented = _parse_doc_table()
    assert documented == computed, (
        "docs/protocol.md bytes-per-round table is stale; computed: "
        + ", ".join(f"{k[0]}/{k[1]}: request {v[0]}, reply {v[1]}" for k, v in computed.items())
    )
    # Sanity of the scenario itself: probabilities dominate, bf16 halves them.
    greedy, f32, bf16 = (computed[k] for k in
                         [("greedy", "none"), ("sampled", "float32"), ("sampled", "bfloat16")])
    # Same envelope; the three nested length prefixes (probs, row, reply) each need one
    # varint byte less for lengths below 2**21.
    assert (f32[1] - K * V * 4) - (bf16[1] - K * V * 2) == 3
    assert greedy[1] < 100 and f32[1] - greedy[1] == K * V * 4 + 11
    assert f32[0] == bf16[0] == greedy[0] + 10  # two fixed32 temperatures


def test_doc_states_scenario_constants():
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    needles = ["B=1", f"K={K}", f"V={V:,}", f"n_prev={K}", f"seq_id={SEQ_ID}",
               f"round_id={ROUND_ID:,}", f"committed_len={COMMITTED_LEN:,}",
               f"temperature {SAMPLED_TEMPERATURE}", f"≥ {2**14:,}"]
    needles += [f"{name}={value:,}" for name, value in TIMINGS.items()]
    for needle in needles:
        assert needle in text, needle
    assert TOKEN_BASE >= 2**14


# ---------------------------------------------------------------------------------------------
# services
# ---------------------------------------------------------------------------------------------


def _methods(module, service: str) -> dict[str, tuple[bool, bool]]:
    svc = module.DESCRIPTOR.services_by_name[service]
    return {m.name: (m.client_streaming, m.server_streaming) for m in svc.methods}


def test_service_shapes():
    assert _methods(inference_pb2, "Inference") == {
        "Generate": (False, True),
        "Abort": (False, False),
        "Health": (False, False),
        "ModelInfo": (False, False),
    }
    assert _methods(speculation_pb2, "Speculation") == {
        "Handshake": (False, False),
        "Session": (True, True),
    }


class _Draft(speculation_pb2_grpc.SpeculationServicer):
    """Toy draft: echoes round ids; misses on the sentinel, 'hits' otherwise."""

    def Handshake(self, request, context):
        ok = request.target_model.vocab_size == V
        return speculation_pb2.HandshakeResponse(
            accepted=ok,
            chosen_transport=speculation_pb2.TRANSPORT_GRPC if ok else 0,
            error_message="" if ok else "vocab_size mismatch",
            draft_model=speculation_pb2.ModelFacts(vocab_size=V),
            protocol_version=speculation_pb2.PROTOCOL_VERSION_1,
            session_id="s-1",
        )

    def Session(self, request_iterator, context):
        assert dict(context.invocation_metadata()).get("saguaro-session-id") == "s-1"
        for req in request_iterator:
            kind = req.WhichOneof("kind")
            if kind == "speculate":
                rows = [
                    speculation_pb2.SpeculateRowReply(
                        seq_id=r.seq_id,
                        hit=r.n_prev >= 0,
                        backup=(speculation_pb2.BACKUP_KIND_NONE if r.n_prev >= 0
                                else speculation_pb2.BACKUP_KIND_JIT),
                        tokens=[r.recovery_token + i for i in range(1, K + 1)],
                        proposal_is_sample=True,
                    )
                    for r in req.speculate.rows
                ]
                yield speculation_pb2.SpeculationResponse(
                    round_id=req.round_id, speculate=speculation_pb2.SpeculateReply(rows=rows)
                )
            elif kind == "release":
                yield speculation_pb2.SpeculationResponse(
                    round_id=req.round_id,
                    release=speculation_pb2.ReleaseReply(released=len(req.release.seq_ids)),
                )
            else:
                yield speculation_pb2.SpeculationResponse(
                    round_id=req.round_id,
                    error=speculation_pb2.SpeculationError(
                        code=speculation_pb2.ERROR_CODE_INVALID_REQUEST, message=kind or ""),
                )


class _Target(inference_pb2_grpc.InferenceServicer):
    def Generate(self, request, context):
        rid = request.request_id or "srv-1"
        for i, tok in enumerate(request.prompt_token_ids.ids):
            yield inference_pb2.GenerateResponse(
                request_id=rid, delta=inference_pb2.TokenDelta(token_ids=[tok], offset=i))
        n = len(request.prompt_token_ids.ids)
        yield inference_pb2.GenerateResponse(
            request_id=rid,
            final=inference_pb2.GenerateFinal(
                finish_reason=inference_pb2.FINISH_REASON_LENGTH,
                usage=inference_pb2.Usage(completion_tokens=n, total_tokens=n),
            ),
        )

    def Health(self, request, context):
        return inference_pb2.HealthResponse(status=inference_pb2.SERVING_STATUS_SERVING)


@pytest.fixture()
def server():
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    speculation_pb2_grpc.add_SpeculationServicer_to_server(_Draft(), srv)
    inference_pb2_grpc.add_InferenceServicer_to_server(_Target(), srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    assert port > 0
    srv.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        channel.close()
        srv.stop(grace=None)


def test_grpc_session_echoes_round_ids(server):
    stub = speculation_pb2_grpc.SpeculationStub(server)
    bad = stub.Handshake(speculation_pb2.HandshakeRequest(
        target_model=speculation_pb2.ModelFacts(vocab_size=V + 1)), timeout=10)
    assert not bad.accepted and "vocab_size" in bad.error_message
    hs = stub.Handshake(speculation_pb2.HandshakeRequest(
        protocol_version=speculation_pb2.PROTOCOL_VERSION_1,
        target_model=speculation_pb2.ModelFacts(vocab_size=V),
        transports_offered=[speculation_pb2.TRANSPORT_SHARED_MEMORY,
                            speculation_pb2.TRANSPORT_GRPC],
    ), timeout=10)
    assert hs.accepted and hs.chosen_transport == speculation_pb2.TRANSPORT_GRPC

    requests = [
        speculation_pb2.SpeculationRequest(round_id=1, speculate=speculation_pb2.SpeculateRequest(
            rows=[speculation_pb2.SpeculateRow(seq_id=7, n_prev=-1, recovery_token=10,
                                               committed_len=4)])),
        speculation_pb2.SpeculationRequest(round_id=2, speculate=speculation_pb2.SpeculateRequest(
            rows=[speculation_pb2.SpeculateRow(seq_id=7, n_prev=2, recovery_token=20,
                                               committed_len=5, committed_tokens=[10])])),
        speculation_pb2.SpeculationRequest(
            round_id=3, release=speculation_pb2.ReleaseRequest(seq_ids=[7])),
        speculation_pb2.SpeculationRequest(
            round_id=4, prefill=speculation_pb2.PrefillRequest()),
    ]
    replies = list(stub.Session(iter(requests),
                                metadata=[("saguaro-session-id", hs.session_id)], timeout=10))
    assert [r.round_id for r in replies] == [1, 2, 3, 4]
    first, second, release, error = replies
    assert not first.speculate.rows[0].hit
    assert first.speculate.rows[0].backup == speculation_pb2.BACKUP_KIND_JIT
    assert second.speculate.rows[0].hit
    assert list(second.speculate.rows[0].tokens) == list(range(21, 21 + K))
    assert release.release.released == 1
    assert error.WhichOneof("kind") == "error"
    assert error.error.code == speculation_pb2.ERROR_CODE_INVALID_REQUEST


def test_grpc_generate_streams_then_final(server):
    stub = inference_pb2_grpc.InferenceStub(server)
    msgs = list(stub.Generate(inference_pb2.GenerateRequest(
        prompt_token_ids=inference_pb2.TokenIds(ids=[3, 4, 5]),
        stream_tokens_individually=True), timeout=10))
    assert [m.WhichOneof("kind") for m in msgs] == ["delta"] * 3 + ["final"]
    assert {m.request_id for m in msgs} == {"srv-1"}
    assert [m.delta.offset for m in msgs[:3]] == [0, 1, 2]
    assert msgs[-1].final.usage.completion_tokens == 3
    assert msgs[-1].final.finish_reason == inference_pb2.FINISH_REASON_LENGTH
    health = stub.Health(inference_pb2.HealthRequest(), timeout=10)
    assert health.status == inference_pb2.SERVING_STATUS_SERVING
