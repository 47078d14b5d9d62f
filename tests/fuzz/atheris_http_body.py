"""atheris (libFuzzer) harness: bytes as an OpenAI request body, through JSON decoding and the
gateway's body parser for both endpoints.

Coverage-guided, so it complements hypothesis' structured generation: it mutates the seed bodies
byte by byte. Any exception other than the parser's INVALID_ARGUMENT refusal is a crash.

    python tests/fuzz/atheris_http_body.py MODEL_DIR [libFuzzer flags, e.g. -runs=10000 CORPUS_DIR]
"""

from __future__ import annotations

import json
import sys

import atheris
import grpc

from atheris_seeds import seed_corpus
from saguaro.config import ModelConfig
from saguaro.tokenizer import load_tokenizer

with atheris.instrument_imports(include=["saguaro.services.gateway.openai_schema", "saguaro.services.gateway.prepare",
                                         "saguaro.services.gateway.api_models",
                                         "saguaro.services.gateway.api_validation"]):
    from saguaro.services.gateway.errors import GatewayError
    from saguaro.services.gateway.openai_schema import parse_request
    from saguaro.services.gateway.prepare import ModelFacts, Preparer
    from saguaro.services.gateway.tokenization import GatewayTokenizer

SEEDS = [
    b'{"model": "m", "prompt": "def add(a, b):", "max_tokens": 4, "temperature": 0.5, "seed": 7}',
    b'{"model": "m", "prompt": [[3, 4], "x"], "stream": true, "stream_options": {"include_usage": true}}',
    b'{"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], "top_p": 0.9}',
    b'{"model": "m", "prompt": [3, 4, 5], "stop_token_ids": [2], "mode": "ar", "top_k": 5, "n": 1}',
]


def main() -> None:
    model_dir, flags = sys.argv[1], sys.argv[2:]
    vocab = ModelConfig.from_dir(model_dir).vocab_size
    preparer = Preparer(ModelFacts("m", 64, vocab), GatewayTokenizer(load_tokenizer(model_dir)), 16, 256)

    def one_input(data: bytes) -> None:
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):  # what the gateway answers 400 "not valid JSON"
            return
        for kind in ("completions", "chat"):
            try:
                parse_request(kind, body, preparer)
            except GatewayError as exc:  # a 400, or an unknown model's 404 (as vLLM)
                if exc.code is not grpc.StatusCode.INVALID_ARGUMENT and not (
                        exc.code is grpc.StatusCode.NOT_FOUND and exc.param == "model"):
                    raise

    seed_corpus(flags, SEEDS, one_input)
    atheris.Setup([sys.argv[0], *flags], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
