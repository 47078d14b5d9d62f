"""`helm test`: one completion through the gateway's OpenAI HTTP API (standard library only, so
it runs with the gateway image's Python). Exit status 0 when the gateway answered with text."""

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.request


def call(url: str, body: dict | None, headers: dict, timeout: float, context: ssl.SSLContext | None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        sys.exit(f"FAIL: {url} answered HTTP {exc.code}: {exc.read()[:500].decode(errors='replace')}")
    except (urllib.error.URLError, OSError) as exc:
        sys.exit(f"FAIL: cannot reach {url}: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", required=True, help="the gateway's HTTP base URL")
    parser.add_argument("--prompt", default="Hello")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--api-key-file", default=None, help="file of API keys; the first one is used")
    parser.add_argument("--insecure-tls", action="store_true",
                        help="https without verifying the certificate (the test checks serving, not the PKI)")
    args = parser.parse_args()
    headers = {}
    if args.api_key_file:
        with open(args.api_key_file, encoding="utf-8") as keys:
            key = next((line.strip() for line in keys if line.strip() and not line.startswith("#")), "")
        headers["Authorization"] = f"Bearer {key}"
    context = ssl._create_unverified_context() if args.insecure_tls else None
    base = args.url.rstrip("/")
    models = call(f"{base}/v1/models", None, headers, args.timeout, context)
    model = models["data"][0]["id"]
    body = {"model": model, "prompt": args.prompt, "max_tokens": args.max_tokens, "temperature": 0}
    result = call(f"{base}/v1/completions", body, headers, args.timeout, context)
    text = result["choices"][0]["text"]
    if not isinstance(text, str) or result["usage"]["completion_tokens"] < 1:
        sys.exit(f"FAIL: no tokens generated: {result}")
    print(f"PASS: {model} answered {args.prompt!r} with {text!r}")


if __name__ == "__main__":
    main()
