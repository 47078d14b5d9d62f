"""The gateway process never loads torch: it routes, tokenises and proxies, and holds no tensors;
nor does the client SDK (``saguaro.client``).

torch costs seconds and hundreds of MB at start-up, which the gateway's image and its restarts
should not pay. A clean interpreter imports the gateway's server module and must end without
torch (or transformers, whose model-config modules import torch) in ``sys.modules``; the usual
ways it crept in were an eager re-export in a package ``__init__`` (``saguaro``,
``saguaro.cache``) and a constant borrowed from a torch-bound module.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import {module}
print(json.dumps({{name: name in sys.modules for name in ("torch", "transformers")}}))
"""


def _loaded_after_import(module: str) -> dict[str, bool]:
    proc = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True, text=True,
                          cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_the_gateway_server_loads_no_torch():
    loaded = _loaded_after_import("saguaro.services.gateway.server")
    assert not loaded["torch"], "importing saguaro.services.gateway.server imported torch"
    assert not loaded["transformers"], "the gateway imports transformers (which imports torch) at import time"


def test_importing_the_client_sdk_loads_no_torch():
    """An application that only calls a Saguaro endpoint must not pay for torch either."""
    loaded = _loaded_after_import("saguaro.client")
    assert loaded == {"torch": False, "transformers": False}, f"importing saguaro.client loaded {loaded}"


def test_the_package_still_exports_its_names_on_first_use():
    proc = subprocess.run(
        [sys.executable, "-c",
         "import sys, saguaro; assert 'torch' not in sys.modules; "
         "from saguaro import LLM, SamplingParams, ConfigError; import saguaro.cache as c; "
         "print(LLM.__module__, SamplingParams.__module__, ConfigError.__module__, c.KVCache.__module__)"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["saguaro.llm", "saguaro.sampling", "saguaro.errors", "saguaro.cache.kv_cache"]
