"""The hf:// download init container, run for real.

Its command, arguments and environment come from the rendered manifest (the image's ENTRYPOINT
`saguaro` becomes `python -m saguaro.cli` from this checkout; the pod's paths and HF_ENDPOINT are
remapped to a temporary folder and a local server). The server is a stdlib HTTP server on a real
socket speaking the part of the Hugging Face Hub API that huggingface_hub's snapshot_download
uses: the revision info (/api/models/ORG/NAME/revision/REV), the tree listing
(/api/models/ORG/NAME/tree/COMMIT) and HEAD/GET /ORG/NAME/resolve/REV/FILE with X-Repo-Commit, ETag
and Content-Length (no X-Xet-Hash header and no xetHash in the tree, so the files come over plain
HTTP). It requires the Bearer token the Secret provides. The files land where the target's
ConfigMap says the target loads its model, and the target's loader generates from them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from saguaro.tiny_models import build_tiny_model

REPO_ID = "tiny-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"
VALUES = {"target": {"model": f"hf://{REPO_ID}@main", "mode": "ar"}, "redis": {"mode": "none"},
          "models": {"huggingFace": {"token": {"secretName": "hf-token", "key": "token"},
                                     "endpoint": "https://hf-mirror.example.com"}}}


class FakeHub(ThreadingHTTPServer):
    """Serves one repository at one commit; counts file bodies sent."""

    daemon_threads = True

    def __init__(self, folder: Path, token: str):
        self.files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        self.token = token
        self.bodies_sent: list[str] = []
        super().__init__(("127.0.0.1", 0), HubHandler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class HubHandler(BaseHTTPRequestHandler):
    server: FakeHub

    def log_message(self, *args) -> None:  # keep the test output clean
        pass

    def _json(self, payload) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _route(self, head: bool) -> None:
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return self._refuse(401, "RepoNotFound")  # the hub hides gated/private repos from anonymous callers
        path = self.path.split("?", 1)[0]
        if path == f"/api/models/{REPO_ID}/revision/main":
            return self._json({"id": REPO_ID, "sha": COMMIT, "siblings": [{"rfilename": f} for f in self.server.files]})
        if path == f"/api/models/{REPO_ID}/tree/{COMMIT}":
            return self._json([{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                               for name, data in self.server.files.items()])
        match = re.fullmatch(rf"/{REPO_ID}/resolve/(main|{COMMIT})/(.+)", path)
        if match and match.group(2) in self.server.files:
            data = self.server.files[match.group(2)]
            self.send_response(200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if not head:
                self.wfile.write(data)
                self.server.bodies_sent.append(match.group(2))
            return None
        return self._refuse(404, "EntryNotFound")

    def do_GET(self) -> None:
        self._route(head=False)

    def do_HEAD(self) -> None:
        self._route(head=True)


@pytest.fixture
def hub(tmp_path, k8s):
    source = build_tiny_model(tmp_path / "published", family="llama")
    server = FakeHub(source, token=k8s.FAKE_SECRET)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def entrypoint(k8s) -> list[str]:
    """The target image's ENTRYPOINT, as this checkout runs it."""
    dockerfile = (k8s.REPO / "services" / "gpu.Dockerfile").read_text()
    assert 'ENTRYPOINT ["saguaro"]' in dockerfile
    return [sys.executable, "-m", "saguaro.cli"]


def remap(path: str, root: Path) -> str:
    return str(root / path.lstrip("/"))


def download_command(render, k8s, root: Path, hub_url: str) -> tuple[list[str], dict[str, str], str]:
    """(argv, environment, folder the target loads) of the rendered fetch-target-model container."""
    manifests = render(VALUES)
    workload = manifests.workload("target")
    init = {c["name"]: c for c in k8s.pod_spec(workload)["initContainers"]}["fetch-target-model"]
    env = k8s.container_environment(manifests, workload, init)
    assert env["HF_TOKEN"] == k8s.FAKE_SECRET, "the token comes from the Secret"
    assert env["HF_ENDPOINT"] == "https://hf-mirror.example.com"
    assert not init.get("command"), "the image's ENTRYPOINT (saguaro) runs the args"
    args = init["args"]
    assert args[:2] == ["fetch-model", f"hf://{REPO_ID}@main"]
    loads = manifests.config_maps()[manifests.name("target")]["SAGUARO_MODEL"]
    assert args[2] == loads, "the download lands where the target loads its model"
    mounts = {m["mountPath"] for m in init["volumeMounts"]}
    assert any(args[2].startswith(m + "/") for m in mounts), "DEST is on a volume of the pod"
    env.update(HF_ENDPOINT=hub_url, HOME=remap(env["HOME"], root), PYTHONPATH=str(k8s.REPO), PATH=os.environ["PATH"],
               OMP_NUM_THREADS="1")
    argv = entrypoint(k8s) + args[:2] + [remap(args[2], root)]
    return argv, env, remap(loads, root)


def test_hf_init_container_downloads_what_the_target_loads(render, k8s, hub, tmp_path):
    from saguaro.llm import LLM
    from saguaro.sampling import SamplingParams

    root = tmp_path / "pod"
    (root / "tmp").mkdir(parents=True)
    argv, env, model_dir = download_command(render, k8s, root, hub.url)
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert sorted(hub.bodies_sent) == sorted(hub.files), "every file is fetched once"
    assert f"hf://{REPO_ID}@main" in first.stderr, "the log names what is fetched"
    for name, data in hub.files.items():
        assert (Path(model_dir) / name).read_bytes() == data

    llm = LLM(model_dir, device="cpu", dtype="float32", kv_cache_bytes=4 << 20, max_num_seqs=2, show_progress=False)
    [out] = llm.generate(["def add(a, b):"], SamplingParams(max_tokens=2, temperature=0.0))
    assert len(out.token_ids) == 2

    second = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert sorted(hub.bodies_sent) == sorted(hub.files), "a restarted init container fetches no file again"


def test_hf_init_container_without_the_token_says_to_set_the_secret(render, k8s, hub, tmp_path):
    root = tmp_path / "pod"
    (root / "tmp").mkdir(parents=True)
    argv, env, _ = download_command(render, k8s, root, hub.url)
    env.pop("HF_TOKEN")
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert f"hf://{REPO_ID}@main" in result.stderr and "HTTP 401" in result.stderr
    assert "models.huggingFace.token.secretName" in result.stderr and "Traceback" not in result.stderr
    assert hub.bodies_sent == []
