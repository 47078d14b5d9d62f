"""The gateway: the one front door clients talk to (see docs/gateway.md).

It serves the public ``Inference`` gRPC API and an OpenAI-compatible HTTP API, and sends each
request to one of the target pods it discovers (a static list or a Kubernetes EndpointSlice
watch), choosing by health, load and which pod already holds the request's prompt prefix in
its KV cache (an index fed by the targets' KV events, in process or in Redis).
"""

from saguaro.services.gateway.config import GatewayConfig
from saguaro.services.gateway.server import Gateway, GatewayThread, run_gateway

__all__ = ["Gateway", "GatewayConfig", "GatewayThread", "run_gateway"]
