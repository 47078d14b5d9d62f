"""The chart's `helm test` Pod, run for real: its rendered command (the gateway image's Python
running files/saguaro-helm-test.py) against a real gateway routing to a real target over sockets,
with the Service URL remapped to the test gateway's loopback port."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import yaml

CHART = Path(__file__).resolve().parents[3] / "helm" / "saguaro"


def render_test_pod(values: dict) -> dict:
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name="demo", namespace="llm", is_install=True)
    [pod] = [doc for path, text in rendered.items() if "/tests/" in path for doc in yaml.safe_load_all(text) if doc]
    return pod


def run_pod_command(pod: dict, url: str) -> subprocess.CompletedProcess:
    container = pod["spec"]["containers"][0]
    args = list(container["args"])
    args[args.index("--url") + 1] = url
    command = list(container["command"])
    assert command[:2] == ["python", "-c"]
    return subprocess.run([sys.executable, *command[1:], *args], capture_output=True, text=True, timeout=300)


def test_helm_test_pod_renders_and_validates():
    pod = render_test_pod({"gateway": {"apiKeys": {"existingSecret": "keys", "key": "api-keys"}}})
    assert pod["kind"] == "Pod" and pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    for version in ("1.30", "1.34"):
        kubernetes_validate.validate(pod, version, strict=True)
    container = pod["spec"]["containers"][0]
    assert container["image"].endswith("saguaro/saguaro-gateway:0.1.0"), "an image the chart already ships"
    args = container["args"]
    assert args[args.index("--url") + 1] == "http://demo-saguaro-gateway.llm.svc.cluster.local:8000"
    assert args[args.index("--api-key-file") + 1] == "/etc/saguaro/api-keys/api-keys"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_helm_test_script_passes_against_a_serving_gateway(model_dirs, module_targets, start_gateway):
    target = module_targets(model_dirs["llama"], max_model_len=64)
    gateway = start_gateway([target.address])
    result = run_pod_command(render_test_pod({}), gateway.http_url)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("PASS: ")


def test_helm_test_script_fails_when_nothing_serves():
    from saguaro.net import free_port

    result = run_pod_command(render_test_pod({}), f"http://127.0.0.1:{free_port()}")
    assert result.returncode != 0 and "FAIL: cannot reach" in result.stderr
