"""Gateway settings: one dataclass, filled from ``saguaro gateway`` flags or by code (tests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from saguaro.errors import ConfigError
from saguaro.services.gateway.generation_defaults import AUTO, check_setting
from saguaro.tls import check_channel_flags, check_server_flags

POLICIES = ("prefix", "least-load", "round-robin")


@dataclass
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 50050  # public gRPC (Inference); 0 picks a free port
    http_port: int | None = 8000  # OpenAI-compatible HTTP API; None: no HTTP listener; 0: a free port
    targets: list[str] = field(default_factory=list)  # static discovery: "host:port" of target pods
    discovery: str = "static"  # static | kubernetes
    namespace: str = "default"  # kubernetes: namespace of the target Service
    service: str = ""  # kubernetes: name of the target Service (its EndpointSlices are watched)
    target_port: int = 50051  # kubernetes: the targets' gRPC port
    redis_url: str | None = None  # prefix index in Redis; None: in-process index
    policy: str = "prefix"
    block_size: int = 16  # must equal the targets' (checked against their KV events)
    max_queue: int = 256  # requests waiting for their first token, gateway-wide; beyond: 429
    api_keys: frozenset[str] = frozenset()  # empty: no authentication
    max_streams_per_key: int = 0  # requests in flight per API key; beyond: 429 (0: no limit)
    tls_cert: str | None = None  # PEM files for TLS on the public ports (gRPC and HTTP)
    tls_key: str | None = None
    target_tls_ca: str | None = None  # TLS to the targets (CA that signed their certificates)
    target_tls_cert: str | None = None  # mTLS: the gateway's client certificate and key
    target_tls_key: str | None = None
    # the name target certificates must carry, instead of the dialled address: under Kubernetes
    # discovery the gateway dials pod IPs, which one shared certificate cannot list
    target_tls_server_name: str | None = None
    model_name: str | None = None  # served model name; None: the targets' ModelInfo.model_name
    model_aliases: tuple[str, ...] = ()  # further names requests may use (--served-model-name A B ...)
    # sampling defaults: auto (the model's generation_config.json), vllm (none) or a folder
    generation_config: str = AUTO
    chat_template: str | None = None  # a Jinja chat template file used instead of the tokenizer's
    max_migrations: int = 2  # a request whose target fails mid-stream moves on at most this often
    metrics_labels: dict[str, str] = field(default_factory=dict)  # --metrics-label: on every /metrics series

    # Tuning (no flags: the defaults suit every deployment we know of).
    health_interval_s: float = 1.0  # active Health polling of each target
    request_timeout_s: float = 600.0  # deadline of a request that brings none of its own
    max_attempts: int = 3  # a request tries at most this many targets before its first token
    retry_after_s: int = 1  # Retry-After sent with 429 / RESOURCE_EXHAUSTED
    breaker_failures: int = 3  # consecutive failures that open a target's circuit
    breaker_cooldown_s: float = 5.0  # open circuit: time before one trial request is let through
    provisional_ttl_s: float = 10.0  # life of the index entry written when a request is routed
    index_ttl_s: float = 3600.0  # Redis: a target's keys expire this long after its last event
    max_prefix_blocks: int = 256  # leading prompt blocks looked up per request (4096 tokens at 16)
    # an SSE comment line after this long without a chunk, so proxies with shorter idle timeouts
    # do not cut a stream that waits (a migration, a long queue between rounds)
    sse_keepalive_s: float = 5.0
    # an HTTP connection that has not sent a whole request head this long after it opened (or
    # after its last response) is closed: slow-header (slowloris) connections cannot pile up
    http_header_timeout_s: float = 30.0
    # a request body that has not fully arrived this long after its head: 408 (and the unread rest
    # of a refused body is drained for no longer, 10 s at most, before the connection closes)
    http_body_timeout_s: float = 30.0

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"unknown policy {self.policy!r}; use one of {', '.join(POLICIES)}")
        if self.discovery not in ("static", "kubernetes"):
            raise ConfigError(f"unknown discovery {self.discovery!r}; use static or kubernetes")
        if self.discovery == "static" and not self.targets:
            raise ConfigError("give the targets: --targets HOST:PORT ... (or --discovery kubernetes)")
        if self.discovery == "kubernetes" and not self.service:
            raise ConfigError("--discovery kubernetes needs --service NAME (the target Service)")
        for address in self.targets:
            host, sep, port = address.rpartition(":")
            if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
                raise ConfigError(f"target {address!r} is not HOST:PORT (port 1-65535)")
        for flag, port, lowest in (("--port", self.port, 0), ("--http-port", self.http_port, 0),
                                   ("--target-port", self.target_port, 1)):
            if port is not None and not lowest <= port < 65536:
                raise ConfigError(f"{flag} must be between {lowest} and 65535, got {port}")
        if self.block_size <= 0:
            raise ConfigError(f"--block-size must be positive, got {self.block_size}")
        if self.max_queue <= 0:
            raise ConfigError(f"--max-queue must be positive, got {self.max_queue}")
        if self.max_migrations < 0:
            raise ConfigError(f"--max-migrations must be >= 0 (0: no migration), got {self.max_migrations}")
        if self.max_streams_per_key < 0:
            raise ConfigError(f"--max-streams-per-key must be >= 0 (0: no limit), got {self.max_streams_per_key}")
        if self.max_streams_per_key and not self.api_keys:
            raise ConfigError("--max-streams-per-key counts streams per API key: give keys too "
                              "(--api-keys-file or $SAGUARO_API_KEYS)")
        check_setting(self.generation_config)
        if self.chat_template is not None and not Path(self.chat_template).is_file():
            raise ConfigError(f"--chat-template {self.chat_template!r} is not a file (a Jinja chat template)")
        check_server_flags(self.tls_cert, self.tls_key)
        check_channel_flags(self.target_tls_ca, self.target_tls_cert, self.target_tls_key, "--target-tls", "target")
        if self.target_tls_server_name and not self.target_tls_ca:
            raise ConfigError("--target-tls-server-name names what target certificates must carry: "
                              "it needs TLS to the targets (--target-tls-ca)")
